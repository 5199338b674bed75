"""One request of `rlm serve`, typed: a chat-completions body (the other routes turn theirs into
one) checked by a pydantic model and read into a `RunRequest`, the frozen value every route, stream
and answer reads. Where the input may come from (`context`: text, data, or files under the allowed
root), the root model it names, the limits it lowers and the answer's schema are decided here."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Limits
from ..errors import ConfigError, ContextError
from . import limits as serve_limits
from . import params as serve_params
from .config import ServeConfig, allowed_models
from .errors import RequestError
from .paths import path_under_root


@dataclass(frozen=True)
class RunRequest:
    """What one request asks of a run, and (once admitted) who asked and when."""

    model: str | None  # the root model (None: the server's default)
    requested: str  # the model name the client sent, repeated in the answer
    query: str
    context: Any  # the loaded input (context.loader), or the path(s) of files under the allowed root
    limits: Limits  # the server's ceilings, lowered by the request's `rlm` field
    stream: bool = False
    temperature: float | None = None
    include_usage: bool = False  # stream_options.include_usage
    answer_tokens: int | None = None  # max_tokens: bounds the answer, not the run's calls (params.py)
    schema: Any = None  # the answer's JSON schema; an `AnswerSchema` once the request holds its slot
    schema_field: str | None = None  # the body's field the schema came from, as the client named it
    tool_name: str | None = None  # a forced function: the answer is its call (params.py)
    memory: str | None = None  # a memory workspace of this client's (engine/memory.py)
    echo: dict[str, Any] = field(default_factory=dict)  # what a Responses answer repeats of its request
    client: str | None = None  # set when admitted: the client's cache namespace (its token's hash)
    ticket: int = 0  # its run's ticket of the server's `RunClock`
    created: int = 0  # Unix time of its answer
    path: str = "/v1/chat/completions"


@dataclass(frozen=True)
class SchemaFields:
    """Where a route's body puts the answer's schema, in the client's own names: an error about the
    schema names the field the client sent, not the chat-completions field it was read into."""

    format: str  # the response format object
    schema: str  # a json_schema format's schema
    parameters: str  # a forced function's parameters; `{index}`: the function's place in `tools`


CHAT_FIELDS = SchemaFields("response_format", "response_format.json_schema.schema",
                           "tools[{index}].function.parameters")
RESPONSES_FIELDS = SchemaFields("text.format", "text.format.schema", "tools[{index}].parameters")


@functools.lru_cache(maxsize=1)
def request_model():
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


def parse_request(body: dict[str, Any], config: ServeConfig, fields: SchemaFields = CHAT_FIELDS) -> RunRequest:
    """Validate a chat-completions body and read it into the request of one RLM run. `fields`: what
    the client's own body calls the fields a schema comes from (another route's body was turned into
    this one)."""
    from pydantic import ValidationError

    try:
        request = request_model().model_validate(body)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise RequestError(400, f"invalid request: {where[:200]}: {first['msg']}") from None
    root_model = resolve_model_name(request.model, config)
    texts = [(m.role, _text(m.content)) for m in request.messages]
    query, context = _query_and_context(texts, request.context, config)
    try:
        limits = serve_limits.clamp(config.limits, request.rlm)
    except ValueError as error:
        raise RequestError(400, str(error)) from None
    schema = response_schema(request.response_format, fields)
    return serve_params.apply(body, RunRequest(
        model=root_model, requested=request.model, query=query, context=context,
        limits=limits, stream=request.stream, temperature=request.temperature, answer_tokens=request.max_tokens,
        include_usage=bool((request.stream_options or {}).get("include_usage")), schema=schema,
        schema_field=None if schema is None else fields.schema, memory=_memory_name(request.memory)), fields)


def _memory_name(name: str | None) -> str | None:
    """The request's `memory` workspace name, checked (a workspace is the client's own: runner.py)."""
    from ..engine.memory import check_workspace_name

    try:
        return None if name is None else check_workspace_name(name)
    except ConfigError as error:
        raise RequestError(400, str(error)) from None


def _query_and_context(texts: list[tuple[str, str]], field: Any, config: ServeConfig) -> tuple[str, Any]:
    """The root model's query and the run's input: the `context` field, else the messages, by the
    rules of `messages.py` (the input is always text there, never a path)."""
    from ..context.loader import load_context_value
    from .messages import NoQuestion, query_and_input

    try:
        query, inputs = query_and_input(texts, field is not None)
    except NoQuestion as error:
        raise RequestError(400, str(error)) from None
    if field is not None:
        return query, load_request_context(field, config)
    return query, load_context_value(inputs[0] if len(inputs) == 1 else inputs)


def response_schema(response_format: dict[str, Any] | None,
                    fields: SchemaFields = CHAT_FIELDS) -> dict[str, Any] | None:
    """OpenAI's `response_format` as a JSON schema for the answer (None: plain text); an error names
    the field by `fields`."""
    if response_format is None or response_format.get("type") in (None, "text"):
        return None
    if response_format.get("type") == "json_object":
        return {"type": "object"}
    if response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise RequestError(400, f"{fields.schema} must be a JSON schema object")
        return schema
    raise RequestError(400, f"{fields.format}.type must be text, json_object or json_schema, not "
                            f"{str(response_format.get('type'))[:40]!r}")


async def answer_schema(schema: dict[str, Any] | None, field: str | None):
    """The answer's schema, checked in a thread (within its bounds, references only inside it:
    `answer_schema.py`) after the request took its slot: a bad one is a 400 naming the problem and
    `field`, the body's field it came from."""
    if schema is None:
        return None
    from ..engine.answer_schema import AnswerSchema

    try:
        return await asyncio.to_thread(AnswerSchema, schema)
    except ConfigError as error:
        raise RequestError(400, f"{field}: {error}") from None


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text")


def resolve_model_name(requested: str, config: ServeConfig) -> str | None:
    """The root model a request names: `rlm` (the default) or `rlm/<model>` of `allowed_models`."""
    if requested == "rlm":
        return config.model
    if requested.startswith("rlm/") and len(requested) > 4:
        name = requested[4:]
        if name in allowed_models(config):
            return name
    raise RequestError(404, f"model {requested!r} is not served here; GET /v1/models lists the ones that are",
                       code="model_not_found")


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
    """`name` as a real path under `root` (`paths.path_under_root`), or RequestError(400)."""
    try:
        return path_under_root(root, name, root_called="the allowed root", subject="context file ")
    except ContextError as error:
        raise RequestError(400, str(error)) from None
