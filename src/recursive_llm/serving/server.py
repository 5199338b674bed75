"""`rlm serve`: an OpenAI-compatible HTTP API in front of RLM runs (FastAPI + uvicorn).

`POST /v1/chat/completions` runs one RLM: the last user message is the query; the context is the
request's `context` field (text, a list, data, or `{"files": [...]}` under the server's allowed
root) or else the earlier messages. `model` names the configuration: `rlm` (the server's default
root model) or `rlm/<model>`. `GET /v1/models` lists them. `stream: true` sends progress chunks
and then the answer as `chat.completion.chunk` server-sent events.

Safety: a bearer token (required to bind anything but loopback; from the environment or a file,
never only argv), a request-body limit, budgets a client can lower but never raise (`ServeLimits.
clamp`), a limit on concurrent runs (429 past it), error messages with no keys or server paths,
timeouts for idle and slow connections and a deadline for a whole body, a cap on open
connections, a call cache per client, and a graceful shutdown that lets
running requests finish. Text that arrives over the network is text: only `context.files` names
files, and only under the allowed root. Every malformed request gets a 400 with the reason.
"""


import asyncio
import errno
import functools
import hashlib
import hmac
import ipaddress
import json
import math
import re
import secrets
import socket
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .. import redaction
from ..errors import ConfigError, ContextError, RLMError
from ..config import CallPolicy, WorkerPolicy
from ..cli.options import SERVE_CEILINGS, SERVE_DEFAULTS, make_rlm
from . import params as serve_params
from .runs import NO_RETRY

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
MAX_JSON_DEPTH = 64  # deeper request bodies are refused (400) before anything walks them
MAX_NAME_CHARS = 4096  # a context.files entry (PATH_MAX); each part at most 255 (NAME_MAX)
PARSE_IN_THREAD_BYTES = 256 * 1024  # larger bodies are parsed off the event loop
CLIENT_GONE = 499  # the access log's status for a client that hung up mid-body (nginx's "client closed request")


@dataclass(frozen=True)
class ServeLimits:
    """The server's ceilings for one run. `clamp(request)` gives a request's limits: each value it
    asks for must be a finite positive number (whole for counts) and can lower a ceiling, never
    raise it. Anything else is refused with a RequestError (400) naming the field."""

    max_iterations: int = SERVE_CEILINGS["max_iterations"]
    max_depth: int = SERVE_CEILINGS["max_depth"]
    max_llm_calls: int | None = SERVE_CEILINGS["max_llm_calls"]
    max_tokens: int | None = SERVE_CEILINGS["max_tokens"]
    max_cost_usd: float | None = SERVE_CEILINGS["max_cost_usd"]
    timeout_s: float | None = SERVE_CEILINGS["timeout_s"]

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if value is None and item.name not in ("max_iterations", "max_depth"):
                continue
            try:
                object.__setattr__(self, item.name, _limit_value(item.name, value, f"the {item.name} ceiling"))
            except RequestError as error:
                raise ConfigError(error.message) from None

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(item.name for item in fields(cls))

    def clamp(self, requested: Any) -> "ServeLimits":
        if requested is None:
            return self
        if not isinstance(requested, dict):
            raise RequestError(400, "rlm must be an object of limits, e.g. {\"max_iterations\": 5}")
        changes = {}
        for name, value in requested.items():
            if name not in self.names():
                raise RequestError(400, f"unknown rlm option {str(name)[:64]!r}; allowed: {', '.join(self.names())}")
            value = _limit_value(name, value, f"rlm.{name}")
            ceiling = getattr(self, name)
            changes[name] = value if ceiling is None else min(value, ceiling)  # lower, never raise
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.names()}


_WHOLE_LIMITS = ("max_iterations", "max_depth", "max_llm_calls", "max_tokens")


