"""Model calls: the one place where calls are bounded in concurrency, budgeted, retried and logged.

Every call of a run (root replies, sub-calls, child runs' calls) goes through `Scheduler.call`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .budget import Budget, Reservation
from .call_ids import CallTree, request_headers
from .call_ids import call_id as new_call_id
from ..config import HOST_BOUNDS, RetryPolicy
from ..errors import BudgetExceeded, ModelError
from ..record.events import EventLog
from ..models.base import Completion, Message, ModelClient
from ..usage import TokenUsage, UsageSummary, checked_usage

if TYPE_CHECKING:
    from ..record.store import ReplayBook, Store

# A run's hedges are at most this share of its hedgeable sub-calls sent so far (issue 31: <= 5% extra).
HEDGE_SHARE = 0.05
# A hedge's copy is sent only while max_llm_calls keeps this many calls after it and the calls already
# reserved: the root's next reply, which the run needs to answer (a hedge is never worth the answer).
HEDGE_KEEPS_CALLS = 1
# Copies of one call at most: a second when the first copy straggles too (with a 2% tail and 20 hedges
# per batch, a third of the batches drew a slow copy, which one copy per call could not cut).
HEDGES_PER_CALL = 2


@dataclass(frozen=True)
class CallSite:
    """Who is calling: the run, its depth, and why (root reply, sub-call, final answer request);
    for a root call its iteration, for a sub-call the iteration and the cell whose code made it."""

    run_id: str
    depth: int
    purpose: str
    iteration: int | None = None
    cell: int | None = None
    # For a child run's calls: the run whose code started it, and that run's turn (call_ids.CallTree).
    parent_run_id: str | None = None
    parent_iteration: int | None = None

    def fields(self) -> dict:
        """The call events' fields that say where the call comes from."""
        return {"run_id": self.run_id, "depth": self.depth, "purpose": self.purpose, "iteration": self.iteration,
                "cell": self.cell}


def for_record(messages: list[Message]) -> list[Message]:
    """`messages` as the trajectory and the store keep them: a message longer than
    `HostBounds.max_recorded_chars` keeps its head and a note of its length (a batch of huge prompts
    must not write gigabytes); the cache key is computed from the messages themselves."""
    limit = HOST_BOUNDS.max_recorded_chars
    if all(len(str(m.get("content", ""))) <= limit for m in messages):
        return messages
    return [m if len(str(m.get("content", ""))) <= limit else
            {**m, "content": str(m["content"])[:limit] + f"\n... [{len(str(m['content'])):,} characters in all; "
                                                         f"the rest is not recorded]"} for m in messages]


def model_identity(client: ModelClient) -> str:
    """What makes two clients the same model for the cache: kind, endpoint and model name."""
    return f"{type(client).__name__}|{getattr(client, 'base_url', None) or ''}|{client.name}"


# -- adaptive concurrency per endpoint ---------------------------------------------------------
# Providers differ by orders of magnitude in how many requests they take at once (a local vLLM:
# hundreds; a low-tier key or a small Ollama box: a handful), so a fixed width is wrong for both.
# Each endpoint gets one limit for the whole process (every run, every event loop, every `rlm serve`
# request shares it), found the way TCP finds a path's capacity: start at START_LIMIT; while there is
# no overload (slow start), double once per round trip while calls wait, up to the number of calls
# that want to be in flight (a batch of 101 is sent in one wave from its third run on; growing by
# one per success only halved the shortfall on each run); after an overload, grow by one per round
# trip; halve on a 429/503/529 (at most once per round trip) and pause new starts for the provider's
# Retry-After. A run's `max_concurrency` stays its own ceiling on top. What an endpoint took is
# remembered across processes (endpoint_memory.py, like TCP's per-destination metrics): a new
# process starts where the last one left off, unless that memory is older than a day.
START_LIMIT = 16
OVERLOAD_STATUS = frozenset({429, 503, 529})
# No growth while the recent latency is above this many times the best seen (plus 0.1 s): a provider
# that queues requests is full even when it does not refuse them.
_LATENCY_HOLD = 3.0


