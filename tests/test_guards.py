"""Tests that guard the guards (issue 32).

Each check below was right, yet a small mutation of it (a string prefix for a path test, a prefix of
the bearer token, a retry of a 400, a layer of the sandbox switched off behind another) passed every
test. Each test here fails under the mutation that `benchmarks/guard_mutations.py` applies to its
check; run that script after changing a guard, and add a line to its list for a new one:

- a sibling folder named like the allowed root (`root-secret` next to `root`) is outside it:
  `test_a_sibling_folder_named_like_the_root_is_outside_it`, `test_the_server_refuses_a_sibling_folder_of_its_root`
- the bearer token is compared whole and exactly: `test_only_the_exact_token_opens_the_server`
- the host's per-batch limit holds at the limit and one past it, around the REPL:
  `test_the_hosts_batch_limit_holds_at_the_limit_and_one_past_it`
- a 500/502/503 with `Retry-After` is retried after it: `test_retry_after_is_honoured_on_server_errors`
- a 400/401/403/404/413/422 is sent once: `test_a_request_the_provider_refused_is_sent_exactly_once`
- a non-retryable error is not retried, a retryable one is: `test_only_retryable_errors_are_retried`
- Landlock alone and seccomp alone each stop a TCP connect to a loopback listener:
  `test_each_sandbox_layer_alone_stops_a_loopback_connection`
- an unclosed reasoning block hides a `FINAL` and code at the start of a line:
  `test_an_unclosed_reasoning_block_hides_a_final_and_code_at_the_start_of_a_line`

The store's failures during a run are in `tests/test_store_faults.py`
(`test_a_disk_that_fills_during_a_run_keeps_the_answer_and_says_so`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from recursive_llm import RLM
from recursive_llm.engine.budget import Budget, Limits
from recursive_llm.config import HOST_BOUNDS
from recursive_llm.environments.host import sandbox
from recursive_llm.environments.host.worker import WorkerEnvironment
from recursive_llm.errors import ContextError, ModelError
from recursive_llm.record.events import EventLog
from recursive_llm.models.openai_client import OpenAIClient
from recursive_llm.engine.parsing import parse_reply
from recursive_llm.engine.scheduler import CallSite, RetryPolicy, Scheduler
from recursive_llm.serving.errors import RequestError
from recursive_llm.serving.request import allowed_file
from recursive_llm.testing import FakeLLMServer, ScriptedModel
from recursive_llm.usage import UsageSummary
from scripted_root import root_then_sub
from test_server import Served

TOKEN = "correct-horse-battery"
MESSAGES = [{"role": "user", "content": "hello"}]


def repl(code: str) -> str:
    return f"```repl\n{code}\n```"


# -- paths under a root ----------------------------------------------------------------------------
@pytest.fixture
def root_and_sibling(tmp_path):
    """`root/` and, next to it, `root-secret/key.env`: its path starts with the root's as a string."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "report.txt").write_text("inside")
    (tmp_path / "root-secret").mkdir()
    (tmp_path / "root-secret" / "key.env").write_text("SECRET=1")
    (root / "link.env").symlink_to(tmp_path / "root-secret" / "key.env")
    return root.resolve()


def _server_check(root, name):
    return allowed_file(name, root)


def _mcp_check(root, name):
    from recursive_llm.serving.mcp import loadable

    return loadable(root, name)


@pytest.mark.parametrize("check, refusal", [(_server_check, RequestError), (_mcp_check, ContextError)],
                         ids=["serve", "mcp"])
def test_a_sibling_folder_named_like_the_root_is_outside_it(root_and_sibling, check, refusal):
    root = root_and_sibling
    assert check(root, "report.txt") == root / "report.txt"
    for name in ("../root-secret/key.env", "link.env", "report.txt/../../root-secret/key.env"):
        with pytest.raises(refusal, match="outside"):
            check(root, name)


# -- the server's door: a real `rlm serve` process ---------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("guards-serve")
    root = base / "allowed"
    root.mkdir()
    (root / "report.txt").write_text("The report.\n")
    (base / "allowed-secret").mkdir()
    (base / "allowed-secret" / "key.env").write_text("SECRET=hunter2\n")
    with FakeLLMServer(responder=root_then_sub(["FINAL(read it)"])) as backend:
        server = Served(backend_url=backend.base_url, root=root,
                        env={"RLM_SERVE_TOKEN": TOKEN, "RLM_HOME": str(base / "home")})
        try:
            yield server, backend
        finally:
            server.stop()


