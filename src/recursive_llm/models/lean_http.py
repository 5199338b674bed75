"""The `lean` transport's HTTP/1.1 client: a keep-alive connection pool on asyncio for one endpoint.

Why it exists: at a wide fan-out every call's CPU on the host's one loop thread delays the calls
behind it. aiohttp spends about 0.15 ms per call, most of it in its request machinery (cookies,
redirect and proxy handling, tracing hooks, multidicts); a thousand calls 64 wide wait for that in
every wave (benchmarks/speed_limits.py fanout, docs/BENCHMARKS.md "Issue 17, seventh part").

What it does: one request at a time per connection, the request written in one piece (its head is
built once per client), the response parsed by `httptools` (the llhttp parser of Node.js, as
uvicorn uses it: Content-Length, chunked and close-delimited bodies, strict about malformed ones);
a bound on the response's head and body; a connect timeout and a timeout between reads; gzip and
deflate bodies decoded (it asks for none); an idle connection is not reused once the server has
closed it or after KEEPALIVE_EXPIRY_S (before the 5 s after which uvicorn, which vLLM runs on,
closes one). A POST is never sent twice: a connection that fails mid-request is a connection
failure, which the scheduler retries (with its backoff, counting the attempt) or not.

What it does not do, and `OpenAIClient` hands to aiohttp instead: proxies (a client whose endpoint
has one never uses this pool) and redirects (a 3xx answer is sent again through aiohttp).
"""

from __future__ import annotations

import asyncio
import ssl
import time
import zlib
from collections.abc import Callable
from urllib.parse import urlsplit

import httptools

MAX_HEAD_BYTES = 64 * 1024  # a response's status line and headers
MAX_BODY_BYTES = 64 * 1024 * 1024  # a response's body (after decoding): far above any chat completion
MAX_IDLE_CONNECTIONS = 1000  # kept open per pool; the scheduler bounds how many are in use
KEEPALIVE_EXPIRY_S = 4.0  # an idle connection older than this is closed, not reused
_BODY_TOO_LARGE = "the response's body is over {:,} bytes"


