"""OpenAIClient's transports (`httpx`, the default: plain HTTP with httpx2; `sdk`: the official
`openai` client on the same library) give the same completions and the same `ModelError`s for the
same server behaviour; and the default transport against real server software (uvicorn, tinyproxy:
tests/real_http.py): idle connections the server dropped, a server that closes after every reply,
proxies, the system's trust store and the CA variables, redirects, response bounds."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from recursive_llm.errors import ModelError
from recursive_llm.models.openai_client import OpenAIClient
from recursive_llm.testing import FakeLLMServer

import real_http
from test_models import MESSAGES, SECRET, complete  # the same request and helper as the SDK tests


def outcome(transport: str, **server_options):
    options = server_options.pop("call", {})
    with FakeLLMServer(**server_options) as server:
        try:
            return complete(OpenAIClient("m", base_url=server.base_url, api_key=SECRET, transport=transport),
                            **options), server.requests
        except ModelError as error:
            return error, server.requests


PLAIN = ("httpx",)  # the transports that post the JSON themselves, each compared with the SDK


def test_the_default_transport_is_httpx_and_the_sdk_is_opt_in(monkeypatch):
    monkeypatch.delenv("RLM_OPENAI_TRANSPORT", raising=False)
    assert OpenAIClient("m", base_url="http://127.0.0.1:9/v1").transport == "httpx"
    monkeypatch.setenv("RLM_OPENAI_TRANSPORT", "sdk")
    assert OpenAIClient("m", base_url="http://127.0.0.1:9/v1").transport == "sdk"
    for removed in ("lean", "aiohttp"):  # issue 26: one HTTP stack
        monkeypatch.setenv("RLM_OPENAI_TRANSPORT", removed)
        with pytest.raises(ValueError, match="unknown transport.*RLM_OPENAI_TRANSPORT"):
            OpenAIClient("m")


def test_calls_are_spread_over_clients_of_at_most_pool_width_in_flight():
    from recursive_llm.models.openai_client import POOL_WIDTH, Pools

    made = []
    pools = Pools(lambda: made.append(object()) or made[-1])
    held = [pools.acquire() for _ in range(2 * POOL_WIDTH + 3)]
    assert [index for index, _ in held] == [0] * POOL_WIDTH + [1] * POOL_WIDTH + [2] * 3
    assert [client for _, client in held[:POOL_WIDTH]] == [made[0]] * POOL_WIDTH and len(made) == 3
    pools.release(0)
    assert pools.acquire()[0] == 0  # the first client with room, not a fourth
    for index, _ in held[1:]:
        pools.release(index)
    assert [pools.acquire()[0] for _ in range(3)] == [0, 0, 0]  # calls one at a time: one client


@pytest.mark.parametrize("transport", PLAIN)
def test_same_completion_and_request_body(transport):
    reasoning = lambda messages, model: "thinking..."  # noqa: E731
    (ours, our_requests), (sdk, sdk_requests) = (
        outcome(t, reasoning=reasoning, prompt_cache=True, call={"max_tokens": 50, "temperature": 0.0})
        for t in (transport, "sdk"))
    assert (ours.text, ours.prompt_tokens, ours.completion_tokens, ours.finish_reason, ours.reasoning,
            ours.cached_prompt_tokens) == (sdk.text, sdk.prompt_tokens, sdk.completion_tokens, sdk.finish_reason,
                                           sdk.reasoning, sdk.cached_prompt_tokens)
    assert ours.reasoning == "thinking..."
    assert our_requests == sdk_requests  # the same JSON body: model, messages, max_tokens, temperature


@pytest.mark.parametrize("transport", PLAIN)
@pytest.mark.parametrize("fault", ["429", "500", "503", "garbage", "drop"])
def test_same_errors_for_the_same_faults(fault, transport):
    ours, _ = outcome(transport, faults=[fault], retry_after="7")
    sdk, _ = outcome("sdk", faults=[fault], retry_after="7")
    assert isinstance(ours, ModelError) and isinstance(sdk, ModelError)
    assert (ours.retryable, ours.retry_after, ours.status_code) == (sdk.retryable, sdk.retry_after, sdk.status_code)
    assert SECRET not in str(ours)
    if fault in ("429", "500", "503"):
        assert str(ours) == str(sdk)
    else:  # the underlying exception's text differs: the kind of failure is the same
        kind = "malformed response" if fault == "garbage" else "connection failed"
        assert kind in str(ours) and kind in str(sdk)


@pytest.mark.parametrize("transport", PLAIN)
def test_same_error_for_a_refused_connection_and_a_timeout(transport):
    async def both(base_url, **options):
        results = []
        for transport_used in (transport, "sdk"):
            client = OpenAIClient("m", base_url=base_url, api_key=SECRET, transport=transport_used)
            try:
                await client.complete(MESSAGES, **options)
            except ModelError as error:
                results.append(error)
            finally:
                await client.aclose()
        return results

    ours, sdk = asyncio.run(both("http://127.0.0.1:9/v1"))  # nothing listens there
    assert "connection failed" in str(ours) and "connection failed" in str(sdk) and ours.retryable
    with FakeLLMServer(faults=["timeout", "timeout"], hang_seconds=3) as server:
        ours, sdk = asyncio.run(both(server.base_url, timeout=0.5))
    assert str(ours) == str(sdk) and "timed out" in str(ours) and ours.retryable


@pytest.mark.parametrize("transport", PLAIN)
def test_a_plain_call_does_not_import_the_sdk(transport):
    code = ("import asyncio, sys\n"
            "from recursive_llm.models.openai_client import OpenAIClient\n"
            "from recursive_llm.testing import FakeLLMServer\n"
            "with FakeLLMServer() as server:\n"
            f"    client = OpenAIClient('m', base_url=server.base_url, transport={transport!r})\n"
            "    async def go():\n"
            "        try:\n"
            "            return await client.complete([{'role': 'user', 'content': 'hi'}])\n"
            "        finally:\n"
            "            await client.aclose()\n"
            "    print(asyncio.run(go()).text, 'openai' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["echo:", "hi", "False"], done.stderr[-2000:]


@pytest.mark.parametrize("transport", PLAIN)
def test_the_proxy_comes_from_the_environment(transport, monkeypatch):
    """HTTP_PROXY is used (the fake server stands in for the proxy: it answers the absolute URL it
    is sent) and NO_PROXY bypasses it, as the SDK's client does."""
    for name in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    unreachable = "http://model.invalid:9/v1"  # never resolved when the proxy is used
    with FakeLLMServer() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.base_url.rsplit("/v1", 1)[0])
        through_proxy = complete(OpenAIClient("m", base_url=unreachable, api_key=SECRET, transport=transport))
        monkeypatch.setenv("NO_PROXY", "model.invalid")
        with pytest.raises(ModelError, match="connection failed"):
            complete(OpenAIClient("m", base_url=unreachable, api_key=SECRET, transport=transport))
    assert through_proxy.text.startswith("echo:")


