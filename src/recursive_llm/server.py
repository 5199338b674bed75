"""`rlm serve`: an OpenAI-compatible HTTP API in front of RLM runs (FastAPI + uvicorn).

`POST /v1/chat/completions` runs one RLM: the last user message is the query; the context is the
request's `context` field (text, a list, data, or `{"files": [...]}` under the server's allowed
root) or else the earlier messages. `model` names the configuration: `rlm` (the server's default
root model) or `rlm/<model>`. `GET /v1/models` lists them. `stream: true` sends progress chunks
and then the answer as `chat.completion.chunk` server-sent events.

Safety: a bearer token (required to bind anything but loopback; from the environment or a file,
never only argv), a request-body limit, budgets a client can lower but never raise (`ServeLimits.
clamp`), a limit on concurrent runs (429 past it), error messages with no keys or server paths,
timeouts for idle and slow connections, a call cache per client, and a graceful shutdown that lets
running requests finish. Text that arrives over the network is text: only `context.files` names
files, and only under the allowed root. Every malformed request gets a 400 with the reason.
"""


import asyncio
import functools
import hashlib
import hmac
import ipaddress
import json
import math
import os
import re
import secrets
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError, ContextError, RLMError
from .config import CallPolicy, WorkerPolicy
from .options import SERVE_CEILINGS, SERVE_DEFAULTS, make_rlm

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
MAX_JSON_DEPTH = 64  # deeper request bodies are refused (400) before anything walks them
MAX_NAME_CHARS = 4096  # a context.files entry (PATH_MAX); each part at most 255 (NAME_MAX)


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
    access_log: bool = False  # one line per request on stderr (`rlm serve` turns it on)

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
        if not (isinstance(self.idle_timeout_s, (int, float)) and math.isfinite(self.idle_timeout_s)
                and self.idle_timeout_s > 0):
            raise ConfigError("--idle-timeout must be a positive number of seconds")

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


class Redactor:
    """Removes secrets and server paths from anything sent back to a client."""

    def __init__(self, config: ServeConfig) -> None:
        secrets_ = [value for name, value in os.environ.items()
                    if value and len(value) >= 8 and re.search(r"KEY|TOKEN|SECRET|PASSWORD", name)]
        secrets_ += config.tokens
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
    users = [i for i, (role, _) in enumerate(texts) if role == "user"]
    if not users or not texts[users[-1]][1].strip():
        raise RequestError(400, "the last user message is the question, and there is none (or it is empty)")
    last = users[-1]
    instructions = "\n".join(text for role, text in texts if role in ("system", "developer") and text.strip())
    query = texts[last][1] if not instructions else f"{instructions}\n\n{texts[last][1]}"
    if request.context is not None:
        context = load_request_context(request.context, config)
    else:
        query, context = _context_from_messages(texts, last, query)
    limits = config.limits.clamp(request.rlm)
    return {"model": root_model, "query": query, "context": context, "limits": limits, "stream": request.stream,
            "temperature": request.temperature, "max_output_tokens": request.max_tokens,
            "include_usage": bool((request.stream_options or {}).get("include_usage")), "requested": request.model,
            "schema": response_schema(request.response_format), "memory": _memory_name(request.memory)}


def _memory_name(name: str | None) -> str | None:
    """The request's `memory` workspace name, checked (a workspace is the client's own: `_run`)."""
    from .memory import check_workspace_name

    try:
        return None if name is None else check_workspace_name(name)
    except ConfigError as error:
        raise RequestError(400, str(error)) from None