def _limit_value(name: str, value: Any, label: str) -> int | float:
    """A finite positive number (a whole one for counts), or RequestError(400) naming `label`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(400, f"{label} must be a positive number, not {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise RequestError(400, f"{label} must be a finite positive number, not {value}")
    if value <= 0:
        raise RequestError(400, f"{label} must be a positive number, not {value}")
    if name in _WHOLE_LIMITS:
        if isinstance(value, float) and not value.is_integer():
            raise RequestError(400, f"{label} must be a whole number, not {value}")
        return int(value)
    return float(value)


CLIENT_LIMITS = ServeLimits.names()


@dataclass
class ServeConfig:
    model: str | None = None
    sub_model: str | None = None
    base_url: str | None = None
    host: str = SERVE_DEFAULTS["host"]
    port: int = SERVE_DEFAULTS["port"]
    token: str | None = None  # one client token; `tokens` holds more (one per client, for the cache)
    tokens: list[str] = field(default_factory=list)
    allowed_root: Path | None = None
    max_concurrent: int = SERVE_DEFAULTS["max_concurrent"]
    max_body_bytes: int = SERVE_DEFAULTS["max_body_mb"] * 1_000_000
    sandbox: str = WorkerPolicy.sandbox
    # The most a request may use; a request can ask for less (its "rlm" field), never more.
    limits: ServeLimits = field(default_factory=ServeLimits)
    extra_models: list[str] = field(default_factory=list)
    max_retries: int = CallPolicy.max_retries
    call_timeout_s: float | None = CallPolicy.call_timeout_s
    shutdown_grace_s: float = SERVE_DEFAULTS["shutdown_grace_s"]
    # A connection that sends nothing (or not a whole request's headers) for this long is closed;
    # a body that stops arriving for this long gets 408; an idle keep-alive connection is closed.
    idle_timeout_s: float = SERVE_DEFAULTS["idle_timeout_s"]
    # A request's whole body must arrive within this (a body trickled in under the idle timeout
    # held its connection for ever); more open connections than `max_connections` get 503.
    body_timeout_s: float = SERVE_DEFAULTS["body_timeout_s"]
    max_connections: int = SERVE_DEFAULTS["max_connections"]
    access_log: bool = False  # one line per request on stderr (`rlm serve` turns it on)
    cors_origins: list[str] = field(default_factory=list)  # browser origins allowed to call (CORS); "*": any

    def __post_init__(self) -> None:
        if isinstance(self.limits, dict):
            self.limits = ServeLimits(**self.limits)
        self.tokens = list(dict.fromkeys(([self.token] if self.token else []) + [t for t in self.tokens if t]))
        self.token = self.tokens[0] if self.tokens else None

    def check(self) -> None:
        if not self.tokens and not is_loopback(self.host):
            raise ConfigError(f"refusing to serve on {self.host} without a token: set RLM_SERVE_TOKEN or "
                              f"--token-file (anyone who can reach the port could spend your API budget)")
        if any(len(t) < 8 or any(c.isspace() for c in t) for t in self.tokens):
            raise ConfigError("a serve token must be at least 8 characters, with no spaces")
        if self.allowed_root is not None and not self.allowed_root.is_dir():
            raise ConfigError(f"--allowed-root {self.allowed_root} is not a directory")
        if self.max_concurrent < 1:
            raise ConfigError("--max-concurrent must be at least 1")
        for flag, seconds in (("--idle-timeout", self.idle_timeout_s), ("--body-timeout", self.body_timeout_s)):
            if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
                raise ConfigError(f"{flag} must be a positive number of seconds")
        if self.max_connections < self.max_concurrent:
            raise ConfigError("--max-connections must be at least --max-concurrent")

    def client_of(self, authorization: str) -> str | None:
        """The cache namespace of the client whose token this header carries, or None when it
        carries none of them. Every token is compared, in constant time."""
        if not self.tokens:
            return "serve:loopback"  # no tokens: every client is one client (loopback only)
        given = authorization.encode("utf-8", "surrogateescape")
        match = None
        for token in self.tokens:
            if hmac.compare_digest(given, f"Bearer {token}".encode()):
                match = token
        return None if match is None else "serve:" + hashlib.sha256(match.encode()).hexdigest()[:32]


def read_token_file(path: Path) -> list[str]:
    """Tokens from a file, one per line (blank lines and `#` comments ignored)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read the token file {path}: {error}") from None
    tokens = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not tokens:
        raise ConfigError(f"the token file {path} holds no token (one per line)")
    return tokens


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