# The default transport against real server software (tests/real_http.py).

needs_tinyproxy = pytest.mark.skipif(shutil.which("tinyproxy") is None,
                                     reason="tinyproxy is not installed (apt-get install tinyproxy; .ci/run does)")
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
CA_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE")


@pytest.fixture(autouse=True)
def _no_proxy_or_ca_from_the_host(monkeypatch):
    """Each test sets the proxy and CA variables it means; the TLS context is rebuilt for each."""
    from recursive_llm.models.tls import shared_ssl_context

    for name in PROXY_VARIABLES + CA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    shared_ssl_context.cache_clear()
    yield
    shared_ssl_context.cache_clear()


def fields(text: str) -> dict[str, str]:
    """`FINAL(port=1 via=- n=2)` (real_http.app's answer) or its inside as {"port": "1", ...}."""
    inside = text.removeprefix("FINAL(").removesuffix(")")
    return dict(item.split("=", 1) for item in inside.split())


def calls(base_url: str, count: int = 1, *, width: int = 1, pause: float = 0.0, client=None) -> list[str]:
    """`count` completions on one client and one event loop, `width` at a time; `pause` seconds of
    `time.sleep` between calls (the loop does not run meanwhile)."""
    client = client or OpenAIClient("m", base_url=base_url, api_key=SECRET)

    async def go() -> list[str]:
        gate = asyncio.Semaphore(width)

        async def one() -> str:
            async with gate:
                return (await client.complete(MESSAGES)).text
        try:
            if width == 1:
                texts = []
                for index in range(count):
                    if index:
                        time.sleep(pause)
                    texts.append(await one())
                return texts
            return list(await asyncio.gather(*(one() for _ in range(count))))
        finally:
            await client.aclose()
    return asyncio.run(go())


