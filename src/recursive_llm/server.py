"""`rlm serve`: an OpenAI-compatible HTTP API in front of RLM runs (FastAPI + uvicorn).

`POST /v1/chat/completions` runs one RLM: the last user message is the query; the context is the
request's `context` field (text, a list, data, or `{"files": [...]}` under the server's allowed
root) or else the earlier messages. `model` names the configuration: `rlm` (the server's default
root model) or `rlm/<model>`. `GET /v1/models` lists them. `stream: true` sends progress chunks
and then the answer as `chat.completion.chunk` server-sent events.

Safety: a bearer token (required to bind anything but loopback), a request-body limit, budgets a
client can lower but never raise, a limit on concurrent runs (429 past it), error messages with
no keys or server paths, and a graceful shutdown that lets running requests finish.
"""


import asyncio
import hmac
import ipaddress
import json
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BudgetExceeded, ConfigError, ContextError, RLMError

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
CLIENT_LIMITS = ("max_iterations", "max_depth", "max_llm_calls", "max_tokens", "max_cost_usd", "timeout_s")


@dataclass
class ServeConfig:
    model: str | None = None
    sub_model: str | None = None
    base_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    allowed_root: Path | None = None
    max_concurrent: int = 8
    max_body_bytes: int = 10_000_000
    sandbox: str = "auto"
    # The most a request may use; a request can ask for less (its "rlm" field), never more.
    limits: dict[str, Any] = field(default_factory=lambda: {
        "max_iterations": 20, "max_depth": 1, "max_llm_calls": 500, "max_tokens": None, "max_cost_usd": None,
        "timeout_s": 600.0})
    extra_models: list[str] = field(default_factory=list)
    max_retries: int = 4
    call_timeout_s: float | None = 300.0
    shutdown_grace_s: float = 30.0

    def check(self) -> None:
        if self.token is None and not is_loopback(self.host):
            raise ConfigError(f"refusing to serve on {self.host} without a token: set RLM_SERVE_TOKEN or --token "
                              f"(anyone who can reach the port could spend your API budget)")
        if self.allowed_root is not None and not self.allowed_root.is_dir():
            raise ConfigError(f"--allowed-root {self.allowed_root} is not a directory")
        if self.max_concurrent < 1:
            raise ConfigError("--max-concurrent must be at least 1")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RequestError(Exception):
    """An error that becomes an OpenAI-style error response."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.headers = status, message, kind, code, headers or {}


def error_body(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class Redactor:
    """Removes secrets and server paths from anything sent back to a client."""

    def __init__(self, config: ServeConfig) -> None:
        secrets_ = [value for name, value in os.environ.items()
                    if value and len(value) >= 8 and re.search(r"KEY|TOKEN|SECRET|PASSWORD", name)]
        if config.token:
            secrets_.append(config.token)
        paths = [str(Path.home()), str(Path.cwd())]
        if config.allowed_root:
            paths.append(str(config.allowed_root.resolve()))
        from .paths import rlm_home

        paths.append(str(rlm_home()))
        self._secrets = sorted(set(secrets_), key=len, reverse=True)
        self._paths = sorted({p for p in paths if len(p) > 1}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        for path in self._paths:
            text = text.replace(path, "<server>")
        return re.sub(r"sk-[A-Za-z0-9_\-]{8,}", "[redacted]", text)


# -- requests ---------------------------------------------------------------------------------------
def parse_request(body: dict[str, Any], config: ServeConfig) -> dict[str, Any]:
    """Validate a chat-completions body and turn it into the arguments of one RLM run."""
    from pydantic import BaseModel, ConfigDict, ValidationError

    class Message(BaseModel):
        model_config = ConfigDict(extra="allow")
        role: str
        content: str | list[dict[str, Any]] | None = None

    class Request(BaseModel):
        model_config = ConfigDict(extra="allow")
        model: str
        messages: list[Message]
        stream: bool = False
        temperature: float | None = None
        max_tokens: int | None = None
        stream_options: dict[str, Any] | None = None
        context: Any = None
        rlm: dict[str, Any] | None = None

    try:
        request = Request.model_validate(body)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise RequestError(400, f"invalid request: {where}: {first['msg']}") from None
    root_model = resolve_model_name(request.model, config)
    texts = [(m.role, _text(m.content)) for m in request.messages]
    users = [i for i, (role, _) in enumerate(texts) if role == "user"]
    if not users or not texts[users[-1]][1].strip():
        raise RequestError(400, "the last user message is the question, and there is none (or it is empty)")
    last = users[-1]
    instructions = "\n".join(text for role, text in texts if role in ("system", "developer") and text.strip())
    query = texts[last][1] if not instructions else f"{instructions}\n\n{texts[last][1]}"
    if request.context is not None:
        context = load_request_context(request.context, config)
    else:
        earlier = [text for i, (role, text) in enumerate(texts) if i != last and role in ("user", "assistant", "tool")
                   and text.strip()]
        if not earlier:
            raise RequestError(400, "no context: send it in the `context` field, or as earlier messages")
        context = earlier[0] if len(earlier) == 1 else earlier
    limits = dict(config.limits)
    for name, value in (request.rlm or {}).items():
        if name not in CLIENT_LIMITS:
            raise RequestError(400, f"unknown rlm option {name!r}; allowed: {', '.join(CLIENT_LIMITS)}")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise RequestError(400, f"rlm.{name} must be a positive number")
        ceiling = config.limits.get(name)
        limits[name] = value if ceiling is None else min(value, ceiling)  # lower, never raise
    return {"model": root_model, "query": query, "context": context, "limits": limits, "stream": request.stream,
            "temperature": request.temperature, "max_output_tokens": request.max_tokens,
            "include_usage": bool((request.stream_options or {}).get("include_usage")), "requested": request.model}


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text")


def resolve_model_name(requested: str, config: ServeConfig) -> str | None:
    if requested == "rlm":
        return config.model
    if requested.startswith("rlm/") and len(requested) > 4:
        name = requested[4:]
        if name in allowed_models(config):
            return name
    raise RequestError(404, f"model {requested!r} is not served here; GET /v1/models lists the ones that are",
                       code="model_not_found")


def allowed_models(config: ServeConfig) -> list[str]:
    from .models.resolver import default_model_name

    names = [config.model or default_model_name(), *config.extra_models]
    return list(dict.fromkeys(names))


def load_request_context(value: Any, config: ServeConfig) -> Any:
    """The `context` field: text or data as is; `{"files": [...]}` only under the allowed root."""
    if isinstance(value, dict) and set(value) == {"files"}:
        if config.allowed_root is None:
            raise RequestError(400, "file references are disabled on this server (it has no --allowed-root)")
        files = value["files"]
        if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
            raise RequestError(400, "context.files must be a non-empty list of paths relative to the allowed root")
        root = config.allowed_root.resolve()
        paths = []
        for name in files:
            candidate = (root / name).resolve()
            if Path(name).is_absolute() or (candidate != root and root not in candidate.parents):
                raise RequestError(400, f"context file {name!r} is outside the allowed root")
            if not candidate.exists():
                raise RequestError(400, f"context file {name!r} does not exist under the allowed root")
            paths.append(candidate)
        return paths[0] if len(paths) == 1 else paths
    if isinstance(value, str):
        from .context.loader import load_context_value

        return load_context_value(value)  # text is text: never read as a path on the server
    return value


# -- the app ----------------------------------------------------------------------------------------
def create_app(config: ServeConfig):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    config.check()
    redact = Redactor(config)
    app = FastAPI(title="recursive-llm", version=_version(), docs_url=None, redoc_url=None)
    state = {"active": 0, "started": time.time()}

    @app.exception_handler(RequestError)
    async def request_error(_: Request, error: RequestError):
        return JSONResponse(error_body(redact(error.message), error.kind, error.code), status_code=error.status,
                            headers=error.headers)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if config.token is not None and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {config.token}".encode()):
                return JSONResponse(error_body("missing or wrong bearer token (Authorization: Bearer ...)",
                                               "authentication_error", "invalid_api_key"), status_code=401)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > config.max_body_bytes:
            return JSONResponse(error_body(f"request body over the {config.max_body_bytes:,}-byte limit; put large "
                                           f"inputs under the server's allowed root and send context.files",
                                           "invalid_request_error", "body_too_large"), status_code=413)
        return await call_next(request)

    @app.get("/health")
    async def health():
        return {"status": "ok", "active": state["active"], "max_concurrent": config.max_concurrent}

    @app.get("/v1/models")
    async def models():
        created = int(state["started"])
        names = ["rlm", *(f"rlm/{name}" for name in allowed_models(config))]
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created,
                                            "owned_by": "recursive-llm"} for name in names]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _read_body(request, config.max_body_bytes)
        args = parse_request(body, config)
        if state["active"] >= config.max_concurrent:
            raise RequestError(429, f"the server is running {config.max_concurrent} requests, its limit; retry shortly",
                               "rate_limit_error", "too_many_requests", headers={"Retry-After": "1"})
        state["active"] += 1
        completion_id = "chatcmpl-" + secrets.token_hex(12)
        if args["stream"]:
            return StreamingResponse(_stream(config, args, completion_id, redact, state),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            result = await _run(config, args, None)
        finally:
            state["active"] -= 1
        return JSONResponse(_completion_body(result, args, completion_id, redact))

    return app


async def _read_body(request, limit: int) -> dict[str, Any]:
    received = bytearray()
    async for chunk in request.stream():
        received += chunk
        if len(received) > limit:
            raise RequestError(413, f"request body over the {limit:,}-byte limit", code="body_too_large")
    try:
        body = json.loads(received or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RequestError(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    return body


async def _run(config: ServeConfig, args: dict[str, Any], on_event):
    from .rlm import RLM

    limits = args["limits"]
    try:
        rlm = RLM(model=args["model"], sub_model=config.sub_model, base_url=config.base_url,
                  max_depth=int(limits["max_depth"]), max_iterations=int(limits["max_iterations"]),
                  max_llm_calls=limits.get("max_llm_calls"), max_tokens=limits.get("max_tokens"),
                  max_cost_usd=limits.get("max_cost_usd"), timeout_s=limits.get("timeout_s"),
                  sandbox=config.sandbox, temperature=args["temperature"], max_retries=config.max_retries,
                  max_output_tokens=args["max_output_tokens"],
                  call_timeout_s=config.call_timeout_s, on_event=on_event)
        return await rlm.acompletion(args["query"], args["context"])
    except ContextError as error:
        raise RequestError(400, f"bad context: {error}") from None
    except ConfigError as error:
        raise RequestError(400, f"bad configuration: {error}") from None
    except BudgetExceeded as error:
        raise RequestError(429, f"budget exceeded: {error}", "rate_limit_error") from None
    except RLMError as error:
        raise RequestError(502, f"the run failed: {error}", "server_error") from None


def _finish_reason(result) -> str:
    return "stop" if result.stopped_reason == "final" else "length"


def _usage(result) -> dict[str, int]:
    total = result.usage.total
    return {"prompt_tokens": total.prompt_tokens, "completion_tokens": total.completion_tokens,
            "total_tokens": total.total_tokens}


def _rlm_info(result, redact) -> dict[str, Any]:
    return {"run_id": result.run_id, "stopped_reason": result.stopped_reason, "iterations": result.iterations,
            "cost_usd": round(result.cost_usd, 8), "cached_calls": result.usage.total.cached_calls,
            "error": redact(result.error) if result.error else None}


def _completion_body(result, args, completion_id: str, redact) -> dict[str, Any]:
    if result.answer is None:
        raise RequestError(502, redact(f"the run ended ({result.stopped_reason}) without an answer: {result.error}"),
                           "server_error")
    return {"id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": args["requested"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.answer},
                         "finish_reason": _finish_reason(result), "logprobs": None}],
            "usage": _usage(result), "rlm": _rlm_info(result, redact)}


def _chunk(completion_id: str, model: str, delta: dict, finish: str | None = None, **extra) -> str:
    payload = {"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


_PROGRESS_EVENTS = {"run_start", "iteration", "cell", "run_end", "fallback"}


async def _stream(config: ServeConfig, args: dict[str, Any], completion_id: str, redact, state: dict):
    """Progress events (chunks with an empty delta and an `rlm_event` field, which clients ignore),
    then the answer in content chunks, then a final chunk (with usage if asked), then [DONE]."""
    queue: asyncio.Queue = asyncio.Queue()
    model = args["requested"]

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] in _PROGRESS_EVENTS:
            summary = {"type": event["type"], "depth": event.get("depth"), "iteration": event.get("iteration")}
            if event["type"] == "cell":
                summary["error"] = redact(event["error"]) if event.get("error") else None
            queue.put_nowait(summary)

    task = asyncio.create_task(_run(config, args, on_event))
    try:
        yield _chunk(completion_id, model, {"role": "assistant", "content": ""})
        while not task.done() or not queue.empty():
            getter = asyncio.create_task(queue.get())
            done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield _chunk(completion_id, model, {}, rlm_event=getter.result())
            else:
                getter.cancel()
        try:
            result = task.result()
            if result.answer is None:
                raise RequestError(502, f"the run ended ({result.stopped_reason}) without an answer: {result.error}",
                                   "server_error")
        except RequestError as error:
            yield f"data: {json.dumps(error_body(redact(error.message), error.kind, error.code))}\n\n"
            yield "data: [DONE]\n\n"
            return
        answer = result.answer
        for start in range(0, len(answer), 200):
            yield _chunk(completion_id, model, {"content": answer[start:start + 200]})
        yield _chunk(completion_id, model, {}, _finish_reason(result), rlm=_rlm_info(result, redact))
        if args["include_usage"]:
            payload = {"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()),
                       "model": model, "choices": [], "usage": _usage(result)}
            yield f"data: {json.dumps(payload)}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        if not task.done():  # the client went away: stop the run (its worker is closed by the run)
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        state["active"] -= 1


def _version() -> str:
    from . import __version__

    return __version__


def serve(config: ServeConfig) -> None:
    """Run the server until SIGINT/SIGTERM; running requests get `shutdown_grace_s` to finish."""
    import uvicorn

    app = create_app(config)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning",
                timeout_graceful_shutdown=config.shutdown_grace_s)
