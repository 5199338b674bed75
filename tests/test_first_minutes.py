"""Issue 27, "the first ten minutes": habits that broke, each through the real interface (the CLI
as a subprocess, a pty for Ctrl-C)."""

from __future__ import annotations

import json
import os
import re
import sys
import time

from recursive_llm.testing import FakeLLMServer
from scripted_root import hanging_second_turn, root_then_sub
from test_cli_habits import _pty_run, _read_until_exit, rlm


def test_ctrl_c_in_chat_mid_question_is_recorded_and_names_the_resume(tmp_path):
    """As in `rlm ask`: exit 130, `Continue it later with: rlm ask --resume <id>`, the run recorded as
    interrupted with its iteration and time; no "Task was destroyed" and no traceback."""
    gate = tmp_path / "hang"
    gate.write_text("x")
    turns = ["```repl\nprint(len(context))\n```", "FINAL(all done)"]
    responder = hanging_second_turn(turns, gate)  # the second root call hangs until the test lets it go

    doc = tmp_path / "doc.txt"
    doc.write_text("some text\n")
    with FakeLLMServer(responder=responder) as server:
        pid, master = _pty_run(["chat", "--context", str(doc), "--model", "m", "--base-url", server.base_url],
                               {**os.environ, "TERM": "xterm"})
        os.write(master, b"How long is it?\n")
        deadline = time.time() + 60
        while len(server.requests) < 2 and time.time() < deadline:  # root, then the hanging root call
            time.sleep(0.05)
        time.sleep(0.3)
        os.write(master, b"\x03")  # Ctrl-C on the terminal
        output, code = _read_until_exit(pid, master, time.time() + 60)
        assert code == 130, output
        assert "Task was destroyed" not in output and "Traceback" not in output and "Event loop" not in output
        match = re.search(r"Continue it later with: rlm ask --resume (\d{8}-\d{6}-[0-9a-f]+)", output)
        assert match, output
        run_id = match.group(1)
        listed = [json.loads(line) for line in rlm("logs", "--json").stdout.splitlines()]
        assert [(r["run_id"], r["status"]) for r in listed] == [(run_id, "interrupted")]
        assert listed[0]["iterations"] == 2 and listed[0]["duration_s"] is not None
        gate.unlink()
        resumed = rlm("ask", "--resume", run_id)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout == "all done\n"
    assert "1 replayed + 1 live model calls" in resumed.stderr


def test_doctor_names_the_default_model_that_ask_uses_after_keys_set(tmp_path):
    env = {"OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": "", "OPENAI_BASE_URL": "", "RLM_MODEL": ""}
    assert "default model: local" in rlm("doctor", env=env).stdout
    assert rlm("keys", "set", "openai", stdin="sk-test-stored-key\n", env=env).returncode == 0
    shown = rlm("doctor", env=env).stdout
    assert "default model: gpt-5-mini" in shown, shown
    assert "OPENAI_API_KEY: from the key store (rlm keys)" in shown and "sk-test" not in shown
    # and `rlm ask` uses that model: its key check passes and it announces no embedded model
    done = rlm("ask", "q", "--context", "-", "--max-llm-calls", "1", "--timeout", "20", stdin="x", env=env)
    assert "embedded model" not in done.stderr
    assert [json.loads(line)["model"] for line in rlm("logs", "--json").stdout.splitlines()] == ["gpt-5-mini"]


def test_logs_filters_say_nothing_matches_and_refuse_an_unknown_status(tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("some text\n")
    assert "No runs recorded yet" in rlm("logs").stderr
    with FakeLLMServer(responder=root_then_sub(["FINAL(done)"])) as server:
        assert rlm("ask", "q", "--context", str(doc), "--model", "m", "--base-url", server.base_url).returncode == 0
    bogus = rlm("logs", "--status", "bogus")
    assert bogus.returncode == 2 and "'bogus' is not one of" in bogus.stderr and "not_found" in bogus.stderr
    for args, named in ((["-q", "nomatch"], "--query 'nomatch'"), (["--status", "timeout"], "--status 'timeout'")):
        done = rlm("logs", *args)
        assert done.returncode == 0 and "No runs recorded yet" not in done.stderr
        assert f"No recorded run matches {named}" in done.stderr
    assert len(rlm("logs", "--status", "final", "--json").stdout.splitlines()) == 1


def test_serve_on_a_busy_port_is_one_clear_error_and_the_banner_names_the_model(tmp_path):
    import signal
    import socket
    import subprocess

    import httpx

    with socket.socket() as holder:  # another process's listening port
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "recursive_llm", "serve", "--port", str(port), "--model", "m",
                               "--base-url", "http://127.0.0.1:9/v1"], capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
    assert done.returncode == 4, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}: the port is in use" in done.stderr and "--port N" in done.stderr
    assert "http://" not in done.stderr  # no listening URL before the error
    assert "Future exception" not in done.stderr and "Traceback" not in done.stderr
    # the model from OPENAI_BASE_URL: the banner says which, and lists what GET /v1/models lists
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "RLM_MODEL": "", "RLM_WORKER_POOL": "0"}
    process = subprocess.Popen([sys.executable, "-m", "recursive_llm", "serve", "--port", str(port)],
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        banner = process.stderr.readline()
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                listed = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).json()
                break
            except httpx.HTTPError:
                time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert f"rlm serve: http://127.0.0.1:{port}/v1 (models: rlm, rlm/default; `rlm` is the model served at " \
           f"OPENAI_BASE_URL (http://127.0.0.1:9/v1)" in banner, banner
    assert "rlm, )" not in banner
    assert [m["id"] for m in listed["data"]] == ["rlm", "rlm/default"]