def test_an_idle_connection_the_server_dropped_is_never_an_error():
    """uvicorn drops a keep-alive connection idle for 1 s without notice; `RLM.completion` twice,
    1.5 s apart, the kept event loop idle in between, no retries: both answer, the second over a
    new connection."""
    from recursive_llm import RLM

    with real_http.uvicorn("--timeout-keep-alive", "1") as url:
        rlm = RLM(model="m", base_url=url, api_key=SECRET, max_retries=0, store=None)
        try:
            first = rlm.completion("q", "text").answer
            time.sleep(1.5)
            second = rlm.completion("q", "text").answer
        finally:
            rlm.close()
    assert fields(first)["port"] != fields(second)["port"]  # uvicorn had closed the first connection


def closes_without_notice(port: int) -> bool:
    """Whether the server on `port` answers a keep-alive request without `Connection: close` and then
    closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}")
        reply = b""
        while chunk := connection.recv(65536):
            reply += chunk
    head = reply.split(b"\r\n\r\n", 1)[0].lower()
    return head.startswith(b"http/1.1 200") and b"connection: close" not in head


@needs_tinyproxy
def test_a_server_that_closes_after_every_reply_fails_no_call():
    """tinyproxy as a reverse proxy closes the connection after every reply without saying so:
    200 calls 16 at a time all answer."""
    with real_http.uvicorn() as upstream:
        origin = upstream.rsplit("/v1", 1)[0]
        with real_http.tinyproxy(f'ReversePath "/" "{origin}/"', "ReverseOnly Yes") as port:
            assert closes_without_notice(port)
            texts = calls(f"http://127.0.0.1:{port}/v1", 200, width=16)
    assert len(texts) == 200 and all("tinyproxy" in fields(text)["via"] for text in texts)


@needs_tinyproxy
@pytest.mark.parametrize("scheme", ["http://", ""])  # a proxy without a scheme is http://
def test_an_http_endpoint_through_an_http_proxy(scheme, monkeypatch):
    with real_http.uvicorn() as url, real_http.tinyproxy() as port:
        monkeypatch.setenv("HTTP_PROXY", f"{scheme}127.0.0.1:{port}")
        texts = calls(url, 6)
    assert [("tinyproxy" in fields(text)["via"]) for text in texts] == [True] * 6


def test_no_proxy_with_a_cidr_range(monkeypatch):
    with real_http.uvicorn() as url:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{real_http.free_port()}")  # nothing listens there
        with pytest.raises(ModelError, match="connection failed"):
            calls(url)  # the proxy is used
        monkeypatch.setenv("NO_PROXY", "10.0.0.0/8,127.0.0.0/8")
        assert fields(calls(url)[0])["via"] == "-"  # straight to the server


def test_a_307_sends_the_post_once_to_each_address():
    with real_http.uvicorn() as url:
        text = calls(url.replace("/v1", "/v1/moved"))[0]
    assert fields(text)["n"] == "2"  # the POST to /v1/moved/..., then the one to /v1/...
    assert fields(text)["auth"] == "yes"  # the same origin: the key goes along


def test_a_redirect_to_another_origin_does_not_take_the_key_along():
    """httpx2's redirect rules (the client's, used for a redirect): Authorization is dropped when the
    origin changes (127.0.0.1 to localhost, the same server)."""
    with real_http.uvicorn() as url:
        text = calls(url.replace("/v1", "/v1/away"))[0]
    assert fields(text)["n"] == "2" and fields(text)["auth"] == "no"


def test_a_call_goes_to_the_transport_and_only_a_redirect_through_the_client(monkeypatch):
    """Issue 26: the first request of a call skips httpx2's client layer (request building, auth
    flow, cookies, redirect loop: about a fifth of a call's CPU) and goes to the transport httpx2
    chose for the endpoint; only a redirect goes through `AsyncClient.send`."""
    import httpx2

    sent = []
    send = httpx2.AsyncClient.send

    async def counted(self, request, **options):
        sent.append(str(request.url))
        return await send(self, request, **options)

    monkeypatch.setattr(httpx2.AsyncClient, "send", counted)
    with real_http.uvicorn() as url:
        assert [fields(text)["n"] for text in calls(url, 3)] == ["1", "2", "3"]
        assert sent == []
        calls(url.replace("/v1", "/v1/moved"))
    assert sent == [url + "/chat/completions"]  # the redirect's second request


@pytest.mark.parametrize("path", ["huge", "bomb"])
def test_a_response_over_the_bound_is_refused_and_not_retried(path, monkeypatch):
    from recursive_llm.models import openai_client

    monkeypatch.setattr(openai_client, "MAX_BODY_BYTES", 100_000)
    with real_http.uvicorn() as url:
        with pytest.raises(ModelError, match="response refused.*over 100,000 bytes") as refused:
            calls(url.replace("/v1", f"/v1/{path}"))
        assert fields(calls(url)[0])["n"] == "2"  # a normal answer is read whole
    assert not refused.value.retryable


@pytest.fixture
def authority(tmp_path):
    """A CA trusted nowhere yet, and uvicorn serving HTTPS with a certificate it signed: (CA file, base URL)."""
    ca, certificate, key = real_http.certificate_authority(tmp_path)
    with real_http.uvicorn("--ssl-keyfile", str(key), "--ssl-certfile", str(certificate), scheme="https") as url:
        yield ca, url


def anthropic_call(base_url: str) -> str:
    from recursive_llm.models.anthropic_client import AnthropicClient

    async def go() -> str:
        client = AnthropicClient("m", base_url=base_url.removesuffix("/v1"), api_key=SECRET)
        try:
            return (await client.complete(MESSAGES)).text
        finally:
            await client.aclose()
    return asyncio.run(go())


@pytest.fixture
def in_the_system_store(authority):
    """The CA installed in the system's trust store (Debian's update-ca-certificates), removed afterwards."""
    if os.geteuid() != 0 or shutil.which("update-ca-certificates") is None:
        pytest.skip("installing a CA in the system's store needs root and update-ca-certificates (Debian)")
    from recursive_llm.models.tls import shared_ssl_context

    ca, url = authority
    installed = Path("/usr/local/share/ca-certificates") / f"recursive-llm-test-{os.getpid()}.crt"
    installed.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ca, installed)
    try:
        subprocess.run(["update-ca-certificates"], check=True, capture_output=True, timeout=120)
        shared_ssl_context.cache_clear()
        yield url
    finally:
        installed.unlink()  # --fresh: a plain run would leave the removed CA's links dangling
        subprocess.run(["update-ca-certificates", "--fresh"], check=True, capture_output=True, timeout=120)


def test_a_ca_only_in_the_systems_store_is_trusted(authority, request):
    """Not trusted before it is installed (not retryable); trusted after, by both providers' clients."""
    _, url = authority
    with pytest.raises(ModelError, match="certificate is not trusted.*SSL_CERT_FILE") as untrusted:
        calls(url)
    assert not untrusted.value.retryable
    with pytest.raises(ModelError, match="certificate is not trusted") as untrusted:
        anthropic_call(url)
    assert not untrusted.value.retryable
    request.getfixturevalue("in_the_system_store")
    assert fields(calls(url)[0])["n"] == "1" and fields(anthropic_call(url))["n"] == "2"