def test_only_the_exact_token_opens_the_server(served):
    """A prefix of the token, the token with more characters, or in another case is refused (401),
    through HTTP on an endpoint that needs the token, and no run starts."""
    server, backend = served

    def status(authorization: str | None, path: str = "/v1/models") -> int:
        headers = {} if authorization is None else {"Authorization": authorization}
        return httpx.get(server.url + path, headers=headers, timeout=30).status_code

    assert status(f"Bearer {TOKEN}") == 200
    wrong = [None, "", "Bearer", "Bearer c", f"Bearer {TOKEN[:-1]}",  # a prefix
             f"Bearer {TOKEN}x", f"Bearer {TOKEN}-staple", f"Bearer {TOKEN} {TOKEN}",  # more characters
             f"Bearer {TOKEN.upper()}", f"Bearer {TOKEN.capitalize()}",  # another case
             TOKEN, f"Basic {TOKEN}"]
    assert {header: status(header) for header in wrong} == {header: 401 for header in wrong}
    before = len(backend.requests)
    refused = httpx.post(server.url + "/v1/chat/completions", timeout=30,
                         headers={"Authorization": f"Bearer {TOKEN[:8]}"},
                         json={"model": "rlm", "messages": MESSAGES, "context": "x"})
    assert refused.status_code == 401 and len(backend.requests) == before


def test_the_server_refuses_a_sibling_folder_of_its_root(served):
    server, backend = served
    before = len(backend.requests)
    refused = httpx.post(server.url + "/v1/chat/completions", timeout=60, headers={"Authorization": f"Bearer {TOKEN}"},
                         json={"model": "rlm", "messages": MESSAGES,
                               "context": {"files": ["../allowed-secret/key.env"]}})
    assert refused.status_code == 400 and "outside the allowed root" in refused.text, refused.text
    assert "hunter2" not in refused.text and len(backend.requests) == before


# -- host bounds -----------------------------------------------------------------------------------
def test_the_hosts_batch_limit_holds_at_the_limit_and_one_past_it():
    """The real limit: a batch of exactly `max_batch_prompts` is served whole (through the REPL and
    around it), one prompt more sent around the REPL gets one short refusal and makes no call."""
    limit = HOST_BOUNDS.max_batch_prompts
    code = ("call_host = llm_query_batched.__self__._call_host\n"
            f"at = call_host('llm', ['x'] * {limit}, None, None)\n"
            f"over = call_host('llm', ['x'] * {limit + 1}, None, None)\n"
            f"via_repl = llm_query_batched(['x'] * {limit})\n"
            "print(len(at), sum(r['ok'] for r in at), len(over), over[0]['ok'], len(via_repl))\n"
            "print(over[0]['error'])")
    sub = ScriptedModel(default="x")
    root = ScriptedModel([repl(code), "FINAL(done)"])
    result = RLM(model=root, sub_model=sub).completion("q", "some text")
    assert result.answer == "done"
    shown = root.calls[1][-1]["content"]
    assert f"{limit} {limit} 1 False {limit}" in shown, shown
    assert f"a batch of {limit + 1:,} prompts is over the limit of {limit:,}" in shown
    assert len(sub.calls) == 2 * limit


