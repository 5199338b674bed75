"""What every route's answer to a finished run shares: the answer itself (text, or the validated
JSON), its usage, the `rlm` field (run id, why it stopped, cost; errors redacted), the 502 for a run
that ended without one; and the chat-completions body built from them."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable

from . import params as serve_params
from .errors import RequestError
from .runs import NO_RETRY

if TYPE_CHECKING:
    from ..result import Result
    from .request import RunRequest


def usage(result: Result) -> dict[str, int]:
    total = result.usage.total
    return {"prompt_tokens": total.prompt_tokens, "completion_tokens": total.completion_tokens,
            "total_tokens": total.total_tokens}


def rlm_info(result: Result, redact: Callable[[str], str]) -> dict[str, Any]:
    return {"run_id": result.run_id, "stopped_reason": result.stopped_reason, "iterations": result.iterations,
            "cost_usd": round(result.cost_usd, 8), "cached_calls": result.usage.total.cached_calls,
            "error": redact(result.error) if result.error else None,
            "store_error": redact(result.store_error) if getattr(result, "store_error", None) else None}


def require_answer(result: Result, redact: Callable[[str], str]) -> None:
    """RequestError 502 for a run that ended without an answer; the client is told not to retry (a
    retry is another paid run, and the same input fails the same way)."""
    if result.answer is None:
        raise RequestError(502, redact(f"the run ended ({result.stopped_reason}) without an answer: {result.error}"),
                           "server_error", "run_failed", headers=NO_RETRY)


def content(result: Result, request: RunRequest) -> str:
    """The answer; with a response_format, the validated JSON itself."""
    if request.schema is not None and result.parsed is not None:
        from ..result import _plain

        return json.dumps(_plain(result.parsed), ensure_ascii=False)
    return result.answer


def completion_body(result: Result, request: RunRequest, completion_id: str,
                    redact: Callable[[str], str]) -> dict[str, Any]:
    """The `chat.completion` of a finished run."""
    require_answer(result, redact)
    message, finish = serve_params.message(request, content(result, request))  # text, or a forced function's call
    return {"id": completion_id, "object": "chat.completion", "created": request.created, "model": request.requested,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": usage(result), "rlm": rlm_info(result, redact)}
