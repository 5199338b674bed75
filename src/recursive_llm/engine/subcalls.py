"""What model code asks the host for: sub-model calls, child runs, and the search helpers.

Every request from the REPL (`llm_query`, `llm_query_batched`, `rlm_query`, `rlm_query_batched`,
`search`, `semantic_search`, the user's tools) arrives at `SubCalls.handle` as a wire message and
becomes a `SubCall` (or a `ToolCall`); it is bounded (`config.HostBounds`, and each prompt by the
sub-model's window when it is known: `over_window`) and routed: to the
scheduler (plain calls, through Ray for very wide batches), to a child run (while depth <
max_depth), to the run's search index, or to a tool. Each prompt gets one `Reply` (text, or the
error model code sees); the error texts are remembered so that none can become the run's answer.
On the wire a reply is `{"ok": True, "text": ...}` or `{"ok": False, "error": ...}`.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..config import HOST_BOUNDS
from ..errors import RLMError
from ..models.base import ModelClient
from .scheduler import CallSite, model_identity

if TYPE_CHECKING:
    from ..context.loader import LoadedContext
    from ..result import Result
    from .run import RunState

# A child run's query goes into its root prompt; a longer rlm_query prompt is shown only in part
# (the child reads all of it from `context`).
MAX_CHILD_QUERY_CHARS = 4_000

ChildStarter = Callable[[str, "LoadedContext", ModelClient], Awaitable["Result"]]


def with_context(prompt: str, context_text: str) -> str:
    """A prompt as the sub-model gets it when model code also hands it a context (`rlm_query(prompt,
    context=...)` at max depth): both in one message."""
    return f"{prompt}\n\n<context>\n{context_text}\n</context>"


CONTEXT_WRAP_CHARS = len(with_context("", ""))


@dataclass(frozen=True)
class SubCall:
    """What model code asked for: `kind` "llm" (plain calls) or "rlm" (child runs), one per prompt.

    `context_text`: the context as text when every prompt is sent with it (a plain sub-call given a
    context), else None (a child run gets the context as its input, once)."""

    kind: str
    prompts: list[str]
    model: str | None = None
    context: Any = None  # rlm_query(prompt, context=...): the child's input
    context_text: str | None = None

    @property
    def size(self) -> int:
        """Characters the host will hold and send for it (HostBounds.max_call_chars): the prompts,
        and the context once per prompt when each prompt carries it (counted before anything is
        built: 200 prompts with a 5M-character context are 1G characters, not 5M)."""
        prompts = sum(map(len, self.prompts))
        if self.context_text is not None:
            return prompts + len(self.prompts) * (len(self.context_text) + CONTEXT_WRAP_CHARS)
        return prompts + (len(self.context) if isinstance(self.context, str) else 0)

    def prompt_size(self, prompt: str) -> int:
        """One prompt's length as the sub-model would get it (HostBounds.max_prompt_chars)."""
        return len(prompt) if self.context_text is None else len(prompt) + len(self.context_text) + CONTEXT_WRAP_CHARS

    def prompt(self, prompt: str) -> str:
        return prompt if self.context_text is None else with_context(prompt, self.context_text)


@dataclass(frozen=True)
class ToolCall:
    """A helper the host serves (`search`, `semantic_search`) or a user tool ("user:<name>")."""

    name: str
    arguments: str  # JSON


@dataclass(frozen=True)
class Reply:
    """One prompt's outcome: `text`, or the `error` model code sees."""

    text: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_wire(self) -> dict:
        return {"ok": True, "text": self.text or ""} if self.ok else {"ok": False, "error": self.error}


def failed(error: str) -> Reply:
    """A reply that reaches model code as an error."""
    return Reply(error=error)


async def in_lanes(items: list[str], width: int, call: Callable[[str], Awaitable[Reply]]) -> list[Reply]:
    """`call` on every item, at most `width` at a time, the replies in the items' order.

    `width` tasks each take the next item when their last call is done, rather than one task per
    item waiting on the scheduler's semaphore: a batch of 1,000 prompts at width 64 otherwise runs
    936 tasks' first steps (each computing its cache key) before the first wave's requests are
    written, which delayed that wave by about 40 ms (benchmarks/speed_limits.py fanout)."""
    replies: list[Reply | None] = [None] * len(items)
    indexes = iter(range(len(items)))

    async def lane() -> None:
        for index in indexes:  # one shared iterator: each index is taken by exactly one lane
            replies[index] = await call(items[index])

    await asyncio.gather(*(lane() for _ in range(min(width, len(items)))))
    return replies  # type: ignore[return-value]  # every slot was filled


def sub_window(client: ModelClient) -> int | None:
    """The sub-model's window in tokens: what the client says, else the known windows
    (models/windows.py); None when unknown (then every prompt is sent, as the provider decides)."""
    from ..models.windows import context_window_for

    return getattr(client, "context_window", None) or context_window_for(client.name)