class ResponseRefused(Exception):
    """A response this client will not read: over a bound, or in an encoding it cannot decode."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; `exchange` sends a request and waits for its whole response."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0  # when it went back to the pool
        self._reply: asyncio.Future | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_read = 0.0

    # -- asyncio.Protocol -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # asyncio sets TCP_NODELAY itself
        self._parser = httptools.HttpResponseParser(self)  # one per connection: llhttp reads message after message

    def data_received(self, data: bytes) -> None:
        self._last_read = time.monotonic()
        if self._reply is None or self._reply.done():  # bytes nobody asked for: the connection is unusable
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:  # raised for a callback's exception too
            self._fail(self._refusal or ConnectionError(f"malformed HTTP response ({error})"))

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, error: Exception | None) -> None:
        self.closed = True
        reply = self._reply
        if reply is None or reply.done():
            return
        if self._status is not None and self._delimited_by_close:  # HTTP/1.0 style: the body ends here
            self._finish(keep_alive=False)
        else:
            reply.set_exception(ConnectionError(
                f"the server closed the connection before the response ended ({error or 'EOF'})"))

    # -- httptools callbacks ----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._reply is None or self._reply.done():  # a second answer in the bytes of the first
            self._refuse("the server sent an answer nobody asked for")  # data_received closes the connection

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refuse(f"the response's headers are over {MAX_HEAD_BYTES:,} bytes")
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        headers = self._headers
        self._delimited_by_close = "content-length" not in headers and "transfer-encoding" not in headers
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib, by its header
        elif encoding != "identity":
            self._refuse(f"the response is encoded as {encoding!r}, which this client cannot read")

    def on_body(self, chunk: bytes) -> None:
        if self._decoder is not None:  # at most one byte past the bound, never the whole bomb
            chunk = self._decoder.decompress(chunk, MAX_BODY_BYTES + 1 - self._body_bytes)
        self._body_bytes += len(chunk)
        if self._body_bytes > MAX_BODY_BYTES:
            self._refuse(_BODY_TOO_LARGE.format(MAX_BODY_BYTES))
        self._body.append(chunk)

    def _refuse(self, why: str) -> None:
        self._refusal = ResponseRefused(why)
        raise self._refusal  # stops the parser; data_received fails the request with it

    def on_message_complete(self) -> None:
        if self._status is not None and self._status < 200:  # an informational answer (103): the real one follows
            self._start_response()
            return
        self._finish(keep_alive=self._parser.should_keep_alive())

    # -- requests ---------------------------------------------------------------------------------
    async def exchange(self, request: bytes, read_timeout: float) -> tuple[int, dict[str, str], bytes]:
        """Send `request`; the response's status, headers (lower-case names) and body."""
        loop = asyncio.get_running_loop()
        self._start_response()
        self._keep_alive = False
        self._reply = reply = loop.create_future()
        self._last_read = time.monotonic()
        self._timer = loop.call_later(read_timeout, self._check_read_timeout, read_timeout)
        try:
            self.transport.write(request)  # type: ignore[union-attr]
            return await reply
        finally:
            self._timer.cancel()
            self._reply = None

    def _start_response(self) -> None:
        self._status: int | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._head_bytes = self._body_bytes = 0
        self._decoder = None
        self._delimited_by_close = False
        self._refusal: ResponseRefused | None = None

    @property
    def reusable(self) -> bool:
        """Kept alive, still open, and the whole request sent (a server may answer, say with a 413,
        before it has read the body: the rest of it must not run into the next request)."""
        return (self._keep_alive and not self.closed and self.transport is not None
                and self.transport.get_write_buffer_size() == 0)

    def _finish(self, *, keep_alive: bool) -> None:
        body = b"".join(self._body)
        if self._decoder is not None:
            body += self._decoder.flush()
            if len(body) > MAX_BODY_BYTES:
                self._fail(ResponseRefused(_BODY_TOO_LARGE.format(MAX_BODY_BYTES)))
                return
        self._keep_alive = keep_alive
        self._reply.set_result((self._status, self._headers, body))  # type: ignore[union-attr]

    def _check_read_timeout(self, limit: float) -> None:
        reply = self._reply
        if reply is None or reply.done():
            return
        idle = time.monotonic() - self._last_read
        if idle >= limit:
            self._fail(TimeoutError(f"no byte from the server for {limit:g} s"))
        else:
            self._timer = asyncio.get_running_loop().call_later(limit - idle, self._check_read_timeout, limit)

    def _fail(self, error: BaseException) -> None:
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(error)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class LeanPool:
    """Keep-alive connections to the host of `url`, and POSTs of JSON to its path.

    `headers` are sent with every request (with Host, Content-Length and Accept-Encoding: identity).
    Belongs to the event loop it is used on (models/loop_clients.py keeps one per loop)."""

    def __init__(self, url: str, headers: dict[str, str], *, ssl_context: Callable[[], ssl.SSLContext]) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl_context() if parts.scheme == "https" else None
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"POST {target} HTTP/1.1", f"Host: {parts.netloc.rpartition('@')[2]}",
                 *(f"{name}: {value}" for name, value in headers.items()
                   if name.lower() not in ("host", "content-length", "accept-encoding")),
                 "Accept-Encoding: identity", "Content-Length: "]
        for line in lines:
            if "\r" in line or "\n" in line:  # header injection: refused before anything is sent
                name = line.partition(":")[0] if ":" in line else "the request line"
                raise ValueError(f"the {name} header holds a line break; check the API key, the base URL "
                                 f"and OPENAI_ORG_ID / OPENAI_PROJECT_ID")
        self._head = "\r\n".join(lines).encode("latin-1")
        self._idle: list[_Connection] = []
        self._closed = False

    async def post(self, body: bytes, *, connect_timeout: float,
                   read_timeout: float) -> tuple[int, dict[str, str], bytes]:
        """POST `body`: (status, headers with lower-case names, body). Raises TimeoutError,
        ConnectionError or OSError (no answer), ResponseRefused (an answer it will not read)."""
        request = b"%s%d\r\n\r\n%s" % (self._head, len(body), body)
        connection = self._take_idle() or await self._connect(connect_timeout)
        try:
            result = await connection.exchange(request, read_timeout)
        except BaseException:  # failed, timed out, cancelled: the connection's state is unknown
            connection.close()
            raise
        if connection.reusable and not self._closed and len(self._idle) < MAX_IDLE_CONNECTIONS:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()
        return result

    def _take_idle(self) -> _Connection | None:
        expired = time.monotonic() - KEEPALIVE_EXPIRY_S
        while self._idle:
            connection = self._idle.pop()  # the most recently used: the likeliest to be alive
            if not connection.closed and connection.idle_since > expired:
                return connection
            connection.close()
        return None

    async def _connect(self, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            _, connection = await loop.create_connection(
                _Connection, self.host, self.port, ssl=self._ssl, server_hostname=self.host if self._ssl else None)
        return connection

    async def aclose(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()