@needs_tinyproxy
def test_an_https_endpoint_through_an_http_proxy(authority, monkeypatch):
    """HTTPS_PROXY: a CONNECT tunnel through tinyproxy, TLS inside it (the writes kept until each
    read go through the tunnel and the handshake), three calls on the kept-alive tunnel."""
    ca, url = authority
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{real_http.free_port()}")  # nothing listens there
    with pytest.raises(ModelError, match="connection failed"):
        calls(url)  # the proxy is used
    with real_http.tinyproxy(f"ConnectPort {port}") as proxy:
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy}")
        texts = calls(url, 3)
    assert len({fields(text)["port"] for text in texts}) == 1  # one tunnel, kept alive
    assert [fields(text)["n"] for text in texts] == ["1", "2", "3"]


@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"])
def test_the_ca_bundle_variables_are_honoured(variable, authority, monkeypatch):
    ca, url = authority
    monkeypatch.setenv(variable, str(ca))
    assert fields(calls(url)[0])["n"] == "1" and fields(anthropic_call(url))["n"] == "2"
    monkeypatch.setenv(variable, str(ca.parent / "missing.pem"))
    from recursive_llm.models.tls import shared_ssl_context

    shared_ssl_context.cache_clear()
    with pytest.raises(ModelError, match=f"{variable}=.*missing.pem cannot be used.*unset it"):
        calls(url)