async def over_window(text: str, window: int, model: str) -> str | None:
    """Why `text` cannot fit in a `window`-token model, or None when it may.

    A prompt of at most `window` UTF-8 bytes fits (a token is at least one byte); a longer one is
    counted offline with a GPT tokenizer (context/tokens.py, o200k_base), in a thread. Other models'
    tokenizers count more tokens than that (Claude, Llama: about 10-20% more), so the count is a low
    estimate and a refusal is sure; a prompt just under the window may still be refused by the provider.
    Without the tokenizer, the prompt is sent."""
    if len(text) <= window // 4 or len(text.encode("utf-8", "surrogatepass")) <= window:
        return None
    from ..context.tokens import TokenizerUnavailable, count_tokens

    try:
        tokens = await asyncio.to_thread(count_tokens, text)
    except TokenizerUnavailable:
        return None
    if tokens <= window:
        return None
    chunk = max(1_000, len(text) * window // tokens * 3 // 4)  # chars per chunk that leave a margin
    return (f"sub-call refused before sending: its prompt is about {tokens:,} tokens ({len(text):,} characters; "
            f"counted offline with the o200k_base tokenizer), over the {window:,}-token window of {model}; "
            f"split the text into chunks of at most about {chunk:,} characters and ask about each")


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
        """One request from the REPL, as the environment passes it: one reply per prompt (a tool
        call: one reply), in the wire's dict form."""
        if kind == "tool":
            call = ToolCall(model or "", prompts[0] if prompts else "{}")
            return [(await self._tool(call)).to_wire()]
        return [reply.to_wire() for reply in await self.answer(SubCall(kind, list(prompts), model, context))]

    async def answer(self, call: SubCall) -> list[Reply]:
        """A sub-call, bounded and routed; the failures are remembered (never an answer)."""
        if len(call.prompts) > HOST_BOUNDS.max_batch_prompts:  # the REPL refuses these before sending
            return [failed(f"a batch of {len(call.prompts):,} prompts is over the limit of "
                           f"{HOST_BOUNDS.max_batch_prompts:,}; send it in smaller batches")]
        call = self._with_context_text(call)
        size, state = call.size, self.state
        if size > HOST_BOUNDS.max_call_chars or state.pending_chars + size > HOST_BOUNDS.max_pending_chars:
            why = (f"its prompts hold {size:,} characters, over the limit of {HOST_BOUNDS.max_call_chars:,} per call"
                   if size > HOST_BOUNDS.max_call_chars else
                   f"the sub-calls already waiting hold {state.pending_chars:,} characters of prompts")
            if call.context_text is not None:
                why += (f" (each of the {len(call.prompts):,} prompts carries the "
                        f"{len(call.context_text):,}-character context)")
            return [failed(f"sub-call refused: {why}; send less text at once")] * len(call.prompts)
        state.pending_chars += size
        try:
            replies = await self._route(call)
        finally:
            state.pending_chars -= size
        state.failures.update(r.error for r in replies if not r.ok)
        return replies

    def _with_context_text(self, call: SubCall) -> SubCall:
        """`call` with its context as text when the sub-model gets it with every prompt (a plain call,
        or a child run past max depth); a child run below max depth gets the context as its input."""
        if call.context is None or (call.kind == "rlm" and self.depth + 1 < self.config.limits.max_depth):
            return call
        from ..context.document import as_text

        return replace(call, context_text=as_text(call.context))

    async def _route(self, call: SubCall) -> list[Reply]:
        if not self.config.loop.sub_calls:
            return [failed("sub-calls are disabled in this run (sub_calls=False)")] * len(call.prompts)
        child_depth = self.depth + 1
        if call.kind == "rlm" and child_depth < self.config.limits.max_depth:
            return list(await asyncio.gather(*(self._child_run(p, call.model, call.context) for p in call.prompts)))
        try:
            client = self.state.client_for(call.model, self.config.sub_client)
        except RLMError as error:
            return [failed(str(error))] * len(call.prompts)
        window = sub_window(client)  # of the model itself, not of a Ray wrapper
        if self.config.ray_fanout_at and len(call.prompts) >= self.config.ray_fanout_at:
            from .ray_fanout import RayModelClient

            client = RayModelClient(client, client.name, self.config.base_url)
        # Each lane builds its prompt (with the context) when it takes it: never all at once.
        return await in_lanes(call.prompts, self.config.calls.max_concurrency,
                              lambda prompt: self._llm_call(client, call, prompt, child_depth, window))

    async def _llm_call(self, client: ModelClient, call: SubCall, prompt: str, depth: int,
                        window: int | None = None) -> Reply:
        if (length := call.prompt_size(prompt)) > HOST_BOUNDS.max_prompt_chars:
            return failed(f"sub-call refused: its prompt has {length:,} characters, over the limit of "
                          f"{HOST_BOUNDS.max_prompt_chars:,}; split the text and ask about the parts")
        text = call.prompt(prompt)  # with the context, when the call carries one: built now, by this lane
        if window is not None and (refused := await over_window(text, window, client.name)) is not None:
            return failed(refused)
        messages, site, memory = [{"role": "user", "content": text}], self.site("sub", depth), self.state.memory
        try:
            if memory is not None and (stored := await memory.reused(model_identity(client), text)) is not None:
                return Reply(text=self.state.scheduler.answered(client, messages, site, stored, "memory").text)
            completion = await self.state.scheduler.call(client, messages, site)
            if memory is not None:
                await memory.keep(model_identity(client), text, completion)
        except RLMError as error:
            return failed(str(error))
        except Exception as error:  # an unexpected client failure stays in its slot
            return failed(f"{type(error).__name__}: {error}")
        return Reply(text=completion.text)

    async def _child_run(self, prompt: str, model: str | None, context: Any) -> Reply:
        from ..context.loader import load_context_value

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
        return Reply(text=result.answer)

    async def _tool(self, call: ToolCall) -> Reply:
        """Helpers the host serves to model code: search over the run's inputs, and the user's tools."""
        name = call.name
        if name.startswith("user:"):
            return await self._user_tool(name[5:], call.arguments)
        if name.startswith("memory:"):
            return await self._memory(name[7:], call.arguments)
        try:
            args = json.loads(call.arguments)
            if name == "search":
                if self._search_index is None:
                    from ..context.index import SearchIndex
                    from ..paths import indexes_dir

                    values = [loaded.value for loaded in self.inputs]
                    self._search_index = await asyncio.to_thread(SearchIndex.for_inputs, values, indexes_dir())
                hits = await asyncio.to_thread(self._search_index.search, str(args["query"]), int(args.get("k", 10)))
                return Reply(text=json.dumps(hits))
            if name == "semantic_search":
                from ..context.semantic import semantic_search

                hits = await asyncio.to_thread(semantic_search, [loaded.value for loaded in self.inputs],
                                               str(args["query"]), int(args.get("k", 10)))
                return Reply(text=json.dumps(hits))
            return failed(f"unknown helper {name!r}")
        except RLMError as error:
            return failed(str(error))
        except (ValueError, KeyError, TypeError, OSError, sqlite3.Error) as error:
            return failed(f"{name} failed: {type(error).__name__}: {error}")

    def _redact(self) -> Callable[[str], str]:
        """Removes the secrets the host knows (the environment's, this run's API keys) from a text."""
        from ..redaction import Redactor

        config = self.config
        clients = (config.root_client, config.sub_client)
        return Redactor([config.api_key, *(getattr(client, "_api_key", None) for client in clients)])

    async def _memory(self, op: str, arguments: str) -> Reply:
        """`remember` and the `memory` mapping: the run's workspace (memory.RunMemory) answers."""
        from .memory import MemoryRefused

        memory = self.state.memory
        if memory is None:
            return failed("this run has no memory workspace: the user names one with RLM(memory=NAME) or "
                          "`rlm ask --memory NAME`")
        started = time.monotonic()
        try:
            args = json.loads(arguments)
            args = args if isinstance(args, dict) else {}
            reply = Reply(text=await asyncio.to_thread(memory.serve, op, args))
        except (MemoryRefused, KeyError) as error:
            reply = failed(str(error.args[0]) if error.args else type(error).__name__)
        except (ValueError, TypeError, OSError, sqlite3.Error) as error:
            reply = failed(f"memory {op} failed: {type(error).__name__}: {error}")
        if op == "remember":  # writes are in the trajectory and the store: where each entry came from
            from .memory import described
            from .tools import record

            where = self.site("sub", self.depth)
            record(self.state, self.emit, "remember", described(arguments), started, reply.text, reply.error,
                   iteration=where.iteration, cell=where.cell)
        return reply

    async def _user_tool(self, name: str, arguments: str) -> Reply:
        from .tools import ToolFailure, record

        tool = self.config.tools.get(name)
        if tool is None:
            return failed(f"there is no tool named {name!r}")
        started, where = time.monotonic(), self.site("sub", self.depth)
        at = {"iteration": where.iteration, "cell": where.cell}
        try:
            result = await tool.call(arguments, self.state.budget.cap_timeout(self.config.calls.call_timeout_s))
        except ToolFailure as error:  # its text goes to model code, which can send it anywhere
            message = self._redact()(str(error))
            record(self.state, self.emit, name, arguments, started, None, message, **at)
            return failed(message)
        record(self.state, self.emit, name, arguments, started, result, None, **at)
        return Reply(text=result)
