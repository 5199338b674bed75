"""In-process environment (opt-in, trusted input only): the code runs in a thread of this process.

Faster to start and no copy of the input, but the code can see everything this process can,
including API keys. A cell past its time limit cannot be stopped: its thread is abandoned and the
REPL replaced, so the model loses its variables just as with the worker.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .base import ReplEnvironment, SubCallHandler
from ..caps import CAPTURED_CHARS
from .inside.runtime import REPL


class LocalEnvironment(ReplEnvironment):
    name = "local"
    isolation = None  # none: the code runs in this process
    launched = None  # no process boots
    past_time_limit = "abandoned"  # a thread cannot be stopped

    def __init__(self, context: Any, handler: SubCallHandler, *, max_captured_chars: int = CAPTURED_CHARS) -> None:
        from ..context.loader import as_inputs
        from ..context.tables import TableSource
        from ..context.textfile import TextFile
        from .protocol import TableRef, table_entry

        inputs = as_inputs(context)
        self._contexts = [TableRef(i.value.name) if isinstance(i.value, TableSource) else
                          i.value.read() if isinstance(i.value, TextFile) else i.value for i in inputs]
        self._tables = [table_entry(t, str(t.path)) for i in inputs for t in i.tables]
        super().__init__(handler)
        self._max_captured_chars = max_captured_chars
        self._loop: asyncio.AbstractEventLoop | None = None
        self._repl: REPL | None = None

    def _call_host(self, kind: str, prompts: list[str], model: str | None, context: Any) -> list[dict]:
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(self._dispatch(kind, prompts, model, context), self._loop)
        return future.result()

    def _new_repl(self) -> REPL:
        return REPL(self._contexts[0], self._call_host, more_contexts=self._contexts[1:], tables=self._tables,
                    max_captured_chars=self._max_captured_chars)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._repl = self._new_repl()

    async def _run_cell(self, code: str, timeout: float | None, wall_timeout: float | None) -> dict:
        assert self._repl is not None, "call start() first"
        limits = [t for t in (timeout, wall_timeout) if t is not None]
        return await asyncio.wait_for(asyncio.to_thread(self._repl.execute, code), min(limits, default=None))

    async def _replace_repl(self) -> None:
        self._repl = self._new_repl()
        await super()._replace_repl()

    async def get_variable(self, name: str) -> dict:
        assert self._repl is not None
        return self._repl.get_variable(name)

    async def close(self) -> None:
        self._repl = None
