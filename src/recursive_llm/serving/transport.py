"""`rlm serve`'s connections: the listening socket (bound before anything starts), uvicorn's
settings, and the bounds uvicorn has no setting for: a deadline for a request's headers and a cap on
open connections (`idle_timeout_h11`).

uvicorn (its `Config`, checked at 0.55) has no setting that times out a connection which never
sends a whole request's headers (its keep-alive timer starts after a first response), nor one that
refuses connections before reading them (`limit_concurrency` waits for headers). So
`idle_timeout_h11` subclasses its h11 protocol and leans on that class's internals: the attributes
`cycle` (the request in flight; None before the first), `connections`, `loop` and `transport`, and
the hooks `connection_made`, `handle_events`, `on_response_complete` and `connection_lost`. This
module is the only place that does; `tests/test_server_hostile.py::test_idle_and_slow_connections_are_closed`
fails if a uvicorn release changes them.
"""

from __future__ import annotations

import errno
import json
import math
import socket

from ..errors import ConfigError
from .config import ServeConfig
from .errors import error_body

TOO_MANY_CONNECTIONS = json.dumps(error_body("the server has too many open connections; retry shortly",
                                              "server_error", "too_many_connections")).encode()


def bind_socket(config: ServeConfig) -> socket.socket:
    """The server's listening socket, bound before anything starts (no worker, no banner), so that
    a port in use is one clear error (ConfigError, exit 4) rather than uvicorn's log line after it."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))
    except OSError as error:
        sock.close()
        busy = error.errno == errno.EADDRINUSE
        raise ConfigError(f"cannot listen on {config.host}:{config.port}: "
                          + ("the port is in use by another process; pick a free one with --port N, or stop "
                             "that process" if busy else f"{error.strerror or error}; check --host and --port")) from None
    sock.set_inheritable(True)
    return sock


def uvicorn_config(app, config: ServeConfig):
    """uvicorn's settings for `app`: h11 with the idle timeouts (`IdleTimeoutH11`), TCP_NODELAY."""
    import uvicorn

    return uvicorn.Config(app, host=config.host, port=config.port, log_level="warning", http=idle_timeout_h11(
        config.idle_timeout_s, config.max_connections), timeout_keep_alive=max(1, math.ceil(min(config.idle_timeout_s, 5))),
        timeout_graceful_shutdown=config.shutdown_grace_s)


def _no_delay(transport) -> None:
    """TCP_NODELAY on a connection's socket (a response's head and body go out in separate writes)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def _refuse(transport) -> None:
    """A 503 (OpenAI-shaped, `Retry-After: 1`) written at once, and the connection closed."""
    transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: "
                    + str(len(TOO_MANY_CONNECTIONS)).encode() + b"\r\n\r\n" + TOO_MANY_CONNECTIONS)
    transport.close()


def idle_timeout_h11(idle_timeout_s: float, max_connections: int):
    """uvicorn's h11 protocol, plus a timer it lacks: a connection that has not sent a whole request's
    headers within `idle_timeout_s` of connecting (or of its last response) is closed. uvicorn's own
    keep-alive timer only starts after a first response, so a silent connection, or one that sends
    headers a byte at a time, would otherwise stay open for ever. And a cap: a connection beyond
    `max_connections` open ones is answered 503 and closed at once, before it is read. The uvicorn
    internals it uses are listed in this module's docstring."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class IdleTimeoutH11(H11Protocol):
        _header_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                _refuse(self.transport)
                return
            _no_delay(transport)
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(idle_timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.cycle is None or self.cycle.response_complete:  # still waiting for a request's headers
                if not self.transport.is_closing():
                    self.transport.close()

        def handle_events(self) -> None:
            before = self.cycle
            super().handle_events()
            if self.cycle is not None and self.cycle is not before:
                self._disarm()  # a request's headers are in; the body has its own timeout

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # until the next request's headers (keep-alive has its own, shorter timer)

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return IdleTimeoutH11
