"""A request's body on `rlm serve`: read within its bounds (`max_body_bytes`, the idle timeout per
chunk, `body_timeout_s` for the whole), then parsed as strict JSON (finite numbers only, at most
`MAX_JSON_DEPTH` levels, Unicode text only), in a thread when it is large."""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any, Callable, TypeVar

from .config import ServeConfig
from .errors import RequestError

MAX_JSON_DEPTH = 64  # deeper request bodies are refused (400) before anything walks them
PARSE_IN_THREAD_BYTES = 256 * 1024  # larger bodies are parsed off the event loop
CLIENT_GONE = 499  # the access log's status for a client that hung up mid-body (nginx's "client closed request")

Built = TypeVar("Built")


async def read_body(request, config: ServeConfig) -> bytes:
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


async def parse_body(raw: bytes, build: Callable[[dict[str, Any]], Built]) -> tuple[dict[str, Any], Built]:
    """A request's body and what `build(body)` makes of it (its `RunRequest`); a large body is
    parsed in a thread, so the event loop goes on answering (`/health`, other streams)."""
    def parse() -> tuple[dict[str, Any], Built]:
        body = parse_json(raw)
        if not isinstance(body, dict):
            raise RequestError(400, "the request body must be a JSON object")
        check_body(body)
        return body, build(body)

    return parse() if len(raw) < PARSE_IN_THREAD_BYTES else await asyncio.to_thread(parse)


def parse_json(raw: bytes) -> Any:
    """The body as JSON, or RequestError(400) with the reason (NaN, Infinity and 1e999 refused)."""
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
