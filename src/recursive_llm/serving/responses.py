"""`POST /v1/responses` of `rlm serve`: OpenAI's Responses API over the same runs as chat completions.

It is the default of the OpenAI Agents SDK and of `@ai-sdk/openai`, and what LangChain
(`use_responses_api`), pydantic-ai (`OpenAIResponsesModel`), `litellm.responses` and the SDKs'
`responses.create` call. A request is turned into a chat-completions body (`chat_body`) and read by
`request.parse_request`, so the rules are one set: `input` (a string, or a list of message items)
becomes the messages, `instructions` a system message, `text.format` the `response_format`, and
the `context` and `rlm` fields mean what they mean there. The answer is one `message` output item
with one `output_text` part (the SDKs' `output_text`), or, for a forced function tool, one
`function_call` item with the answer as its arguments; `stream: true` sends the Responses events
(`response.created` ... `response.output_text.delta` ... `response.completed` with usage), and a
failed run `response.failed` with the error. Responses are not stored: `previous_response_id`
and item references are refused (400) with what to send instead.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable

from .answers import content, require_answer, rlm_info
from .errors import RequestError
from .guard import log_access
from .params import message
from .runner import run_request, top_run_id

if TYPE_CHECKING:
    from .config import ServeConfig
    from .request import RunRequest
    from .runner import ServerState

_TEXT_PARTS = ("input_text", "output_text", "text")
_PASSED = ("model", "stream", "temperature", "top_p", "context", "rlm")


def chat_body(body: dict[str, Any]) -> dict[str, Any]:
    """The chat-completions body a Responses request means (RequestError 400 for what it cannot)."""
    if body.get("previous_response_id") is not None:
        raise RequestError(400, "previous_response_id: this server does not store responses; send the whole "
                                "conversation in `input`", code="unsupported_parameter")
    messages = [{"role": "system", "content": body["instructions"]}] if isinstance(body.get("instructions"), str) else []
    messages += _messages(body.get("input"))
    chat = {key: body[key] for key in _PASSED if key in body}
    chat["messages"] = messages
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    text_format = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if text_format is not None:
        chat["response_format"] = _response_format(text_format)
    if body.get("tools"):  # a forced function, in the chat shape (serve_params decides what is served)
        chat["tools"], chat["tool_choice"] = _chat_tools(body["tools"]), _chat_choice(body.get("tool_choice"))
    return chat


def _chat_tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list) or not all(isinstance(t, dict) and t.get("type") == "function" for t in tools):
        raise RequestError(400, "tools: only function tools can be served (forced, as the answer's schema)",
                           code="unsupported_parameter")
    return [{"type": "function", "function": {"name": t.get("name"), "parameters": t.get("parameters")}}
            for t in tools]


def _chat_choice(choice: Any) -> Any:
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    return choice


def _messages(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise RequestError(400, "input must be a string or a list of items (messages)")
    return [message for item in value if (message := _message(item)) is not None]


def _message(item: Any) -> dict[str, Any] | None:
    """One input item as a chat message; None for items with nothing to read (reasoning)."""
    if not isinstance(item, dict):
        raise RequestError(400, "input items must be objects, e.g. {\"role\": \"user\", \"content\": \"...\"}")
    kind = item.get("type", "message")
    if kind == "message" and isinstance(item.get("role"), str):
        return {"role": item["role"], "content": _text(item.get("content"))}
    if kind == "function_call_output":
        output = item.get("output")
        return {"role": "tool", "content": output if isinstance(output, str) else json.dumps(output)}
    if kind == "function_call":
        return {"role": "assistant", "content": f"(called {item.get('name')}({item.get('arguments', '')}))"}
    if kind == "reasoning":
        return None
    raise RequestError(400, f"input item type {str(kind)[:40]!r} is not served here (messages with text, "
                            f"function calls and their outputs are); send the text itself",
                       code="unsupported_parameter")


def _text(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise RequestError(400, "a message's content must be a string or a list of parts")
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _TEXT_PARTS:
            raise RequestError(400, f"content part type {str(kind)[:40]!r} is not served here: only text "
                                    f"(input_text) is read", code="unsupported_parameter")
        texts.append(str(part.get("text", "")))
    return "\n".join(texts)


def _response_format(text_format: Any) -> dict[str, Any]:
    """`text.format` in the Responses shape -> `response_format` in the chat shape."""
    if not isinstance(text_format, dict):
        raise RequestError(400, "text.format must be an object, e.g. {\"type\": \"json_schema\", \"name\": ..., "
                                "\"schema\": {...}}")
    if text_format.get("type") != "json_schema":
        return text_format
    spec = {key: text_format[key] for key in ("name", "schema", "strict", "description") if key in text_format}
    return {"type": "json_schema", "json_schema": spec}


def with_echo(request: RunRequest, body: dict[str, Any]) -> RunRequest:
    """`request` with what its response repeats of the Responses body."""
    text = body.get("text") if isinstance(body.get("text"), dict) else {"format": {"type": "text"}}
    return replace(request, echo={"instructions": body.get("instructions"), "text": text,
                                  "temperature": body.get("temperature"),
                                  "max_output_tokens": body.get("max_output_tokens"),
                                  "metadata": body.get("metadata") or {}})


# -- answers ----------------------------------------------------------------------------------------
def response_body(result, request: RunRequest, response_id: str, redact: Callable[[str], str],
                  status: str = "completed") -> dict[str, Any]:
    """The response object of a finished run (RequestError 502, not to be retried, without an answer)."""
    require_answer(result, redact)
    reply, finish = message(request, content(result, request))  # cut at max_output_tokens: "length"
    if finish == "tool_calls":  # a forced function: its call is the output
        call = reply["tool_calls"][0]
        item = {"type": "function_call", "id": "fc_" + secrets.token_hex(12), "call_id": call["id"],
                "name": call["function"]["name"], "arguments": call["function"]["arguments"], "status": "completed"}
    else:
        item = _output_item(reply["content"], "completed" if finish == "stop" else "incomplete")
    cut = {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}} if finish != "stop" else {}
    return {**_response(request, response_id, status), "output": [item], "usage": _usage(result),
            "rlm": rlm_info(result, redact), **cut}


def _response(request: RunRequest, response_id: str, status: str) -> dict[str, Any]:
    return {"id": response_id, "object": "response", "created_at": request.created, "status": status,
            "model": request.requested, "output": [], "error": None, "incomplete_details": None,
            "parallel_tool_calls": False, "tool_choice": "none", "tools": [], "top_p": None, "usage": None,
            **request.echo}


def _output_item(text: str, status: str, item_id: str | None = None) -> dict[str, Any]:
    return {"type": "message", "id": item_id or "msg_" + secrets.token_hex(12), "status": status,
            "role": "assistant", "content": [{"type": "output_text", "text": text, "annotations": []}]}


def _usage(result) -> dict[str, Any]:
    total = result.usage.total
    return {"input_tokens": total.prompt_tokens, "output_tokens": total.completion_tokens,
            "total_tokens": total.total_tokens, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0}}


# -- streaming --------------------------------------------------------------------------------------
def _event(kind: str, sequence: list[int], **fields: Any) -> str:
    sequence[0] += 1
    payload = {"type": kind, "sequence_number": sequence[0], **fields}
    return f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def stream(config: ServeConfig, request: RunRequest, response_id: str, redact: Callable[[str], str],
                 state: ServerState):
    """The Responses events of one run: created and in_progress at once, then (when the run ends)
    the message item, its text in deltas, and `response.completed` with usage; or `response.failed`."""
    started, seq, seen = time.perf_counter(), [-1], {}

    def note_run(event: dict[str, Any]) -> None:
        if top_run_id(event):
            seen.setdefault("run_id", event["run_id"])

    task = asyncio.create_task(run_request(config, request, note_run, state.stores))
    try:
        yield _event("response.created", seq, response=_response(request, response_id, "in_progress"))
        yield _event("response.in_progress", seq, response=_response(request, response_id, "in_progress"))
        try:
            body = response_body(await task, request, response_id, redact)
        except Exception as error:  # noqa: BLE001  (every failure is a response.failed, redacted)
            yield _event("response.failed", seq, response=_failed(request, response_id, error, redact))
            return
        for event in _answer_events(body, seq):
            yield event
    finally:
        if not task.done():  # the client went away: stop the run
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        state.release(request)
        if config.access_log:
            log_access("POST", "/v1/responses", 200, seen.get("run_id"), started, streamed=True)


def _failed(request: RunRequest, response_id: str, error: Exception, redact: Callable[[str], str]) -> dict[str, Any]:
    if isinstance(error, RequestError):
        code, message = error.code or ("server_error" if error.status >= 500 else "invalid_request"), error.message
    else:
        code, message = "server_error", f"internal error: {type(error).__name__}: {error}"[:500]
    return {**_response(request, response_id, "failed"), "error": {"code": code, "message": redact(message)}}


def _answer_events(body: dict[str, Any], seq: list[int]):
    item = body["output"][0]
    if item["type"] == "function_call":
        yield from _call_events(body, seq)
        return
    text, item_id = item["content"][0]["text"], item["id"]
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    yield _event("response.output_item.added", seq, output_index=0, item={**item, "status": "in_progress",
                                                                             "content": []})
    yield _event("response.content_part.added", seq, **where, part={"type": "output_text", "text": "",
                                                                     "annotations": []})
    for start in range(0, len(text), 200):
        yield _event("response.output_text.delta", seq, **where, delta=text[start:start + 200], logprobs=[])
    yield _event("response.output_text.done", seq, **where, text=text, logprobs=[])
    yield _event("response.content_part.done", seq, **where, part=item["content"][0])
    yield _event("response.output_item.done", seq, output_index=0, item=item)
    yield _event("response.completed", seq, response=body)


def _call_events(body: dict[str, Any], seq: list[int]):
    item = body["output"][0]
    where = {"item_id": item["id"], "output_index": 0}
    yield _event("response.output_item.added", seq, output_index=0, item={**item, "arguments": "",
                                                                             "status": "in_progress"})
    yield _event("response.function_call_arguments.delta", seq, **where, delta=item["arguments"])
    yield _event("response.function_call_arguments.done", seq, **where, name=item["name"],
                 arguments=item["arguments"])
    yield _event("response.output_item.done", seq, output_index=0, item=item)
    yield _event("response.completed", seq, response=body)


# -- routes that are not served ---------------------------------------------------------------------
SERVED_ROUTES = ("POST /v1/chat/completions, POST /v1/responses, POST /v1/completions, GET /v1/models, "
                 "GET /v1/models/{id}, GET /health")


def route_error(method: str, path: str, status: int, detail: str) -> tuple[str, str]:
    """The message and code of a 404 or 405 (and any other HTTP error of the framework), saying what
    is served."""
    shown = path[:200]
    if status == 404:
        return f"no route {method} {shown}; served: {SERVED_ROUTES}", "not_found"
    if status == 405:
        return f"{method} is not allowed on {shown}; served: {SERVED_ROUTES}", "method_not_allowed"
    return detail[:500], "http_error"
