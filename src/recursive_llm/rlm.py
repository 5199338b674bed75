"""The run loop: the root model writes code, the REPL runs it, until a final answer or a limit.

`RLM` holds the configuration; each `completion()` is one top-level run. A run owns a `Budget`,
a `Scheduler` and an `EventLog` that its child runs (from `rlm_query`) share.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import prompts
from .budget import Budget, Limits, prompt_token_bound
from .errors import BudgetExceeded, ConfigError, ModelError, RLMError
from .events import EventLog, Listener
from .fallback import chunk_chars_for, map_reduce_code
from .models.base import Message, ModelClient
from .parsing import FinalAnswer, parse_reply, truncate_output
from .result import Result
from .scheduler import CallSite, RetryPolicy, Scheduler
from .usage import UsageSummary

if TYPE_CHECKING:
    from .context.loader import LoadedContext
    from .session import Session

ENVIRONMENTS = ("worker", "local")
# A child run's query goes into its root prompt; a longer rlm_query prompt is shown only in part
# (the child reads all of it from `context`).
_MAX_CHILD_QUERY_CHARS = 4_000


def _history_code(turns: list[Message]) -> str:
    """REPL code that appends `turns` to the list `history` (the text travels base64-encoded, so
    no quoting can break it)."""
    import base64

    payload = base64.b64encode(json.dumps(turns, ensure_ascii=False).encode("utf-8")).decode("ascii")
    return ("import base64 as _b64, json as _json\n_earlier = globals().get('history')\n"
            "history = (_earlier if isinstance(_earlier, list) else []) + "
            f"_json.loads(_b64.b64decode('{payload}').decode('utf-8'))\ndel _b64, _json, _earlier")


def _message_tokens(messages: list[Message]) -> list[int]:
    """Each message's tokens as we count them offline (a GPT tokenizer), plus its framing."""
    from .context.tokens import count_tokens

    return [count_tokens(str(m["content"])) + 4 for m in messages]


def _clipped_to(head: list[Message], turns: list[Message], tokens: int) -> list[Message]:
    """`head + turns`, with the longest turns cut in the middle until the whole fits in `tokens`
    (one turn's output can outgrow what is left of a small window)."""
    room = tokens - sum(_message_tokens(head))
    cap = max(len(str(m["content"])) for m in turns)
    while sum(_message_tokens(turns)) > room and cap > 200:
        cap //= 2
        turns = [{**m, "content": truncate_output(str(m["content"]), cap)} for m in turns]
    return head + turns


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


