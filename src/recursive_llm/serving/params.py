"""The chat-completions parameters beyond the messages: honoured when they mean something for a run,
refused with a 400 naming them when they do not (never dropped without a word).

- `tools` with one function forced (`tool_choice` naming it, or `"required"` with only one tool):
  the function's parameters are the answer's JSON schema, and the answer comes back as that
  function's `tool_calls` with `finish_reason: "tool_calls"` (pydantic-ai's and LangChain's
  structured output). `tool_choice: "none"` ignores the tools. Any other use of tools is refused: a
  run cannot call the client's functions and wait for their results.
- `n` (1 only), `stop`, `seed`, `top_p` (1 only), `logprobs`: refused otherwise; a run gives one
  answer and cannot promise a seed or a stop sequence across its calls.
- `max_tokens` (or `max_completion_tokens`) bounds the answer, as it does a model's reply: a
  longer text answer is cut there with `finish_reason: "length"`. It is not applied to the run's
  model calls (a root model writing code, or a sub-call, cut short is a failed step, not a shorter
  answer). A JSON answer (`response_format`, a forced function) is never cut.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..config import check_number
from .errors import RequestError

if TYPE_CHECKING:
    from .request import RunRequest, SchemaFields

_NOT_FOR_A_RUN = {
    "n": (lambda v: v in (None, 1), "a run gives one answer; leave n out or send 1"),
    "stop": (lambda v: v in (None, [], ""), "a run's answer is not cut at stop sequences; leave stop out"),
    "seed": (lambda v: v is None, "a run of many model calls cannot be made repeatable by a seed; leave it out "
                                  "(temperature 0 turns the call cache on)"),
    "top_p": (lambda v: v in (None, 1, 1.0), "leave top_p out (or send 1); use temperature"),
    "logprobs": (lambda v: v in (None, False), "a run's answer has no token log-probabilities"),
}


def apply(body: dict[str, Any], request: RunRequest, fields: SchemaFields) -> RunRequest:
    """`request` with the body's other parameters applied (RequestError 400 naming a parameter that
    has no meaning for a run); `fields` names a forced function's parameters as the client sent them."""
    for name, (acceptable, why) in _NOT_FOR_A_RUN.items():
        if not acceptable(body.get(name)):
            raise RequestError(400, f"{name}: {why}", code="unsupported_parameter")
    if body.get("max_completion_tokens") is not None and request.answer_tokens is None:
        try:
            limit = check_number("max_completion_tokens", body["max_completion_tokens"], integer=True, minimum=1,
                                 inclusive=True)
        except ValueError as error:
            raise RequestError(400, str(error)) from None
        request = replace(request, answer_tokens=limit)
    forced = forced_function(body.get("tools"), body.get("tool_choice"))
    if forced is not None:
        if request.schema is not None:
            raise RequestError(400, f"tools: send a forced function or a {fields.format}, not both",
                               code="unsupported_parameter")
        name, schema, index = forced
        field = fields.parameters.format(index=index)
        if not isinstance(schema, dict):
            raise RequestError(400, f"{field} (of the function {name!r}) must be a JSON schema object")
        request = replace(request, tool_name=name, schema=schema, schema_field=field)
    return request


def forced_function(tools: Any, choice: Any) -> tuple[str, Any, int] | None:
    """(name, parameters schema, its place in `tools`) of the one function the request forces, or
    None when it uses no tools; RequestError 400 for any other use of tools."""
    if not tools or choice == "none":
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) and t.get("type") == "function"
                                              and isinstance(t.get("function"), dict) for t in tools):
        raise RequestError(400, "tools must be a list of {\"type\": \"function\", \"function\": {...}}")
    functions = {t["function"].get("name"): index for index, t in enumerate(tools)}
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
    elif choice == "required" and len(functions) == 1:
        name = next(iter(functions))
    else:
        raise RequestError(400, "tools: a run cannot call the client's functions and wait for their results; "
                                "force one function (tool_choice {\"type\": \"function\", \"function\": {\"name\": "
                                "...}}) to get its arguments as the answer, or use response_format",
                           code="unsupported_parameter")
    if name not in functions:
        raise RequestError(400, f"tool_choice names {str(name)[:64]!r}, which is not in tools")
    index = functions[name]
    return name, tools[index]["function"].get("parameters") or {"type": "object", "properties": {}}, index


def tool_calls(request: RunRequest, content: str) -> list[dict[str, Any]]:
    """The answer (JSON text that validates against the forced function's parameters) as its call."""
    return [{"id": "call_" + secrets.token_hex(12), "type": "function",
             "function": {"name": request.tool_name, "arguments": content}}]


def message(request: RunRequest, content: str) -> tuple[dict[str, Any], str]:
    """The assistant message and finish_reason of an answer: text, or the forced function's call.
    `stop` for every text answer, a best answer at a limit included: it is whole (`length` would tell
    clients it was cut, and the SDK's `parse` raises on it); `rlm.stopped_reason` says why it ended."""
    if request.tool_name is None:
        content, cut = _bounded(content, request.answer_tokens if request.schema is None else None)
        return {"role": "assistant", "content": content}, "length" if cut else "stop"
    json.loads(content)  # the validated answer is JSON: a bug of ours if not
    return {"role": "assistant", "content": None, "tool_calls": tool_calls(request, content)}, "tool_calls"


def _bounded(text: str, limit: int | None) -> tuple[str, bool]:
    """`text` cut to `limit` tokens, and whether it was cut."""
    if limit is None or len(text.encode("utf-8", "surrogatepass")) <= limit:  # a token is at least one byte
        return text, False
    from ..context.tokens import get_encoding

    encoding = get_encoding()
    tokens = encoding.encode_ordinary(text)
    return (text, False) if len(tokens) <= limit else (encoding.decode(tokens[:limit]), True)
