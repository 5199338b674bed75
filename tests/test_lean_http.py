"""The `lean` transport (models/lean_http.py) against servers that answer the way real ones do and
the way hostile ones do: raw bytes from a socket server, so every framing is exercised as written.

The behaviour it shares with the other transports (errors for 429/500/503, garbage, dropped
connections, refused connections, timeouts, proxies) is in tests/test_openai_transport.py."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import socketserver
import ssl
import subprocess
import threading

import pytest

from recursive_llm.errors import ModelError
from recursive_llm.models import lean_http
from recursive_llm.models.openai_client import OpenAIClient

MESSAGES = [{"role": "user", "content": "hi"}]


def completion_json(text: str = "fine") -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 1}}).encode()


def framed(body: bytes, *extra: str, status: str = "200 OK") -> bytes:
    """A whole response with a Content-Length."""
    head = [f"HTTP/1.1 {status}", "Content-Type: application/json", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def read_request(stream) -> bytes | None:
    """One request from `stream` (a socket file), or None at EOF."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = stream.read(1)
        if not byte:
            return None
        head += byte
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    return head + stream.read(length)


class RawServer:
    """A threaded TCP server on 127.0.0.1; `serve(stream, index)` answers one connection (index:
    how many connections came before it) by reading requests with `read_request` and writing bytes."""

    def __init__(self, serve, *, tls: ssl.SSLContext | None = None) -> None:
        self.connections = 0
        self.requests: list[bytes] = []
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                index, outer.connections = outer.connections, outer.connections + 1
                try:
                    serve(self, index)
                except (OSError, ssl.SSLError):
                    pass

            def next_request(self) -> bytes | None:
                request = read_request(self.rfile)
                if request is not None:
                    outer.requests.append(request)
                return request

            def send(self, data: bytes) -> None:
                self.wfile.write(data)
                self.wfile.flush()

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

            def get_request(self):
                sock, address = super().get_request()
                return (tls.wrap_socket(sock, server_side=True) if tls else sock), address

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "RawServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def calls(url: str, count: int = 1, *, timeout: float | None = None, pause: float = 0.0):
    """`count` completions in a row (`pause` s apart) on one lean client and loop: the texts, and the
    ModelError that stopped them (or None)."""
    async def go():
        client = OpenAIClient("m", base_url=url, api_key="sk-test", transport="lean")
        texts = []
        try:
            for index in range(count):
                if index:
                    await asyncio.sleep(pause)
                texts.append((await client.complete(MESSAGES, timeout=timeout)).text)
        except ModelError as error:
            return texts, error
        finally:
            await client.aclose()
        return texts, None
    return asyncio.run(go())


def keep_alive(reply: bytes):
    def serve(conn, index):
        while conn.next_request() is not None:
            conn.send(reply)
    return serve


def test_one_connection_is_kept_alive_for_call_after_call():
    with RawServer(keep_alive(framed(completion_json("a")))) as server:
        texts, error = calls(f"http://127.0.0.1:{server.port}/v1", 5)
    assert (texts, error, server.connections) == (["a"] * 5, None, 1)
    first = server.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"Authorization: Bearer sk-test\r\n" in first and b"Accept-Encoding: identity\r\n" in first
    assert json.loads(first.split(b"\r\n\r\n", 1)[1]) == {"model": "m", "messages": MESSAGES}


def test_an_idle_connection_the_server_closed_or_that_expired_is_not_reused(monkeypatch):
    """A server that closes each connection after one answer (keep-alive said, as an idle timeout
    does); then a server that keeps them, but idle past KEEPALIVE_EXPIRY_S: a new connection each time."""
    def serve(conn, index):
        if conn.next_request() is not None:
            conn.send(framed(completion_json(f"c{index}")))

    with RawServer(serve) as server:
        assert calls(f"http://127.0.0.1:{server.port}/v1", 3, pause=0.2) == (["c0", "c1", "c2"], None)
    assert len(server.requests) == 3  # each call was sent once: a POST is never sent twice
    monkeypatch.setattr(lean_http, "KEEPALIVE_EXPIRY_S", 0.1)
    with RawServer(keep_alive(framed(completion_json()))) as server:
        assert calls(f"http://127.0.0.1:{server.port}/v1", 3, pause=0.3) == (["fine"] * 3, None)
        assert server.connections == 3
    monkeypatch.setattr(lean_http, "KEEPALIVE_EXPIRY_S", 5.0)
    with RawServer(keep_alive(framed(completion_json()))) as server:
        assert calls(f"http://127.0.0.1:{server.port}/v1", 3, pause=0.3) == (["fine"] * 3, None)
        assert server.connections == 1