class Redactor(redaction.Redactor):
    """Removes secrets (redaction.py: the environment's, the server's tokens, key-shaped text) and
    the server's paths from anything sent back to a client."""

    def __init__(self, config: ServeConfig) -> None:
        super().__init__(config.tokens)
        paths = [str(Path.home()), str(Path.cwd())]
        if config.allowed_root:
            paths.append(str(config.allowed_root.resolve()))
        from ..paths import rlm_home

        paths.append(str(rlm_home()))
        self._paths = sorted({p for p in paths if len(p) > 1}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        text = super().__call__(text)
        for path in self._paths:
            text = text.replace(path, "<server>")
        return text


# -- requests ---------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _request_model():
    """The chat-completions body as a pydantic model (built once: a class per request cost CPU)."""
    from pydantic import BaseModel, ConfigDict, Field

    class Message(BaseModel):
        model_config = ConfigDict(extra="allow")
        role: str
        content: str | list[dict[str, Any]] | None = None

    class Request(BaseModel):
        model_config = ConfigDict(extra="allow")
        model: str
        messages: list[Message]
        stream: bool = False
        temperature: float | None = Field(default=None, ge=0, le=2)
        max_tokens: int | None = Field(default=None, gt=0)
        stream_options: dict[str, Any] | None = None
        context: Any = None
        rlm: dict[str, Any] | None = None
        response_format: dict[str, Any] | None = None
        memory: str | None = None  # a memory workspace of this client's (memory.py)

    return Request


def parse_request(body: dict[str, Any], config: ServeConfig) -> dict[str, Any]:
    """Validate a chat-completions body and turn it into the arguments of one RLM run."""
    from pydantic import ValidationError

    try:
        request = _request_model().model_validate(body)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise RequestError(400, f"invalid request: {where[:200]}: {first['msg']}") from None
    root_model = resolve_model_name(request.model, config)
    texts = [(m.role, _text(m.content)) for m in request.messages]
    query, context = _query_and_context(texts, request.context, config)
    limits = config.limits.clamp(request.rlm)
    return serve_params.apply(body, {
        "model": root_model, "query": query, "context": context, "limits": limits, "stream": request.stream,
        "temperature": request.temperature, "max_output_tokens": request.max_tokens,
        "include_usage": bool((request.stream_options or {}).get("include_usage")), "requested": request.model,
        "schema": response_schema(request.response_format),
        "memory": _memory_name(request.memory)})


def _memory_name(name: str | None) -> str | None:
    """The request's `memory` workspace name, checked (a workspace is the client's own: `_run`)."""
    from ..engine.memory import check_workspace_name

    try:
        return None if name is None else check_workspace_name(name)
    except ConfigError as error:
        raise RequestError(400, str(error)) from None


def _query_and_context(texts: list[tuple[str, str]], field: Any, config: ServeConfig) -> tuple[str, Any]:
    """The root model's query and the run's input: the `context` field, else the messages, by the
    rules of `serve_messages` (the input is always text there, never a path)."""
    from ..context.loader import load_context_value
    from .messages import NoQuestion, query_and_input

    try:
        query, inputs = query_and_input(texts, field is not None)
    except NoQuestion as error:
        raise RequestError(400, str(error)) from None
    if field is not None:
        return query, load_request_context(field, config)
    return query, load_context_value(inputs[0] if len(inputs) == 1 else inputs)


def response_schema(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """OpenAI's `response_format` as a JSON schema for the answer (None: plain text)."""
    if response_format is None or response_format.get("type") in (None, "text"):
        return None
    if response_format.get("type") == "json_object":
        return {"type": "object"}
    if response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise RequestError(400, "response_format.json_schema.schema must be a JSON schema object")
        return schema
    raise RequestError(400, f"response_format.type must be text, json_object or json_schema, not "
                            f"{str(response_format.get('type'))[:40]!r}")


async def answer_schema(schema: dict[str, Any] | None):
    """The response format's schema, checked in a thread (within its bounds, references only inside
    it: `answer_schema.py`) after the request took its slot: a bad one is a 400 naming the problem."""
    if schema is None:
        return None
    from ..engine.answer_schema import AnswerSchema

    try:
        return await asyncio.to_thread(AnswerSchema, schema)
    except ConfigError as error:
        raise RequestError(400, f"response_format.json_schema.schema: {error}") from None


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
    from ..models.resolver import default_model_name

    names = [config.model or default_model_name(), *config.extra_models]
    return list(dict.fromkeys(names))


def load_request_context(value: Any, config: ServeConfig) -> Any:
    """The `context` field: text or data as is; `{"files": [...]}` only under the allowed root."""
    from ..context.loader import load_context_value, named_files

    try:
        files = named_files(value)
    except ContextError as error:
        raise RequestError(400, f"context: {error} (paths relative to the allowed root)") from None
    if files is not None:
        if config.allowed_root is None:
            raise RequestError(400, "file references are disabled on this server (it has no --allowed-root)")
        root = config.allowed_root.resolve()
        paths = [allowed_file(name, root) for name in files]
        return paths[0] if len(paths) == 1 else paths
    # text is text, and data is data: never read as a path on the server
    return load_context_value(value)


def allowed_file(name: str, root: Path) -> Path:
    """`name` as a real path under `root` (symlinks and `..` resolved first), or RequestError(400)."""
    shown = repr(name if len(name) <= 80 else name[:80] + "...")
    if "\x00" in name:
        raise RequestError(400, f"context file {shown} contains a NUL byte")
    if len(name) > MAX_NAME_CHARS or any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in name.split("/")):
        raise RequestError(400, f"context file {shown} is too long a name ({len(name):,} characters; at most "
                                f"{MAX_NAME_CHARS:,}, and 255 bytes per part)")
    if Path(name).is_absolute():
        raise RequestError(400, f"context file {shown} is outside the allowed root (give it relative to the root)")
    try:
        candidate = (root / name).resolve()  # follows every symlink on the way, the entry's own too
        if candidate != root and root not in candidate.parents:
            raise RequestError(400, f"context file {shown} is outside the allowed root"
                                    + (" (it is a symlink that leads out of it)" if _is_symlink(root / name) else ""))
        if not candidate.exists():
            raise RequestError(400, f"context file {shown} does not exist under the allowed root")
    except (OSError, ValueError, UnicodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else type(error).__name__
        raise RequestError(400, f"context file {shown} cannot be used: {reason}") from None
    return candidate


def _is_symlink(path: Path) -> bool:
    try:
        return path.is_symlink()
    except (OSError, ValueError):
        return False


def check_body(body: Any) -> None:
    """Refuse bodies nested deeper than MAX_JSON_DEPTH or holding strings that are not Unicode
    (lone surrogates from `\\ud800` escapes): 400 with the reason, before anything else reads them."""
    stack = [(body, 1, "body")]
    while stack:
        value, depth, where = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise RequestError(400, f"the request body is nested more than {MAX_JSON_DEPTH} levels deep")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    _check_text(key, where)
                if isinstance(item, (dict, list, str)):
                    stack.append((item, depth + 1, f"{where}.{key}" if isinstance(key, str) else f"{where}[{key}]"))
        elif isinstance(value, str):
            _check_text(value, where)


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise RequestError(400, f"{where[:120]} is not valid Unicode text (a lone surrogate "
                                f"{text[error.start]!r} at character {error.start})") from None


def _parse_json(raw: bytes) -> Any:
    def constant(name: str):
        raise ValueError(f"{name} is not a JSON number (numbers must be finite)")

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"{text[:40]} is too large a number")
        return value

    try:
        return json.loads(raw or b"null", parse_constant=constant, parse_float=finite)
    except RecursionError:
        raise RequestError(400, f"the request body is nested more than {MAX_JSON_DEPTH} levels deep") from None
    except json.JSONDecodeError as error:
        raise RequestError(400, f"the request body is not valid JSON: {error.msg} at character {error.pos}") from None
    except UnicodeDecodeError:
        raise RequestError(400, "the request body is not valid JSON: it is not UTF-8") from None
    except ValueError as error:
        raise RequestError(400, f"the request body is not valid JSON: {error}") from None


# -- the app ----------------------------------------------------------------------------------------
def create_app(config: ServeConfig):
    from fastapi import FastAPI, Request

    config.check()
    redact = Redactor(config)
    app = FastAPI(title="recursive-llm", version=_version(), docs_url=None, redoc_url=None)
    from ..environments.prestart.pool import serve_with_pool  # pre-started workers, one per request (issue 17)
    serve_with_pool(app, size=config.max_concurrent, sandbox=config.sandbox)
    state: dict[str, Any] = {"active": 0, "started": time.time(), "stores": {}}  # stores: _store_for
    _request_model()  # built now (0.2 s), not on the event loop while the first request waits with the others

    async def close_stores() -> None:
        for store in state["stores"].values():
            store.close()
    app.router.on_shutdown.append(close_stores)

    _add_error_handlers(app, redact)
    _add_guards(app, config)

    @app.get("/health")
    async def health():
        return {"status": "ok", "active": state["active"], "max_concurrent": config.max_concurrent}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_model_entry(name, state) for name in _served_names(config)]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        if name not in _served_names(config):
            raise RequestError(404, f"model {name[:200]!r} is not served here; GET /v1/models lists the ones that are",
                               code="model_not_found")
        return _model_entry(name, state)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        raw = await _read_body(request, config)
        return await _answer(request, raw, lambda body: parse_request(body, config), (config, state, redact),
                             "chatcmpl-", _completion_body, _stream)

    @app.post("/v1/completions")
    async def completions(request: Request):  # legacy: LlamaIndex's OpenAILike calls it by default
        from . import completions as serve_completions

        raw = await _read_body(request, config)
        return await _answer(request, raw, lambda body: parse_request(serve_completions.chat_body(body), config),
                             (config, state, redact), "cmpl-", serve_completions.completion_body,
                             serve_completions.stream)

    @app.post("/v1/responses")
    async def responses(request: Request):
        from . import responses as serve_responses

        def build(body: dict[str, Any]) -> dict[str, Any]:
            args = parse_request(serve_responses.chat_body(body), config)
            args["echo"] = serve_responses.echo(body)
            return args

        raw = await _read_body(request, config)
        return await _answer(request, raw, build, (config, state, redact), "resp_", serve_responses.response_body,
                             serve_responses.stream)

    return app


