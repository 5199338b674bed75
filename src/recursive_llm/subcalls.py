"""What model code asks the host for: sub-model calls, child runs, and the search helpers.

Every request from the REPL (`llm_query`, `llm_query_batched`, `rlm_query`, `rlm_query_batched`,
`search`, `semantic_search`) arrives at `SubCalls.handle`, is bounded (`config.HostBounds`), and
is routed: to the scheduler (plain calls, through Ray for very wide batches), to a child run
(while depth < max_depth), or to the run's search index. Each prompt gets one reply dict,
`{"ok": True, "text": ...}` or `{"ok": False, "error": ...}`; the error texts are remembered so
that none can become the run's answer.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .config import HOST_BOUNDS
from .errors import RLMError
from .models.base import ModelClient
from .scheduler import CallSite

if TYPE_CHECKING:
    from .context.loader import LoadedContext
    from .result import Result
    from .run import RunState

# A child run's query goes into its root prompt; a longer rlm_query prompt is shown only in part
# (the child reads all of it from `context`).
MAX_CHILD_QUERY_CHARS = 4_000

ChildStarter = Callable[[str, "LoadedContext", ModelClient], Awaitable["Result"]]


def failed(error: str) -> dict:
    """A sub-call's reply that reaches model code as an error."""
    return {"ok": False, "error": error}


