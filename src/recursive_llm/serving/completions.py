"""`POST /v1/completions` of `rlm serve`: the legacy text-completions API, which LlamaIndex's
`OpenAILike` calls by default (`is_chat_model=False`). The `prompt` is one user message of a chat
request (`chat_body`), read by `request.parse_request` like any other, so the same input rules and
parameters hold; the answer is a `text_completion` (streamed: `text_completion` chunks, `[DONE]`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

from .answers import content, require_answer, rlm_info, usage
from .errors import RequestError
from .params import message
from .sse import chat_stream

if TYPE_CHECKING:
    from .config import ServeConfig
    from .request import RunRequest
    from .runner import ServerState

_PASSED = ("model", "stream", "stream_options", "temperature", "max_tokens", "n", "stop", "seed", "top_p",
           "logprobs", "context", "rlm")


def chat_body(body: dict[str, Any]) -> dict[str, Any]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise RequestError(400, "prompt must be a string (one prompt: a run gives one answer)")
    return {**{key: body[key] for key in _PASSED if key in body}, "messages": [{"role": "user", "content": prompt}]}


def completion_body(result, request: RunRequest, completion_id: str, redact: Callable[[str], str]) -> dict[str, Any]:
    require_answer(result, redact)
    reply, finish = message(request, content(result, request))
    return {"id": completion_id, "object": "text_completion", "created": request.created, "model": request.requested,
            "choices": [{"index": 0, "text": reply["content"], "finish_reason": finish, "logprobs": None}],
            "usage": usage(result), "rlm": rlm_info(result, redact)}


async def stream(config: ServeConfig, request: RunRequest, completion_id: str, redact: Callable[[str], str],
                 state: ServerState) -> AsyncIterator[str]:
    """The chat stream's run, its chunks re-shaped as `text_completion` chunks."""
    async for event in chat_stream(config, request, completion_id, redact, state):
        yield _as_text_chunk(event)


def _as_text_chunk(event: str) -> str:
    if not event.startswith("data: ") or event.startswith("data: [DONE]"):
        return event
    chunk = json.loads(event[len("data: "):])
    if chunk.get("object") != "chat.completion.chunk":
        return event  # an error
    choices = [{"index": 0, "text": choice["delta"].get("content") or "", "logprobs": None,
                "finish_reason": choice["finish_reason"]} for choice in chunk["choices"]]
    return "data: " + json.dumps({**chunk, "object": "text_completion", "choices": choices}, ensure_ascii=False) + "\n\n"
