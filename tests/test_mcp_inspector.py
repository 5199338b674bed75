"""docs/SERVING.md's client table, its MCP Inspector row: `@modelcontextprotocol/inspector`'s CLI mode
(`mcp-inspector --cli COMMAND ARGS --method ...`), pinned in tests/js/package-lock.json with the npm
clients (`.ci/run` installs them with `npm ci` and names the node_modules in RLM_JS_NODE_MODULES),
run by node against a real `rlm mcp` over stdio whose model is a FakeLLMServer. Each CLI invocation
starts its own `rlm mcp` and ends it: no session lasts from one invocation to the next."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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


def inspector(tmp_path: Path, base_url: str, *method: str, ad_hoc: bool = False) -> subprocess.CompletedProcess:
    """`mcp-inspector --cli --format json` asking `method` of `rlm mcp --root tmp_path/root`, its HOME a temp
    dir. The server is docs/SERVING.md's `mcpServers` entry with an `env` (`--config FILE --server
    recursive-llm`), or, `ad_hoc`, the command itself with its environment as `-e KEY=VALUE`: either way
    the server gets only the variables given (and HOME, PATH, SHELL, TERM)."""
    launcher = json.loads((INSPECTOR / "package.json").read_text())["bin"]["mcp-inspector"]
    args = ["-m", "recursive_llm", "mcp", "--model", "m", "--base-url", base_url, "--root", str(tmp_path / "root")]
    env = {name: os.environ[name] for name in ("PYTHONPATH", "RLM_HOME")}
    if ad_hoc:
        target = [part for name, value in env.items() for part in ("-e", f"{name}={value}")] + [sys.executable, *args]
    else:
        config = tmp_path / "mcp.json"
        config.write_text(json.dumps({"mcpServers": {"recursive-llm": {"command": sys.executable, "args": args,
                                                                        "env": env}}}))
        target = ["--config", str(config), "--server", "recursive-llm"]
    (tmp_path / "home").mkdir(exist_ok=True)
    return subprocess.run(["node", str(INSPECTOR / launcher), "--cli", "--format", "json", "--connect-timeout",
                           "120000", *target, *method], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "HOME": str(tmp_path / "home"), "MCP_INSPECTOR_SECRET_STORE": "memory"})


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
