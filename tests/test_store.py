"""The run store, the call cache, --resume, and the logs/view/export commands, as users run them."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from recursive_llm import RLM
from recursive_llm.record.store import SCHEMA_VERSION, Store, StoreError
from recursive_llm.testing import FakeLLMServer, ScriptedModel
from scripted_root import root_then_sub

BATCH_TURNS = ["```repl\nnotes = llm_query_batched([f'part {i}' for i in range(6)])\nprint(len(notes))\n```",
               "```repl\nsummary = llm_query('combine: ' + ' | '.join(notes))\n```",
               "FINAL_VAR(summary)"]


def rlm_cli(*args: str, stdin: str | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recursive_llm", *args], input=stdin, capture_output=True,
                          text=True, timeout=120, **kwargs)


def test_a_run_is_recorded_with_its_tree(tmp_path):
    def respond(messages):
        first = messages[1]["content"] if len(messages) > 1 else ""
        started = any(m["role"] == "assistant" for m in messages)
        if "child task" in first:
            return "FINAL_VAR(x)" if started else "```repl\nx = llm_query('leaf')\n```"
        return "FINAL_VAR(c)" if started else "```repl\nc = rlm_query('child task', context='txt')\n```"

    result = RLM(model=ScriptedModel(default=respond, name="root"), sub_model=ScriptedModel(default="leaf!", name="sub"),
                 max_depth=2).completion("the question", "some text")
    store = Store()
    tree = store.run_tree(result.run_id)
    assert [(r["depth"], r["status"]) for r in tree["runs"]] == [(0, "final"), (1, "final")]
    assert tree["runs"][1]["parent_run_id"] == result.run_id and tree["runs"][0]["answer"] == "leaf!"
    assert [c["purpose"] for c in tree["calls"]] == ["root", "root", "sub", "root", "root"]
    assert all(c["messages"] and c["cache_key"] for c in tree["calls"])
    assert len(tree["iterations"]) == 4 and len(tree["cells"]) == 2
    listed = store.list_runs()
    assert [r["run_id"] for r in listed] == [result.run_id] and listed[0]["calls"] == 5
    assert store.find_run(result.run_id[:-2]) == result.run_id
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_newer_schema_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "future.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    store = Store(path)  # a run with this store still runs (unrecorded) and says why
    assert "newer recursive-llm" in store.error and "git pull in your recursive-llm clone, then bash scripts/setup.sh" in store.error  # PyPI's recursive-llm is another project
    with pytest.raises(StoreError, match="newer recursive-llm"):
        store.list_runs()


def test_many_threads_and_processes_record_at_once(tmp_path):
    turns = ["```repl\nprint(len(llm_query_batched(['a', 'b', 'c'])))\n```", "FINAL(ok)"]
    with FakeLLMServer(responder=root_then_sub(turns)) as server:
        procs = [subprocess.Popen([sys.executable, "-m", "recursive_llm", "ask", f"question {i}", "--context", "-",
                                   "--model", "m", "--base-url", server.base_url, "--quiet"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(4)]
        results: list = []

        def in_thread(i: int) -> None:
            rlm = RLM(model=ScriptedModel(turns, name="t"), sub_model=ScriptedModel(default="s", name="s"))
            results.append(rlm.completion(f"thread {i}", "text").answer)

        threads = [threading.Thread(target=in_thread, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        outputs = [p.communicate("input text", timeout=120) for p in procs]
        for thread in threads:
            thread.join()
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outputs]
    assert results == ["ok"] * 4
    runs = Store().list_runs(limit=100)
    assert sorted(r["query"] for r in runs) == sorted([f"question {i}" for i in range(4)] + [f"thread {i}" for i in range(4)])
    assert all(r["status"] == "final" and r["calls"] == 5 for r in runs)


def test_an_identical_second_run_makes_no_network_calls(tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("parts of a document\n" * 50)
    with FakeLLMServer(responder=root_then_sub(BATCH_TURNS), latency=0.05) as server:
        base = ["ask", "Summarize", "--context", str(doc), "--model", "m", "--base-url", server.base_url,
                "--temperature", "0", "--json"]
        first = rlm_cli(*base)
        after_first = len(server.requests)
        second = rlm_cli(*base)
        after_second = len(server.requests)
        third = rlm_cli(*base, "--no-cache")
    assert first.returncode == 0 and second.returncode == 0 and third.returncode == 0, second.stderr
    assert after_first == 3 + 6 + 1
    assert after_second == after_first  # the endpoint's request count does not move
    assert len(server.requests) == 2 * after_first  # --no-cache pays again
    one, two = json.loads(first.stdout), json.loads(second.stdout)
    assert one["answer"] == two["answer"]
    assert two["usage"]["total"]["calls"] == 0 and two["usage"]["total"]["cached_calls"] == 10
    assert two["duration_s"] < one["duration_s"]


def test_cache_is_off_by_default_unless_temperature_is_zero(tmp_path):
    turns = ["FINAL(x)"]
    with FakeLLMServer(responder=root_then_sub(turns)) as server:
        for _ in range(2):
            RLM(model="m", base_url=server.base_url).completion("q", "text")
        assert len(server.requests) == 2
        for _ in range(2):
            RLM(model="m", base_url=server.base_url, cache=True).completion("q", "text")
        assert len(server.requests) == 2  # the first cached run found the earlier identical call


def test_calls_are_committed_in_groups_and_seen_by_the_cache_at_once(tmp_path):
    """A call waits at most CALL_COMMIT_S for its group commit; until then the cache still sees it,
    so an identical call made right after is not paid twice."""
    import asyncio

    from recursive_llm.record.store import CALL_COMMIT_S

    sub = ScriptedModel(default="same answer", name="sub")
    turns = ["```repl\na = llm_query('the same prompt')\nb = llm_query('the same prompt')\nprint(a == b)\n```",
             "FINAL(done)"]
    result = RLM(model=ScriptedModel(turns, name="root"), sub_model=sub, temperature=0).completion("q", "text")
    assert result.usage.total.calls == 3 and result.usage.total.cached_calls == 1  # 2 root calls + 1 sub-call
    assert len(sub.calls) == 1

    store = Store(tmp_path / "runs.db")
    record = store.recorder("root")

    async def one_call_then_quiet() -> int:
        record({"type": "llm_call", "ts": time.time(), "run_id": "r", "call_id": "r:1", "depth": 0,
                "model": "m", "response": "text", "cache_key": "k"})
        assert store.cached_completion("k").text == "text"  # not committed yet, but the cache has it
        await asyncio.sleep(CALL_COMMIT_S * 3)
        return sqlite3.connect(tmp_path / "runs.db").execute("SELECT count(*) FROM calls").fetchone()[0]

    assert asyncio.run(one_call_then_quiet()) == 1  # committed by the timer, with nothing else happening
    store.close()


def test_killed_run_resumes_without_repeating_calls(tmp_path):
    """Kill `rlm ask` while its third root call hangs; --resume replays the first calls and goes on."""
    gate = tmp_path / "hang"
    gate.write_text("x")
    base_responder = root_then_sub(BATCH_TURNS)

    def responder(messages, model):
        turn = sum(1 for m in messages if m["role"] == "assistant")
        if messages[0]["role"] == "system" and turn == 2:
            while gate.exists():
                time.sleep(0.05)
        return base_responder(messages, model)

    doc = tmp_path / "doc.txt"
    doc.write_text("some document text\n" * 20)
    with FakeLLMServer(responder=responder) as server:
        proc = subprocess.Popen([sys.executable, "-m", "recursive_llm", "ask", "Summarize", "--context", str(doc),
                                 "--model", "m", "--base-url", server.base_url, "--quiet"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.time() + 60
        while len(server.requests) < 1 + 6 + 1 + 1 + 1 and time.time() < deadline:  # the 3rd root call arrived
            time.sleep(0.05)
        time.sleep(0.3)
        assert Store().list_runs()[0]["status"] == "running"  # its process is alive: not taken for interrupted
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        before_kill = len(server.requests)
        assert before_kill == 10
        # the killed process left its run `running`; the next reader finds its process gone
        with sqlite3.connect(Store().path) as db:
            assert db.execute("SELECT status FROM runs").fetchall() == [("interrupted",)]
        run = Store().list_runs()[0]
        assert run["status"] == "interrupted" and run["calls"] == 9  # what it did is kept
        listed = rlm_cli("logs", "--status", "interrupted", "--json")
        assert [json.loads(line)["run_id"] for line in listed.stdout.splitlines()] == [run["run_id"]]
        assert "--resume" in Store().run_tree(run["run_id"])["runs"][0]["error"]
        gate.unlink()
        resumed = rlm_cli("ask", "--resume", run["run_id"][:12], "--json")
        assert resumed.returncode == 0, resumed.stderr
        result = json.loads(resumed.stdout)
        # only the interrupted third root call is made again; the nine before it come from the store
        assert len(server.requests) == before_kill + 1
    assert result["answer"].startswith("sub:combine:")
    assert result["usage"]["total"]["cached_calls"] == 9 and result["usage"]["total"]["calls"] == 1
    newest = Store().list_runs()[0]
    assert newest["resumed_from"] == run["run_id"] and newest["status"] == "final"


def test_logs_show_view_and_export_commands(tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("a document\n")
    with FakeLLMServer(responder=root_then_sub(BATCH_TURNS)) as server:
        done = rlm_cli("ask", "Summarize it", "--context", str(doc), "--model", "m", "--base-url", server.base_url,
                       "--quiet")
    assert done.returncode == 0
    listed = rlm_cli("logs", "--json")
    run = json.loads(listed.stdout.splitlines()[0])
    assert run["query"] == "Summarize it" and run["status"] == "final" and run["iterations"] == 3
    table = rlm_cli("logs")
    assert run["run_id"] in table.stdout and "Summarize it" in table.stdout
    assert rlm_cli("logs", "--status", "error", "--json").stdout == ""
    shown = rlm_cli("logs", "show", run["run_id"])
    assert "-- iteration 2" in shown.stdout and "sub-call m (ok): part 3 -> sub:part 3" in shown.stdout
    out = tmp_path / "run.html"
    viewed = rlm_cli("view", run["run_id"], "-o", str(out), "--no-open")
    assert viewed.returncode == 0 and out.exists() and "http" not in out.read_text().split("<script")[0].lower()
    exported = rlm_cli("export", run["run_id"])
    example = json.loads(exported.stdout)
    roles = [m["role"] for m in example["messages"]]
    assert roles[:2] == ["system", "user"] and roles[-1] == "assistant" and example["messages"][-1]["content"] == "FINAL_VAR(summary)"
    assert example["metadata"]["status"] == "final"
    missing = rlm_cli("logs", "show", "nope")
    assert missing.returncode == 4 and "no run 'nope'" in missing.stderr


def test_calls_are_recorded_with_the_iteration_and_cell_that_made_them_and_the_viewer_nests_them_so():
    """issue 16: sub-calls and tool calls under the cell that made them, exactly, not by time."""
    from recursive_llm import RLM
    from recursive_llm.testing import ScriptedModel
    from recursive_llm.record.viewer import nest

    def where(tag: str) -> str:
        """Echo."""
        return tag

    cell = "```repl\nllm_query('{tag}')\nwhere('{tag}')\n```"
    root = ScriptedModel(["<think>first I look</think>\n" + cell.format(tag="i1c1") + "\n" + cell.format(tag="i1c2"),
                          cell.format(tag="i2c1"), "FINAL(done)"])
    sub = ScriptedModel(default=lambda messages: "ok")
    result = RLM(model=root, sub_model=sub, tools=[where]).completion("q", "text")
    tree = Store().run_tree(result.run_id)
    made = {}
    for call in tree["calls"]:
        if call["purpose"] in ("sub", "tool"):
            tag = call["messages"][-1]["content"] if call["purpose"] == "sub" else call["response"].strip('"')
            made.setdefault(tag, set()).add((call["purpose"], call["iteration"], call["cell"]))
    assert made == {"i1c1": {("sub", 1, 1), ("tool", 1, 1)}, "i1c2": {("sub", 1, 2), ("tool", 1, 2)},
                    "i2c1": {("sub", 2, 1), ("tool", 2, 1)}}
    roots = [c for c in tree["calls"] if c["purpose"] == "root"]
    assert [c["iteration"] for c in roots] == [1, 2, 3] and all(c["cell"] is None for c in roots)
    assert tree["iterations"][0]["reasoning"] == "first I look"
    # The viewer trusts the recorded cell even where the times would say otherwise.
    for call in tree["calls"]:
        call["started_at"] = 0.0
    view = nest(tree)
    run = view["runs"][result.run_id]
    placed = {(it["iteration"], c["index"]): [view["calls"][i]["purpose"] for i in c["calls"]]
              for it in run["iterations_list"] for c in it["cells"]}
    assert placed == {(1, 1): ["sub", "tool"], (1, 2): ["sub", "tool"], (2, 1): ["sub", "tool"]}
    assert run["iterations_list"][0]["reasoning"] == "first I look"


def test_a_cells_sub_calls_are_listed_in_the_order_they_are_numbered():
    """Sub-calls of one batch finish in any order (the store keeps them as they finish); the viewer
    numbers them as they started and lists them in that same order."""
    from recursive_llm import RLM
    from recursive_llm.testing import ScriptedModel
    from recursive_llm.record.viewer import nest

    root = ScriptedModel(["```repl\nllm_query_batched(['one', 'two', 'three'])\n```", "FINAL(done)"])
    result = RLM(model=root, sub_model=ScriptedModel(default=lambda messages: "ok")).completion("q", "text")
    tree = Store().run_tree(result.run_id)
    subs = [c for c in tree["calls"] if c["purpose"] == "sub"]
    for offset, call in enumerate(sorted(subs, key=lambda c: c["messages"][-1]["content"])):
        call["started_at"] = 1000.0 + offset  # started: one, three, two (alphabetical)
    tree["calls"].reverse()  # and finished in the reverse order of the rows
    view = nest(tree)
    cell = view["runs"][result.run_id]["iterations_list"][0]["cells"][0]
    listed = [view["calls"][i] for i in cell["calls"]]
    assert [c["prompt"] for c in listed] == ["one", "three", "two"]
    assert [c["n"] for c in listed] == sorted(c["n"] for c in listed)
