"""`Result`: what a run returns. `str(result)` is the answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .usage import UsageSummary

STOP_REASONS = ("final", "max_iterations", "budget", "timeout", "error")


@dataclass
class Result:
    answer: str | None
    stopped_reason: str  # one of STOP_REASONS
    iterations: int
    usage: UsageSummary = field(default_factory=UsageSummary)
    cost_usd: float = 0.0
    run_id: str = ""
    trajectory_path: Path | None = None
    duration_s: float = 0.0
    error: str | None = None
    used_fallback: bool = False  # the built-in map-reduce program produced the answer
    depth: int = 0
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
            "stopped_reason": self.stopped_reason,
            "iterations": self.iterations,
            "usage": self.usage.to_dict(),
            "cost_usd": round(self.cost_usd, 8),
            "run_id": self.run_id,
            "trajectory_path": str(self.trajectory_path) if self.trajectory_path else None,
            "duration_s": round(self.duration_s, 3),
            "error": self.error,
            "used_fallback": self.used_fallback,
            "store_error": self.store_error,
        }
