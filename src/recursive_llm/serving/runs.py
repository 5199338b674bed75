"""`rlm serve`: one request costs at most one run.

- A run that failed is not worth retrying: its error carries `x-should-retry: false` (`NO_RETRY`),
  which the official SDKs (Python and npm) honour, so a 502 is not three paid runs.
- A client that goes away stops its run (`unless_client_leaves`), streamed or not: nobody pays for
  an answer nobody reads. A client that will retry (the official SDKs say so with their
  `x-stainless-retry-count` header) gets `RETRY_GRACE_S` more: its retry of the same request (same
  client, same body) joins the run already paid for instead of starting another (`Attempts`), so a
  request that timed out and was retried twice is still one run.
- A client that retries a failed run whatever the server says (the Vercel AI SDK retries every 5xx
  and sends no retry count) gets the failure again: the same request from the same client within
  `FAILED_REPLAY_S` of a run that ended without an answer is answered with that run's failure, and
  no new run starts.
- A 429 says when a slot is likely to be free (`RunClock.retry_after`), from the runs in flight and
  how long recent runs took, so a client's few retries are spread over a run's length, not 1 s.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections import deque
from typing import Any, Awaitable, Callable

NO_RETRY = {"x-should-retry": "false"}
RETRY_GRACE_S = 3.0  # the SDKs retry after 0.5-1 s, then 1-2 s
FAILED_REPLAY_S = 15.0  # the AI SDK retries after 2 s, then 4 s more
MAX_RETRY_AFTER_S = 60


class ClientGone(Exception):
    """The client closed its connection before its run ended; the run was cancelled."""


async def unless_client_leaves(receive: Callable[[], Awaitable[dict[str, Any]]], work: Awaitable[Any]) -> Any:
    """`work`'s result; if the client disconnects first, `work` is cancelled and ClientGone raised.
    `receive` is the request's ASGI receive, called only after its body was read (it then returns
    only `http.disconnect`)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():  # the client left, or this request itself was cancelled
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise ClientGone("the client closed the connection; its run was stopped")
    return task.result()


async def _disconnected(receive: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class RunClock:
    """When the runs in flight started, and how long the last few runs took."""

    def __init__(self, remembered: int = 20) -> None:
        self._started: dict[int, float] = {}
        self._durations: deque[float] = deque(maxlen=remembered)
        self._next = 0

    def start(self) -> int:
        self._next += 1
        self._started[self._next] = time.monotonic()
        return self._next

    def end(self, ticket: int) -> None:
        started = self._started.pop(ticket, None)
        if started is not None:
            self._durations.append(time.monotonic() - started)

    def retry_after(self) -> str:
        """Seconds until the soonest run in flight likely ends (at least 1, at most 60): a run
        takes the median of the recent ones, or, before any has ended, twice what the oldest run
        in flight has taken so far."""
        if not self._started:
            return "1"
        now = time.monotonic()
        elapsed = [now - started for started in self._started.values()]
        if self._durations:
            typical = statistics.median(self._durations)
            remaining = min(max(typical - e, 0.0) for e in elapsed)
        else:
            remaining = max(elapsed)  # as long again as the oldest has run so far
        return str(min(MAX_RETRY_AFTER_S, max(1, math.ceil(remaining))))


class _Shared:
    """One run and the requests waiting for it."""

    def __init__(self, task: asyncio.Future) -> None:
        self.task, self.waiters, self.timer = task, 0, None

    def join(self) -> None:
        self.waiters += 1
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def leave(self, grace_s: float) -> None:
        self.waiters -= 1
        if self.waiters == 0 and not self.task.done():
            self.timer = asyncio.get_running_loop().call_later(grace_s, self.task.cancel)


class Attempts:
    """Non-streamed runs by request, so that a retry joins the run of its earlier attempt."""

    def __init__(self) -> None:
        self._runs: dict[str, _Shared] = {}

    async def answer(self, key: str, retry_count: int | None, receive, start: Callable[[], Awaitable[Any]]) -> Any:
        """The result of the run for `key`: for a retry (`retry_count` >= 1), the run of an earlier
        attempt still in flight or ended within the grace; for any request, the failure of a run
        for `key` that ended without an answer within FAILED_REPLAY_S; else a new run from
        `start()`. A client that leaves stops the run at once, or, when it may retry (`retry_count`
        is not None), after RETRY_GRACE_S if no other attempt waits for it by then."""
        shared = self._runs.get(key)
        if shared is None or shared.task.cancelled() or not (retry_count or _failed(shared.task)):
            shared = self._runs[key] = _Shared(asyncio.ensure_future(start()))
            shared.task.add_done_callback(lambda task: asyncio.get_running_loop().call_later(
                FAILED_REPLAY_S if _failed(task) else RETRY_GRACE_S, self._forget, key, shared))
        shared.join()
        try:
            return await unless_client_leaves(receive, asyncio.shield(shared.task))
        finally:
            shared.leave(0.0 if retry_count is None else RETRY_GRACE_S)

    def _forget(self, key: str, shared: _Shared) -> None:
        if self._runs.get(key) is shared:
            del self._runs[key]


def _failed(task: asyncio.Future) -> bool:
    """A run that ended without an answer: it raised (a RequestError, 4xx or 502), or its Result has
    no answer."""
    if not task.done() or task.cancelled():
        return False
    return task.exception() is not None or getattr(task.result(), "answer", None) is None


def retry_count(headers) -> int | None:
    """The attempt number an official SDK sends (`x-stainless-retry-count`), or None (a client that
    does not say it retries)."""
    value = headers.get("x-stainless-retry-count", "")
    return int(value) if value.isdigit() and len(value) < 4 else None


def attempt_key(client: str | None, body: dict[str, Any]) -> str:
    """What makes two requests the same request: the client (its token's hash) and the body."""
    import hashlib
    import json

    return hashlib.sha256(f"{client}\n{json.dumps(body, sort_keys=True)}".encode()).hexdigest()