def _context_from_messages(texts: list[tuple[str, str]], last: int, query: str) -> tuple[str, Any]:
    """The input when the request has no `context` field (chat clients such as `llm` cannot add one):
    the earlier user/assistant/tool messages; else, in a single message, everything before the question,
    which is its last paragraph (after the last blank line) or, with no blank line, its last line.
    Text is always text, never a path."""
    from .context.loader import load_context_value

    earlier = [text for i, (role, text) in enumerate(texts) if i != last and role in ("user", "assistant", "tool")
               and text.strip()]
    if earlier:
        return query, load_context_value(earlier[0] if len(earlier) == 1 else earlier)
    message = texts[last][1].strip()
    parts = re.split(r"\n[ \t]*\n", message)
    if len(parts) < 2:  # no blank line: the last line is the question (`cat f | llm "q"` joins with a space)
        parts = message.split("\n")
    if len(parts) < 2 or not parts[-1].strip():
        raise RequestError(400, "no context: send it in the `context` field, as earlier messages, or in the same "
                                "message before the question (the question is the last paragraph, after a blank "
                                "line, or the last line)")
    question, body = parts[-1].strip(), message[:len(message) - len(parts[-1])].strip()
    return query[:len(query) - len(texts[last][1])] + question, load_context_value(body)


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
    from .context.loader import load_context_value

    if isinstance(value, dict) and set(value) == {"files"}:
        if config.allowed_root is None:
            raise RequestError(400, "file references are disabled on this server (it has no --allowed-root)")
        files = value["files"]
        if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
            raise RequestError(400, "context.files must be a non-empty list of paths relative to the allowed root")
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
    from fastapi.responses import JSONResponse, StreamingResponse

    config.check()
    redact = Redactor(config)
    app = FastAPI(title="recursive-llm", version=_version(), docs_url=None, redoc_url=None)
    from .environments.pool import serve_with_pool  # pre-started workers, one per request (issue 17)
    serve_with_pool(app, size=config.max_concurrent, sandbox=config.sandbox)
    state: dict[str, Any] = {"active": 0, "started": time.time(), "stores": {}}  # stores: _store_for

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
        created = int(state["started"])
        names = ["rlm", *(f"rlm/{name}" for name in allowed_models(config))]
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created,
                                            "owned_by": "recursive-llm"} for name in names]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _read_body(request, config.max_body_bytes, config.idle_timeout_s)
        args = parse_request(body, config)
        args["client"] = request.state.client
        if state["active"] >= config.max_concurrent:
            raise RequestError(429, f"the server is running {config.max_concurrent} requests, its limit; retry shortly",
                               "rate_limit_error", "too_many_requests", headers={"Retry-After": "1"})
        state["active"] += 1
        completion_id = "chatcmpl-" + secrets.token_hex(12)
        if args["stream"]:
            request.state.streaming = True  # logged when the stream ends, with its run id
            return StreamingResponse(_stream(config, args, completion_id, redact, state),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            result = await _run(config, args, None, state["stores"])
        finally:
            state["active"] -= 1
        request.state.run_id = result.run_id
        return JSONResponse(_completion_body(result, args, completion_id, redact))

    return app


def _add_error_handlers(app, redact: "Redactor") -> None:
    """Every error a client sees is an OpenAI-style JSON body, redacted (never a bare 500)."""
    from fastapi import Request
    from fastapi.responses import JSONResponse

    @app.exception_handler(RequestError)
    async def request_error(_: Request, error: RequestError):
        return JSONResponse(error_body(redact(error.message), error.kind, error.code), status_code=error.status,
                            headers=error.headers)

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, error: Exception):  # a bug of ours: still JSON, still redacted
        return JSONResponse(error_body(redact(f"internal error: {type(error).__name__}: {error}"[:500]),
                                       "server_error", "internal_error"), status_code=500)


def _add_guards(app, config: ServeConfig) -> None:
    """The bearer token, the body limit, and one access-log line per request (outermost)."""
    app.add_middleware(Guard, config=config)


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


async def _read_body(request, limit: int, idle_timeout_s: float) -> dict[str, Any]:
    received = bytearray()
    chunks = request.stream().__aiter__()
    while True:
        try:  # a client that stops sending its body holds a connection: not longer than the idle timeout
            chunk = await asyncio.wait_for(chunks.__anext__(), idle_timeout_s)
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise RequestError(408, f"the request body stopped arriving for {idle_timeout_s:g} s",
                               code="request_timeout", headers={"Connection": "close"}) from None
        received += chunk
        if len(received) > limit:
            raise RequestError(413, f"request body over the {limit:,}-byte limit", code="body_too_large")
    body = _parse_json(bytes(received))
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    check_body(body)
    return body


