"""What the run loop needs from a REPL environment, whichever one runs the code."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

# (kind "llm"|"rlm", prompts, model or None, optional child context) -> one reply dict per prompt
SubCallHandler = Callable[[str, list[str], "str | None", Any], Awaitable[list[dict]]]


@dataclass
class CellResult:
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    final: str | None = None
    timed_out: bool = False
    restarted: bool = False  # the REPL was replaced: every variable is gone
    duration_s: float = 0.0

    @property
    def ran(self) -> bool:
        """Did the code run at all (as opposed to failing to parse, or being killed)?"""
        return not self.timed_out and not (self.error or "").startswith("SyntaxError")


class Environment(Protocol):
    name: str

    async def start(self) -> None: ...

    async def execute(self, code: str, timeout: float | None, wall_timeout: float | None = None) -> CellResult:
        """Run a cell. `timeout` bounds its own compute time; `wall_timeout` bounds it all."""

    async def get_variable(self, name: str) -> dict: ...

    async def close(self) -> None: ...
