"""docs/SERVING.md's client table, its MCP Inspector row: `@modelcontextprotocol/inspector`'s CLI mode
(`mcp-inspector --cli COMMAND ARGS --method ...`), pinned in tests/js/package-lock.json with the npm
clients (`.ci/run` installs them with `npm ci` and names the node_modules in RLM_JS_NODE_MODULES),
run by node against a real `rlm mcp` over stdio whose model is a FakeLLMServer. Each CLI invocation
starts its own `rlm mcp` and ends it: no session lasts from one invocation to the next. The package's
experimental `mcpdo` keeps one `rlm mcp` across its commands (a daemon holds the connection)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from recursive_llm.record.store import Store
from recursive_llm.testing import FakeLLMServer
from scripted_root import root_then_sub
from test_mcp import TURNS
from test_serve_js_clients import NODE_MODULES

pytest.importorskip("mcp", reason="the server extra (mcp) is not installed")
INSPECTOR = NODE_MODULES / "@modelcontextprotocol" / "inspector"
pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not INSPECTOR.is_dir(),
    reason="node or @modelcontextprotocol/inspector is missing: `npm ci` in tests/js (.ci/run does it in a temp dir)")
REPORT = "Revenue grew in every quarter.\n" * 20
TOOL_IS_ERROR = 5  # the Inspector CLI's exit status when a tool's result has isError: true


def server_config(tmp_path: Path, base_url: str) -> Path:
    """docs/SERVING.md's `mcpServers` entry for `rlm mcp --root tmp_path/root`, with an `env`."""
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"recursive-llm": {
        "command": sys.executable, "args": rlm_mcp(tmp_path, base_url), "env": server_env()}}}))
    return config


def rlm_mcp(tmp_path: Path, base_url: str) -> list[str]:
    return ["-m", "recursive_llm", "mcp", "--model", "m", "--base-url", base_url, "--root", str(tmp_path / "root")]


def server_env() -> dict[str, str]:
    """What the server needs of this test's environment: the Inspector passes on only what it is given
    (and HOME, PATH, SHELL, TERM)."""
    return {name: os.environ[name] for name in ("PYTHONPATH", "RLM_HOME")}


def node(script: str, home: Path, *args: str) -> subprocess.CompletedProcess:
    """The package's `script` bin run by node with HOME `home` (where it keeps its state)."""
    home.mkdir(exist_ok=True)
    bins = json.loads((INSPECTOR / "package.json").read_text())["bin"]
    return subprocess.run(["node", str(INSPECTOR / bins[script]), *args], capture_output=True, text=True,
                          timeout=240, env={**os.environ, "HOME": str(home), "MCP_INSPECTOR_SECRET_STORE": "memory"})


def inspector(tmp_path: Path, base_url: str, *method: str, ad_hoc: bool = False) -> subprocess.CompletedProcess:
    """`mcp-inspector --cli --format json` asking `method` of `rlm mcp`: the `server_config` entry
    (`--config FILE --server recursive-llm`), or, `ad_hoc`, the command itself with `-e KEY=VALUE`."""
    if ad_hoc:
        environment = [part for name, value in server_env().items() for part in ("-e", f"{name}={value}")]
        target = [*environment, sys.executable, *rlm_mcp(tmp_path, base_url)]
    else:
        target = ["--config", str(server_config(tmp_path, base_url)), "--server", "recursive-llm"]
    return node("mcp-inspector", tmp_path / "home", "--cli", "--format", "json", "--connect-timeout", "120000",
                *target, *method)


def call(tmp_path: Path, base_url: str, tool: str, *arguments: str, ad_hoc: bool = False):
    """tools/call of `tool` (`inspector`)."""
    return inspector(tmp_path, base_url, "--method", "tools/call", "--tool-name", tool, *arguments, ad_hoc=ad_hoc)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "report.txt").write_text(REPORT)
    (tmp_path / "outside.txt").write_text("secret")
    return tmp_path / "root"


def test_inspector_cli_lists_the_tools_with_their_schemas(tmp_path, root):
    """tools/list with `--strict` (the Inspector's tool-schema portability check, exit 6 on an error):
    both tools, every argument described, `question` required, `max_iterations` at least 1."""
    with FakeLLMServer(responder=root_then_sub(TURNS)) as backend:
        listed = inspector(tmp_path, backend.base_url, "--method", "tools/list", "--strict")
    assert listed.returncode == 0, listed.stderr
    tools = {tool["name"]: tool for tool in json.loads(listed.stdout)["result"]["tools"]}
    assert sorted(tools) == ["ask", "load_context"]
    schemas = {name: tool["inputSchema"] for name, tool in tools.items()}
    assert sorted(schemas["load_context"]["properties"]) == ["paths", "text"]
    assert sorted(schemas["ask"]["properties"]) == ["context_id", "max_iterations", "question", "text"]
    assert schemas["ask"]["required"] == ["question"]
    assert {"minimum": 1, "type": "integer"} in schemas["ask"]["properties"]["max_iterations"]["anyOf"]
    arguments = [spec for schema in schemas.values() for spec in schema["properties"].values()]
    assert all(len(spec["description"]) > 20 for spec in arguments)
    assert all(len(tool["description"]) > 40 for tool in tools.values())


