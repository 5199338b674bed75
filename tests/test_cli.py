"""`rlm ask` as a user runs it: a real subprocess, a real HTTP model server, real exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from recursive_llm.testing import FakeLLMServer
from scripted_root import root_then_sub


def rlm(*args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "recursive_llm", *args], input=stdin, capture_output=True,
                          text=True, env=full_env, timeout=120)


@pytest.fixture
def server():
    turns = ["```repl\nprint(type(context).__name__, len(context))\n```", "FINAL(forty-two)"]
    with FakeLLMServer(responder=root_then_sub(turns)) as srv:
        yield srv


def test_ask_prints_answer_and_summary(server, tmp_path):
    doc = tmp_path / "notes.txt"
    doc.write_text("some notes\n")
    done = rlm("ask", "What is the answer?", "--context", str(doc), "--model", "m", "--base-url", server.base_url)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "forty-two\n"
    assert "final" in done.stderr and "trajectory:" in done.stderr


def test_ask_json_directory_and_stdin(server, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("alpha")
    done = rlm("ask", "q", "--context", str(tmp_path / "d"), "--model", "m", "--base-url", server.base_url, "--json")
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["answer"] == "forty-two" and payload["stopped_reason"] == "final"
    assert payload["usage"]["total"]["calls"] == 2
    piped = rlm("ask", "q", "--context", "-", "--model", "m", "--base-url", server.base_url, "--quiet",
                stdin="text from stdin")
    assert piped.returncode == 0 and piped.stdout == "forty-two\n" and piped.stderr == ""


def test_ask_exit_codes_for_bad_input_and_config(server, tmp_path):
    missing = rlm("ask", "q", "--context", str(tmp_path / "nope.txt"), "--model", "m", "--base-url", server.base_url)
    assert missing.returncode == 3 and "no such file" in missing.stderr
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    assert rlm("ask", "q", "--context", str(binary), "--model", "m", "--base-url", server.base_url).returncode == 3
    no_key = rlm("ask", "q", "--context", "-", "--model", "gpt-5-mini", stdin="x")
    assert no_key.returncode == 4 and "OPENAI_API_KEY" in no_key.stderr
    unknown = rlm("ask", "q", "--context", "-", "--model", "no-such-model-xyz", stdin="x")
    assert unknown.returncode == 4
    usage = rlm("ask")
    assert usage.returncode == 2


def test_ask_exit_code_at_a_limit(tmp_path):
    turns = ["```repl\nx = 1\n```"]  # never answers
    with FakeLLMServer(responder=root_then_sub(turns)) as srv:
        done = rlm("ask", "q", "--context", "-", "--model", "m", "--base-url", srv.base_url,
                   "--max-iterations", "2", stdin="text")
    assert done.returncode == 5
    assert "max_iterations" in done.stderr


def test_ask_provider_failure_exit_code(tmp_path):
    with FakeLLMServer(faults=["500"] * 10) as srv:
        done = rlm("ask", "q", "--context", "-", "--model", "m", "--base-url", srv.base_url, stdin="text")
    assert done.returncode == 6, done.stderr
    assert "500" in done.stderr or "server" in done.stderr.lower()


def test_allow_model_lets_code_name_another_model(tmp_path):
    code = "```repl\nprint(llm_query('hi', model='other'))\n```"
    with FakeLLMServer(responder=root_then_sub([code, "FINAL(done)"])) as server:
        base = ("ask", "q", "--context", "-", "--model", "m", "--base-url", server.base_url, "--json")
        refused = rlm(*base, stdin="text")
        allowed = rlm(*base, "--allow-model", "other", stdin="text")
    trajectories = [json.loads(done.stdout)["trajectory_path"] for done in (refused, allowed)]
    outputs = [open(path).read() for path in trajectories]
    assert "not allowed from code" in outputs[0]
    assert "not allowed from code" not in outputs[1] and '"model": "other"' in outputs[1]


def test_separate_contexts_and_tables_from_the_command_line(tmp_path):
    (tmp_path / "notes.txt").write_text("north is the best region")
    (tmp_path / "sales.csv").write_text("region,amount\nnorth,10\nsouth,20\nnorth,5\n")
    code = ("```repl\ntotal = sql(\"SELECT sum(amount) FROM sales WHERE region = 'north'\")[0][0]\n"
            "print(context_0[:5], total)\n```")
    with FakeLLMServer(responder=root_then_sub([code, "FINAL_VAR(total)"])) as server:
        done = rlm("ask", "q", "--context", str(tmp_path / "notes.txt"), "--context", str(tmp_path / "sales.csv"),
                   "--separate", "--model", "m", "--base-url", server.base_url)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "15\n"


def test_context_window_compacts_a_self_hosted_models_conversation(tmp_path):
    """A model whose window nobody knows: --context-window tells it, and the run compacts in time."""
    def respond(messages, model):
        last = messages[-1]["content"]
        if "replaced by a summary that you write now" in last:
            return "Summary: found is 42."
        if "were replaced by your summary above" in last:
            return "FINAL_VAR(found)"
        return "```repl\nfound = 42\nprint(' '.join(f'w{i}' for i in range(600)))\n```"

    doc = tmp_path / "doc.txt"
    doc.write_text("text\n")
    with FakeLLMServer(responder=respond) as fake:
        done = rlm("ask", "What is found?", "--context", str(doc), "--model", "self-hosted", "--base-url",
                   fake.base_url, "--context-window", "4000", "--verbose")
        without = rlm("ask", "What is found?", "--context", str(doc), "--model", "self-hosted", "--base-url",
                      fake.base_url, "--max-iterations", "4", "--verbose")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "42" and "compacted" in done.stderr and "`history`" in done.stderr
    assert "compacted" not in without.stderr  # no window known, nothing compacted


def test_ask_takes_hedge_after_and_refuses_it_below_one(server, tmp_path):
    doc = tmp_path / "notes.txt"
    doc.write_text("some notes\n")
    base = ("ask", "q", "--context", str(doc), "--model", "m", "--base-url", server.base_url)
    done = rlm(*base, "--hedge-after", "3")
    assert done.returncode == 0 and done.stdout == "forty-two\n", done.stderr
    refused = rlm(*base, "--hedge-after", "0.5")
    assert refused.returncode == 2 and "--hedge-after" in refused.stderr and "0.5" in refused.stderr
