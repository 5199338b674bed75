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


class StartingInBackground:
    """An environment that starts while the run does something else (the root model writes its
    first reply): a sandboxed worker takes about 60 ms to start, which that call hides. The first
    cell waits for the start, and a failed start is raised there."""

    def __init__(self, environment: Environment) -> None:
        import asyncio

        self.environment = environment
        self.name = environment.name
        self._started = asyncio.ensure_future(environment.start())

    def __getattr__(self, name: str) -> Any:  # isolation and other attributes of the environment
        return getattr(self.environment, name)

    async def execute(self, code: str, timeout: float | None, wall_timeout: float | None = None) -> CellResult:
        await self._started
        return await self.environment.execute(code, timeout, wall_timeout)

    async def get_variable(self, name: str) -> dict:
        await self._started
        return await self.environment.get_variable(name)

    async def close(self) -> None:
        import asyncio

        try:
            await self._started
        except (Exception, asyncio.CancelledError):  # a failed or cancelled start: close what there is
            pass
        await self.environment.close()