class RLM:
    """A Recursive Language Model: answers `query` over `context` by writing and running code.

    `model` is the root model, `sub_model` answers `llm_query` (defaults to `model`). Limits apply
    to a whole top-level run including its child runs; `max_depth=1` means sub-calls are plain LLM
    calls, `max_depth=2` lets `rlm_query` start child RLMs, and so on.
    """

    def __init__(
        self,
        model: str | ModelClient | None = None,
        sub_model: str | ModelClient | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        max_depth: int = 1,
        max_iterations: int = 20,
        max_llm_calls: int | None = None,
        max_tokens: int | None = None,
        max_cost_usd: float | None = None,
        timeout_s: float | None = None,
        environment: str = "worker",
        sandbox: str = "auto",
        worker_memory_mb: int = 8192,
        allowed_models: list[str] | str | None = None,
        sub_calls: bool = True,
        ray_fanout_at: int | None = None,
        system_prompt: str | None = None,
        verbose: bool = False,
        max_output_chars: int = 20_000,
        cell_timeout_s: float = 120.0,
        max_concurrency: int = 32,
        max_retries: int = 4,
        call_timeout_s: float | None = 300.0,
        max_output_tokens: int | None = None,
        temperature: float | None = None,
        fallback_after: int | None = 3,
        compact_at: float | None = 0.85,
        root_context_window: int | None = None,
        trajectory_dir: str | Path | None = None,
        on_event: Listener | None = None,
        store: Any = True,
        cache: bool | None = None,
    ) -> None:
        from .models.resolver import resolve_model

        if environment not in ENVIRONMENTS:
            raise ConfigError(f"unknown environment {environment!r}: use 'worker' (isolated process, the "
                              f"default) or 'local' (in-process, trusted input only)")
        if max_output_chars < 200:
            raise ConfigError("max_output_chars must be at least 200")
        try:
            self.limits = Limits(max_iterations=max_iterations, max_depth=max_depth,
                                 max_llm_calls=max_llm_calls, max_tokens=max_tokens,
                                 max_cost_usd=max_cost_usd, timeout_s=timeout_s)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        self.base_url = base_url
        self.api_key = api_key
        self.root_client = resolve_model(model, base_url=base_url, api_key=api_key)
        self.sub_client = (resolve_model(sub_model, base_url=base_url, api_key=api_key)
                           if sub_model is not None else self.root_client)
        self.environment = environment
        from .environments.sandbox import MODES

        if sandbox not in MODES:
            raise ConfigError(f"unknown sandbox {sandbox!r}: use 'auto' (strongest available), 'namespaces' "
                              f"(require them) or 'process' (resource limits only)")
        self.sandbox = sandbox
        self.worker_memory_mb = worker_memory_mb
        # Model code (possibly steered by a prompt injection in the input) may only name these in
        # llm_query(..., model=...): by default the configured root and sub models; "*" allows any.
        if allowed_models is not None and allowed_models != "*" and not isinstance(allowed_models, list):
            raise ConfigError("allowed_models must be a list of model strings or '*'")
        self.allowed_models = allowed_models
        # False: llm_query/rlm_query fail in model code (the "RLM without sub-calls" ablation).
        self.sub_calls = sub_calls
        # Batches of at least this many llm_query prompts send their requests through Ray workers.
        if ray_fanout_at is not None and not isinstance(sub_model if sub_model is not None else model, str):
            raise ConfigError("ray_fanout_at needs the sub-model as a model string (Ray workers rebuild the client)")
        self.ray_fanout_at = ray_fanout_at
        self.system_prompt = system_prompt
        self.verbose = verbose
        self.max_output_chars = max_output_chars
        self.cell_timeout_s = cell_timeout_s
        self.max_concurrency = max_concurrency
        self.retry = RetryPolicy(max_retries=max_retries)
        self.call_timeout_s = call_timeout_s
        self.max_output_tokens = max_output_tokens
        self.temperature = temperature
        self.fallback_after = fallback_after
        # Keep the root conversation inside the root model's window: when it reaches this fraction
        # of the window, the earlier turns are summarized by the root model and kept whole in the
        # REPL variable `history`. None turns it off. The window is the client's own, a known
        # model's, or `root_context_window`; with none of those, nothing is compacted.
        if compact_at is not None and not 0.1 <= compact_at < 1:
            raise ConfigError("compact_at must be a fraction of the window between 0.1 and 1 (or None)")
        self.compact_at = compact_at
        self.root_context_window = root_context_window
        self.trajectory_dir = Path(trajectory_dir) if trajectory_dir else None
        self.on_event = on_event
        # The run store: True (the default database in $RLM_HOME), a path, a Store, or None (off).
        self.store = store
        # The call cache: None = on when temperature is 0 (identical calls give identical answers).
        self.cache = cache

    @property
    def model(self) -> str:
        return self.root_client.name

    @property
    def sub_model(self) -> str:
        return self.sub_client.name

    def completion(self, query: str, context: Any = None, *, contexts: list[Any] | None = None,
                   **load_options: Any) -> Result:
        """Run to a final answer (or a limit). `context` may be text, data, a Path, a directory or a
        table file; `contexts=[...]` gives several inputs (`context_0`, `context_1`, ... in the REPL).

        `load_options` (include, exclude, encoding, max_file_bytes, gitignore) go to `load_context`.
        """
        coroutine = self.acompletion(query, context, contexts=contexts, **load_options)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coroutine)
        # Called from inside an event loop (a notebook, an async app): run on a thread of our own.
        box: dict[str, Any] = {}

        def runner() -> None:
            try:
                box["result"] = asyncio.run(coroutine)
            except BaseException as error:  # re-raised in the caller's thread
                box["error"] = error

        thread = threading.Thread(target=runner, name="rlm-completion")
        thread.start()
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["result"]

    async def acompletion(self, query: str, context: Any = None, *, contexts: list[Any] | None = None,
                          resume_from: str | None = None, run_config: dict[str, Any] | None = None,
                          **load_options: Any) -> Result:
        """See `completion`. `resume_from`: a run id whose recorded calls are replayed (in order, for
        free) before live calls continue; `run_config`: what `rlm ask --resume` needs to redo the run."""
        from .context.loader import load_inputs

        if not isinstance(query, str) or not query.strip():
            raise RLMError("the query is empty: pass the question to answer as `query`")
        sources = ([] if context is None else [context]) + list(contexts or [])
        inputs = load_inputs(sources or [""], **load_options)
        return await self._run_top(query, inputs, resume_from=resume_from, run_config=run_config)

    async def _run_top(self, query: str, inputs: list[LoadedContext], *, resume_from: str | None = None,
                       run_config: dict[str, Any] | None = None, environment: Any = None,
                       session_id: str | None = None, turn_note: str | None = None) -> Result:
        """One top-level run. A session passes its long-lived `environment` (kept open afterwards)."""
        run_id = new_run_id()
        trajectory_path = (self.trajectory_dir or _default_trajectory_dir()) / f"{run_id}.jsonl"
        listeners = [self.on_event] if self.on_event else []
        if self.verbose:
            from .progress import VerbosePrinter
            listeners.append(VerbosePrinter())
        store = self._open_store()
        replay = None
        if store is not None:
            if resume_from is not None:
                replay = store.replay_book(store.find_run(resume_from))
            config = run_config or {"query": query, "contexts": [loaded.source for loaded in inputs],
                                    "model": self.model, "sub_model": self.sub_model}
            listeners.insert(0, store.recorder(run_id, config=config, resumed_from=resume_from,
                                               trajectory_path=trajectory_path, session_id=session_id))
        elif resume_from is not None:
            raise ConfigError("resume_from needs the run store (store=None turned it off)")
        events = EventLog(trajectory_path, listeners)
        shared = _Shared(config=self, budget=Budget(self.limits), events=events, usage=UsageSummary())
        use_cache = self.cache if self.cache is not None else self.temperature == 0
        shared.scheduler = Scheduler(shared.budget, events, shared.usage, max_concurrency=self.max_concurrency,
                                     retry=self.retry, call_timeout_s=self.call_timeout_s,
                                     max_output_tokens=self.max_output_tokens, temperature=self.temperature,
                                     store=store, use_cache=use_cache, replay=replay)
        try:
            run = _Run(shared, query=query, inputs=inputs, depth=0, run_id=run_id, parent_run_id=None,
                       root_client=self.root_client, environment=environment, turn_note=turn_note)
            if environment is not None:
                environment.rebind(run.handle_subcall)  # this turn's sub-calls go to this turn's run
            result = await run.execute()
        finally:
            events.close()
            # a session keeps its configured clients (bound to its loop) for the next question
            await shared.close_clients(configured=environment is None)
        result.trajectory_path = trajectory_path
        result.store_error = "; ".join(filter(None, [getattr(store, "error", None), events.error])) or None
        return result

    def session(self, context: Any = None, *, contexts: list[Any] | None = None, **load_options: Any) -> "Session":
        """A multi-turn session over one input: the REPL and its variables live across questions.

        `with rlm.session(Path("contracts")) as chat: chat.ask("..."); chat.ask("and then?")`
        """
        from .session import Session

        return Session(self, context, contexts=contexts, **load_options)

    def _open_store(self):
        """The run store (opened once per RLM), or None when recording is off."""
        if self.store is None:
            return None
        if not hasattr(self, "_store_instance"):
            from .store import Store

            self._store_instance = self.store if isinstance(self.store, Store) else Store(
                None if self.store is True else self.store)
        return self._store_instance


