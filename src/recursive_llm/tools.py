"""User tools: plain Python functions of the user's that model code calls by name from the REPL.

`RLM(tools=[fn, ...])`. A tool runs in the host, never in the worker: it may use the network or
credentials that the worker must never have. In the REPL each tool is a small stub of the same
name that sends its arguments to the host as JSON (over the channel `llm_query` uses); the host
binds them to the real signature, runs the function (a plain function in a thread, a coroutine
function on the loop) within the run's time limit, and sends the result back as JSON. An
exception comes back to model code as a `ToolError` with the message. Every call is an event
(`tool_call`) in the trajectory and the store, and counted in `result.usage.tools`.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import secrets
import time
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


@dataclass(frozen=True)
class Tool:
    name: str
    function: Callable[..., Any]
    signature: inspect.Signature
    doc: str

    @classmethod
    def of(cls, function: Callable[..., Any]) -> "Tool":
        from .errors import ConfigError

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
        try:
            async with asyncio.timeout(timeout):
                if inspect.iscoroutinefunction(self.function):
                    result = await self.function(*bound.args, **bound.kwargs)
                else:
                    result = await asyncio.to_thread(self.function, *bound.args, **bound.kwargs)
        except TimeoutError:
            raise ToolFailure(f"{self.name} did not return within {timeout:.1f} s") from None
        except Exception as error:  # the user's function failed: model code sees why
            raise ToolFailure(f"{self.name} raised {type(error).__name__}: {error}") from None
        return json.dumps(result, default=str, ensure_ascii=False)


class ToolFailure(Exception):
    """A tool call that failed; its message goes to model code."""


def tools_of(functions: list[Callable[..., Any]] | None) -> dict[str, Tool]:
    from .errors import ConfigError

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

    from .errors import ConfigError

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
