"""User tools: plain Python functions of the user's that model code calls by name from the REPL.

`RLM(tools=[fn, ...])`. A tool runs in the host, never in the worker: it may use the network or
credentials that the worker must never have. In the REPL each tool is a small stub of the same
name that sends its arguments to the host as JSON (over the channel `llm_query` uses); the host
binds them to the real signature, runs the function (a plain function in a thread, a coroutine
function on the loop) within `call_timeout_s` and the run's time limit, and sends the result back
as JSON. An exception comes back to model code as a `ToolError` with its type and message, the
secrets the host knows removed (redaction.py). Every call is an event (`tool_call`) in the
trajectory and the store, and counted in `result.usage.tools`.

A plain function runs in a thread of `TOOL_THREADS`, never in asyncio's default executor: a thread
cannot be killed, so a call past its timeout is abandoned (the run goes on at once; the thread's
result is dropped when it comes) and nothing waits for it: not the run, not the close of its
event loop (which joins the default executor's threads), not the interpreter's exit (a daemon
thread). An abandoned thread keeps its slot until its function returns, so tools that hang cannot
pile up threads: with all `MAX_TOOL_THREADS` taken, a call waits for one within its own timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import json
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Names the REPL already gives a meaning (the contract, the helpers, the input and answer).
RESERVED_NAMES = frozenset({
    "context", "answer", "history", "llm_query", "llm_query_batched", "rlm_query", "rlm_query_batched",
    "SHOW_VARS", "FINAL", "FINAL_VAR", "grep", "chunk", "count_tokens", "search", "semantic_search", "sql",
    "print", "ToolError", "remember", "memory",
})
MAX_DOC_CHARS = 1_500
MAX_TOOL_THREADS = 32  # plain-function tool calls running at once in a process, abandoned ones included


class ToolThreads:
    """Daemon threads for plain-function tools, at most `limit` alive at once (see the module)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._start_empty()
        os.register_at_fork(after_in_child=self._start_empty)  # a forked child has none of the threads

    def _start_empty(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._waiting: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = deque()

    async def acquire(self) -> None:
        """Wait for a free thread (a finishing thread hands its slot over to the first waiting)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._running < self.limit:
                self._running += 1
                return
            waiter = loop.create_future()
            self._waiting.append((loop, waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            with self._lock:
                queued = (loop, waiter) in self._waiting
                if queued:
                    self._waiting.remove((loop, waiter))
            if not queued and not waiter.cancelled():  # the slot was handed over already: pass it on
                self._release()
            raise

    def start(self, call: Callable[[], Any]) -> asyncio.Future:
        """`call()` in a thread of its own, in a slot taken with `acquire` (given back when `call`
        returns). Cancelling the wait for the returned future abandons the thread."""
        loop, context = asyncio.get_running_loop(), contextvars.copy_context()
        outcome: asyncio.Future = loop.create_future()

        def work() -> None:
            try:
                result, error = context.run(call), None
            except BaseException as raised:  # handed to the caller, whatever it is
                result, error = None, raised
            finally:
                self._release()
            with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, outcome, result, error)

        name = getattr(call, "__name__", None) or getattr(getattr(call, "func", None), "__name__", "call")
        threading.Thread(target=work, name=f"rlm-tool-{name}", daemon=True).start()
        return outcome

    def _release(self) -> None:
        with self._lock:
            while self._waiting:
                loop, waiter = self._waiting.popleft()
                with contextlib.suppress(RuntimeError):  # a closed loop's waiter is skipped
                    loop.call_soon_threadsafe(self._hand_over, waiter)
                    return
            self._running -= 1

    def _hand_over(self, waiter: asyncio.Future) -> None:
        if waiter.done():  # cancelled meanwhile: the slot goes to the next one
            self._release()
        else:
            waiter.set_result(None)


def _settle(outcome: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if outcome.done():  # abandoned after its timeout
        return
    if error is None:
        outcome.set_result(result)
    else:
        outcome.set_exception(error)


TOOL_THREADS = ToolThreads(MAX_TOOL_THREADS)


@dataclass(frozen=True)
class Tool:
    name: str
    function: Callable[..., Any]
    signature: inspect.Signature
    doc: str

    @classmethod
    def of(cls, function: Callable[..., Any]) -> "Tool":
        from ..errors import ConfigError

        if not callable(function):
            raise ConfigError(f"tools must be functions, got {type(function).__name__} {function!r}")
        name = getattr(function, "__name__", "")
        if not name.isidentifier() or name.startswith("_") or name in RESERVED_NAMES:
            raise ConfigError(f"tool name {name!r} cannot be used in the REPL: give the function a name that is an "
                              f"identifier, does not start with '_' and is not one of the REPL's own names")
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):
            raise ConfigError(f"tool {name!r} has no signature Python can read; wrap it in a def") from None
        try:  # annotations as the model should read them (`str`, not `'str'`, under `from __future__ ...`)
            signature = inspect.signature(function, eval_str=True)
        except Exception:
            pass
        return cls(name, function, signature, (inspect.getdoc(function) or "").strip())

    def describe(self) -> str:
        doc = self.doc if len(self.doc) <= MAX_DOC_CHARS else self.doc[:MAX_DOC_CHARS] + " ..."
        text = f"- `{self.name}{self.signature}`"
        return text + ("\n" + "\n".join("    " + line for line in doc.splitlines()) if doc else "")

    async def call(self, arguments: str, timeout: float | None) -> str:
        """Run the tool on JSON `arguments` ({"args": [...], "kwargs": {...}}); the result as JSON.
        Raises ToolFailure with the message the model code should see."""
        try:
            payload = json.loads(arguments)
            bound = self.signature.bind(*payload.get("args", []), **payload.get("kwargs", {}))
        except (ValueError, TypeError, AttributeError) as error:
            raise ToolFailure(f"{self.name}{self.signature}: {error}") from None
        started = inspect.iscoroutinefunction(self.function)  # a plain function starts once it has a thread
        try:
            async with asyncio.timeout(timeout):
                if started:
                    result = await self.function(*bound.args, **bound.kwargs)
                else:
                    await TOOL_THREADS.acquire()
                    started = True
                    result = await TOOL_THREADS.start(functools.partial(self.function, *bound.args, **bound.kwargs))
        except TimeoutError:
            if not started:
                raise ToolFailure(f"{self.name} did not start within {timeout:.1f} s: all {TOOL_THREADS.limit} tool "
                                  f"threads are taken by calls that have not returned") from None
            raise ToolFailure(f"{self.name} did not return within {timeout:.1f} s") from None
        except Exception as error:  # the user's function failed: model code sees why
            raise ToolFailure(f"{self.name} raised {type(error).__name__}: {error}") from None
        return json.dumps(result, default=str, ensure_ascii=False)


class ToolFailure(Exception):
    """A tool call that failed; its message goes to model code."""


def tools_of(functions: list[Callable[..., Any]] | None) -> dict[str, Tool]:
    from ..errors import ConfigError

    tools: dict[str, Tool] = {}
    for function in functions or []:
        tool = Tool.of(function)
        if tool.name in tools:
            raise ConfigError(f"two tools are named {tool.name!r}")
        tools[tool.name] = tool
    return tools


def prompt_section(tools: dict[str, Tool]) -> str:
    """The tools as the root system prompt lists them."""
    if not tools:
        return ""
    return ("Your own tools, callable from the REPL like functions (they run outside the REPL; arguments "
            "and results travel as JSON; a failure raises ToolError):\n" + "\n".join(t.describe() for t in tools.values()))


def stub_code(tools: dict[str, Tool]) -> str:
    """REPL code that defines one stub per tool (run in the environment at the start of a run)."""
    lines = []
    for tool in tools.values():
        lines += [f"def {tool.name}(*args, **kwargs):", f"    {json.dumps(tool.doc[:MAX_DOC_CHARS])}",
                  f"    return _user_tool({tool.name!r}, args, kwargs)"]
    return "\n".join(lines)


def record(state: Any, emit: Callable[..., None], name: str, arguments: str, started: float,
           result: str | None, error: str | None, *, iteration: int | None = None, cell: int | None = None) -> None:
    """A tool call into the trajectory, the store and the usage (with the cell whose code made it)."""
    duration = time.monotonic() - started
    state.usage.record_tool(name, duration, failed=error is not None)
    emit("tool_call", call_id=f"tool-{secrets.token_hex(6)}", name=name, arguments=arguments, result=result,
         error=error, duration_s=round(duration, 4), iteration=iteration, cell=cell)


def import_tool(spec: str) -> Callable[..., Any]:
    """`module:function` (or `path/to/file.py:function`) as the function, for `rlm ask --tool`."""
    import importlib
    import importlib.util
    import sys
    from pathlib import Path

    from ..errors import ConfigError

    module_name, _, attribute = spec.rpartition(":")
    if not module_name or not attribute.isidentifier():
        raise ConfigError(f"--tool {spec!r}: give it as module:function or path/to/file.py:function")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            loader_spec = importlib.util.spec_from_file_location(path.stem, path)
            if loader_spec is None or loader_spec.loader is None or not path.is_file():
                raise ImportError(f"no file {path}")
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            if "" not in sys.path:
                sys.path.insert(0, "")  # modules of the current directory, as `python -m` finds them
            module = importlib.import_module(module_name)
    except Exception as error:
        raise ConfigError(f"--tool {spec!r}: cannot import {module_name} ({type(error).__name__}: {error})") from None
    function = getattr(module, attribute, None)
    if function is None:
        raise ConfigError(f"--tool {spec!r}: {module_name} has no {attribute!r}")
    return function