def make_environment(config: RLM, inputs: list[LoadedContext], handler):
    """The environment a run's code executes in, as the RLM's options say (not started yet)."""
    options = {"max_captured_chars": max(config.max_output_chars * 50, 1_000_000)}
    if config.environment == "local":
        from .environments.local import LocalEnvironment
        return LocalEnvironment(inputs, handler, **options)
    from .environments.sandbox import Limits as WorkerLimits
    from .environments.worker import WorkerEnvironment
    return WorkerEnvironment(inputs, handler, sandbox=config.sandbox,
                             limits=WorkerLimits(memory_mb=config.worker_memory_mb), **options)


def _default_trajectory_dir() -> Path:
    from .paths import trajectories_dir

    return trajectories_dir()


@dataclass
class _Shared:
    """State shared by a top-level run and all of its child runs."""

    config: RLM
    budget: Budget
    events: EventLog
    usage: UsageSummary
    scheduler: Scheduler = field(init=False)
    extra_clients: dict[str, ModelClient] = field(default_factory=dict)

    def client_for(self, model: str | None, default: ModelClient) -> ModelClient:
        """The client for a model string given in model code (`llm_query(p, model=...)`)."""
        if model is None or model in (default.name, ""):
            return default
        configured = {self.config.root_client.name: self.config.root_client,
                      self.config.sub_client.name: self.config.sub_client}
        if model in configured:
            return configured[model]
        allowed = self.config.allowed_models
        if allowed != "*" and model not in (allowed or []):
            names = sorted({*configured, *(allowed or [])})
            raise ConfigError(f"model {model!r} is not allowed from code; available: {', '.join(names)} "
                              f"(the user can allow more with allowed_models=[...] / --allow-model)")
        if model not in self.extra_clients:
            from .models.resolver import resolve_model

            self.extra_clients[model] = resolve_model(model, base_url=self.config.base_url,
                                                      api_key=self.config.api_key)
        return self.extra_clients[model]

    async def close_clients(self, configured: bool = True) -> None:
        """Close the clients this run opened (and the RLM's own ones, unless a session goes on)."""
        own = (self.config.root_client, self.config.sub_client) if configured else ()
        await close_clients([*own, *self.extra_clients.values()])