def test_a_connection_that_dies_mid_answer_is_a_connection_failure_and_not_retried():
    def serve(conn, index):
        if conn.next_request() is not None:
            conn.send(framed(completion_json())[:60])  # part of the head; then the socket closes

    with RawServer(serve) as server:
        texts, error = calls(f"http://127.0.0.1:{server.port}/v1")
    assert texts == [] and "connection failed" in str(error) and error.retryable
    assert server.connections == 1  # the transport did not retry it: the scheduler decides


def test_chunked_close_delimited_and_gzip_bodies():
    body = completion_json("chunked")
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:])) + b"0\r\n\r\n")
    with RawServer(keep_alive(chunked)) as server:
        assert calls(f"http://127.0.0.1:{server.port}/v1", 2) == (["chunked", "chunked"], None)
        assert server.connections == 1

    def close_delimited(conn, index):
        if conn.next_request() is not None:
            conn.send(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + completion_json("till close"))

    with RawServer(close_delimited) as server:
        assert calls(f"http://127.0.0.1:{server.port}/v1", 2) == (["till close", "till close"], None)
        assert server.connections == 2

    packed = gzip.compress(completion_json("unpacked"))
    with RawServer(keep_alive(framed(packed, "Content-Encoding: gzip"))) as server:
        assert calls(f"http://127.0.0.1:{server.port}/v1") == (["unpacked"], None)


def test_an_informational_answer_before_the_real_one_is_skipped():
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
    with RawServer(keep_alive(hints + framed(completion_json("real")))) as server:
        assert calls(f"http://127.0.0.1:{server.port}/v1", 2) == (["real", "real"], None)


def test_a_status_error_carries_its_retry_after_and_keeps_the_connection():
    reply = framed(b'{"error": {"message": "slow down"}}', "Retry-After: 3", status="429 Too Many Requests")
    with RawServer(keep_alive(reply)) as server:
        texts, error = calls(f"http://127.0.0.1:{server.port}/v1")
        assert "HTTP 429" in str(error) and "slow down" in str(error)
        assert (error.retryable, error.retry_after, error.status_code) == (True, 3.0, 429)

        async def twice(url):
            client = OpenAIClient("m", base_url=url, transport="lean")
            try:
                for _ in range(2):
                    with pytest.raises(ModelError, match="HTTP 429"):
                        await client.complete(MESSAGES)
            finally:
                await client.aclose()

        asyncio.run(twice(f"http://127.0.0.1:{server.port}/v1"))
    assert server.connections == 2  # one per client: the second 429 came on the first one's connection


@pytest.mark.parametrize("hostile", ["huge body", "huge head", "gzip bomb", "unknown encoding", "not http",
                                     "bytes nobody asked for"])
def test_hostile_responses_are_refused_within_the_bounds(hostile, monkeypatch):
    monkeypatch.setattr(lean_http, "MAX_BODY_BYTES", 100_000)
    monkeypatch.setattr(lean_http, "MAX_HEAD_BYTES", 4_000)
    replies = {
        "huge body": framed(b"x" * 300_000),
        "huge head": framed(completion_json(), *(f"X-Filler-{i}: {'y' * 100}" for i in range(100))),
        "gzip bomb": framed(gzip.compress(b" " * 50_000_000), "Content-Encoding: gzip"),
        "unknown encoding": framed(b"....", "Content-Encoding: br"),
        "not http": b"SSH-2.0-OpenSSH_9.6\r\n" * 10,
        "bytes nobody asked for": None,
    }

    def serve(conn, index):
        if hostile == "bytes nobody asked for":  # an answer, then more bytes on the idle connection
            conn.next_request()
            conn.send(framed(completion_json("first")) + b"HTTP/1.1 200 OK\r\n")
            if conn.next_request() is not None:
                conn.send(framed(completion_json("never")))
            return
        while conn.next_request() is not None:
            conn.send(replies[hostile])

    with RawServer(serve) as server:
        texts, error = calls(f"http://127.0.0.1:{server.port}/v1", 2)
    if hostile == "bytes nobody asked for":  # the poisoned connection is dropped, not read as the next answer
        assert (texts, error, server.connections) == (["first", "first"], None, 2)  # never "never"
        return
    assert texts == [] and isinstance(error, ModelError)
    if hostile == "not http":
        assert "connection failed" in str(error) and "malformed HTTP response" in str(error)
    else:
        assert "response refused" in str(error) and not error.retryable
        assert ("100,000 bytes" in str(error)) == (hostile in ("huge body", "gzip bomb"))


