"""`Result`: what a run returns. `str(result)` is the answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from .usage import UsageSummary


class StopReason(str, Enum):
    """Why a run stopped. A `str` enum: `result.stopped_reason == "final"` works as before."""

    FINAL = "final"  # the model answered
    MAX_ITERATIONS = "max_iterations"
    BUDGET = "budget"  # calls, tokens or cost ran out
    TIMEOUT = "timeout"  # the run's wall-time limit
    ERROR = "error"  # a provider or environment failure, or no usable answer
    # the map-reduce program asked about every part of the input and no part answered the question
    NOT_FOUND = "not_found"
    INTERRUPTED = "interrupted"  # cancelled (Ctrl-C, a client gone): only in the record, never a Result

    @classmethod
    def for_budget(cls, budget: str) -> "StopReason":
        """The stop reason for a refused call: `time` is a timeout, every other budget is `budget`."""
        return cls.TIMEOUT if budget == "time" else cls.BUDGET

    def __str__(self) -> str:
        return self.value


STOP_REASONS = tuple(reason.value for reason in StopReason)


@dataclass
class Result:
    answer: str | None
    stopped_reason: str  # a StopReason (one of STOP_REASONS)
    iterations: int
    usage: UsageSummary = field(default_factory=UsageSummary)
    cost_usd: float = 0.0
    run_id: str = ""
    trajectory_path: Path | None = None
    duration_s: float = 0.0
    error: str | None = None
    used_fallback: bool = False  # the built-in map-reduce program produced the answer
    depth: int = 0
    parsed: Any = None  # with completion(..., schema=...): the validated answer (a model instance or data)
    # What could not be recorded (the run store or the trajectory: corrupt, read-only, a full disk).
    # The answer is still here; the problem was also said once on stderr.
    store_error: str | None = None

    def __str__(self) -> str:
        return self.answer or ""

    @property
    def ok(self) -> bool:
        return self.stopped_reason == "final" and self.answer is not None

    def to_dict(self) -> dict:
        return {
            "answer": self.answer,
            "stopped_reason": str(self.stopped_reason),
            "iterations": self.iterations,
            "usage": self.usage.to_dict(),
            "cost_usd": round(self.cost_usd, 8),
            "run_id": self.run_id,
            "trajectory_path": str(self.trajectory_path) if self.trajectory_path else None,
            "duration_s": round(self.duration_s, 3),
            "error": self.error,
            "used_fallback": self.used_fallback,
            "parsed": _plain(self.parsed),
            "store_error": self.store_error,
        }


def _plain(value: Any) -> Any:
    """A parsed answer as JSON-able data (a pydantic model becomes its dict)."""
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value