# -- retries ---------------------------------------------------------------------------------------
class StatusServer:
    """An OpenAI-compatible endpoint that answers `statuses` in turn (then 200), each error with the
    `headers` given, and notes when each request arrived."""

    def __init__(self, statuses: list[int], headers: dict[str, str] | None = None) -> None:
        self.statuses, self.headers, self.arrivals = list(statuses), headers or {}, []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                return

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                owner.arrivals.append(time.monotonic())
                status = owner.statuses.pop(0) if owner.statuses else 200
                body = json.dumps({"error": {"message": f"status {status}", "type": "error"}} if status != 200 else {
                    "id": "c", "object": "chat.completion", "created": 0, "model": "m",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in (owner.headers if status != 200 else {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> "StatusServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"


def scheduled_call(client, **retry) -> str:
    async def go():
        scheduler = Scheduler(Budget(Limits()), EventLog(None), UsageSummary(),
                              retry=RetryPolicy(base_delay_s=0.01, **retry))
        try:
            return (await scheduler.call(client, MESSAGES, CallSite("run", 0, "root"))).text
        finally:
            await client.aclose()
    return asyncio.run(go())


@pytest.mark.parametrize("status", [500, 502, 503])
def test_retry_after_is_honoured_on_server_errors(status):
    """The backoff would retry within 10 ms; the provider asked for a second. (A 429 or 503 also
    pauses the endpoint's limiter, which would hide a scheduler that ignored the header: 500 and
    502 do not.)"""
    with StatusServer([status], {"Retry-After": "1"}) as server:
        assert scheduled_call(OpenAIClient("m", base_url=server.base_url, api_key="k")) == "ok"
    assert len(server.arrivals) == 2 and server.arrivals[1] - server.arrivals[0] >= 0.9


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_a_request_the_provider_refused_is_sent_exactly_once(status):
    with StatusServer([status] * 5) as server:
        with pytest.raises(ModelError, match=f"HTTP {status}") as info:
            scheduled_call(OpenAIClient("m", base_url=server.base_url, api_key="k"))
    assert not info.value.retryable and len(server.arrivals) == 1


def test_only_retryable_errors_are_retried():
    refused = ScriptedModel([ModelError("refused for good", retryable=False), "never sent"])
    with pytest.raises(ModelError, match="refused for good"):
        scheduled_call(refused)
    assert len(refused.calls) == 1
    transient = ScriptedModel([ModelError("try again", retryable=True), "second time"])
    assert scheduled_call(transient) == "second time" and len(transient.calls) == 2


# -- the sandbox's layers, each alone ----------------------------------------------------------------
CONNECT_CELL = """import errno, socket
try:
    s = socket.socket()
except OSError as e:
    print('socket', errno.errorcode[e.errno])
else:
    try:
        s.settimeout(5)
        s.connect(('127.0.0.1', {port}))
        print('connected')
    except OSError as e:
        print('connect', errno.errorcode.get(e.errno, e.errno))"""


@pytest.mark.parametrize("layers, expected", [
    ({"landlock": True, "seccomp": False}, "connect EACCES"),  # Landlock's TCP rule alone
    ({"landlock": False, "seccomp": True}, "socket EPERM"),  # seccomp's ban on socket() alone
    ({"landlock": False, "seccomp": False}, "connected"),  # neither: the listener is reachable
], ids=["landlock-only", "seccomp-only", "neither"])
def test_each_sandbox_layer_alone_stops_a_loopback_connection(layers, expected):
    """Process mode has both layers, and either one alone hides the other's loss. Here the worker's
    plan (`WorkerEnvironment.isolation`, set before start: a test-only switch, no setting exposes
    it) keeps one layer at a time; the last case shows the listener is reachable without them."""
    plan = sandbox.plan_isolation("process")
    if plan.landlock < 4 or not plan.seccomp:
        pytest.skip(f"needs Landlock ABI 4+ (TCP rules) and seccomp; this machine: Landlock {plan.landlock}, "
                    f"seccomp {plan.seccomp}")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)

    async def no_calls(*args):
        return []

    async def scenario():
        environment = WorkerEnvironment("x", no_calls, sandbox="process")
        environment.isolation = dataclasses.replace(
            environment.isolation, landlock=plan.landlock if layers["landlock"] else 0, seccomp=layers["seccomp"])
        await environment.start()
        try:
            return await environment.execute(CONNECT_CELL.format(port=listener.getsockname()[1]), 20)
        finally:
            await environment.close()

    try:
        cell = asyncio.run(scenario())
        try:
            listener.accept()[0].close()
            reached = True
        except BlockingIOError:
            reached = False
    finally:
        listener.close()
    assert cell.error is None, cell.stderr
    assert cell.stdout.strip() == expected
    assert reached == (expected == "connected")


# -- reply parsing ---------------------------------------------------------------------------------
def test_an_unclosed_reasoning_block_hides_a_final_and_code_at_the_start_of_a_line():
    reply = "<think>\nThe answer could be\nFINAL(wrong)\nor I could run\n```repl\nprint('from the reasoning')\n```\n"
    parsed = parse_reply(reply)
    assert parsed.final is None and parsed.code_blocks == []
    assert "FINAL(wrong)" in parsed.reasoning and "FINAL" not in parsed.visible
    root = ScriptedModel([reply, "FINAL(right)"])
    result = RLM(model=root).completion("q", "text")
    assert result.answer == "right" and result.iterations == 2