def _served_names(config: ServeConfig) -> list[str]:
    return ["rlm", *(f"rlm/{name}" for name in allowed_models(config))]


def _model_entry(name: str, state: dict[str, Any]) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": int(state["started"]), "owned_by": "recursive-llm"}


async def _answer(request, raw: bytes, build, server: tuple, prefix: str, body_of, stream_of):
    """Admit one request's run, then answer it. A full server answers 429 (with a Retry-After from the
    runs in flight) before the body is parsed; an admitted body is parsed (`_parse_body`, in a thread
    when large), turned into the run's arguments by `build(body)`, and its answer schema checked, all
    while it holds its slot. The answer is a body from `body_of(result, args, id, redact)`, or the
    stream of `stream_of`. A client that leaves stops its run; an SDK's retry joins the run of its
    earlier attempt (`serve_runs`)."""
    from fastapi.responses import JSONResponse, StreamingResponse

    from .runs import Attempts, ClientGone, RunClock, attempt_key, retry_count

    config, state, redact = server
    clock = state.setdefault("clock", RunClock())
    if state["active"] >= config.max_concurrent:  # before the body is parsed: a full server parses nothing
        raise RequestError(429, f"the server is running {config.max_concurrent} requests, its limit; retry shortly",
                           "rate_limit_error", "too_many_requests", headers={"Retry-After": clock.retry_after()})
    state["active"] += 1  # the slot is this request's from now on, while its body is parsed too
    try:
        body, args = await _parse_body(raw, build)
        args["schema"] = await answer_schema(args["schema"])
    except BaseException:
        state["active"] -= 1
        raise
    args["client"] = request.state.client
    args["ticket"], args["created"], args["path"] = clock.start(), int(time.time()), request.url.path
    answer_id = prefix + secrets.token_hex(12)
    if args["stream"]:
        request.state.streaming = True  # logged when the stream ends, with its run id
        return StreamingResponse(stream_of(config, args, answer_id, redact, state),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    try:
        attempts = state.setdefault("attempts", Attempts())
        result = await attempts.answer(attempt_key(args["client"], body), retry_count(request.headers),
                                       request.receive, lambda: _run(config, args, None, state["stores"]))
    except ClientGone as gone:
        return JSONResponse(error_body(str(gone), "invalid_request_error", "client_closed_request"), status_code=499)
    finally:
        _release(state, args)
    request.state.run_id = result.run_id
    return JSONResponse(body_of(result, args, answer_id, redact))


def _release(state: dict[str, Any], args: dict[str, Any]) -> None:
    state["active"] -= 1
    state["clock"].end(args["ticket"])


def _add_error_handlers(app, redact: "Redactor") -> None:
    """Every error a client sees is an OpenAI-style JSON body, redacted (never a bare 500)."""
    from fastapi import Request
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from fastapi.responses import JSONResponse

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


def _add_guards(app, config: ServeConfig) -> None:
    """The bearer token, the body limit, and one access-log line per request; outside them CORS, when
    origins are allowed: a browser's preflight (which carries no token) is answered before the token
    is asked for, and every answer to an allowed origin carries its `Access-Control-*` headers."""
    app.add_middleware(Guard, config=config)
    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["GET", "POST"],
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


async def _read_body(request, config: ServeConfig) -> bytes:
    """The request's body, unparsed: at most `max_body_bytes` (413), each chunk within the idle
    timeout and the whole within `body_timeout_s` (408 and the connection closed: a body trickled
    in one byte at a time held its connection for ever); a client that hangs up mid-body is 499,
    logged as such, with no traceback."""
    from starlette.requests import ClientDisconnect

    received = bytearray()
    chunks = request.stream().__aiter__()
    deadline = time.monotonic() + config.body_timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), max(0.0, min(config.idle_timeout_s, left)))
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            why = (f"the request body took more than {config.body_timeout_s:g} s to arrive"
                   if left <= config.idle_timeout_s else
                   f"the request body stopped arriving for {config.idle_timeout_s:g} s")
            raise RequestError(408, why, code="request_timeout", headers={"Connection": "close"}) from None
        except ClientDisconnect:
            raise RequestError(CLIENT_GONE, "the client disconnected before its whole request body arrived",
                               code="client_disconnected") from None
        received += chunk
        if len(received) > config.max_body_bytes:
            raise RequestError(413, f"request body over the {config.max_body_bytes:,}-byte limit", code="body_too_large")
    return bytes(received)


