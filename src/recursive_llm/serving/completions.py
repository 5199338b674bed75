"""`POST /v1/completions` of `rlm serve`: the legacy text-completions API, which LlamaIndex's
`OpenAILike` calls by default (`is_chat_model=False`). The `prompt` is one user message of a chat
request (`chat_body`), read by `server.parse_request` like any other, so the same input rules and
parameters hold; the answer is a `text_completion` (streamed: `text_completion` chunks, `[DONE]`).
"""

from __future__ import annotations

import json
from typing import Any

_PASSED = ("model", "stream", "stream_options", "temperature", "max_tokens", "n", "stop", "seed", "top_p",
           "logprobs", "context", "rlm")


def chat_body(body: dict[str, Any]) -> dict[str, Any]:
    from .server import RequestError

    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise RequestError(400, "prompt must be a string (one prompt: a run gives one answer)")
    return {**{key: body[key] for key in _PASSED if key in body}, "messages": [{"role": "user", "content": prompt}]}


def completion_body(result, args: dict[str, Any], completion_id: str, redact) -> dict[str, Any]:
    from .params import message
    from .server import _content, _rlm_info, _usage, require_answer

    require_answer(result, redact)
    reply, finish = message(args, _content(result, args))
    return {"id": completion_id, "object": "text_completion", "created": args["created"], "model": args["requested"],
            "choices": [{"index": 0, "text": reply["content"], "finish_reason": finish, "logprobs": None}],
            "usage": _usage(result), "rlm": _rlm_info(result, redact)}


async def stream(config, args: dict[str, Any], completion_id: str, redact, state: dict[str, Any]):
    """The chat stream's run, its chunks re-shaped as `text_completion` chunks."""
    from .server import _stream

    async for event in _stream(config, args, completion_id, redact, state):
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