class CountingServer(socketserver.ThreadingTCPServer):
    """Counts the connections it accepts; with `tls`, shakes hands with it, else closes at once."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        self.accepted = 0
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer.accepted += 1
                if tls is not None:
                    with contextlib.suppress(OSError), tls.wrap_socket(self.request, server_side=True):
                        pass
        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.mark.parametrize("tls", [True, False])
def test_a_certificate_error_is_not_retried(tls, tmp_path):
    """A run with 3 retries: one connection when the certificate is not trusted; four when the
    server just hangs up (retryable), so the count is the client's attempts."""
    from recursive_llm import RLM

    context = None
    if tls:
        _, certificate, key = real_http.certificate_authority(tmp_path)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate, key)
    server = CountingServer(context)
    try:
        rlm = RLM(model="m", base_url=f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}/v1",
                  api_key=SECRET, max_retries=3, store=None)
        result = rlm.completion("q", "text")
        rlm.close()
    finally:
        server.shutdown()
        server.server_close()
    assert not result.ok and ("certificate is not trusted" if tls else "connection failed") in result.error
    assert server.accepted == (1 if tls else 4)


# A request's head and body in one write (models/coalesced_writes.py).

class RecordedWrites:
    """A network backend under the route's CoalescingBackend that keeps every write it is given."""

    def __init__(self, inner) -> None:
        import httpcore2

        self.inner, self.writes = inner, []
        outer = self

        class Stream(httpcore2.AsyncNetworkStream):
            def __init__(self, stream) -> None:
                self.stream = stream

            async def write(self, buffer, timeout=None):
                outer.writes.append(bytes(buffer))
                await self.stream.write(buffer, timeout)

            async def read(self, max_bytes, timeout=None):
                return await self.stream.read(max_bytes, timeout)

            async def aclose(self):
                await self.stream.aclose()

            def get_extra_info(self, info):
                return self.stream.get_extra_info(info)

        self.stream = Stream

    async def connect_tcp(self, host, port, **options):
        return self.stream(await self.inner.connect_tcp(host, port, **options))


def written(url: str, contents: list[str]) -> list[bytes]:
    """The writes that reach the socket for one call per content (user messages), on one route."""
    from recursive_llm.models.coalesced_writes import CoalescingBackend

    client = OpenAIClient("m", base_url=url, api_key=SECRET)

    async def go() -> list[bytes]:
        pools = client._http()
        index, route = pools.acquire()
        pools.release(index)
        backend = route.transport._pool._network_backend
        assert isinstance(backend, CoalescingBackend)
        recorded = backend.inner = RecordedWrites(backend.inner)
        try:
            for content in contents:
                assert fields((await client.complete([{"role": "user", "content": content}])).text)["n"]
        finally:
            await client.aclose()
        return recorded.writes
    return asyncio.run(go())