async def _parse_body(raw: bytes, build) -> tuple[dict[str, Any], dict[str, Any]]:
    """A request's body and its run's arguments (`build(body)`, which calls `parse_request`); a large
    body is parsed in a thread, so the event loop goes on answering (`/health`, other streams)."""
    def parse() -> tuple[dict[str, Any], dict[str, Any]]:
        body = _parse_json(raw)
        if not isinstance(body, dict):
            raise RequestError(400, "the request body must be a JSON object")
        check_body(body)
        return body, build(body)

    return parse() if len(raw) < PARSE_IN_THREAD_BYTES else await asyncio.to_thread(parse)


def _store_for(stores: dict[str, Any], client: str | None):
    """The run store of a client's requests: one per client for the server's life (opening one per
    request cost CPU under load), so the call cache is per client: one client's cached calls never
    answer (and so reveal) another's. A store that failed is replaced for the next request (the
    runs still using it finish with it)."""
    from ..record.store import Store

    namespace = client or "serve:loopback"
    store = stores.get(namespace)
    if store is None or store.error is not None:
        store = stores[namespace] = Store(cache_namespace=namespace)
    return store


def _workspace_for(args: dict[str, Any]):
    """The request's memory workspace, scoped to its client: another client's token never reaches it."""
    from ..engine.memory import Workspace

    name = args.get("memory")
    return None if name is None else Workspace(name, owner=args.get("client") or "serve:loopback")


