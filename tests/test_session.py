"""Multi-turn sessions: the REPL lives across questions, `history` shows earlier turns, and each
turn is a run of its own, linked to the session in the store."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from recursive_llm import RLM
from recursive_llm.errors import RLMError
from recursive_llm.record.store import Store
from recursive_llm.testing import FakeLLMServer, ScriptedModel
from scripted_root import root_then_sub


def test_session_keeps_variables_and_history():
    root = ScriptedModel(["```repl\nwords = context.split()\nprint(len(words))\n```", "FINAL(3 words)",
                          "```repl\nprint(len(words), [(h['question'], h['answer']) for h in session_history])\n"
                          "print(previous_answers[1])\n```", "FINAL(still here)"], name="root")
    with RLM(model=root).session("alpha beta gamma") as chat:
        first = chat.ask("How many words?")
        second = chat.ask("Do you remember?")
        session_id = chat.session_id
        assert [h["answer"] for h in chat.history] == ["3 words", "still here"]
    assert first.answer == "3 words" and second.answer == "still here"
    shown = root.calls[3][-1]["content"]  # the output of the second turn's cell
    assert "3 [('How many words?', '3 words')]\n3 words" in shown
    assert "question 2 of a session" in root.calls[2][1]["content"]
    runs = Store().list_runs(session_id=session_id)
    assert [r["query"] for r in runs] == ["Do you remember?", "How many words?"]
    assert {r["run_id"] for r in runs} == {first.run_id, second.run_id}
    with pytest.raises(RLMError, match="closed"):
        chat.ask("again?")


def test_async_session_from_an_event_loop():
    import asyncio

    root = ScriptedModel(["```repl\nx = 41\n```", "FINAL(set)", "FINAL_VAR(x)"], name="root")
    chat = RLM(model=root).session("text")

    async def two_turns():
        return (await chat.aask("set x")).answer, (await chat.aask("what is x?")).answer

    try:
        assert asyncio.run(two_turns()) == ("set", "41")
    finally:
        chat.close()


def test_store_migrates_a_version_one_database(tmp_path):
    from recursive_llm.record.store import MIGRATIONS

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(MIGRATIONS[1])
        db.execute("PRAGMA user_version = 1")
        db.execute("INSERT INTO runs (run_id, root_id, depth, status) VALUES ('old', 'old', 0, 'final')")
    store = Store(path)
    assert store.list_runs()[0]["run_id"] == "old" and store.list_runs()[0]["session_id"] is None


def test_rlm_chat_answers_each_line(tmp_path):
    doc = tmp_path / "notes.txt"
    doc.write_text("alpha beta gamma\n")
    turns = ["```repl\nn = len(context.split())\n```", "FINAL_VAR(n)"]
    with FakeLLMServer(responder=root_then_sub(turns)) as server:
        done = subprocess.run([sys.executable, "-m", "recursive_llm", "chat", "--context", str(doc), "--model", "m",
                               "--base-url", server.base_url, "--json"], input="How many words?\n\nAgain?\nexit\nnot asked\n",
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["answer"] for r in results] == ["3", "3"]
    sessions = {r["session_id"] for r in Store().list_runs()}
    assert len(sessions) == 1 and None not in sessions


def test_a_session_does_not_overwrite_compactions_history():
    """Compaction keeps a question's earlier turns in `history`; the session's own record is
    `session_history`, so neither overwrites the other (issue 14, item 5)."""
    root = ScriptedModel(["```repl\nhistory = [{'role': 'assistant', 'content': 'compacted turn'}]\n```",
                          "FINAL(one)", "```repl\nprint(history[0]['content'], previous_answers)\n```", "FINAL(two)"])
    with RLM(model=root).session("some text") as chat:
        chat.ask("first?")
        chat.ask("second?")
    assert "compacted turn {1: 'one'}" in root.calls[3][-1]["content"]


def test_a_real_compaction_in_a_session_keeps_history_and_session_history_apart():
    """Question 2 of a session outgrows the root window and is compacted for real: its earlier turns
    land in `history`, while `session_history` and `previous_answers` still hold question 1."""
    events: list = []

    def respond(messages):
        last = messages[-1]["content"]
        if "question 2 of a session" not in messages[1]["content"]:
            return "FINAL(first answer)"
        if "replaced by a summary that you write now" in last:
            return "Summary: the big outputs were noise."
        if "were replaced by your summary above" in last:
            return ("```repl\nprint(history[0]['role'], len(session_history), session_history[0]['question'],"
                    " previous_answers[1])\n```")
        if "assistant 1 first? first answer" in last:
            return "FINAL(done)"
        return "```repl\nprint(' '.join(f'w{i}' for i in range(600)))\n```"

    root = ScriptedModel(default=respond, name="root", context_window=4_000)
    with RLM(model=root, on_event=events.append, max_iterations=12).session("some text") as chat:
        assert chat.ask("first?").answer == "first answer"
        second = chat.ask("second?")
    assert [e for e in events if e["type"] == "compaction"]
    assert second.answer == "done" and second.stopped_reason == "final"