def test_inspector_cli_calls_load_context_then_ask(tmp_path, root):
    """load_context loads a file under the root; its context_id means nothing to the next invocation's
    server (a tool error saying so); `ask` with the input inline answers, with `--tool-arg key=value`
    (which the Inspector converts to the schema's types; here the server given on the command line) and
    with `--tool-args-json`. No model call is made until `ask` runs."""
    with FakeLLMServer(responder=root_then_sub(TURNS)) as backend:
        loaded = call(tmp_path, backend.base_url, "load_context", "--tool-arg", 'paths=["report.txt"]')
        calls_after_load = backend.request_count
        context_id = json.loads(loaded.stdout)["result"]["structuredContent"]["context_id"]
        later = call(tmp_path, backend.base_url, "ask", "--tool-arg", "question=What is it about?",
                     f"context_id={context_id}")
        inline = call(tmp_path, backend.base_url, "ask", "--tool-arg", "question=What is it about?",
                      "text=Revenue grew.", "max_iterations=3", ad_hoc=True)
        as_json = call(tmp_path, backend.base_url, "ask", "--tool-args-json",
                       json.dumps({"question": "And this?", "text": REPORT}))
    assert loaded.returncode == 0, loaded.stderr
    result = json.loads(loaded.stdout)["result"]
    assert result["isError"] is False and "str of 620 characters" in result["structuredContent"]["description"]
    assert calls_after_load == 0
    assert later.returncode == TOOL_IS_ERROR
    assert f"unknown context_id '{context_id}'; call load_context first" in json.loads(later.stdout)["result"][
        "content"][0]["text"]
    for done in (inline, as_json):
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)["result"]["structuredContent"]
        assert answer["answer"] == "it is about revenue" and answer["stopped_reason"] == "final", answer
        assert answer["usage"]["calls"] == 2 and Store().find_run(answer["run_id"]) == answer["run_id"]


def test_inspector_cli_shows_a_failed_run_and_a_refused_path_as_errors(tmp_path, root):
    """Every model call fails: `ask` comes back as a tool result with isError: true, naming the run
    (`rlm view RUN_ID`), and the Inspector exits with its tool-error status and error envelope; a path
    out of the root is refused the same way, never read."""
    with FakeLLMServer(faults=["500"] * 400, fault_kinds=()) as backend:
        failed = call(tmp_path, backend.base_url, "ask", "--tool-arg", "question=q", "text=a note")
        refused = call(tmp_path, backend.base_url, "load_context", "--tool-arg", 'paths=["../outside.txt"]')
    for done, message in ((failed, "without an answer"), (refused, "outside this server's root")):
        assert done.returncode == TOOL_IS_ERROR, (done.returncode, done.stderr)
        result = json.loads(done.stdout)["result"]
        assert result["isError"] is True and "structuredContent" not in result
        assert message in result["content"][0]["text"]
        assert json.loads(done.stderr.strip().splitlines()[-1])["error"]["code"] == "tool_is_error"
    run_id = json.loads(failed.stdout)["result"]["content"][0]["text"].split("rlm view ")[1].split()[0]
    assert Store().find_run(run_id) == run_id
    assert "secret" not in refused.stdout


def test_inspector_mcpdo_keeps_one_server_for_load_context_then_ask(tmp_path, root):
    """The package's experimental `mcpdo` connects once (a daemon holds the `rlm mcp` process) and runs
    each command against that connection: the context_id from load_context is good for ask."""
    home = Path(tempfile.mkdtemp(prefix="mcpdo-"))  # the daemon's socket is under HOME: a short path
    with FakeLLMServer(responder=root_then_sub(TURNS)) as backend:
        try:
            config = server_config(tmp_path, backend.base_url)
            connected = node("mcpdo", home, "--format", "json", "--config", str(config), "connect", "--server",
                             "recursive-llm", "--connect-timeout", "120000")
            on = ["--format", "json", "--connection", "recursive-llm", "tools/call"]
            loaded = node("mcpdo", home, *on, "load_context", 'paths:=["report.txt"]')
            context_id = json.loads(loaded.stdout)["structuredContent"]["context_id"]
            asked = node("mcpdo", home, *on, "ask", "question:=What is it about?", f"context_id:={context_id}")
        finally:
            stopped = node("mcpdo", home, "daemon", "stop")
            shutil.rmtree(home, ignore_errors=True)
    assert connected.returncode == 0 and stopped.returncode == 0, (connected.stderr, stopped.stderr)
    assert asked.returncode == 0, asked.stderr
    answer = json.loads(asked.stdout)["structuredContent"]
    assert answer["answer"] == "it is about revenue" and answer["usage"]["calls"] == 2
    assert Store().find_run(answer["run_id"]) == answer["run_id"]