def _store_for(stores: dict[str, Any], client: str | None):
    """The run store of a client's requests: one per client for the server's life (opening one per
    request cost CPU under load), so the call cache is per client: one client's cached calls never
    answer (and so reveal) another's. A store that failed is replaced for the next request (the
    runs still using it finish with it)."""
    from .store import Store

    namespace = client or "serve:loopback"
    store = stores.get(namespace)
    if store is None or store.error is not None:
        store = stores[namespace] = Store(cache_namespace=namespace)
    return store


def _workspace_for(args: dict[str, Any]):
    """The request's memory workspace, scoped to its client: another client's token never reaches it."""
    from .memory import Workspace

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
            "error": redact(result.error) if result.error else None,
            "store_error": redact(result.store_error) if getattr(result, "store_error", None) else None}


def _completion_body(result, args, completion_id: str, redact) -> dict[str, Any]:
    if result.answer is None:
        raise RequestError(502, redact(f"the run ended ({result.stopped_reason}) without an answer: {result.error}"),
                           "server_error")
    return {"id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": args["requested"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": _content(result, args)},
                         "finish_reason": _finish_reason(result), "logprobs": None}],
            "usage": _usage(result), "rlm": _rlm_info(result, redact)}


def _content(result, args) -> str:
    """The answer; with a response_format, the validated JSON itself."""
    if args.get("schema") is not None and result.parsed is not None:
        from .result import _plain

        return json.dumps(_plain(result.parsed), ensure_ascii=False)
    return result.answer


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
        except Exception as error:  # a bug of ours: the client still gets a JSON error, redacted
            message = redact(f"internal error: {type(error).__name__}: {error}"[:500])
            yield f"data: {json.dumps(error_body(message, 'server_error', 'internal_error'))}\n\n"
            yield "data: [DONE]\n\n"
            return
        answer = _content(result, args)
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
        if config.access_log:
            log_access("POST", "/v1/chat/completions", 200, seen.get("run_id"), started, streamed=True)


def log_access(method: str, path: str, status: int, run_id: str | None, started: float,
               streamed: bool = False) -> None:
    """One line on stderr per request: method, path, status, run id, time. Never a body, a query
    string or a header (they may hold keys or the user's text)."""
    import sys

    elapsed = time.perf_counter() - started
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    print(f"{stamp} {method} {path[:200]} {status} run={run_id or '-'} {elapsed:.3f}s"
          + (" stream" if streamed else ""), file=sys.stderr, flush=True)


def _version() -> str:
    from . import __version__

    return __version__


def serve(config: ServeConfig) -> None:
    """Run the server until SIGINT/SIGTERM; running requests get `shutdown_grace_s` to finish."""
    import uvicorn

    app = create_app(config)
    server = uvicorn.Server(uvicorn_config(app, config))
    server.run()


def uvicorn_config(app, config: ServeConfig):
    """uvicorn's settings for `app`: h11 with the idle timeouts (`IdleTimeoutH11`), TCP_NODELAY."""
    import uvicorn

    return uvicorn.Config(app, host=config.host, port=config.port, log_level="warning", http=idle_timeout_h11(
        config.idle_timeout_s), timeout_keep_alive=max(1, math.ceil(min(config.idle_timeout_s, 5))),
        timeout_graceful_shutdown=config.shutdown_grace_s)


def idle_timeout_h11(idle_timeout_s: float):
    """uvicorn's h11 protocol, plus a timer it lacks: a connection that has not sent a whole request's
    headers within `idle_timeout_s` of connecting (or of its last response) is closed. uvicorn's own
    keep-alive timer only starts after a first response, so a silent connection, or one that sends
    headers a byte at a time, would otherwise stay open for ever."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class IdleTimeoutH11(H11Protocol):
        _header_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            sock = transport.get_extra_info("socket")
            if sock is not None:
                import socket

                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass
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
