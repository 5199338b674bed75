"""`rlm serve`: an OpenAI-compatible HTTP API in front of RLM runs (FastAPI + uvicorn): the app, its
routes, and answering one request.

`POST /v1/chat/completions` runs one RLM: the last user message is the query; the context is the
request's `context` field (text, a list, data, or `{"files": [...]}` under the server's allowed
root) or else the earlier messages. `model` names the configuration: `rlm` (the server's default
root model) or `rlm/<model>`. `GET /v1/models` lists them. `stream: true` sends progress chunks
and then the answer as `chat.completion.chunk` server-sent events.

The pieces live beside it: the settings and tokens (`config.py`, `tokens.py`), the door (`guard.py`),
the body's bounds and parsing (`body.py`), the typed request (`request.py`), the limits a request
may lower (`limits.py`), files under the allowed root (`paths.py`), running it (`runner.py`), the
answers and the stream (`answers.py`, `sse.py`), the connections (`transport.py`) and what a client
sees of an error (`errors.py`). docs/SECURITY.md lists what each guards.
"""

import secrets
import socket
import time
from typing import Any, Awaitable, Callable

from .answers import completion_body
from .body import parse_body, read_body
from .config import ServeConfig, served_names
from .errors import Redactor, RequestError, error_body
from .guard import add_guards
from .request import RESPONSES_FIELDS, RunRequest, answer_schema, parse_request, request_model
from .runner import ServerState, run_request
from .sse import chat_stream
from .transport import bind_socket, uvicorn_config

Build = Callable[[dict[str, Any]], RunRequest]


def create_app(config: ServeConfig):
    from fastapi import FastAPI

    config.check()
    redact = Redactor(config)
    app = FastAPI(title="recursive-llm", version=_version(), docs_url=None, redoc_url=None)
    from ..environments.prestart.pool import serve_with_pool  # pre-started workers, one per request (issue 17)
    serve_with_pool(app, size=config.max_concurrent, sandbox=config.sandbox)
    state = ServerState()
    request_model()  # built now (0.2 s), not on the event loop while the first request waits with the others

    async def close_stores() -> None:
        state.close()
    app.router.on_shutdown.append(close_stores)

    _add_error_handlers(app, redact)
    add_guards(app, config)
    _add_model_routes(app, config, state)
    _add_run_routes(app, config, state, redact)
    return app


def _add_model_routes(app, config: ServeConfig, state: ServerState) -> None:
    """`/health`, `/v1/models` and `/v1/models/{name}`."""
    @app.get("/health")
    async def health():
        return {"status": "ok", "active": state.active, "max_concurrent": config.max_concurrent}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_model_entry(name, state) for name in served_names(config)]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        if name not in served_names(config):
            raise RequestError(404, f"model {name[:200]!r} is not served here; GET /v1/models lists the ones that are",
                               code="model_not_found")
        return _model_entry(name, state)


def _add_run_routes(app, config: ServeConfig, state: ServerState, redact: Redactor) -> None:
    """The routes that run an RLM: chat completions, the legacy completions, the Responses API."""
    from fastapi import Request

    from . import completions as serve_completions
    from . import responses as serve_responses

    server = (config, state, redact)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        raw = await read_body(request, config)
        return await _answer(request, raw, lambda body: parse_request(body, config), server,
                             "chatcmpl-", completion_body, chat_stream)

    @app.post("/v1/completions")
    async def completions(request: Request):  # legacy: LlamaIndex's OpenAILike calls it by default
        raw = await read_body(request, config)
        return await _answer(request, raw, lambda body: parse_request(serve_completions.chat_body(body), config),
                             server, "cmpl-", serve_completions.completion_body, serve_completions.stream)

    @app.post("/v1/responses")
    async def responses(request: Request):
        def build(body: dict[str, Any]) -> RunRequest:
            return serve_responses.with_echo(parse_request(serve_responses.chat_body(body), config, RESPONSES_FIELDS),
                                             body)

        raw = await read_body(request, config)
        return await _answer(request, raw, build, server, "resp_", serve_responses.response_body,
                             serve_responses.stream)


def _model_entry(name: str, state: ServerState) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": int(state.started), "owned_by": "recursive-llm"}


async def _answer(request, raw: bytes, build: Build, server: tuple[ServeConfig, ServerState, Redactor],
                  prefix: str, body_of, stream_of):
    """Admit one request's run, then answer it. A full server answers 429 (with a Retry-After from the
    runs in flight) before the body is parsed; an admitted body is parsed (`body.parse_body`, in a
    thread when large), read into its `RunRequest` by `build(body)`, and its answer schema checked,
    all while it holds its slot. The answer is a body from `body_of(result, run, id, redact)`, or
    the stream of `stream_of`. A client that leaves stops its run; an SDK's retry joins the run of
    its earlier attempt (`runs.py`)."""
    from fastapi.responses import JSONResponse, StreamingResponse

    from .runs import ClientGone, attempt_key, retry_count

    config, state, redact = server
    state.admit(config)  # before the body is parsed: a full server parses nothing
    try:  # the slot is this request's from now on, while its body is parsed too
        body, run = await parse_body(raw, build)
        run = _admitted(run, await answer_schema(run.schema, run.schema_field), request, state)
    except BaseException:
        state.release()
        raise
    answer_id = prefix + secrets.token_hex(12)
    if run.stream:
        request.state.streaming = True  # logged when the stream ends, with its run id
        return StreamingResponse(stream_of(config, run, answer_id, redact, state),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    try:
        result = await state.attempts.answer(attempt_key(run.client, body), retry_count(request.headers),
                                             request.receive, lambda: run_request(config, run, None, state.stores))
    except ClientGone as gone:
        return JSONResponse(error_body(str(gone), "invalid_request_error", "client_closed_request"), status_code=499)
    finally:
        state.release(run)
    request.state.run_id = result.run_id
    return JSONResponse(body_of(result, run, answer_id, redact))


def _admitted(run: RunRequest, schema: Any, request, state: ServerState) -> RunRequest:
    """The request as admitted: its checked schema, its client, its run's ticket, when and where."""
    from dataclasses import replace

    return replace(run, schema=schema, client=request.state.client, ticket=state.clock.start(),
                   created=int(time.time()), path=request.url.path)


def _add_error_handlers(app, redact: Redactor) -> None:
    """Every error a client sees is an OpenAI-style JSON body, redacted (never a bare 500)."""
    from fastapi import Request
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(RequestError)
    async def request_error(_: Request, error: RequestError):
        return JSONResponse(error_body(redact(error.message), error.kind, error.code), status_code=error.status,
                            headers=error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):  # 404, 405: the clients' shape too
        from .responses import route_error

        message, code = route_error(request.method, request.url.path, error.status_code, str(error.detail))
        return JSONResponse(error_body(message, "invalid_request_error", code), status_code=error.status_code,
                            headers=getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, error: Exception):  # a bug of ours: still JSON, still redacted
        return JSONResponse(error_body(redact(f"internal error: {type(error).__name__}: {error}"[:500]),
                                       "server_error", "internal_error"), status_code=500)


def _version() -> str:
    from .. import __version__

    return __version__


def serve(config: ServeConfig, sock: socket.socket | None = None) -> None:
    """Run the server until SIGINT/SIGTERM; running requests get `shutdown_grace_s` to finish.
    `sock`: the socket from `transport.bind_socket` (bound here when not given)."""
    import uvicorn

    sock = sock or bind_socket(config)
    app = create_app(config)
    server = uvicorn.Server(uvicorn_config(app, config))
    server.run(sockets=[sock])