class SubCalls:
    """The host side of one run's REPL requests."""

    def __init__(self, state: "RunState", *, depth: int, inputs: list["LoadedContext"], root_client: ModelClient,
                 site: Callable[[str, int], CallSite], start_child: ChildStarter,
                 emit: Callable[..., None] = lambda *a, **k: None) -> None:
        self.state = state
        self.emit = emit
        self.config = state.config
        self.depth = depth
        self.inputs = inputs
        self.root_client = root_client
        self.site = site
        self.start_child = start_child
        self._search_index: Any = None

    async def handle(self, kind: str, prompts: list[str], model: str | None, context: Any) -> list[dict]:
        """One request from the REPL: one reply per prompt (a tool call: one reply)."""
        if kind == "tool":
            return [await self._tool(model or "", prompts[0] if prompts else "{}")]
        if len(prompts) > HOST_BOUNDS.max_batch_prompts:  # the REPL refuses these before sending
            return [failed(f"a batch of {len(prompts):,} prompts is over the limit of "
                           f"{HOST_BOUNDS.max_batch_prompts:,}; send it in smaller batches")]
        size = sum(map(len, prompts)) + (len(context) if isinstance(context, str) else 0)
        state = self.state
        if size > HOST_BOUNDS.max_call_chars or state.pending_chars + size > HOST_BOUNDS.max_pending_chars:
            why = (f"its prompts hold {size:,} characters, over the limit of {HOST_BOUNDS.max_call_chars:,} per call"
                   if size > HOST_BOUNDS.max_call_chars else
                   f"the sub-calls already waiting hold {state.pending_chars:,} characters of prompts")
            return [failed(f"sub-call refused: {why}; send less text at once")] * len(prompts)
        state.pending_chars += size
        try:
            results = await self._route(kind, prompts, model, context)
        finally:
            state.pending_chars -= size
        state.failures.update(r["error"] for r in results if not r["ok"])
        return results

    async def _route(self, kind: str, prompts: list[str], model: str | None, context: Any) -> list[dict]:
        if not self.config.loop.sub_calls:
            return [failed("sub-calls are disabled in this run (sub_calls=False)")] * len(prompts)
        child_depth = self.depth + 1
        if kind == "rlm" and child_depth < self.config.limits.max_depth:
            return list(await asyncio.gather(*(self._child_run(p, model, context) for p in prompts)))
        if context is not None:  # rlm_query(prompt, context=...) at max depth: the sub-model needs both
            from .environments.runtime import as_text

            prompts = [f"{p}\n\n<context>\n{as_text(context)}\n</context>" for p in prompts]
        try:
            client = self.state.client_for(model, self.config.sub_client)
        except RLMError as error:
            return [failed(str(error))] * len(prompts)
        if self.config.ray_fanout_at and len(prompts) >= self.config.ray_fanout_at:
            from .ray_fanout import RayModelClient

            client = RayModelClient(client, client.name, self.config.base_url)
        return list(await asyncio.gather(*(self._llm_call(client, p, child_depth) for p in prompts)))

    async def _llm_call(self, client: ModelClient, prompt: str, depth: int) -> dict:
        if len(prompt) > HOST_BOUNDS.max_prompt_chars:
            return failed(f"sub-call refused: its prompt has {len(prompt):,} characters, over the limit of "
                          f"{HOST_BOUNDS.max_prompt_chars:,}; split the text and ask about the parts")
        try:
            completion = await self.state.scheduler.call(client, [{"role": "user", "content": prompt}],
                                                         self.site("sub", depth))
        except RLMError as error:
            return failed(str(error))
        except Exception as error:  # an unexpected client failure stays in its slot
            return failed(f"{type(error).__name__}: {error}")
        return {"ok": True, "text": completion.text}

    async def _child_run(self, prompt: str, model: str | None, context: Any) -> dict:
        from .context.loader import load_context_value

        try:
            client = self.state.client_for(model, self.root_client)
            loaded = load_context_value(prompt if context is None else context)
        except RLMError as error:
            return failed(str(error))
        query = prompt
        if context is None and len(prompt) > MAX_CHILD_QUERY_CHARS:  # the prompt is the child's input
            query = (prompt[:MAX_CHILD_QUERY_CHARS // 2] + f"\n... [{len(prompt):,} characters in all; "
                     "the whole task and its text are in `context`]")
        async with self.state.child_slots(self.depth + 1):  # each child run starts a worker
            result = await self.start_child(query, loaded, client)
        if result.answer is None:
            return failed(f"child run {result.run_id} stopped ({result.stopped_reason}) without an answer: "
                          f"{result.error or ''}".rstrip(": "))
        return {"ok": True, "text": result.answer}

    async def _tool(self, name: str, arguments: str) -> dict:
        """Helpers the host serves to model code: search over the run's inputs, and the user's tools."""
        if name.startswith("user:"):
            return await self._user_tool(name[5:], arguments)
        try:
            args = json.loads(arguments)
            if name == "search":
                if self._search_index is None:
                    from .context.index import SearchIndex
                    from .paths import indexes_dir

                    values = [loaded.value for loaded in self.inputs]
                    self._search_index = await asyncio.to_thread(SearchIndex.for_inputs, values, indexes_dir())
                hits = await asyncio.to_thread(self._search_index.search, str(args["query"]), int(args.get("k", 10)))
                return {"ok": True, "text": json.dumps(hits)}
            if name == "semantic_search":
                from .context.semantic import semantic_search

                hits = await asyncio.to_thread(semantic_search, [loaded.value for loaded in self.inputs],
                                               str(args["query"]), int(args.get("k", 10)))
                return {"ok": True, "text": json.dumps(hits)}
            return failed(f"unknown helper {name!r}")
        except RLMError as error:
            return failed(str(error))
        except (ValueError, KeyError, TypeError, OSError, sqlite3.Error) as error:
            return failed(f"{name} failed: {type(error).__name__}: {error}")

    async def _user_tool(self, name: str, arguments: str) -> dict:
        from .tools import ToolFailure, record

        tool = self.config.tools.get(name)
        if tool is None:
            return failed(f"there is no tool named {name!r}")
        started = time.monotonic()
        try:
            result = await tool.call(arguments, self.state.budget.cap_timeout(self.config.calls.call_timeout_s))
        except ToolFailure as error:
            record(self.state, self.emit, name, arguments, started, None, str(error))
            return failed(str(error))
        record(self.state, self.emit, name, arguments, started, result, None)
        return {"ok": True, "text": result}