class EndpointLimit:
    """The learned concurrency of one endpoint, shared by every run of the process.

    Thread-safe: runs of `RLM.completion` each have their own event loop; a waiter is woken on its
    own loop (`call_soon_threadsafe`)."""

    def __init__(self, key: str, *, start: int = START_LIMIT, ceiling: int = 4096) -> None:
        self.key = key
        self.limit = float(max(1, min(start, ceiling)))
        self.ceiling = ceiling
        self.in_flight = 0
        self.max_in_flight = 0
        self.slow_start = True
        self.successes = 0
        self.overloads = 0
        self._lock = threading.Lock()
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = deque()
        self._paused_until = 0.0
        self._last_cut = float("-inf")  # calls started before the last cut do not cut again
        self._last_doubling = float("-inf")  # nor do they double again in slow start
        self._latency: float | None = None  # moving average of successful calls' latency
        self._best_latency: float | None = None
        self.refused_at: float | None = None  # wall time of the last overload (for endpoint_memory)
        self._recent: deque[float] = deque(maxlen=64)  # the last successes' latencies (for hedging)

    @classmethod
    def remembered(cls, key: str, limit: float, slow_start: bool, refused_at: float | None) -> "EndpointLimit":
        """The limit as an earlier process left it (endpoint_memory.recall)."""
        endpoint = cls(key, start=max(1, int(limit)))
        endpoint.slow_start, endpoint.refused_at = slow_start, refused_at
        return endpoint

    def __repr__(self) -> str:
        return f"EndpointLimit({self.key!r}, limit={self.limit:.1f}, in_flight={self.in_flight})"

    async def acquire(self) -> float:
        """Wait for a slot; returns the time the call starts (for `release`)."""
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                pause = self._paused_until - time.monotonic()
                if pause <= 0:
                    if not self._waiters and self.in_flight < int(self.limit):
                        return self._take()
                    future = loop.create_future()
                    self._waiters.append((loop, future))
            if pause > 0:
                await asyncio.sleep(pause)
                continue
            try:
                return await future  # the slot was handed over by `_wake`
            except asyncio.CancelledError:
                with self._lock:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove((loop, future))
                if future.done() and not future.cancelled():
                    self.release(future.result(), None)  # handed over just as we were cancelled
                raise

    def usual_latency(self) -> float | None:
        """The median latency of the last 64 successful calls, None before the first (a median: the
        stragglers that hedging is for would pull a mean up to their own latency)."""
        with self._lock:
            recent = sorted(self._recent)
        return recent[len(recent) // 2] if recent else None

    def has_room(self) -> bool:
        """No call waits for a slot (a hedge then takes a free one, not a waiting call's)."""
        with self._lock:
            return not self._waiters and self.in_flight < int(self.limit)

    def _take(self) -> float:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return time.monotonic()

    def _wake(self) -> None:
        with self._lock:
            if self._paused_until > time.monotonic():
                return
            while self._waiters and self.in_flight < int(self.limit):
                loop, future = self._waiters.popleft()
                started = self._take()
                try:
                    loop.call_soon_threadsafe(self._hand_over, future, started)
                except RuntimeError:  # that loop is closed: give the slot back
                    self.in_flight -= 1

    def _hand_over(self, future: asyncio.Future, started: float) -> None:
        if future.done():  # cancelled meanwhile
            self.release(started, None)
        else:
            future.set_result(started)

    def release(self, started: float, error: BaseException | None | bool, *, latency: float | None = None) -> None:
        """End a call that started at `started`: `error` None for a success, the exception for a
        failure (an overload status makes the limit smaller), False for no signal (cancelled)."""
        now = time.monotonic()
        resume_in = 0.0
        with self._lock:
            demand = self.in_flight + len(self._waiters)  # the calls that want a slot, this one included
            self.in_flight -= 1
            if error is None:
                self.successes += 1
                self._grow(now - started if latency is None else latency, demand, started, now)
            elif isinstance(error, ModelError) and error.status_code in OVERLOAD_STATUS:
                self.overloads += 1
                self.refused_at = time.time()
                if started > self._last_cut:  # one cut per round trip: the calls sent together
                    self._last_cut = now
                    self.limit = max(1.0, self.limit / 2)
                    self.slow_start = False
                if error.retry_after:
                    self._paused_until = max(self._paused_until, now + min(error.retry_after, 60.0))
                    resume_in = self._paused_until - now
        if resume_in > 0:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().call_later(resume_in, self._resume)
        self._wake()

    def _resume(self) -> None:
        """The timer at the end of a Retry-After pause. A timer may fire a little early (uvloop, which
        uvicorn uses when it is installed, counts in milliseconds): then it is set again for the rest,
        for `_wake` does nothing while the pause lasts, and the calls queued behind it would wait for ever."""
        left = self._paused_until - time.monotonic()
        if left > 0:
            asyncio.get_running_loop().call_later(left + 0.001, self._resume)
            return
        self._wake()

    def _grow(self, latency: float, demand: int, started: float, now: float) -> None:
        self._recent.append(latency)
        self._latency = latency if self._latency is None else 0.9 * self._latency + 0.1 * latency
        self._best_latency = self._latency if self._best_latency is None else min(self._best_latency, self._latency)
        if demand < int(self.limit) or self._latency > _LATENCY_HOLD * self._best_latency + 0.1:
            return  # the limit is not what holds calls back, or the provider is slowing down
        if not self.slow_start:
            self.limit = min(float(self.ceiling), self.limit + 1.0 / self.limit)
        elif started > self._last_doubling:  # the first answer of a round trip: double, up to the demand
            self._last_doubling = now
            self.limit = min(float(self.ceiling), max(self.limit + 1.0, min(float(demand), 2.0 * self.limit)))


_limits: dict[str, EndpointLimit] = {}
_limits_lock = threading.Lock()


def endpoint_key(client: ModelClient) -> str | None:
    """One endpoint: the client's kind, base URL, model and (hashed) key; None for a model that
    does not call a provider (in-process models: their width is the run's `max_concurrency`)."""
    if not getattr(client, "remote", False):
        return None
    key = getattr(client, "_api_key", None) or ""
    digest = hashlib.sha256(key.encode()).hexdigest()[:12] if key else ""
    return f"{model_identity(client)}|{digest}"


def endpoint_limit(client: ModelClient) -> EndpointLimit | None:
    """The process-wide limit of `client`'s endpoint (made on first use)."""
    key = endpoint_key(client)
    if key is None:
        return None
    with _limits_lock:
        limit = _limits.get(key)
        if limit is None:
            limit = _limits[key] = _first_limit(key)
        return limit


def _first_limit(key: str) -> EndpointLimit:
    """A new endpoint's limit: as an earlier process left it (not older than the memory's bound), or
    START_LIMIT. Read once per endpoint per process."""
    from .endpoint_memory import recall

    try:
        remembered = recall(key)
    except ValueError:  # a bad RLM_WIDTH_MEMORY_HOURS: the start is the default's, the save says why
        remembered = None
    if remembered is None:
        return EndpointLimit(key)
    return EndpointLimit.remembered(key, remembered.limit, remembered.slow_start, remembered.refused_at)


class Scheduler:
    def __init__(self, budget: Budget, events: EventLog, usage: UsageSummary, *,
                 max_concurrency: int = 32, retry: RetryPolicy = RetryPolicy(),
                 call_timeout_s: float | None = 300.0, max_output_tokens: int | None = None,
                 temperature: float | None = None, store: "Store | None" = None, use_cache: bool = False,
                 replay: "ReplayBook | None" = None, hedge_after: float | None = None,
                 record_logprobs: str | None = None) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.budget = budget
        self.events = events
        self.usage = usage
        self.retry = retry
        self.call_timeout_s = call_timeout_s
        self.max_output_tokens = max_output_tokens
        self.temperature = temperature
        self.store = store
        self.use_cache = use_cache and store is not None
        self.replay = replay
        self.hedge_after = hedge_after  # CallPolicy.hedge_after: sub-calls sent again when they straggle
        self.record_logprobs = record_logprobs  # CallPolicy.record_logprobs: passed to clients that take it
        # The run's ceiling; calls to a provider also take a slot of its endpoint's adaptive limit
        # (`EndpointLimit`), shared by every run of the process.
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self.in_flight = 0
        self._call_counter = 0
        self.tree = CallTree()  # each call's parent, for the headers a request carries (call_ids.py)
        self.endpoints: set[EndpointLimit] = set()  # the endpoints called, remembered at the run's end
        self._hedgeable = 0  # sub-calls sent that could be hedged
        self._hedges = 0  # of them, those sent a second time (at most HEDGE_SHARE, see `_may_hedge`)

    async def remember_widths(self) -> str | None:
        """Save the widths the called endpoints took, for later processes (endpoint_memory.py): in a
        thread, and only when one changed meaningfully (`save_changed`); returns why that failed, or None."""
        from .endpoint_memory import save_changed, widths

        try:
            await asyncio.to_thread(save_changed, widths(list(self.endpoints)))  # taken here, on the loop
        except (OSError, ValueError) as error:
            return f"the endpoints' widths were not remembered: {error}"
        return None

    def _delay(self, error: BaseException, attempt: int) -> float:
        """Honour Retry-After when the provider sent one; else exponential backoff with full jitter."""
        if isinstance(error, ModelError) and error.retry_after is not None:
            return min(max(error.retry_after, 0.0), self.retry.max_delay_s)
        ceiling = min(self.retry.base_delay_s * 2 ** (attempt - 1), self.retry.max_delay_s)
        return random.uniform(0, ceiling)

    async def call(self, client: ModelClient, messages: list[Message], site: CallSite,
                   *, max_output_tokens: int | None = None) -> Completion:
        """One logical call, retried on transient errors. Raises BudgetExceeded or ModelError.

        A call recorded by the run being resumed, or (with the cache on) an identical earlier call,
        is answered from the store: no request, no budget, no cost.
        """
        max_output_tokens = max_output_tokens or self.max_output_tokens
        key = None
        if self.store is not None:
            from ..record.store import cache_key

            key = cache_key(model_identity(client), messages, max_output_tokens, self.temperature,
                            getattr(self.store, "cache_namespace", None))
            stored, source = (self.replay.take(key), "replay") if self.replay is not None else (None, None)
            if stored is None and self.use_cache:
                stored, source = self.store.cached_completion(key), "cache"
            if stored is not None:
                return self.answered(client, messages, site, stored, source, key)
        self._call_counter += 1
        call_id = new_call_id(site.run_id, self._call_counter)
        headers = request_headers(site, call_id, self.tree.started(site, call_id))  # the same on every attempt
        if self.hedge_after is not None and site.purpose == "sub" and (endpoint := endpoint_limit(client)):
            return await self._hedged(endpoint, client, messages, site, call_id, max_output_tokens, key, headers)
        return await self._retrying(client, messages, site, call_id, max_output_tokens, key, headers)

    async def _retrying(self, client: ModelClient, messages: list[Message], site: CallSite, call_id: str,
                        max_output_tokens: int | None, key: str | None,
                        headers: dict[str, str] | None = None) -> Completion:
        # A plain loop, not tenacity: its per-attempt bookkeeping cost about 40 µs, which a fan-out
        # of a thousand 100 ms calls at concurrency 64 pays serially (2.5% of its wall time).
        attempt = 1
        while True:
            try:
                return await self._attempt(client, messages, site, call_id, attempt, max_output_tokens, key, headers)
            except ModelError as error:
                if not error.retryable or attempt > self.retry.max_retries:
                    raise
                await asyncio.sleep(self._delay(error, attempt))
                attempt += 1

    async def _hedged(self, endpoint: EndpointLimit, client: ModelClient, messages: list[Message], site: CallSite,
                      call_id: str, max_output_tokens: int | None, key: str | None,
                      headers: dict[str, str] | None = None) -> Completion:
        """A sub-call that is sent a second time when it straggles: no answer after `hedge_after`
        times the endpoint's usual latency while the endpoint has free slots (no call waits for one)
        and the run's hedges stay within HEDGE_SHARE of its hedgeable calls. The copy is sent only
        when the budget has room for it now (a spare reservation); the first answer wins, the other
        request is cancelled and settled at its prompt's worst case. A copy is one attempt; a copy that
        straggles too (it drew the tail as well) gets one more: HEDGES_PER_CALL copies at most."""
        self._hedgeable += 1
        first = asyncio.ensure_future(self._retrying(client, messages, site, call_id, max_output_tokens, key, headers))
        tasks, race = {first}, None
        try:
            started = time.monotonic()
            for _ in range(HEDGES_PER_CALL):
                race = asyncio.ensure_future(_first_success(set(tasks), first))
                if not await self._straggles(race, endpoint):
                    return race.result()
                reservation = self._spare_reservation(client, messages, max_output_tokens)
                if reservation is None:
                    return await race
                race.cancel()
                self._hedges += 1
                self.usage.record(client.name, site.depth, TokenUsage(hedged=1))
                self.events.emit("llm_hedge", **site.fields(), call_id=call_id, model=client.name,
                                 after_s=round(time.monotonic() - started, 3))
                # The copy is the same call: the same call id and request id (the export keeps its row apart).
                tasks.add(asyncio.ensure_future(self._attempt(client, messages, site, call_id, 1, max_output_tokens,
                                                              key, headers, reservation)))
            return await _first_success(tasks, first)
        finally:
            for task in tasks | ({race} if race is not None else set()):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _may_hedge(self) -> bool:
        """The run's hedges stay within HEDGE_SHARE of its hedgeable sub-calls sent so far (one at least)."""
        return self._hedges + 1 <= max(1.0, HEDGE_SHARE * self._hedgeable)

    def _spare_reservation(self, client: ModelClient, messages: list[Message],
                           max_output_tokens: int | None) -> Reservation | None:
        """The budget for a hedge's copy if it fits now and leaves HEDGE_KEEPS_CALLS, else None (the call
        then waits for its first request; the budget is not marked exhausted, since the call itself
        needs no more)."""
        from ..models.pricing import worst_case_price

        try:
            return self.budget.reserve(messages, max_output_tokens=max_output_tokens,
                                       price=worst_case_price(client.name), spare=True, keep_calls=HEDGE_KEEPS_CALLS)
        except BudgetExceeded:
            return None

    async def _straggles(self, task: asyncio.Future, endpoint: EndpointLimit) -> bool:
        """Wait until `task` is done (False) or straggles (True): no answer `hedge_after` times the
        endpoint's usual latency after the endpoint last had calls waiting for a slot (while calls
        wait, this one may be one of them: its clock starts once none does). Looked at again every
        0.25 s while no latency is known or the endpoint is full."""
        clock = time.monotonic()
        while True:
            if not endpoint.has_room():
                clock = time.monotonic()
            usual = endpoint.usual_latency()
            due = None if usual is None else clock + self.hedge_after * usual - time.monotonic()
            if due is not None and due <= 0 and endpoint.has_room() and self._may_hedge():
                return True
            done, _ = await asyncio.wait({task}, timeout=0.25 if due is None or due <= 0 else due)
            if done:
                return False

    def answered(self, client: ModelClient, messages: list[Message], site: CallSite, stored: Completion,
                 source: str, key: str | None = None) -> Completion:
        """A call answered without a request (`source`: "replay", "cache", or "memory" for a sub-call
        a memory workspace had answered): recorded as an `llm_call` event, no budget, no cost."""
        self._call_counter += 1
        call_id = new_call_id(site.run_id, self._call_counter)
        self.tree.started(site, call_id)
        self.usage.record(client.name, site.depth, TokenUsage(cached_calls=1))
        self.events.emit("llm_call", **site.fields(), call_id=call_id,
                         model=client.name, attempt=0, messages=for_record(messages),
                         response=stored.text, prompt_tokens=stored.prompt_tokens,
                         completion_tokens=stored.completion_tokens, cost_usd=0.0, latency_s=0.0,
                         finish_reason=stored.finish_reason, cache_key=key, cached=source)
        return stored

    async def _attempt(self, client: ModelClient, messages: list[Message], site: CallSite,
                       call_id: str, attempt: int, max_output_tokens: int | None, key: str | None,
                       headers: dict[str, str] | None = None, reservation: Reservation | None = None) -> Completion:
        """One request. `reservation`: the budget already reserved for it (a hedge's), else reserved here."""
        from ..models.pricing import cost_usd

        async with self._semaphore:
            if reservation is None:
                reservation = await self._reserve(client, messages, site, call_id, max_output_tokens)
            endpoint = endpoint_limit(client)
            if endpoint is not None:
                self.endpoints.add(endpoint)
            try:
                started = await endpoint.acquire() if endpoint is not None else time.monotonic()
            except BaseException:
                self.budget.settle(reservation, tokens=0, cost_usd=0.0)
                raise
            timeout = self.budget.cap_timeout(self.call_timeout_s)
            self.in_flight += 1
            self.events.emit("llm_start", **site.fields(), call_id=call_id,
                             model=client.name, attempt=attempt,
                             in_flight=self.in_flight)
            try:
                completion = await self._complete(client, messages, reservation.max_output_tokens, timeout, headers)
            except BaseException as error:
                if endpoint is not None:
                    endpoint.release(started, error if isinstance(error, Exception) else False)
                sent = isinstance(error, asyncio.CancelledError)  # cancelled in flight: its prompt may be billed
                self.budget.settle(reservation, tokens=reservation.prompt_tokens if sent else 0,
                                   cost_usd=reservation.prompt_cost_usd if sent else 0.0)
                model_error = error if isinstance(error, ModelError) else None
                self.events.emit("llm_error", **site.fields(), call_id=call_id,
                                 model=client.name, attempt=attempt,
                                 latency_s=round(time.monotonic() - started, 4),
                                 error=f"{type(error).__name__}: {error}",
                                 retryable=bool(model_error and model_error.retryable))
                raise
            finally:
                self.in_flight -= 1
            if endpoint is not None:
                endpoint.release(started, None)
        completion = await checked_usage(completion, messages, reservation.max_output_tokens)
        cost = cost_usd(client.name, completion.prompt_tokens, completion.completion_tokens,
                        cached_tokens=completion.cached_prompt_tokens, cache_write_tokens=completion.cache_write_tokens)
        tokens = completion.prompt_tokens + completion.completion_tokens
        self.budget.settle(reservation, tokens=tokens, cost_usd=cost)
        self.usage.record(client.name, site.depth, TokenUsage(
            completion.prompt_tokens, completion.completion_tokens, 1, cost,
            cached_prompt_tokens=completion.cached_prompt_tokens, cache_write_tokens=completion.cache_write_tokens))
        self.events.emit("llm_call", **site.fields(), call_id=call_id,
                         model=client.name, attempt=attempt,
                         messages=for_record(messages), response=completion.text,
                         prompt_tokens=completion.prompt_tokens,
                         completion_tokens=completion.completion_tokens, cost_usd=cost,
                         latency_s=round(time.monotonic() - started, 4),
                         finish_reason=completion.finish_reason, cache_key=key, reasoning=completion.reasoning,
                         cached_prompt_tokens=completion.cached_prompt_tokens,
                         cache_write_tokens=completion.cache_write_tokens, **_token_fields(completion))
        return completion

    async def _reserve(self, client: ModelClient, messages: list[Message], site: CallSite, call_id: str,
                       max_output_tokens: int | None) -> Reservation:
        """The call's worst case reserved (waiting while calls in flight hold the room); a refusal is
        recorded as an `llm_refused` event."""
        from ..models.pricing import worst_case_price

        try:
            return await self.budget.areserve(messages, max_output_tokens=max_output_tokens,
                                              price=worst_case_price(client.name))
        except BudgetExceeded as error:
            self.events.emit("llm_refused", **site.fields(), call_id=call_id,
                             model=client.name, budget=error.budget, error=str(error))
            raise

    async def _complete(self, client: ModelClient, messages: list[Message], max_output_tokens: int | None,
                        timeout: float | None, headers: dict[str, str] | None = None) -> Completion:
        if timeout is not None and timeout <= 0:
            raise BudgetExceeded("time", "call refused: the run's time limit is used up")
        # Only clients that declare `sends_headers` take them (the interface's other clients do not).
        extra = {"headers": headers} if headers and getattr(client, "sends_headers", False) else {}
        if self.record_logprobs and getattr(client, "records_logprobs", False):
            extra["record_logprobs"] = self.record_logprobs
        call = client.complete(messages, max_tokens=max_output_tokens, temperature=self.temperature,
                               timeout=timeout, **extra)
        if timeout is None:
            return await call
        try:
            # The client enforces its own timeout; this guard catches clients that cannot. (A timeout
            # scope, not wait_for: wait_for wraps every call in one more task.)
            async with asyncio.timeout(timeout + 1.0):
                return await call
        except TimeoutError:
            raise ModelError(f"{client.name}: no answer within {timeout:.1f} s", retryable=True) from None


async def _first_success(tasks: set[asyncio.Future], first: asyncio.Future) -> Completion:
    """The first of `tasks` to answer; when all fail, the first request's error."""
    pending = set(tasks)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task.exception() is None:
                return task.result()
    return first.result()


def _token_fields(completion: Completion) -> dict:
    """The reply's token ids and logprobs for the call event, only when the provider returned them."""
    return {name: value for name in ("token_ids", "logprobs")
            if (value := getattr(completion, name, None)) is not None}
