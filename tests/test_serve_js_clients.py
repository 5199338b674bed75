"""docs/SERVING.md's client table, its npm rows: the `openai` npm package (chat completions and the
Responses API, plain and streamed) and the Vercel AI SDK (`ai` with `@ai-sdk/openai`, whose default
is the Responses API, and with `@ai-sdk/openai-compatible`, chat completions), each in its default
configuration, run by node (tests/js/clients.mjs) against a real `rlm serve` process. The packages
come from tests/js/package-lock.json: `.ci/run` installs them with `npm ci` in a temp dir and names
its node_modules in RLM_JS_NODE_MODULES (else tests/js/node_modules, after `npm ci` in tests/js)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from recursive_llm.testing import FakeLLMServer
from scripted_root import is_root
from test_serve_client_envs import DOCUMENT, QUESTION
from test_serve_client_table import capable_root
from test_serve_every_client import roots_started, serve
from test_server import TOKEN

JS = Path(__file__).resolve().parent / "js"
NODE_MODULES = Path(os.environ.get("RLM_JS_NODE_MODULES") or JS / "node_modules")
CALLS = ["openai chat.completions", "openai chat.completions stream", "openai responses", "openai responses stream",
         "openai chat.completions.parse", "openai responses.parse",
         "@ai-sdk/openai generateText", "@ai-sdk/openai streamText",
         "@ai-sdk/openai Output.object", "@ai-sdk/openai-compatible generateText",
         "@ai-sdk/openai-compatible streamText", "@ai-sdk/openai-compatible Output.object"]

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (NODE_MODULES / "ai").is_dir() or not (NODE_MODULES / "openai").is_dir(),
    reason="node or the npm clients are missing: `npm ci` in tests/js (.ci/run does it in a temp dir)")


def run_node(tmp_path: Path, name: str, server, *args: str, **env: str) -> str:
    """Runs tests/js/`name` (copied beside a link to the installed node_modules) against `server`;
    its standard output."""
    script = tmp_path / name
    shutil.copy(JS / name, script)
    if not (tmp_path / "node_modules").exists():
        (tmp_path / "node_modules").symlink_to(NODE_MODULES.resolve(), target_is_directory=True)
    done = subprocess.run(["node", str(script), *args], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "RLM_URL": server.url, "RLM_TOKEN": TOKEN, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_npm_openai_and_vercel_ai_sdk_defaults(tmp_path):
    """Each call puts the document and the question in one user message (`prompt`/`input`): one run
    each, whose root prompt shows the question and not the document's middle, where the needle is."""
    with FakeLLMServer(responder=capable_root) as backend:
        server = serve(backend, tmp_path)
        try:
            answers = json.loads(run_node(tmp_path, "clients.mjs", server, RLM_DOCUMENT=DOCUMENT, RLM_QUESTION=QUESTION))
        finally:
            log = server.stop()
    assert answers == dict.fromkeys(CALLS, "kestrel")
    assert roots_started(backend) == len(CALLS)
    firsts = [r["messages"] for r in backend.requests
              if is_root(r["messages"]) and not any(m["role"] == "assistant" for m in r["messages"])]
    for messages in firsts:
        prompt = "\n".join(str(m["content"]) for m in messages)
        assert QUESTION in prompt and "Paragraph 149 of the handbook" not in prompt and "called kestrel" not in prompt
    paths = [line.split()[2] for line in log.splitlines() if " run=" in line and "/health" not in line]
    assert sorted(paths) == sorted(["/v1/chat/completions"] * 6 + ["/v1/responses"] * 6)


def test_a_failed_run_is_one_run_for_openai_npm_and_for_the_ai_sdks_default(tmp_path):
    """Every model call fails: the `openai` npm package honours `x-should-retry: false` (one run with
    its default 2 retries); the AI SDK does not, and retries every 5xx with its default
    `maxRetries: 2`, but its retries get the failed run's answer again (`serving/runs.py`): one run
    too, like `maxRetries: 0`."""
    calls, errors = {}, {}
    with FakeLLMServer(faults=["500"] * 400, fault_kinds=()) as backend:
        server = serve(backend, tmp_path)
        try:
            for client in ("ai-sdk maxRetries 0", "openai", "ai-sdk"):
                before = backend.request_count
                errors[client] = json.loads(run_node(tmp_path, "failed_run.mjs", server, client))["error"]
                calls[client] = backend.request_count - before
        finally:
            server.stop()
    assert all(error and "the run" in error for error in errors.values()), errors
    one_run = calls["ai-sdk maxRetries 0"]
    assert one_run > 0 and calls["openai"] == one_run and calls["ai-sdk"] == one_run, calls
