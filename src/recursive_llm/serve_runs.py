"""`rlm serve`: one request costs at most one run.

- A run that failed is not worth retrying: its error carries `x-should-retry: false` (`NO_RETRY`),
  which the official SDKs (Python and npm) honour, so a 502 is not three paid runs.
- A client that goes away stops its run (`unless_client_leaves`), streamed or not: nobody pays for
  an answer nobody reads.
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