async def _run(config: ServeConfig, args: dict[str, Any], on_event, stores: dict[str, Any]):
    limits: ServeLimits = args["limits"]
    store = _store_for(stores, args.get("client"))
    started: dict[str, str] = {}

    def listen(event: dict[str, Any]) -> None:
        if event["type"] == "run_start" and event.get("parent_run_id") is None:
            started["run_id"] = event["run_id"]
        if on_event is not None:
            on_event(event)

    try:
        rlm = make_rlm(limits.as_dict(), model=args["model"], sub_model=config.sub_model, base_url=config.base_url,
                       sandbox=config.sandbox, temperature=args["temperature"], max_retries=config.max_retries,
                       max_output_tokens=args["max_output_tokens"], call_timeout_s=config.call_timeout_s,
                       on_event=listen, store=store, memory=_workspace_for(args))
        return await rlm.acompletion(args["query"], args["context"], schema=args.get("schema"))
    except asyncio.CancelledError:  # the client went away (or shutdown ran out of grace): it will not end
        if "run_id" in started:
            store.interrupt(started["run_id"], "the client disconnected before the run finished; it was stopped")
        raise
    except ContextError as error:
        raise RequestError(400, f"bad context: {error}") from None
    except ConfigError as error:
        raise RequestError(400, f"bad configuration: {error}") from None
    except RLMError as error:
        raise RequestError(502, f"the run failed: {error}", "server_error", headers=NO_RETRY) from None