SHOW_CONTEXT = ["```repl\nprint('CONTEXT:', context)\n```", "FINAL(done)"]


def test_batch_takes_the_files_shape_of_serve_and_refuses_the_other(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("the staging server is called kestrel\n")
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"id": "a", "query": "q", "context": {"files": ["docs/notes.txt"]}}) + "\n")
    seen = []

    def responder(messages, model):
        seen.append(messages[-1]["content"])
        return root_then_sub(SHOW_CONTEXT)(messages, model)

    with FakeLLMServer(responder=responder) as server:
        done = rlm("batch", str(tasks), "--model", "m", "--base-url", server.base_url)
        assert done.returncode == 0, done.stderr
        assert any("CONTEXT: the staging server is called kestrel" in text for text in seen)
        tasks.write_text(json.dumps({"id": "b", "query": "q", "context": {"path": "docs/notes.txt"}}) + "\n")
        refused = rlm("batch", str(tasks), "--model", "m", "--base-url", server.base_url)
    assert refused.returncode == 3
    assert '"context": {"path": ...} is not an input shape' in refused.stderr
    assert '{"files": ["docs/notes.txt"]}' in refused.stderr


def test_key_errors_name_the_provider_and_only_options_the_command_takes(tmp_path):
    env = {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": "", "RLM_MODEL": ""}
    asked = rlm("ask", "q", "--context", "-", "-m", "gpt-5-mini", stdin="x", env=env)
    assert asked.returncode == 4 and "`rlm keys set openai`, or --api-key" in asked.stderr
    for command in (["serve"], ["mcp"]):
        done = rlm(*command, "-m", "gpt-5-mini", env=env)
        assert done.returncode == 4, done.stderr
        assert "`rlm keys set openai`" in done.stderr and "--api-key" not in done.stderr
        assert "<provider>" not in done.stderr
        assert rlm(*command, "--api-key", "k", env=env).returncode == 2  # they refuse it, as before


def test_json_usage_errors_are_json(tmp_path):
    for args in (["ask", "q", "--json", "--max-iterations", "0"], ["ask", "q", "--json", "--no-such-option"],
                 ["logs", "--json", "--status", "bogus"]):
        done = rlm(*args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        error = json.loads(done.stdout)["error"]
        assert error["exit_code"] == 2 and error["type"] in ("BadParameter", "NoSuchOption", "UsageError")
        assert error["message"]
    assert not rlm("ask", "q", "--no-such-option").stdout  # without --json: click's text on stderr


def test_a_code_reply_at_the_iteration_limit_is_not_printed_as_the_answer(tmp_path):
    code = "```repl\nprint(context[:10])\n```"
    doc = tmp_path / "doc.txt"
    doc.write_text("some text\n")
    with FakeLLMServer(responder=root_then_sub([code])) as server:
        done = rlm("ask", "q", "--context", str(doc), "--model", "m", "--base-url", server.base_url,
                   "--max-iterations", "1", "--json")
    assert done.returncode == 5, done.stderr
    result = json.loads(done.stdout)
    assert result["answer"] is None and result["stopped_reason"] == "max_iterations"
    prose = "The text says: some text."
    with FakeLLMServer(responder=root_then_sub([code, prose])) as server:
        done = rlm("ask", "q", "--context", str(doc), "--model", "m", "--base-url", server.base_url,
                   "--max-iterations", "1")
    assert done.returncode == 5 and done.stdout == prose + "\n"  # a prose reply still is the best answer
