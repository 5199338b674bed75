"""The chat-completions stream of `rlm serve` (server-sent events): the run's progress as chunks
with an empty delta and an `rlm_event` field (which clients ignore), then the answer in content
chunks, a final chunk (with usage if asked), and `[DONE]`; a failed run sends an error and `[DONE]`.
A client that leaves stops the run."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

from . import params as serve_params
from .answers import content, require_answer, rlm_info, usage
from .errors import RequestError, error_body
from .guard import log_access
from .runner import run_request, top_run_id

if TYPE_CHECKING:
    from .config import ServeConfig
    from .request import RunRequest
    from .runner import ServerState

PROGRESS_EVENTS = {"run_start", "iteration", "cell", "run_end", "fallback"}
DONE = "data: [DONE]\n\n"


def data(payload: dict[str, Any]) -> str:
    """One server-sent event carrying `payload` as JSON."""
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def chunk(completion_id: str, request: RunRequest, delta: dict, finish: str | None = None, **extra: Any) -> str:
    """One chunk; every chunk of a stream has the same `created`."""
    return data({"id": completion_id, "object": "chat.completion.chunk", "created": request.created,
                 "model": request.requested,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra})


async def chat_stream(config: ServeConfig, request: RunRequest, completion_id: str, redact: Callable[[str], str],
                      state: ServerState) -> AsyncIterator[str]:
    """The whole stream of one request's run (the module's docstring); its slot is given back and
    its access-log line written when the stream ends."""
    queue: asyncio.Queue = asyncio.Queue()
    started, seen = time.perf_counter(), {}

    def on_event(event: dict[str, Any]) -> None:
        if top_run_id(event):
            seen.setdefault("run_id", event["run_id"])
        if event["type"] in PROGRESS_EVENTS:
            summary = {"type": event["type"], "depth": event.get("depth"), "iteration": event.get("iteration")}
            if event["type"] == "cell":
                summary["error"] = redact(event["error"]) if event.get("error") else None
            queue.put_nowait(summary)

    task = asyncio.create_task(run_request(config, request, on_event, state.stores))
    try:
        yield chunk(completion_id, request, {"role": "assistant", "content": ""})
        while not task.done() or not queue.empty():
            getter = asyncio.create_task(queue.get())
            done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield chunk(completion_id, request, {}, rlm_event=getter.result())
            else:
                getter.cancel()
        async for event in _ending(task, completion_id, request, redact):
            yield event
    finally:
        if not task.done():  # the client went away: stop the run (its worker is closed by the run)
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        state.release(request)
        if config.access_log:
            log_access("POST", request.path, 200, seen.get("run_id"), started, streamed=True)


async def _ending(task: asyncio.Task, completion_id: str, request: RunRequest,
                  redact: Callable[[str], str]) -> AsyncIterator[str]:
    """After the run: the answer's chunks, or its error; then `[DONE]`."""
    try:
        result = task.result()
        require_answer(result, redact)
    except RequestError as error:
        yield f"data: {json.dumps(error_body(redact(error.message), error.kind, error.code))}\n\n"
        yield DONE
        return
    except Exception as error:  # a bug of ours: the client still gets a JSON error, redacted
        message = redact(f"internal error: {type(error).__name__}: {error}"[:500])
        yield f"data: {json.dumps(error_body(message, 'server_error', 'internal_error'))}\n\n"
        yield DONE
        return
    message, finish = serve_params.message(request, content(result, request))
    if message["content"] is None:  # a forced function's call, in one delta
        yield chunk(completion_id, request, {"tool_calls": [{"index": 0, **message["tool_calls"][0]}]})
    for start in range(0, len(message["content"] or ""), 200):
        yield chunk(completion_id, request, {"content": message["content"][start:start + 200]})
    yield chunk(completion_id, request, {}, finish, rlm=rlm_info(result, redact))
    if request.include_usage:
        last = {"id": completion_id, "object": "chat.completion.chunk", "created": request.created,
                "model": request.requested, "choices": [], "usage": usage(result)}
        yield f"data: {json.dumps(last)}\n\n"
    yield DONE
