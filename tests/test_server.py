"""`rlm serve` as clients use it: a real server process, the official openai client, a fake model
server behind it (real HTTP), and the store the runs are recorded in."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from recursive_llm.serving.config import ServeConfig
from recursive_llm.serving.errors import Redactor
from recursive_llm.record.store import Store
from recursive_llm.testing import FakeLLMServer
from scripted_root import root_then_sub

TOKEN = "serve-test-token-123456"
TURNS = ["```repl\nnotes = llm_query_batched([context[:20], context[-20:]])\nprint(notes)\n```",
         "FINAL(the answer is 42)"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Served:
    def __init__(self, *args: str, backend_url: str, root: Path, env: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "recursive_llm", "serve", "--port", str(self.port), "--model", "m",
                   "--base-url", backend_url, "--allowed-root", str(root), *args]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env={**os.environ, **(env or {})})
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
            if self.process.poll() is not None:
                raise RuntimeError(self.process.stderr.read())
        raise RuntimeError("rlm serve did not start")

    def client(self, token: str | None = TOKEN, **options) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=token or "none", max_retries=0, **options)

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=120)  # a server stopped while its workers still warm up takes longer
        return self.process.stderr.read()


@pytest.fixture
def backend():
    with FakeLLMServer(responder=root_then_sub(TURNS)) as server:
        yield server


@pytest.fixture
def served(backend, tmp_path):
    root = tmp_path / "allowed"
    root.mkdir()
    (root / "report.txt").write_text("The quarterly report says revenue grew.\n" * 10)
    (tmp_path / "secret.txt").write_text("outside the root")
    server = Served(backend_url=backend.base_url, root=root, env={"RLM_SERVE_TOKEN": TOKEN})
    yield server
    server.stop()


def test_openai_client_gets_a_completion_with_real_usage(served, backend):
    client = served.client()
    reply = client.chat.completions.create(model="rlm", messages=[{"role": "user", "content": "What does it say?"}],
                                           extra_body={"context": "A long document about revenue and risks."})
    assert reply.choices[0].message.content == "the answer is 42" and reply.choices[0].finish_reason == "stop"
    run_id = reply.model_extra["rlm"]["run_id"]
    recorded = Store().run_tree(run_id)
    paid = [c for c in recorded["calls"] if c["status"] == "ok"]
    assert reply.usage.prompt_tokens == sum(c["prompt_tokens"] for c in paid) > 0
    assert reply.usage.completion_tokens == sum(c["completion_tokens"] for c in paid) > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert len(backend.requests) == 4  # two root turns, two sub-calls
    capped = client.chat.completions.create(model="rlm", messages=[{"role": "user", "content": "q"}], max_tokens=77,
                                            extra_body={"context": "text"})
    # max_tokens bounds the answer, not the run's model calls (issue 28)
    assert capped.choices[0].message.content and all(r.get("max_tokens") != 77 for r in backend.requests[4:])
    models = [m.id for m in client.models.list().data]
    assert models == ["rlm", "rlm/m"]


def test_streamed_completion(served):
    stream = served.client().chat.completions.create(
        model="rlm/m", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "an earlier message is the context"},
                  {"role": "user", "content": "What does it say?"}])
    content, progress, usage, finish = "", [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if not chunk.choices:
            continue
        content += chunk.choices[0].delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
        if chunk.model_extra.get("rlm_event"):
            progress.append(chunk.model_extra["rlm_event"]["type"])
    assert content == "the answer is 42" and finish == "stop"
    assert progress[0] == "run_start" and "iteration" in progress and "cell" in progress and progress[-1] == "run_end"
    assert usage is not None and usage.total_tokens > 0


def test_files_under_the_allowed_root_only(served):
    client = served.client()
    reply = client.chat.completions.create(model="rlm", messages=[{"role": "user", "content": "Summarize"}],
                                           extra_body={"context": {"files": ["report.txt"]}})
    assert reply.choices[0].message.content == "the answer is 42"
    for escape in ("../secret.txt", "/etc/passwd", "report.txt/../../secret.txt"):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="rlm", messages=[{"role": "user", "content": "Summarize"}],
                                           extra_body={"context": {"files": [escape]}})
        message = refused.value.body["message"]
        assert "outside the allowed root" in message or "does not exist" in message
        assert str(Path.home()) not in message and "allowed/" not in message
    # one input shape for every front end (issue 27): another tool's shape is an error, never data
    for other in ({"path": "report.txt"}, {"paths": ["report.txt"]}, {"files": []}):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="rlm", messages=[{"role": "user", "content": "Summarize"}],
                                           extra_body={"context": other})
        assert '{"files": [' in refused.value.body["message"], refused.value.body["message"]


def test_auth_body_limit_budgets_and_errors(served, backend, tmp_path):
    messages = [{"role": "user", "content": "q"}]
    with pytest.raises(openai.AuthenticationError):
        served.client(token=None).chat.completions.create(model="rlm", messages=messages, extra_body={"context": "x"})
    with pytest.raises(openai.AuthenticationError):
        served.client(token="wrong").chat.completions.create(model="rlm", messages=messages, extra_body={"context": "x"})
    big = httpx.post(served.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {TOKEN}"},
                     json={"model": "rlm", "messages": messages, "context": "x" * 11_000_000}, timeout=30)
    assert big.status_code == 413 and "allowed root" in big.json()["error"]["message"]
    client = served.client()
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="rlm/gpt-5", messages=messages, extra_body={"context": "x"})
    with pytest.raises(openai.BadRequestError, match="the last user message is the question"):
        client.chat.completions.create(model="rlm", messages=[{"role": "system", "content": "x"}])
    # a client may lower the budget ...
    lowered = client.chat.completions.create(model="rlm", messages=messages,
                                             extra_body={"context": "text", "rlm": {"max_iterations": 1}})
    assert lowered.choices[0].finish_reason == "stop"  # a best answer at a limit is whole (issue 28)
    assert lowered.model_extra["rlm"]["stopped_reason"] == "max_iterations"
    # ... but not raise it above the server's
    raised = client.chat.completions.create(model="rlm", messages=messages,
                                            extra_body={"context": "text", "rlm": {"max_llm_calls": 10**9}})
    limits = Store().run_tree(raised.model_extra["rlm"]["run_id"])["runs"][0]["limits"]
    assert limits["max_llm_calls"] == 500
    with pytest.raises(openai.BadRequestError, match="unknown rlm option"):
        client.chat.completions.create(model="rlm", messages=messages,
                                       extra_body={"context": "x", "rlm": {"sandbox": "off"}})


def test_redactor_removes_keys_and_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-abcdefghijklmnop")
    redact = Redactor(ServeConfig(token="tok-1234567890", allowed_root=tmp_path))
    text = redact(f"key sk-live-abcdefghijklmnop token tok-1234567890 at {tmp_path}/a.txt and {Path.home()}/x")
    assert "sk-live" not in text and "tok-123" not in text and str(tmp_path) not in text and str(Path.home()) not in text


def test_concurrency_limit_gives_429(tmp_path):
    with FakeLLMServer(responder=root_then_sub(TURNS), latency=0.5) as backend:
        server = Served("--max-concurrent", "1", backend_url=backend.base_url, root=tmp_path)
        try:
            async def both():
                client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
                request = dict(model="rlm", messages=[{"role": "user", "content": "q"}], extra_body={"context": "t"})
                return await asyncio.gather(client.chat.completions.create(**request),
                                            client.chat.completions.create(**request), return_exceptions=True)

            results = asyncio.run(both())
        finally:
            server.stop()
    assert sum(isinstance(r, openai.RateLimitError) for r in results) == 1
    assert sum(not isinstance(r, Exception) for r in results) == 1


def test_refuses_to_bind_beyond_loopback_without_a_token(tmp_path):
    done = subprocess.run([sys.executable, "-m", "recursive_llm", "serve", "--host", "0.0.0.0", "--port",
                           str(free_port()), "--model", "m", "--base-url", "http://127.0.0.1:9"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "RLM_SERVE_TOKEN": ""})
    assert done.returncode == 4 and "without a token" in done.stderr


def test_graceful_shutdown_finishes_running_requests(tmp_path):
    with FakeLLMServer(responder=root_then_sub(TURNS), latency=0.4) as backend:
        server = Served(backend_url=backend.base_url, root=tmp_path)

        async def request_then_stop():
            client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
            task = asyncio.create_task(client.chat.completions.create(
                model="rlm", messages=[{"role": "user", "content": "q"}], extra_body={"context": "t"}))
            await asyncio.sleep(0.6)  # the run is under way
            server.process.send_signal(signal.SIGTERM)
            return await task

        reply = asyncio.run(request_then_stop())
        server.process.wait(timeout=60)
    assert reply.choices[0].message.content == "the answer is 42"
    # uvicorn finishes the running requests, then exits by the signal it got (as the default handler would)
    assert server.process.returncode in (0, -signal.SIGTERM)
    assert "Traceback" not in server.process.stderr.read()
    runs = Store().list_runs()
    assert [r["status"] for r in runs] == ["final"]


def test_fifty_concurrent_requests_with_injected_faults_all_end_cleanly(tmp_path):
    """20% of model calls fail (429 with Retry-After, 500, 503, garbage JSON, dropped connections):
    every request ends with an answer or a clear error, none hangs, and every run is recorded."""
    with FakeLLMServer(responder=root_then_sub(TURNS), latency=0.1, fault_rate=0.2, retry_after="0.2",
                       fault_kinds=("429", "500", "503", "garbage", "drop"), seed=7) as backend:
        server = Served("--max-concurrent", "50", backend_url=backend.base_url, root=tmp_path)
        try:
            async def fifty():
                client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)
                return await asyncio.gather(*(client.chat.completions.create(
                    model="rlm", messages=[{"role": "user", "content": f"question {i}"}],
                    extra_body={"context": f"document number {i} " * 20}) for i in range(50)), return_exceptions=True)

            results = asyncio.run(asyncio.wait_for(fifty(), 180))  # none hangs
        finally:
            server.stop()
        faults = len(backend.faults_injected)
    answers = [r for r in results if not isinstance(r, Exception)]
    errors = [r for r in results if isinstance(r, Exception)]
    assert all(isinstance(e, openai.APIStatusError) and e.body and e.body.get("message") for e in errors), errors
    assert all(a.choices[0].message.content == "the answer is 42" for a in answers)
    assert len(answers) >= 45 and faults >= 20, (len(answers), faults)
    runs = Store().list_runs(limit=100)
    assert len(runs) == 50 and all(r["status"] != "running" for r in runs)


def test_each_client_keeps_one_run_store_and_a_failed_one_is_replaced(tmp_path, monkeypatch):
    """rlm serve opens a client's run store once (not per request); its cache stays per client,
    and a store that failed is not kept for the next request."""
    from recursive_llm.serving.runner import store_for as _store_for

    monkeypatch.setenv("RLM_HOME", str(tmp_path))
    stores: dict = {}
    first = _store_for(stores, "client-one")
    assert _store_for(stores, "client-one") is first and first.cache_namespace == "client-one"
    other, loopback = _store_for(stores, "client-two"), _store_for(stores, None)
    assert len({id(first), id(other), id(loopback)}) == 3 and loopback.cache_namespace == "serve:loopback"
    first.error = "the run store could not be written (disk full)"
    replaced = _store_for(stores, "client-one")
    assert replaced is not first and replaced.error is None and replaced.cache_namespace == "client-one"
    for store in stores.values():
        store.close()