def test_a_server_that_stops_sending_times_out_between_reads():
    def serve(conn, index):
        if conn.next_request() is not None:
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")  # and then nothing
            conn.rfile.read(1)  # until the client hangs up

    with RawServer(serve) as server:
        texts, error = calls(f"http://127.0.0.1:{server.port}/v1", timeout=0.5)
    assert texts == [] and "timed out" in str(error) and error.retryable


def test_a_redirect_is_followed_through_aiohttp():
    with RawServer(keep_alive(framed(completion_json("moved here")))) as target:
        moved = framed(b"", f"Location: http://127.0.0.1:{target.port}/v2/chat/completions",
                       status="307 Temporary Redirect")
        with RawServer(keep_alive(moved)) as server:
            assert calls(f"http://127.0.0.1:{server.port}/v1") == (["moved here"], None)
    assert target.requests[0].startswith(b"POST /v2/chat/completions ")


def test_a_cancelled_call_does_not_leave_its_connection_in_the_pool():
    answered = threading.Event()

    def serve(conn, index):
        while (request := conn.next_request()) is not None:
            if b"slow" in request:
                answered.wait(5)  # answer late: after the client gave up on it
            conn.send(framed(completion_json("slow" if b"slow" in request else "quick")))

    async def go(url):
        client = OpenAIClient("m", base_url=url, transport="lean")
        try:
            slow = asyncio.ensure_future(client.complete([{"role": "user", "content": "slow"}]))
            await asyncio.sleep(0.3)
            slow.cancel()
            answered.set()
            return (await client.complete(MESSAGES)).text
        finally:
            await client.aclose()

    with RawServer(serve) as server:
        assert asyncio.run(go(f"http://127.0.0.1:{server.port}/v1")) == "quick"  # not the late "slow"
    assert server.connections == 2


def test_a_header_with_a_line_break_is_refused_before_anything_is_sent():
    with RawServer(keep_alive(framed(completion_json()))) as server:
        client = OpenAIClient("m", base_url=f"http://127.0.0.1:{server.port}/v1", api_key="sk\r\nX-Evil: 1",
                              transport="lean")
        with pytest.raises(ValueError, match="the Authorization header holds a line break; check the API key"):
            asyncio.run(client.complete(MESSAGES))
    assert server.requests == []


@pytest.fixture
def self_signed(tmp_path):
    """A certificate for 127.0.0.1 and localhost, and a server context serving it."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return cert, context


def test_https_is_verified_against_the_trusted_certificates(self_signed, monkeypatch):
    from recursive_llm.models.tls import shared_ssl_context

    cert, context = self_signed
    with RawServer(keep_alive(framed(completion_json("over tls"))), tls=context) as server:
        url = f"https://localhost:{server.port}/v1"
        shared_ssl_context.cache_clear()
        try:
            texts, error = calls(url)  # certifi's bundle does not know this certificate
            assert texts == [] and "connection failed" in str(error) and "CERTIFICATE_VERIFY_FAILED" in str(error)
            monkeypatch.setenv("SSL_CERT_FILE", str(cert))
            shared_ssl_context.cache_clear()
            assert calls(url, 3) == (["over tls"] * 3, None)
        finally:
            monkeypatch.delenv("SSL_CERT_FILE")
            shared_ssl_context.cache_clear()
    assert server.connections == 1  # (the refused handshake never reached a handler) one connection, three calls


def test_an_answer_that_comes_before_the_whole_request_is_sent_retires_the_connection():
    """A server that answers 413 after reading only the head, saying keep-alive: the rest of the
    body is still in the client's buffers, so that connection must not carry the next request."""
    done = threading.Event()

    def serve(conn, index):
        if index == 0:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                head += conn.rfile.read(1)
            conn.send(framed(b'{"error": {"message": "too large"}}', status="413 Payload Too Large"))
            done.wait(10)  # reads nothing more: the client's write buffer stays full
            return
        keep_alive(framed(completion_json("next")))(conn, index)

    async def go(url):
        client = OpenAIClient("m", base_url=url, transport="lean")
        try:
            with pytest.raises(ModelError, match="HTTP 413"):
                await client.complete([{"role": "user", "content": "x" * 30_000_000}], timeout=5)
            return (await client.complete(MESSAGES, timeout=2)).text
        finally:
            done.set()
            await client.aclose()

    with RawServer(serve) as server:
        assert asyncio.run(go(f"http://127.0.0.1:{server.port}/v1")) == "next"
    assert server.connections == 2
