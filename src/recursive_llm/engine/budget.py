"""Budgets: the one place where limits on calls, tokens, cost and wall time are checked.

Every model call reserves its worst case *before* it is sent and settles the real figures after.
Because reservations are taken under a lock, concurrent batched calls can never jointly overshoot.

A call's worst case is its prompt (a safe upper bound) plus its output cap. With no output cap
given, a budgeted call is capped at `DEFAULT_OUTPUT_RESERVE` tokens: what a reply plausibly needs,
never the whole remaining budget (which would let the first call in flight starve every other).
A call that does not fit *now* but would once the calls in flight settle waits for them; a call
that could not fit even then is refused, and only then is the budget exhausted.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

from ..config import Limits
from ..errors import BudgetExceeded

# Chat templates add a few tokens per message; bytes are an upper bound on byte-level BPE tokens.
_TOKENS_PER_MESSAGE = 8
_MIN_USEFUL_OUTPUT = 16
# The output cap of a budgeted call that was given none (max_output_tokens): enough for a long root
# reply with its reasoning, small enough that a token budget runs many calls in parallel.
DEFAULT_OUTPUT_RESERVE = 8192


def prompt_token_bound(messages: list[dict]) -> int:
    """A safe upper bound on the prompt tokens of `messages` for byte-level BPE tokenizers."""
    return sum(len(str(m.get("content", "")).encode("utf-8")) + _TOKENS_PER_MESSAGE for m in messages)


@dataclass
class Reservation:
    tokens: int
    cost_usd: float
    max_output_tokens: int | None
    # The prompt's share of the worst case: what a request cancelled after it was sent is settled at
    # (a provider may bill a prompt it had started on; a hedge's cancelled copy is one).
    prompt_tokens: int = 0
    prompt_cost_usd: float = 0.0


class RoomLater(BudgetExceeded):
    """The call would fit once the calls in flight settle: `areserve` waits instead of refusing."""


class Budget:
    """Shared, thread-safe spending state of one top-level run."""

    def __init__(self, limits: Limits, *, clock=time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._start = clock()
        self._lock = threading.Lock()
        self.calls = 0
        self.tokens = 0  # settled
        self.cost_usd = 0.0  # settled
        self._reserved_tokens = 0
        self._reserved_cost = 0.0
        self._open = 0  # reservations not yet settled
        self.exhausted: str | None = None  # which budget refused a call, if any
        self._settled: asyncio.Event | None = None  # set when a reservation settles (calls wait on it)

    # -- time ---------------------------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        return self._clock() - self._start

    def remaining_time(self) -> float | None:
        if self.limits.timeout_s is None:
            return None
        return self.limits.timeout_s - self.elapsed

    def cap_timeout(self, timeout: float | None) -> float | None:
        """`timeout` shortened so that nothing runs past the run's deadline."""
        remaining = self.remaining_time()
        if remaining is None:
            return timeout
        return remaining if timeout is None else min(timeout, remaining)

    def check_time(self) -> None:
        remaining = self.remaining_time()
        if remaining is not None and remaining <= 0:
            self._refuse("time", f"the run's time limit of {self.limits.timeout_s:g} s is used up")

    # -- calls, tokens, cost --------------------------------------------------------------------
    def _refuse(self, budget: str, why: str, spare: bool = False) -> None:
        if self.exhausted is None and not spare:
            self.exhausted = budget
        raise BudgetExceeded(budget, f"call refused: {why} (raise the limit to allow more)")

    def reserve(self, messages: list[dict], *, max_output_tokens: int | None,
                price: tuple[float, float] | None, spare: bool = False, keep_calls: int = 0) -> Reservation:
        """Reserve one call's worst case now, or raise `BudgetExceeded` (`RoomLater` when the call
        would fit once the calls in flight settle). May lower the output cap. A `spare` request (a
        hedge: the call is answered without it) refused does not mark the budget exhausted;
        `keep_calls`: the call fits only if `max_llm_calls` keeps that many calls after it and
        those already reserved (a hedge leaves the root the call it needs to answer)."""
        prompt_bound = prompt_token_bound(messages)
        in_price, out_price = ((price[0] / 1e6, price[1] / 1e6) if price else (0.0, 0.0))
        limits = self.limits
        with self._lock:
            self.check_time()
            if limits.max_llm_calls is not None and self.calls + 1 + keep_calls > limits.max_llm_calls:
                self._refuse("llm_calls", f"max_llm_calls={limits.max_llm_calls} reached", spare)
            output_cap = max_output_tokens
            budgeted = limits.max_tokens is not None or (limits.max_cost_usd is not None and (in_price or out_price))
            if budgeted:
                planned = max_output_tokens or DEFAULT_OUTPUT_RESERVE
                rooms = []  # (output tokens that fit now, which budget), one per limit that applies
                if limits.max_tokens is not None:
                    settled_room = limits.max_tokens - self.tokens - prompt_bound
                    if settled_room < _MIN_USEFUL_OUTPUT:
                        self._refuse("tokens", f"max_tokens={limits.max_tokens} cannot fit another call "
                                               f"(prompt up to {prompt_bound} tokens)", spare)
                    rooms.append((settled_room - self._reserved_tokens, "tokens"))
                if limits.max_cost_usd is not None and (in_price or out_price):
                    settled_usd = limits.max_cost_usd - self.cost_usd - prompt_bound * in_price
                    def tokens_for(usd: float) -> int:
                        return int(usd / out_price) if out_price else (10**12 if usd > 0 else -1)
                    if tokens_for(settled_usd) < _MIN_USEFUL_OUTPUT:
                        self._refuse("cost", f"max_cost_usd={limits.max_cost_usd:g} cannot fit another call", spare)
                    rooms.append((tokens_for(settled_usd - self._reserved_cost), "cost"))
                now, tightest = min(rooms)
                if now >= planned:
                    output_cap = planned
                elif self._open == 0:
                    output_cap = now  # nothing in flight will give room back: the last call gets what is left
                else:
                    raise RoomLater(tightest, "waiting for the calls in flight to settle")
            reserved_tokens = prompt_bound + (output_cap or 0)
            reserved_cost = prompt_bound * in_price + (output_cap or 0) * out_price
            self.calls += 1
            self._open += 1
            self._reserved_tokens += reserved_tokens
            self._reserved_cost += reserved_cost
            return Reservation(reserved_tokens, reserved_cost, output_cap, prompt_bound, prompt_bound * in_price)

    async def areserve(self, messages: list[dict], *, max_output_tokens: int | None,
                       price: tuple[float, float] | None) -> Reservation:
        """`reserve`, waiting (within the run's time limit) while the budget's room is held by
        calls in flight rather than spent."""
        while True:
            settled = self._settled_event()
            try:
                return self.reserve(messages, max_output_tokens=max_output_tokens, price=price)
            except RoomLater:
                remaining = self.remaining_time()
                try:
                    async with asyncio.timeout(None if remaining is None else max(remaining, 0.0)):
                        await settled.wait()
                except TimeoutError:
                    pass  # the next reserve() refuses for time

    def _settled_event(self) -> asyncio.Event:
        """An event that the next `settle` sets (one per wait round, so no wake-up is missed)."""
        with self._lock:
            if self._settled is None or self._settled.is_set():
                self._settled = asyncio.Event()
            return self._settled

    def settle(self, reservation: Reservation, *, tokens: int, cost_usd: float) -> None:
        """Replace a reservation by what the call really used (0 for a failed call)."""
        with self._lock:
            self._open -= 1
            self._reserved_tokens -= reservation.tokens
            self._reserved_cost -= reservation.cost_usd
            self.tokens += tokens
            self.cost_usd += cost_usd
            settled, self._settled = self._settled, None
        if settled is not None:
            settled.set()

    def snapshot(self) -> dict:
        with self._lock:
            return {"calls": self.calls, "tokens": self.tokens, "cost_usd": round(self.cost_usd, 8),
                    "elapsed_s": round(self.elapsed, 3), "exhausted": self.exhausted}