def test_a_request_leaves_in_one_write():
    """Issue 26: httpcore2 writes the head and the body apart and yields to the loop between them, so
    with many calls in flight the body waited behind every other ready task (and the server with it);
    now both go in one write, on every request of a kept-alive connection."""
    import json

    with real_http.uvicorn() as url:
        writes = written(url, ["first", "second", "third"])
    assert len(writes) == 3
    for write, content in zip(writes, ["first", "second", "third"]):
        head, body = write.split(b"\r\n\r\n", 1)
        assert head.startswith(b"POST /v1/chat/completions HTTP/1.1")
        assert json.loads(body)["messages"] == [{"role": "user", "content": content}]


def test_a_large_body_is_sent_as_it_is_not_copied():
    from recursive_llm.models.coalesced_writes import FLUSH_AT

    content = "x" * (2 * FLUSH_AT)
    with real_http.uvicorn() as url:
        head, body = written(url, [content])
    assert head.startswith(b"POST ") and head.endswith(b"\r\n\r\n") and content.encode() in body


def test_writes_are_coalesced_through_a_proxy_too(monkeypatch):
    """The route's pool is httpcore2's proxy pool when HTTP_PROXY applies: it is wrapped as well."""
    import httpcore2

    from recursive_llm.models.coalesced_writes import CoalescingBackend

    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # never connected to here
    client = OpenAIClient("m", base_url="http://model.invalid/v1", api_key=SECRET)

    async def route_pool():
        pools = client._http()
        index, route = pools.acquire()
        pools.release(index)
        try:
            return route.transport._pool
        finally:
            await client.aclose()
    pool = asyncio.run(route_pool())
    assert isinstance(pool, httpcore2.AsyncHTTPProxy) and isinstance(pool._network_backend, CoalescingBackend)


class FakeStream:
    """An inner stream for CoalescingStream's own rules (an in-process fake: a unit test)."""

    def __init__(self, fail_writes: bool = False) -> None:
        self.events, self.fail_writes = [], fail_writes

    async def write(self, buffer, timeout=None):
        import httpcore2

        self.events.append(("write", bytes(buffer), timeout))
        if self.fail_writes:
            raise httpcore2.WriteError("the server closed")

    async def read(self, max_bytes, timeout=None):
        self.events.append(("read", max_bytes, timeout))
        return b"HTTP/1.1 413 Payload Too Large\r\n\r\n"

    async def aclose(self):
        self.events.append(("close",))

    async def start_tls(self, ssl_context, server_hostname=None, timeout=None):
        self.events.append(("tls", server_hostname))
        return FakeStream()


def test_kept_writes_go_at_the_read_with_their_timeout_and_a_failed_write_still_reads():
    from recursive_llm.models.coalesced_writes import CoalescingStream

    async def go():
        inner = FakeStream()
        stream = CoalescingStream(inner)
        await stream.write(b"head", timeout=3.0)
        await stream.write(b"", timeout=3.0)
        await stream.write(b"body", timeout=3.0)
        assert inner.events == []  # nothing sent before the read
        await stream.read(100, timeout=5.0)
        assert inner.events == [("write", b"headbody", 3.0), ("read", 100, 5.0)]

        failing = FakeStream(fail_writes=True)  # the server answered and closed before taking it all
        stream = CoalescingStream(failing)
        await stream.write(b"request")
        assert (await stream.read(100)).startswith(b"HTTP/1.1 413")

        dropped = FakeStream()  # a request never read for (cancelled) is never sent
        stream = CoalescingStream(dropped)
        await stream.write(b"request")
        await stream.aclose()
        assert dropped.events == [("close",)]

        tunnel = FakeStream()  # a CONNECT through a proxy: what was kept goes before the handshake
        stream = CoalescingStream(tunnel)
        await stream.write(b"CONNECT")
        secured = await stream.start_tls(ssl.create_default_context(), "example.com")
        assert tunnel.events == [("write", b"CONNECT", None), ("tls", "example.com")]
        assert isinstance(secured, CoalescingStream)
    asyncio.run(go())