async def close_clients(clients) -> None:
    """Close each distinct client once; a client that fails to close never breaks the caller."""
    for client in {id(c): c for c in clients}.values():
        try:
            await client.aclose()
        except Exception:
            pass


class _Run:
    """One RLM run at one depth: its own REPL, conversation and iteration count."""

    def __init__(self, shared: _Shared, *, query: str, inputs: list[LoadedContext], depth: int, run_id: str,
                 parent_run_id: str | None, root_client: ModelClient, environment: Any = None,
                 turn_note: str | None = None) -> None:
        self.shared = shared
        self.environment = environment  # given by a session: already started, and left open
        self.turn_note = turn_note
        self.config = shared.config
        self.query = query
        self.inputs = inputs  # `context` (and context_0, context_1, ... when there are several)
        self._search_index: Any = None
        self.depth = depth
        self.run_id = run_id
        self.parent_run_id = parent_run_id
        self.root_client = root_client
        self.iterations = 0
        self.used_fallback = False
        self._last_sent: tuple[int, int] | None = None  # (messages, prompt tokens the provider counted)
        self.started = time.monotonic()

    # -- events ---------------------------------------------------------------------------------
    def emit(self, event_type: str, **fields: Any) -> None:
        self.shared.events.emit(event_type, run_id=self.run_id, parent_run_id=self.parent_run_id,
                                depth=self.depth, **fields)

    def site(self, purpose: str, depth: int | None = None) -> CallSite:
        return CallSite(run_id=self.run_id, depth=self.depth if depth is None else depth, purpose=purpose)

    # -- sub-calls from the REPL ----------------------------------------------------------------
    async def handle_subcall(self, kind: str, prompts_: list[str], model: str | None, context: Any) -> list[dict]:
        if kind == "tool":
            return [await self._tool(model or "", prompts_[0] if prompts_ else "{}")]
        if not self.config.sub_calls:
            return [{"ok": False, "error": "sub-calls are disabled in this run (sub_calls=False)"}] * len(prompts_)
        child_depth = self.depth + 1
        if kind == "rlm" and child_depth < self.config.limits.max_depth:
            return list(await asyncio.gather(*(self._child_run(p, model, context) for p in prompts_)))
        if context is not None:  # rlm_query(prompt, context=...) at max depth: the sub-model needs both
            from .environments.runtime import as_text

            prompts_ = [f"{p}\n\n<context>\n{as_text(context)}\n</context>" for p in prompts_]
        try:
            client = self.shared.client_for(model, self.config.sub_client)
        except RLMError as error:
            return [{"ok": False, "error": str(error)}] * len(prompts_)
        if self.config.ray_fanout_at and len(prompts_) >= self.config.ray_fanout_at:
            from .ray_fanout import RayModelClient

            client = RayModelClient(client, client.name, self.config.base_url)
        return list(await asyncio.gather(*(self._llm_call(client, p, child_depth) for p in prompts_)))

    async def _tool(self, name: str, arguments: str) -> dict:
        """Helpers the host serves to model code: search over the run's inputs."""
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
            return {"ok": False, "error": f"unknown helper {name!r}"}
        except RLMError as error:
            return {"ok": False, "error": str(error)}
        except (ValueError, KeyError, TypeError, OSError, sqlite3.Error) as error:
            return {"ok": False, "error": f"{name} failed: {type(error).__name__}: {error}"}

    async def _llm_call(self, client: ModelClient, prompt: str, depth: int) -> dict:
        try:
            completion = await self.shared.scheduler.call(
                client, [{"role": "user", "content": prompt}], self.site("sub", depth))
        except RLMError as error:
            return {"ok": False, "error": str(error)}
        except Exception as error:  # an unexpected client failure stays in its slot
            return {"ok": False, "error": f"{type(error).__name__}: {error}"}
        return {"ok": True, "text": completion.text}

    async def _child_run(self, prompt: str, model: str | None, context: Any) -> dict:
        from .context.loader import load_context_value

        try:
            client = self.shared.client_for(model, self.root_client)
            loaded = load_context_value(prompt if context is None else context)
        except RLMError as error:
            return {"ok": False, "error": str(error)}
        query = prompt
        if context is None and len(prompt) > _MAX_CHILD_QUERY_CHARS:  # the prompt is the child's input
            query = (prompt[:_MAX_CHILD_QUERY_CHARS // 2] + f"\n... [{len(prompt):,} characters in all; "
                     "the whole task and its text are in `context`]")
        child = _Run(self.shared, query=query, inputs=[loaded], depth=self.depth + 1,
                     run_id=new_run_id(), parent_run_id=self.run_id, root_client=client)
        result = await child.execute()
        if result.answer is None:
            return {"ok": False, "error": f"child run {result.run_id} stopped ({result.stopped_reason}) "
                                          f"without an answer: {result.error or ''}".rstrip(": ")}
        return {"ok": True, "text": result.answer}

    # -- the loop -------------------------------------------------------------------------------
    def _make_environment(self):
        return make_environment(self.config, self.inputs, self.handle_subcall)

    def _metadata(self) -> list[dict[str, Any]]:
        return [loaded.metadata for loaded in self.inputs]

    def _first_messages(self) -> list[Message]:
        from .context.loader import format_metadata

        metadata = self._metadata()
        recursion = self.depth + 1 < self.config.limits.max_depth
        if len(metadata) == 1:
            context_type, described = str(metadata[0].get("type", "unknown")), format_metadata(metadata[0])
        else:
            context_type = (f"{len(metadata)} inputs: context_0 to context_{len(metadata) - 1}; `context` is "
                            f"context_0")
            described = "\n\n".join(format_metadata(m, f"context_{i}") for i, m in enumerate(metadata))
        tables = any(loaded.tables for loaded in self.inputs)
        system = prompts.system_prompt(context_type, recursion=recursion, override=self.config.system_prompt,
                                       tables=tables)
        if not self.config.sub_calls:
            system += "\n\n" + prompts.NO_SUB_CALLS_NOTE
        user = prompts.FIRST_USER_MESSAGE.format(query=self.query, metadata=described)
        if self.turn_note:
            user += "\n\n" + self.turn_note
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    async def execute(self) -> Result:
        env = self.environment or self._make_environment()
        isolation = getattr(env, "isolation", None)
        self.emit("run_start", query=self.query, model=self.root_client.name,
                  sub_model=self.config.sub_client.name, environment=self.config.environment,
                  isolation={"layers": isolation.layers, "missing": isolation.missing} if isolation else None,
                  metadata=self.inputs[0].metadata, more_inputs=[loaded.metadata for loaded in self.inputs[1:]],
                  limits=self.config.limits.__dict__)
        answer: str | None = None
        stopped: str | None = None
        error: str | None = None
        if self.environment is None:
            from .environments.base import StartingInBackground

            env = StartingInBackground(env)
        try:
            messages = self._first_messages()
            answer, stopped, error = await self._loop(env, messages)
            if stopped in ("max_iterations", "budget"):
                answer = await self._ask_for_final(env, messages, stopped)
        except BudgetExceeded as exc:
            stopped, error = ("timeout" if exc.budget == "time" else "budget"), str(exc)
        except RLMError as exc:
            stopped, error = "error", str(exc)
        finally:
            if self.environment is None:
                await env.close()
        result = Result(answer=answer, stopped_reason=stopped or "error", iterations=self.iterations,
                        usage=self.shared.usage, cost_usd=self.shared.budget.cost_usd, run_id=self.run_id,
                        duration_s=time.monotonic() - self.started, error=error,
                        used_fallback=self.used_fallback, depth=self.depth)
        self.emit("run_end", stopped_reason=result.stopped_reason, answer=answer, error=error,
                  iterations=self.iterations, used_fallback=self.used_fallback,
                  duration_s=round(result.duration_s, 3), budget=self.shared.budget.snapshot(),
                  usage=self.shared.usage.to_dict() if self.depth == 0 else None)
        return result

    async def _loop(self, env, messages: list[Message]) -> tuple[str | None, str, str | None]:
        """Iterate until an answer or a limit: returns (answer, stopped_reason, error)."""
        limits = self.config.limits
        budget = self.shared.budget
        idle_turns = 0
        while self.iterations < limits.max_iterations:
            self.iterations += 1
            await self._keep_within_window(env, messages)
            try:
                completion = await self.shared.scheduler.call(self.root_client, messages, self.site("root"))
                reply = completion.text
                self._last_sent = (len(messages), completion.prompt_tokens)
            except BudgetExceeded as exc:
                return None, ("timeout" if exc.budget == "time" else "budget"), str(exc)
            except ModelError as exc:
                return None, "error", str(exc)
            parsed = parse_reply(reply)
            messages.append({"role": "assistant", "content": reply})
            self.emit("iteration", iteration=self.iterations, reply=reply,
                      code_blocks=len(parsed.code_blocks), final=bool(parsed.final))

            outputs, final, any_worked = await self._run_blocks(env, parsed.code_blocks)
            if final is None and parsed.final is not None:
                final, problem = await self._resolve_final(env, parsed.final)
                if problem:
                    outputs.append(problem)
            if final is not None:
                return final, "final", None
            if budget.exhausted:
                reason = "timeout" if budget.exhausted == "time" else "budget"
                return None, reason, f"the {budget.exhausted} budget ran out during the run"

            # A turn whose code all failed (does not parse, raises, times out) is no progress either:
            # small models write code that never works, and would otherwise spin to the limit.
            idle_turns = 0 if any_worked else idle_turns + 1
            if self.config.fallback_after and idle_turns >= self.config.fallback_after:
                return await self._fallback(env, idle_turns)
            if parsed.code_blocks or parsed.final:
                content = prompts.CONTINUE_MESSAGE.format(
                    iteration=self.iterations, max_iterations=limits.max_iterations,
                    outputs="\n\n".join(outputs), query=self.query)
            else:
                content = prompts.NUDGE_MESSAGE.format(query=self.query)
            messages.append({"role": "user", "content": content})
        return None, "max_iterations", None

    async def _run_blocks(self, env, blocks: list[str]) -> tuple[list[str], str | None, bool]:
        """Run a reply's code blocks in order; stop at the first that gives a final answer."""
        outputs: list[str] = []
        any_worked = False
        per_block = max(200, self.config.max_output_chars // max(1, len(blocks)))
        for index, code in enumerate(blocks, start=1):
            cell = await env.execute(code, self.config.cell_timeout_s,
                                     wall_timeout=self.shared.budget.remaining_time())
            any_worked = any_worked or (cell.ran and cell.error is None)
            self.emit("cell", iteration=self.iterations, index=index, code=code, stdout=cell.stdout,
                      stderr=cell.stderr, error=cell.error, final=cell.final, timed_out=cell.timed_out,
                      restarted=cell.restarted, duration_s=round(cell.duration_s, 4))
            note = prompts.VARIABLES_LOST_NOTE if cell.restarted else None
            stderr = cell.stderr or (cell.error or "")
            outputs.append(truncate_output(prompts.format_cell(index, code, cell.stdout, stderr, note), per_block))
            if cell.final is not None:
                return outputs, cell.final, True
            if self.shared.budget.exhausted:
                break
        return outputs, None, any_worked

    async def _resolve_final(self, env, final: FinalAnswer) -> tuple[str | None, str | None]:
        if final.variable is None:
            return final.text, None
        value = await env.get_variable(final.variable)
        if value["ok"]:
            return value["text"], None
        return None, f"FINAL_VAR failed: {value['error']}. Define the variable in a ```repl block first."

    async def _fallback(self, env, idle_turns: int) -> tuple[str | None, str, str | None]:
        self.used_fallback = True
        chunk_chars = chunk_chars_for(self.config.sub_client.context_window)
        self.emit("fallback", reason=f"{idle_turns} replies in a row without working code or an answer",
                  strategy="map_reduce", chunk_chars=chunk_chars)
        code = map_reduce_code(self.query, chunk_chars)
        outputs, final, _ = await self._run_blocks(env, [code])
        if final is not None:
            return final, "final", None
        budget = self.shared.budget
        if budget.exhausted:
            return None, "timeout" if budget.exhausted == "time" else "budget", "\n".join(outputs)
        return None, "error", "the map-reduce fallback did not produce an answer: " + "\n".join(outputs)

    def _root_window(self) -> int | None:
        from .models.windows import context_window_for

        return (self.config.root_context_window or getattr(self.root_client, "context_window", None)
                or context_window_for(self.root_client.name))

    def _tokenizer_ratio(self, counted: list[int]) -> float:
        """The provider's prompt tokens per token we count (an offline GPT tokenizer), from the last
        root call: other models' tokenizers and chat templates count more (SmolLM2: about 10%)."""
        if self._last_sent is None or self._last_sent[1] <= 0:
            return 1.0
        sent, reported = self._last_sent
        ours = sum(counted[:sent])
        return max(1.0, reported / ours) if ours else 1.0

    async def _keep_within_window(self, env, messages: list[Message]) -> None:
        """Compact the conversation when it nears the root model's window.

        The turns after the first question are replaced by the root model's own summary of them,
        and kept whole in the REPL as `history` (a list of {"role", "content"}), so nothing is lost
        to the code. Fewer than two turns, or an unknown window, and nothing happens.
        """
        window = self._root_window()
        if self.config.compact_at is None or window is None or len(messages) < 5:
            return
        limit = int(window * self.config.compact_at) - (self.config.max_output_tokens or 0)
        if prompt_token_bound(messages) <= limit:  # a bound on the tokens: below it, no need to count
            return
        counted = _message_tokens(messages)
        ratio = self._tokenizer_ratio(counted)
        before = int(sum(counted) * ratio)
        if before <= limit:
            return
        turns = messages[2:]
        summary_tokens = min(self.config.max_output_tokens or window // 8, window // 8)
        request = _clipped_to(messages[:2], turns + [{"role": "user", "content": prompts.COMPACT_REQUEST}],
                              int((window - summary_tokens) / ratio))
        try:
            summary = (await self.shared.scheduler.call(self.root_client, request, self.site("compact"),
                                                        max_output_tokens=summary_tokens)).text
        except (BudgetExceeded, ModelError) as exc:
            self.emit("compaction_failed", error=str(exc))
            return
        # Only now, so that a failed compaction (tried again next turn) does not store the turns twice.
        stored = await env.execute(_history_code(turns), self.config.cell_timeout_s)
        kept = "" if stored.error is None else prompts.HISTORY_LOST_NOTE
        messages[2:] = [{"role": "assistant", "content": summary},
                        {"role": "user", "content": prompts.COMPACTED_MESSAGE.format(
                            turns=len(turns), iteration=self.iterations - 1, query=self.query) + kept}]
        after = int(sum(_message_tokens(messages)) * ratio)
        self.emit("compaction", iteration=self.iterations, turns=len(turns), window=window,
                  tokens_before=before, tokens_after=after, history_kept=stored.error is None)

    async def _ask_for_final(self, env, messages: list[Message], stopped: str) -> str | None:
        """At a limit, ask the root model once for its best answer (if the budget still allows)."""
        budget = self.shared.budget
        if budget.exhausted == "time":
            return None
        reason = (f"the limit of {self.config.limits.max_iterations} iterations is reached"
                  if stopped == "max_iterations" else f"the {budget.exhausted} budget is used up")
        await self._keep_within_window(env, messages)
        messages.append({"role": "user", "content": prompts.FINAL_ASK_MESSAGE.format(reason=reason, query=self.query)})
        try:
            reply = (await self.shared.scheduler.call(self.root_client, messages, self.site("final"))).text
        except (BudgetExceeded, ModelError) as exc:
            self.emit("final_ask_failed", error=str(exc))
            return None
        parsed = parse_reply(reply)
        if parsed.final is not None:
            answer, _ = await self._resolve_final(env, parsed.final)
            if answer is not None:
                return answer
        return reply.strip() or None
