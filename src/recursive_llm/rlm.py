"""`RLM`: the public entry point. It turns its keyword options into a `RunConfig` once, and starts
runs (`completion`, `acompletion`) and sessions (`session`). The loop itself is in `run.py`.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .engine.budget import Budget
from .config import CallPolicy, Limits, LoopPolicy, RunConfig, WorkerPolicy
from .errors import ConfigError, RLMError
from .engine.fallback import auto_fallback_after
from .record.events import EventLog, Listener
from .engine.kept_loop import KeptLoop, drop
from .models.base import ModelClient
from .result import Result
from .engine.run import Run, RunState, close_clients, new_run_id  # noqa: F401  (close_clients: for session.py)
from .engine.scheduler import Scheduler
from .usage import UsageSummary

if TYPE_CHECKING:
    from .engine.answer_schema import AnswerSchema
    from .context.loader import LoadedContext
    from .environments.base import Environment
    from .session import Session


class RLM:
    """A Recursive Language Model: answers `query` over `context` by writing and running code.

    `model` is the root model, `sub_model` answers `llm_query` (defaults to `model`). Limits apply
    to a whole top-level run including its child runs; `max_depth=1` means sub-calls are plain LLM
    calls, `max_depth=2` lets `rlm_query` start child RLMs, and so on.
    """

    def __init__(
        self, model: str | ModelClient | None = None, sub_model: str | ModelClient | None = None, *,
        base_url: str | None = None, api_key: str | None = None,
        # what a run may spend (config.Limits); every default is the config value's own
        max_depth: int = Limits.max_depth, max_iterations: int = Limits.max_iterations,
        max_llm_calls: int | None = Limits.max_llm_calls, max_tokens: int | None = Limits.max_tokens,
        max_cost_usd: float | None = Limits.max_cost_usd, timeout_s: float | None = Limits.timeout_s,
        # where model code runs (config.WorkerPolicy)
        environment: str = WorkerPolicy.environment, sandbox: str = WorkerPolicy.sandbox,
        worker_memory_mb: int = WorkerPolicy.memory_mb,
        # how every model call is made (config.CallPolicy)
        max_concurrency: int = CallPolicy.max_concurrency, max_retries: int = CallPolicy.max_retries,
        call_timeout_s: float | None = CallPolicy.call_timeout_s,
        max_output_tokens: int | None = CallPolicy.max_output_tokens,
        temperature: float | None = CallPolicy.temperature, hedge_after: float | None = CallPolicy.hedge_after,
        record_logprobs: str | None = CallPolicy.record_logprobs,
        # how the root loop behaves (config.LoopPolicy)
        max_output_chars: int = LoopPolicy.max_output_chars, cell_timeout_s: float = LoopPolicy.cell_timeout_s,
        fallback_after: int | None | str = "auto", schema_retries: int = LoopPolicy.schema_retries,
        compact_at: float | None = LoopPolicy.compact_at, root_context_window: int | None = LoopPolicy.root_context_window,
        system_prompt: str | None = LoopPolicy.system_prompt, prompt_style: str = LoopPolicy.prompt_style,
        sub_calls: bool = LoopPolicy.sub_calls,
        # what model code may use (config.RunConfig)
        allowed_models: list[str] | str | None = None, ray_fanout_at: int | None = None, tools: list | None = None,
        # recording and watching
        verbose: bool = False, trajectory_dir: str | Path | None = None, on_event: Listener | None = None,
        store: Any = True, cache: bool | None = None,
        # memory across questions (memory.py): a workspace name (or a memory.Workspace)
        memory: Any = None, memory_reuse: bool = False,
    ) -> None:
        from .engine.tools import tools_of
        from .models.resolver import resolve_model
        if ray_fanout_at is not None and not isinstance(sub_model if sub_model is not None else model, str):
            raise ConfigError("ray_fanout_at needs the sub-model as a model string (Ray workers rebuild the client)")
        root_client = resolve_model(model, base_url=base_url, api_key=api_key)
        sub_client = resolve_model(sub_model, base_url=base_url, api_key=api_key) if sub_model is not None else root_client
        try:
            limits = Limits(max_iterations=max_iterations, max_depth=max_depth, max_llm_calls=max_llm_calls,
                            max_tokens=max_tokens, max_cost_usd=max_cost_usd, timeout_s=timeout_s)
            calls = CallPolicy(max_concurrency=max_concurrency, max_retries=max_retries, call_timeout_s=call_timeout_s,
                               max_output_tokens=max_output_tokens, temperature=temperature, hedge_after=hedge_after,
                               record_logprobs=record_logprobs)
            loop = LoopPolicy(max_output_chars=max_output_chars, cell_timeout_s=cell_timeout_s, compact_at=compact_at,
                              fallback_after=auto_fallback_after(fallback_after, root_client), root_context_window=root_context_window,
                              system_prompt=system_prompt, sub_calls=sub_calls, schema_retries=schema_retries,
                              prompt_style=prompt_style)
            worker = WorkerPolicy(environment=environment, sandbox=sandbox, memory_mb=worker_memory_mb)
            self.config = RunConfig(root_client=root_client, sub_client=sub_client, limits=limits, calls=calls,
                                    loop=loop, worker=worker, allowed_models=allowed_models,
                                    ray_fanout_at=ray_fanout_at, base_url=base_url, api_key=api_key,
                                    tools=tools_of(tools))
        except ValueError as error:
            raise ConfigError(str(error)) from None
        self.verbose, self.on_event = verbose, on_event
        self.trajectory_dir = Path(trajectory_dir) if trajectory_dir else None
        self.store = store  # the run store: True (the database in $RLM_HOME), a path, a Store, or None (off)
        # The call cache: None = on when temperature is 0 (identical calls give identical answers).
        self.cache = cache
        # The memory workspace runs read and `remember` into (memory.py), or None.
        self.memory, self.memory_reuse = _workspace(memory), bool(memory_reuse)
        # completion()'s event loop, kept between calls: the next call reuses the provider's connections
        self._kept_loop = KeptLoop([root_client, sub_client])
        weakref.finalize(self, drop, self._kept_loop).atexit = False  # the exit closes it (kept_loop.py)

    def close(self) -> None:
        """Close the connections `completion()` keeps open between calls (otherwise closed after
        the RLM is garbage-collected, or at exit). The RLM can still be used; its next call opens
        new ones."""
        self._kept_loop.close()

    def __enter__(self) -> "RLM":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def root_client(self) -> ModelClient:
        return self.config.root_client

    @property
    def sub_client(self) -> ModelClient:
        return self.config.sub_client

    @property
    def limits(self) -> Limits:
        return self.config.limits

    @property
    def model(self) -> str:
        return self.root_client.name

    @property
    def sub_model(self) -> str:
        return self.sub_client.name

    def completion(self, query: str, context: Any = None, *, contexts: list[Any] | None = None,
                   schema: Any = None, **load_options: Any) -> Result:
        """Run to a final answer (or a limit). `context` may be text, data, a Path, a directory or a
        table file; `contexts=[...]` gives several inputs (`context_0`, `context_1`, ... in the REPL).

        `schema`: a pydantic model class or a JSON schema; the answer must be JSON that validates
        (the model is told the errors and tries again, `schema_retries` times), and
        `result.parsed` holds the validated object.
        `load_options` (include, exclude, encoding, max_file_bytes, gitignore) go to `load_context`.
        """
        coroutine = self.acompletion(query, context, contexts=contexts, schema=schema, **load_options)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._kept_loop.run(coroutine)
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
                          schema: Any = None, resume_from: str | None = None,
                          run_config: dict[str, Any] | None = None, **load_options: Any) -> Result:
        """See `completion`. `resume_from`: a run id whose recorded calls are replayed (in order, for
        free) before live calls continue; `run_config`: what `rlm ask --resume` needs to redo the run."""
        from .engine.answer_schema import AnswerSchema
        from .context.loader import load_inputs

        if not isinstance(query, str) or not query.strip():
            raise RLMError("the query is empty: pass the question to answer as `query`")
        answer_schema = schema if isinstance(schema, AnswerSchema) or schema is None else (
            await asyncio.to_thread(AnswerSchema, schema))  # a large schema's check never holds the loop
        sources = ([] if context is None else [context]) + list(contexts or [])
        inputs = load_inputs(sources or [""], **load_options)
        return await self.run_inputs(query, inputs, resume_from=resume_from, run_config=run_config,
                                     schema=answer_schema)

    async def run_inputs(self, query: str, inputs: list[LoadedContext], *, resume_from: str | None = None,
                         run_config: dict[str, Any] | None = None, environment: Environment | None = None,
                         session_id: str | None = None, turn_note: str | None = None,
                         schema: AnswerSchema | None = None, run_id: str | None = None) -> Result:
        """One top-level run over loaded inputs. A session passes its long-lived, started
        `environment` (kept open afterwards), its id, a note for the root prompt and the run's id
        (so that it can name a run it interrupts); `schema` types the answer."""
        run_id = run_id or new_run_id()
        trajectory_path = (self.trajectory_dir or _default_trajectory_dir()) / f"{run_id}.jsonl"
        listeners = [self.on_event] if self.on_event else []
        if self.verbose:
            from .record.verbose import VerbosePrinter
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
        state = self._new_state(events, store, replay)
        try:
            if self.memory is not None:
                from .engine.memory import start_run

                state.memory = await asyncio.to_thread(start_run, self.memory, question=query, run_id=run_id,
                                                       inputs=inputs, reuse=self.memory_reuse)
            run = Run(state, query=query, inputs=inputs, depth=0, run_id=run_id, parent_run_id=None,
                      root_client=self.root_client, environment=environment, turn_note=turn_note, schema=schema)
            if environment is not None:
                environment.rebind(run.handle_subcall)  # this turn's sub-calls go to this turn's run
            result = await run.execute()
        finally:
            events.close()
            try:
                widths_error = await state.scheduler.remember_widths()  # in a thread, when a width changed
            finally:
                # a session, and completion()'s kept loop, keep the configured clients (bound to that
                # loop) for the next question
                await state.close_clients(configured=environment is None and not self._kept_loop.is_running_here())
        result.trajectory_path = trajectory_path
        result.store_error = "; ".join(filter(None, [getattr(store, "error", None), events.error, widths_error])) or None
        return result

    def _new_state(self, events: EventLog, store, replay) -> RunState:
        calls = self.config.calls
        budget = Budget(self.config.limits)
        usage = UsageSummary()
        # (by default not when recording tokens: a cached reply has none)
        use_cache = self.cache if self.cache is not None else calls.temperature == 0 and not calls.record_logprobs
        scheduler = Scheduler(budget, events, usage, max_concurrency=calls.max_concurrency, retry=calls.retry,
                              call_timeout_s=calls.call_timeout_s, max_output_tokens=calls.max_output_tokens,
                              temperature=calls.temperature, store=store, use_cache=use_cache, replay=replay,
                              hedge_after=calls.hedge_after, record_logprobs=calls.record_logprobs)
        return RunState(config=self.config, budget=budget, events=events, usage=usage, scheduler=scheduler)

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
            from .record.store import Store

            self._store_instance = self.store if isinstance(self.store, Store) else Store(
                None if self.store is True else self.store)
        return self._store_instance


def _workspace(memory: Any):
    """RLM(memory=...): None, a workspace name, or a memory.Workspace (rlm serve's, scoped to a client)."""
    if memory is None:
        return None
    from .engine.memory import Workspace

    return memory if isinstance(memory, Workspace) else Workspace(memory)


def _default_trajectory_dir() -> Path:
    from .paths import trajectories_dir

    return trajectories_dir()