def _usage(result) -> dict[str, int]:
    total = result.usage.total
    return {"prompt_tokens": total.prompt_tokens, "completion_tokens": total.completion_tokens,
            "total_tokens": total.total_tokens}


def _rlm_info(result, redact) -> dict[str, Any]:
    return {"run_id": result.run_id, "stopped_reason": result.stopped_reason, "iterations": result.iterations,
            "cost_usd": round(result.cost_usd, 8), "cached_calls": result.usage.total.cached_calls,
            "error": redact(result.error) if result.error else None,
            "store_error": redact(result.store_error) if getattr(result, "store_error", None) else None}


def require_answer(result, redact) -> None:
    """RequestError 502 for a run that ended without an answer; the client is told not to retry (a
    retry is another paid run, and the same input fails the same way)."""
    if result.answer is None:
        raise RequestError(502, redact(f"the run ended ({result.stopped_reason}) without an answer: {result.error}"),
                           "server_error", "run_failed", headers=NO_RETRY)


def _completion_body(result, args, completion_id: str, redact) -> dict[str, Any]:
    require_answer(result, redact)
    message, finish = serve_params.message(args, _content(result, args))  # text, or a forced function's call
    return {"id": completion_id, "object": "chat.completion", "created": args["created"], "model": args["requested"],
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": _usage(result), "rlm": _rlm_info(result, redact)}


def _content(result, args) -> str:
    """The answer; with a response_format, the validated JSON itself."""
    if args.get("schema") is not None and result.parsed is not None:
        from ..result import _plain

        return json.dumps(_plain(result.parsed), ensure_ascii=False)
    return result.answer


def _chunk(completion_id: str, args: dict[str, Any], delta: dict, finish: str | None = None, **extra) -> str:
    """One chunk; every chunk of a stream has the same `created`."""
    payload = {"id": completion_id, "object": "chat.completion.chunk", "created": args["created"],
               "model": args["requested"],
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


_PROGRESS_EVENTS = {"run_start", "iteration", "cell", "run_end", "fallback"}


async def _stream(config: ServeConfig, args: dict[str, Any], completion_id: str, redact, state: dict):
    """Progress events (chunks with an empty delta and an `rlm_event` field, which clients ignore),
    then the answer in content chunks, then a final chunk (with usage if asked), then [DONE]."""
    queue: asyncio.Queue = asyncio.Queue()
    model = args["requested"]
    started, seen = time.perf_counter(), {}

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "run_start" and event.get("parent_run_id") is None:
            seen.setdefault("run_id", event["run_id"])
        if event["type"] in _PROGRESS_EVENTS:
            summary = {"type": event["type"], "depth": event.get("depth"), "iteration": event.get("iteration")}
            if event["type"] == "cell":
                summary["error"] = redact(event["error"]) if event.get("error") else None
            queue.put_nowait(summary)

    task = asyncio.create_task(_run(config, args, on_event, state["stores"]))
    try:
        yield _chunk(completion_id, args, {"role": "assistant", "content": ""})
        while not task.done() or not queue.empty():
            getter = asyncio.create_task(queue.get())
            done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield _chunk(completion_id, args, {}, rlm_event=getter.result())
            else:
                getter.cancel()
        try:
            result = task.result()
            require_answer(result, redact)
        except RequestError as error:
            yield f"data: {json.dumps(error_body(redact(error.message), error.kind, error.code))}\n\n"
            yield "data: [DONE]\n\n"
            return
        except Exception as error:  # a bug of ours: the client still gets a JSON error, redacted
            message = redact(f"internal error: {type(error).__name__}: {error}"[:500])
            yield f"data: {json.dumps(error_body(message, 'server_error', 'internal_error'))}\n\n"
            yield "data: [DONE]\n\n"
            return
        message, finish = serve_params.message(args, _content(result, args))
        if message["content"] is None:  # a forced function's call, in one delta
            yield _chunk(completion_id, args, {"tool_calls": [{"index": 0, **message["tool_calls"][0]}]})
        for start in range(0, len(message["content"] or ""), 200):
            yield _chunk(completion_id, args, {"content": message["content"][start:start + 200]})
        yield _chunk(completion_id, args, {}, finish, rlm=_rlm_info(result, redact))
        if args["include_usage"]:
            payload = {"id": completion_id, "object": "chat.completion.chunk", "created": args["created"],
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
        _release(state, args)
        if config.access_log:
            log_access("POST", args.get("path", "/v1/chat/completions"), 200, seen.get("run_id"), started, streamed=True)


def log_access(method: str, path: str, status: int, run_id: str | None, started: float,
               streamed: bool = False) -> None:
    """One line on stderr per request: method, path, status, run id, time. Never a body, a query
    string or a header (they may hold keys or the user's text)."""
    import sys

    elapsed = time.perf_counter() - started
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    print(f"{stamp} {method} {_printable(path[:200])} {status} run={run_id or '-'} {elapsed:.3f}s"
          + (" stream" if streamed else ""), file=sys.stderr, flush=True)


def _printable(path: str) -> str:
    """`path` with every character but printable ASCII percent-encoded: a decoded `%0a` in a path
    wrote a forged line into the access log."""
    return re.sub(r"[^\x21-\x7e]", lambda found: "".join(f"%{byte:02X}" for byte in
                                                          found.group().encode("utf-8", "surrogatepass")), path)


def _version() -> str:
    from .. import __version__

    return __version__


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


def serve(config: ServeConfig, sock: socket.socket | None = None) -> None:
    """Run the server until SIGINT/SIGTERM; running requests get `shutdown_grace_s` to finish.
    `sock`: the socket from `bind_socket` (bound here when not given)."""
    import uvicorn

    sock = sock or bind_socket(config)
    app = create_app(config)
    server = uvicorn.Server(uvicorn_config(app, config))
    server.run(sockets=[sock])


def uvicorn_config(app, config: ServeConfig):
    """uvicorn's settings for `app`: h11 with the idle timeouts (`IdleTimeoutH11`), TCP_NODELAY."""
    import uvicorn

    return uvicorn.Config(app, host=config.host, port=config.port, log_level="warning", http=idle_timeout_h11(
        config.idle_timeout_s, config.max_connections), timeout_keep_alive=max(1, math.ceil(min(config.idle_timeout_s, 5))),
        timeout_graceful_shutdown=config.shutdown_grace_s)


def _no_delay(transport) -> None:
    """TCP_NODELAY on a connection's socket (a response's head and body go out in separate writes)."""
    import socket

    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


TOO_MANY_CONNECTIONS = json.dumps(error_body("the server has too many open connections; retry shortly",
                                              "server_error", "too_many_connections")).encode()


def idle_timeout_h11(idle_timeout_s: float, max_connections: int):
    """uvicorn's h11 protocol, plus a timer it lacks: a connection that has not sent a whole request's
    headers within `idle_timeout_s` of connecting (or of its last response) is closed. uvicorn's own
    keep-alive timer only starts after a first response, so a silent connection, or one that sends
    headers a byte at a time, would otherwise stay open for ever. And a cap: a connection beyond
    `max_connections` open ones is answered 503 (OpenAI-shaped, `Retry-After: 1`) and closed at once,
    before it is read (uvicorn's own `limit_concurrency` waits for a request's headers)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class IdleTimeoutH11(H11Protocol):
        _header_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                self._refuse()
                return
            _no_delay(transport)
            self._arm()

        def _refuse(self) -> None:
            self.transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                 b"Retry-After: 1\r\nConnection: close\r\nContent-Length: "
                                 + str(len(TOO_MANY_CONNECTIONS)).encode() + b"\r\n\r\n" + TOO_MANY_CONNECTIONS)
            self.transport.close()

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
