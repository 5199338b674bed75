"""Budgets: the one place where limits on calls, tokens, cost and wall time are checked.

Every model call reserves its worst case *before* it is sent and settles the real figures after.
Because reservations are taken under a lock, concurrent batched calls can never jointly overshoot:
a call whose worst case does not fit is refused (and its output cap is lowered when that helps).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from .errors import BudgetExceeded

# Chat templates add a few tokens per message; bytes are an upper bound on byte-level BPE tokens.
_TOKENS_PER_MESSAGE = 8
_MIN_USEFUL_OUTPUT = 16


@dataclass(frozen=True)
class Limits:
    """What one top-level run (root and all its children together) may spend."""

    max_iterations: int = 20
    max_depth: int = 1
    max_llm_calls: int | None = None
    max_tokens: int | None = None
    max_cost_usd: float | None = None
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.max_iterations < 1:
            raise ValueError("max_iterations must be at least 1")
        if self.max_depth < 1:
            raise ValueError("max_depth must be at least 1 (1 = sub-calls are plain LLM calls)")
        for name in ("max_llm_calls", "max_tokens", "max_cost_usd", "timeout_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive (or None for no limit), got {value!r}")


def prompt_token_bound(messages: list[dict]) -> int:
    """A safe upper bound on the prompt tokens of `messages` for byte-level BPE tokenizers."""
    return sum(len(str(m.get("content", "")).encode("utf-8")) + _TOKENS_PER_MESSAGE for m in messages)


@dataclass
class Reservation:
    tokens: int
    cost_usd: float
    max_output_tokens: int | None


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
        self.exhausted: str | None = None  # which budget refused a call, if any

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
    def _refuse(self, budget: str, why: str) -> None:
        if self.exhausted is None:
            self.exhausted = budget
        raise BudgetExceeded(budget, f"call refused: {why} (raise the limit to allow more)")

    def reserve(self, messages: list[dict], *, max_output_tokens: int | None,
                price: tuple[float, float] | None) -> Reservation:
        """Reserve one call's worst case, or raise `BudgetExceeded`. May lower the output cap."""
        prompt_bound = prompt_token_bound(messages)
        in_price, out_price = ((price[0] / 1e6, price[1] / 1e6) if price else (0.0, 0.0))
        limits = self.limits
        with self._lock:
            self.check_time()
            if limits.max_llm_calls is not None and self.calls + 1 > limits.max_llm_calls:
                self._refuse("llm_calls", f"max_llm_calls={limits.max_llm_calls} reached")
            output_cap = max_output_tokens
            if limits.max_tokens is not None:
                room = limits.max_tokens - self.tokens - self._reserved_tokens - prompt_bound
                if room < _MIN_USEFUL_OUTPUT:
                    self._refuse("tokens", f"max_tokens={limits.max_tokens} cannot fit another call "
                                           f"(prompt up to {prompt_bound} tokens)")
                output_cap = room if output_cap is None else min(output_cap, room)
            if limits.max_cost_usd is not None and (in_price or out_price):
                room_usd = limits.max_cost_usd - self.cost_usd - self._reserved_cost - prompt_bound * in_price
                affordable_output = int(room_usd / out_price) if out_price else 10**12
                if room_usd <= 0 or affordable_output < _MIN_USEFUL_OUTPUT:
                    self._refuse("cost", f"max_cost_usd={limits.max_cost_usd:g} cannot fit another call")
                output_cap = affordable_output if output_cap is None else min(output_cap, affordable_output)
            reserved_tokens = prompt_bound + (output_cap or 0)
            reserved_cost = prompt_bound * in_price + (output_cap or 0) * out_price
            self.calls += 1
            self._reserved_tokens += reserved_tokens
            self._reserved_cost += reserved_cost
            return Reservation(reserved_tokens, reserved_cost, output_cap)

    def settle(self, reservation: Reservation, *, tokens: int, cost_usd: float) -> None:
        """Replace a reservation by what the call really used (0 for a failed call)."""
        with self._lock:
            self._reserved_tokens -= reservation.tokens
            self._reserved_cost -= reservation.cost_usd
            self.tokens += tokens
            self.cost_usd += cost_usd

    def snapshot(self) -> dict:
        with self._lock:
            return {"calls": self.calls, "tokens": self.tokens, "cost_usd": round(self.cost_usd, 8),
                    "elapsed_s": round(self.elapsed, 3), "exhausted": self.exhausted}
