"""The core issue's acceptance checks, through real HTTP and the official `openai` client."""

from __future__ import annotations


from recursive_llm import RLM
from recursive_llm.record.events import read_trajectory
from recursive_llm.testing import FakeLLMServer
from scripted_root import root_then_sub

REVENUE_REPORT = "\n".join(
    f"Q{q} {year}: revenue {100 + q * 7 + year % 10} M; risk: {'supply chain' if q % 2 else 'currency'}"
    for year in range(2000, 2024) for q in range(1, 5))


def test_readme_snippet_against_openai_base_url(monkeypatch):
    turns = [
        "```repl\nlines = context.splitlines()\nprint(len(lines), lines[:2])\n```",
        "```repl\nnotes = llm_query_batched([f'Summarize: {c}' for c in ['\\n'.join(lines[i:i+20]) "
        "for i in range(0, len(lines), 20)]])\nsummary = ' / '.join(n[:30] for n in notes)\nprint(len(notes))\n```",
        "FINAL_VAR(summary)",
    ]
    with FakeLLMServer(responder=root_then_sub(turns)) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        huge_document = REVENUE_REPORT
        # -- the snippet, as written in the issue and the README --
        rlm = RLM(model="gpt-5-mini")
        result = rlm.completion(query="Summarize all revenue and risk mentions", context=huge_document)
        print(result)
        # --
        assert result.stopped_reason == "final"
        assert str(result).startswith("sub:Summarize: Q1 2000")
        assert result.usage.total.calls == 3 + 5  # three root turns, five chunk summaries
        assert result.usage.total.prompt_tokens > 0
        first_root_prompt = str(server.requests[0])
        # only metadata and a labelled preview of the first few hundred characters reach the prompt
        assert "Summarize all revenue" in first_root_prompt and "Preview of the first 300 characters" in first_root_prompt
        assert "Q1 2005: revenue" not in first_root_prompt and "Q4 2020" not in first_root_prompt


def test_hundred_batched_prompts_at_100ms_are_concurrent_and_ordered(monkeypatch):
    code = ("t0 = time.perf_counter()\nr = llm_query_batched([f'#{i}' for i in range(100)])\n"
            "elapsed = time.perf_counter() - t0\nassert r == [f'sub:#{i}' for i in range(100)], r[:3]\n"
            "print(f'batch took {elapsed:.3f} s')")
    turns = ["```repl\nimport time\n" + code + "\n```", "FINAL(done)"]
    with FakeLLMServer(responder=root_then_sub(turns), latency=0.1) as server:
        rlm = RLM(model="fake-model", base_url=server.base_url, max_concurrency=32)
        result = rlm.completion("q", "text")
        assert result.answer == "done"
        # The width is adaptive: it starts at START_LIMIT calls in flight and grows while the server
        # keeps up (how far depends on the machine's load: speed is measured in benchmarks/).
        from recursive_llm.engine.scheduler import START_LIMIT

        assert START_LIMIT <= server.max_in_flight <= 32
        cell = next(e for e in read_trajectory(result.trajectory_path) if e["type"] == "cell")
        assert cell["error"] is None, cell["stderr"]  # the replies came back in order (asserted in the cell)


def test_worker_code_sees_no_api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-should-never-leak")
    turns = ["```repl\nimport os\nprint(os.environ)\nprint(open('/proc/self/environ').read())\n```", "FINAL(x)"]
    with FakeLLMServer(responder=root_then_sub(turns)) as server:
        result = RLM(model="gpt-5-mini", base_url=server.base_url).completion("q", "t")
        events = read_trajectory(result.trajectory_path)
    cell = next(e for e in events if e["type"] == "cell")
    assert "environ(" in cell["stdout"] and "HOME" in cell["stdout"]
    assert "should-never-leak" not in cell["stdout"]


def test_depth_two_over_http_records_depths(monkeypatch):
    def respond(messages, model):
        first = messages[1]["content"] if len(messages) > 1 else ""
        if messages[0]["role"] != "system":
            return "leaf answer"  # a plain sub-call
        if "Query: child task" in first:  # the child run (depth 1)
            if not any(m["role"] == "assistant" for m in messages):
                return "```repl\nleaf = llm_query('leaf question about ' + context[:20])\n```"
            return "FINAL_VAR(leaf)"
        if not any(m["role"] == "assistant" for m in messages):
            return "```repl\nchild = rlm_query('child task', context=context[:100])\n```"
        return "FINAL_VAR(child)"

    with FakeLLMServer(responder=respond) as server:
        result = RLM(model="m", base_url=server.base_url, max_depth=2).completion("q", "some text")
    assert result.answer == "leaf answer"
    events = read_trajectory(result.trajectory_path)
    by_type = {}
    for event in events:
        by_type.setdefault(event["type"], []).append(event["depth"])
    assert sorted(by_type["run_start"]) == [0, 1]
    calls = [(e["purpose"], e["depth"]) for e in events if e["type"] == "llm_call"]
    assert sorted(calls) == [("root", 0), ("root", 0), ("root", 1), ("root", 1), ("sub", 2)]
    assert all(isinstance(e.get("depth"), int) for e in events)


def test_every_event_of_whole_runs_follows_the_one_schema(tmp_path):
    """events.EVENT_FIELDS is the schema the store, progress and the viewer read (issue 13)."""
    from recursive_llm.record.events import EVENT_FIELDS, check_event
    from recursive_llm.testing import ScriptedModel

    seen: list[dict] = []
    code = "```repl\nnotes = llm_query_batched(['a', 'b'])\nprint(notes, search('x'))\n```"
    def shop(sku: str) -> str:
        """A tool."""
        return sku
    root = ScriptedModel([code, "```repl\nprint(shop('s1'))\nFINAL(done)\n```"], name="root")
    RLM(model=root, sub_model=ScriptedModel(default="note"), tools=[shop], on_event=seen.append,
        trajectory_dir=tmp_path).completion("q", "some text with an x in it")
    root = ScriptedModel(["no code here"] * 3, name="root")
    RLM(model=root, sub_model=ScriptedModel(default="NOTHING RELEVANT"), max_iterations=3, on_event=seen.append,
        trajectory_dir=tmp_path).completion("q", "text")  # the fallback, then the final request
    problems = [problem for event in seen for problem in check_event(event)]
    assert problems == []
    assert {"run_start", "iteration", "cell", "llm_start", "llm_call", "tool_call", "fallback", "run_end"} <= {
        e["type"] for e in seen} <= set(EVENT_FIELDS)
    from recursive_llm.record.store import Recorder

    assert set(Recorder._HANDLERS) <= set(EVENT_FIELDS)  # the store reads what the schema names
