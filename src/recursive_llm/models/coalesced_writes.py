"""A request's head and body leave in one write: httpcore2's network streams, wrapped.

httpcore2 writes an HTTP/1.1 request in pieces (the head, then each chunk of the body), and its
anyio stream yields to the event loop after every write. With many calls in flight on one loop the
body then waits behind every other ready task before it is sent, and the server, which cannot
answer a request whose body has not come, waits with it: at 1,000 sub-calls 64 wide at 100 ms that
was 3 to 7% of the fan-out's wall time (docs/BENCHMARKS.md, "Fan-out"). Here the pieces are kept
until the stream is read (httpcore2 reads the response only once the request is written) or until
they pass FLUSH_AT bytes, then sent in one write: one syscall and one yield per request instead of
two, and the request is whole as soon as its first byte leaves.

It plugs into httpcore2's public network backend interface (`AsyncNetworkBackend`,
`AsyncNetworkStream`) around the backend the pool already has, so connecting, TLS, timeouts and
errors stay httpcore2's and anyio's. Installing it reaches one private attribute of httpx2's
transport and of httpcore2's pool (`coalesce_writes`); if they move, the route keeps the plain
backend (tests/test_openai_transport.py fails, rather than the calls).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import Any

import httpcore2

FLUSH_AT = 64 * 1024  # pieces kept past this many bytes are sent at once (a large body is not copied)


class CoalescingStream(httpcore2.AsyncNetworkStream):
    """A network stream whose writes are kept until the next read, TLS upgrade or FLUSH_AT bytes."""

    def __init__(self, inner: httpcore2.AsyncNetworkStream) -> None:
        self._inner = inner
        self._pending: list[bytes] = []
        self._size = 0
        self._timeout: float | None = None

    async def _flush(self) -> None:
        if not self._pending:
            return
        pieces, self._pending, self._size = self._pending, [], 0
        await self._inner.write(pieces[0] if len(pieces) == 1 else b"".join(pieces), self._timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        self._timeout = timeout
        if len(buffer) >= FLUSH_AT:  # a large piece goes as it is, after what was kept
            await self._flush()
            await self._inner.write(buffer, timeout)
            return
        self._pending.append(buffer)
        self._size += len(buffer)
        if self._size >= FLUSH_AT:
            await self._flush()

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            await self._flush()
        except httpcore2.WriteError:
            # As httpcore2 does when a write fails: read on, for a server may have answered (413,
            # say) and closed before taking the whole request.
            pass
        return await self._inner.read(max_bytes, timeout)

    async def aclose(self) -> None:
        self._pending, self._size = [], 0  # a request never read for is never sent
        await self._inner.aclose()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore2.AsyncNetworkStream:
        await self._flush()
        return CoalescingStream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class CoalescingBackend(httpcore2.AsyncNetworkBackend):
    """Connects with `inner` (httpcore2's own backend) and wraps each stream in CoalescingStream."""

    def __init__(self, inner: httpcore2.AsyncNetworkBackend) -> None:
        self.inner = inner

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore2.AsyncNetworkStream:
        return CoalescingStream(await self.inner.connect_tcp(host, port, timeout=timeout, local_address=local_address,
                                                             socket_options=socket_options))

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> httpcore2.AsyncNetworkStream:
        return CoalescingStream(await self.inner.connect_unix_socket(path, timeout=timeout,
                                                                     socket_options=socket_options))

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def coalesce_writes(transport: Any) -> bool:
    """Wrap the network backend of an httpx2 transport's pool (the direct pool or a proxy's) before
    its first connection; False, changing nothing, when the transport is not one whose pool has one."""
    pool = getattr(transport, "_pool", None)  # httpx2.AsyncHTTPTransport's httpcore2 pool (private)
    backend = getattr(pool, "_network_backend", None)  # the pool's backend, handed to each connection (private)
    if not isinstance(backend, httpcore2.AsyncNetworkBackend):
        return False
    if not isinstance(backend, CoalescingBackend):
        pool._network_backend = CoalescingBackend(backend)
    return True
