"""`rlm serve`'s door: the ASGI middleware that refuses a request without the bearer token (401) or
with a declared body over the limit (413) before the app reads it, CORS outside it when origins are
allowed, and the access log (one line per request, never a body, a query string or a header)."""

from __future__ import annotations

import re
import sys
import time
from typing import Any

from .config import ServeConfig
from .errors import error_body


def add_guards(app, config: ServeConfig) -> None:
    """The bearer token, the body limit, and one access-log line per request; outside them CORS, when
    origins are allowed: a browser's preflight (which carries no token) is answered before the token
    is asked for, and every answer to an allowed origin carries its `Access-Control-*` headers."""
    app.add_middleware(Guard, config=config)
    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["*"], expose_headers=["Retry-After", "x-should-retry"], max_age=600)


class Guard:
    """ASGI middleware: refuses a request without the bearer token (401) or with a declared body over
    the limit (413) before the app reads it, and logs one line per request (the status, and the run
    id the endpoint puts in the request's state; a streamed reply logs itself when it ends). Plain
    ASGI rather than `@app.middleware`: Starlette's BaseHTTPMiddleware runs each request through a
    task group and memory streams, which cost `rlm serve` measurable CPU per request."""

    def __init__(self, app, config: ServeConfig) -> None:
        self.app = app
        self.config = config

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        status = [500]

        async def send_noting_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        refusal = self._refusal(scope, state)
        try:
            await (refusal or self.app)(scope, receive, send_noting_status)
        except Exception:
            self._log(scope, 500, None, started)
            raise
        if not state.get("streaming"):
            self._log(scope, status[0], state.get("run_id"), started)

    def _refusal(self, scope, state: dict[str, Any]):
        """The error response for a request refused at the door, or None (the client's name goes in `state`)."""
        from fastapi.responses import JSONResponse

        headers: dict[str, str] = {}
        for name, value in scope.get("headers", []):  # the first of a repeated header, as Starlette reads it
            headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
        if scope["path"] != "/health":
            client = self.config.client_of(headers.get("authorization", ""))
            if client is None:
                return JSONResponse(error_body("missing or wrong bearer token (Authorization: Bearer ...)",
                                               "authentication_error", "invalid_api_key"), status_code=401)
            state["client"] = client
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.config.max_body_bytes:
            return JSONResponse(error_body(f"request body over the {self.config.max_body_bytes:,}-byte limit; put "
                                           f"large inputs under the server's allowed root and send context.files",
                                           "invalid_request_error", "body_too_large"), status_code=413)
        return None

    def _log(self, scope, status: int, run_id: str | None, started: float) -> None:
        if self.config.access_log:
            log_access(scope["method"], scope["path"], status, run_id, started)


def log_access(method: str, path: str, status: int, run_id: str | None, started: float,
               streamed: bool = False) -> None:
    """One line on stderr per request: method, path, status, run id, time. Never a body, a query
    string or a header (they may hold keys or the user's text)."""
    elapsed = time.perf_counter() - started
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    print(f"{stamp} {method} {_printable(path[:200])} {status} run={run_id or '-'} {elapsed:.3f}s"
          + (" stream" if streamed else ""), file=sys.stderr, flush=True)


def _printable(path: str) -> str:
    """`path` with every character but printable ASCII percent-encoded: a decoded `%0a` in a path
    wrote a forged line into the access log."""
    return re.sub(r"[^\x21-\x7e]", lambda found: "".join(f"%{byte:02X}" for byte in
                                                          found.group().encode("utf-8", "surrogatepass")), path)
