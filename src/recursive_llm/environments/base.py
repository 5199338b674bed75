"""The one interface of every environment (`Environment`), what the REPL-owning ones share
(`ReplEnvironment`), and starting one in the background (`StartingInBackground`)."""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .host.sandbox import IsolationPlan

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


class Environment(abc.ABC):
    """What a run needs from the place its model's code runs, and all a caller may use of it.

    The implementations: a sandboxed worker process started for the run (`host.worker.
    WorkerEnvironment`), one taken from the pool of pre-started workers (`prestart.pool.
    PooledWorker`), the host process itself (`local.LocalEnvironment`), and any of them starting
    while the run does something else (`StartingInBackground`). Each subclasses this class and
    implements every member itself (no forwarding of unknown attributes); tests/test_environments.py
    holds them to it."""

    name: str
    """Which kind of environment runs the code: "worker" or "local" (the trajectory's `environment`)."""

    isolation: IsolationPlan | None
    """The isolation layers a worker gets on this machine and what it lacks (recorded in `run_start`);
    None in-process. Known before `start`."""

    launched: asyncio.Event | None
    """Set once `start` has made the worker's process (it boots from then on, while the run describes
    its input: `StartingInBackground.until_launched`); None where nothing boots (in-process, a spare)."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Make the REPL ready: `context` (and `context_0`, ...) defined, the helpers in place."""

    @abc.abstractmethod
    async def execute(self, code: str, timeout: float | None, wall_timeout: float | None = None) -> CellResult:
        """Run a cell. `timeout` bounds its own compute time; `wall_timeout` bounds it all. A cell
        past its limit, or one that breaks the REPL, replaces the REPL (`CellResult.restarted`)."""

    @abc.abstractmethod
    async def get_variable(self, name: str) -> dict:
        """A REPL variable as text: `{"ok": True, "text": ...}`, or `{"ok": False, "error": ...}`."""

    @abc.abstractmethod
    def rebind(self, handler: SubCallHandler) -> None:
        """Send later sub-calls to `handler` (a session's next turn is a new run on the same REPL)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop the REPL and remove what it left (a worker's process and directory). Safe to call
        after a failed or a missing start."""


class CellFailed(Exception):
    """The environment could not run a cell to its end; the message is what the model is told."""


class ReplEnvironment(Environment):
    """What the environments that own a REPL share (the worker, in-process): the sub-call handler,
    and turning one cell's run into a `CellResult` (its time, and a REPL replaced after a timeout or
    a failure, counted in `restarts`). An implementation runs the cell (`_run_cell`, returning the
    REPL's reply dict or raising `asyncio.TimeoutError` / `CellFailed`) and knows how to replace its
    REPL."""

    past_time_limit = "stopped"  # what happened to a cell past its time limit, in the model's words

    def __init__(self, handler: SubCallHandler) -> None:
        self._handler = handler
        self.restarts = 0

    def rebind(self, handler: SubCallHandler) -> None:
        self._handler = handler

    async def _dispatch(self, kind: str, prompts: list[str], model: str | None, context: Any) -> list[dict]:
        """Every sub-call goes through here, so `rebind` reaches calls the REPL makes later."""
        return await self._handler(kind, prompts, model, context)

    async def execute(self, code: str, timeout: float | None, wall_timeout: float | None = None) -> CellResult:
        started = time.monotonic()
        try:
            reply = await self._run_cell(code, timeout, wall_timeout)
        except asyncio.TimeoutError:
            await self._replace_repl()
            return CellResult(error=f"TimeoutError: the cell ran past its time limit and was {self.past_time_limit}",
                              timed_out=True, restarted=True, duration_s=time.monotonic() - started)
        except CellFailed as failure:
            await self._replace_repl()
            return CellResult(error=str(failure), restarted=True, duration_s=time.monotonic() - started)
        final = reply.get("final")
        return CellResult(stdout=reply["stdout"], stderr=reply["stderr"], error=reply.get("error"),
                          final=final if isinstance(final, str) else None, duration_s=time.monotonic() - started)

    @abc.abstractmethod
    async def _run_cell(self, code: str, timeout: float | None, wall_timeout: float | None) -> dict:
        """The REPL's reply to one cell, or `asyncio.TimeoutError` / `CellFailed`."""

    async def _replace_repl(self) -> None:
        """A fresh REPL (every variable gone) in place of one that timed out or failed."""
        self.restarts += 1


async def until_set(event: Any, task: Any) -> None:
    """Wait until the asyncio.Event `event` is set or the future `task` is done."""
    import asyncio

    if event.is_set() or task.done():
        return
    waiting = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()


class StartingInBackground(Environment):
    """An environment that starts while the run does something else (the root model writes its
    first reply): a sandboxed worker takes about 60 ms to start, which that call hides. The first
    cell waits for the start, and a failed start is raised there."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self._started = asyncio.ensure_future(environment.start())

    @property
    def name(self) -> str:
        return self.environment.name

    @property
    def isolation(self) -> IsolationPlan | None:
        return self.environment.isolation

    @property
    def launched(self) -> asyncio.Event | None:
        return self.environment.launched

    async def start(self) -> None:
        """The start began with this object: wait for it (a failed start is raised here)."""
        await self._started

    async def until_launched(self) -> None:
        """Wait until the environment's process exists (it boots from then on), or its start ended."""
        if self.environment.launched is not None:
            await until_set(self.environment.launched, self._started)

    async def execute(self, code: str, timeout: float | None, wall_timeout: float | None = None) -> CellResult:
        await self._started
        return await self.environment.execute(code, timeout, wall_timeout)

    async def get_variable(self, name: str) -> dict:
        await self._started
        return await self.environment.get_variable(name)

    def rebind(self, handler: SubCallHandler) -> None:
        self.environment.rebind(handler)

    async def close(self) -> None:
        try:
            await self._started
        except (Exception, asyncio.CancelledError):  # a failed or cancelled start: close what there is
            pass
        await self.environment.close()
