"""One run: the root loop, its stop conditions, and the state its child runs share.

`Run.execute` is the loop of DESIGN.md: the root model writes a reply, its code runs in the
environment, the output goes back, until an answer (decided in `answers.py`) or a limit. What
the code asks the host for goes to `subcalls.SubCalls`; keeping the conversation inside the
window is `compaction.Compactor`'s job.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import answers
from . import prompts
from .budget import Budget
from .compaction import Compactor
from ..config import RunConfig
from ..errors import BudgetExceeded, ConfigError, ModelError, RLMError
from ..record.events import EventLog
from .fallback import chunk_chars_for, is_weak, map_reduce_code
from ..models.base import Message, ModelClient
from ..caps import block_share, truncate_output
from .parsing import parse_reply
from ..result import Result, StopReason
from .scheduler import CallSite, Scheduler
from .subcalls import SubCalls
from ..usage import UsageSummary

if TYPE_CHECKING:
    from .answer_schema import AnswerSchema
    from ..context.loader import LoadedContext
    from ..environments.base import Environment

# (answer, why the run stopped, error)
Outcome = tuple["str | None", StopReason, "str | None"]


FALLBACK_ITERATION = 0  # root turns count from 1; the map-reduce program's cell is recorded under 0


def unexpected_error(error: Exception) -> str:
    """A run's `error` for an exception no part of the package raised on purpose: its type, its
    message and where it was raised (the run ends `error` with it, never as `running`)."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"unexpected {type(error).__name__}: {error}{where}"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


@dataclass
class RunState:
    """State shared by a top-level run and all of its child runs."""

    config: RunConfig
    budget: Budget
    events: EventLog
    usage: UsageSummary
    scheduler: Scheduler
    extra_clients: dict[str, ModelClient] = field(default_factory=dict)
    # The error texts that sub-calls returned to model code: never a run's answer.
    failures: set[str] = field(default_factory=set)
    pending_chars: int = 0  # prompt text of the sub-calls being served (HostBounds.max_pending_chars)
    memory: Any = None  # memory.RunMemory: the named workspace of RLM(memory=...), or None
    _child_slots: dict[int, asyncio.Semaphore] = field(default_factory=dict)

    def child_slots(self, depth: int) -> asyncio.Semaphore:
        """Child runs (each with its own worker) at one depth run at most `max_child_runs` (and
        `max_concurrency`) at once;
        one pool per depth, so a parent holding a slot never waits for a slot its children need."""
        if depth not in self._child_slots:
            self._child_slots[depth] = asyncio.Semaphore(min(self.config.calls.max_concurrency,
                                                                     self.config.calls.max_child_runs))
        return self._child_slots[depth]

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
            from ..models.resolver import resolve_model

            self.extra_clients[model] = resolve_model(model, base_url=self.config.base_url,
                                                      api_key=self.config.api_key)
        return self.extra_clients[model]

    async def close_clients(self, configured: bool = True) -> None:
        """Close the clients this run opened (and the configured ones, unless a session goes on)."""
        own = (self.config.root_client, self.config.sub_client) if configured else ()
        await close_clients([*own, *self.extra_clients.values()])


async def close_clients(clients) -> None:
    """Close each distinct client once; a client that fails to close never breaks the caller."""
    for client in {id(c): c for c in clients}.values():
        try:
            await client.aclose()
        except Exception:
            pass


class Run:
    """One RLM run at one depth: its own REPL, conversation and iteration count."""

    def __init__(self, state: RunState, *, query: str, inputs: list[LoadedContext], depth: int, run_id: str,
                 parent_run_id: str | None, root_client: ModelClient, environment: Environment | None = None,
                 turn_note: str | None = None, schema: AnswerSchema | None = None,
                 parent_iteration: int | None = None) -> None:
        self.state = state
        self.config = state.config
        self.environment = environment  # given by a session: already started, and left open
        self.turn_note = turn_note
        self.query = query
        self.inputs = inputs  # `context` (and context_0, context_1, ... when there are several)
        self.depth = depth
        self.run_id = run_id
        self.parent_run_id = parent_run_id
        self.parent_iteration = parent_iteration  # the parent's turn whose code started this child run
        self.root_client = root_client
        self.iterations = 0
        # The iteration the running cells are recorded under: the root turn's, or FALLBACK_ITERATION
        # for the map-reduce program's cell (no model reply: the viewer shows it as its own entry).
        self.cell_iteration: int | None = None
        self.current_cell: int | None = None  # the index of the cell running now (sub-calls come from it)
        self.used_fallback = False
        self.started = time.monotonic()
        self.subcalls = SubCalls(state, depth=depth, inputs=inputs, root_client=root_client, site=self.site,
                                 start_child=self._start_child, emit=self.emit)
        self.compactor = Compactor(root_client, state.scheduler, self.config.loop, self.config.calls,
                                   self.site, self.emit)
        self.gate = answers.Gate(state.failures, schema, self.config.loop.schema_retries)
        self.style = prompts.STYLES[self.config.loop.prompt_style]

    # -- events and call sites ------------------------------------------------------------------
    def emit(self, event_type: str, **fields: Any) -> None:
        self.state.events.emit(event_type, run_id=self.run_id, parent_run_id=self.parent_run_id,
                               depth=self.depth, **fields)

    def site(self, purpose: str, depth: int | None = None) -> CallSite:
        """Where a call comes from: root calls carry the iteration; sub-calls, which come from the
        cell that is running (a run runs one cell at a time), the iteration and the cell's index."""
        iteration = self._iteration_of_cells() if purpose == "sub" else self.iterations or None
        return CallSite(run_id=self.run_id, depth=self.depth if depth is None else depth, purpose=purpose,
                        iteration=iteration, cell=self.current_cell if purpose == "sub" else None,
                        parent_run_id=self.parent_run_id, parent_iteration=self.parent_iteration)

    def _iteration_of_cells(self) -> int | None:
        return self.cell_iteration if self.cell_iteration is not None else (self.iterations or None)

    @property
    def handle_subcall(self):
        """The environment's sub-call handler for this run (a session rebinds it every turn)."""
        return self.subcalls.handle

    async def _start_child(self, query: str, loaded: LoadedContext, client: ModelClient) -> Result:
        child = Run(self.state, query=query, inputs=[loaded], depth=self.depth + 1, run_id=new_run_id(),
                    parent_run_id=self.run_id, root_client=client, parent_iteration=self.iterations or None)
        return await child.execute()

    # -- the run --------------------------------------------------------------------------------
    def _make_environment(self) -> Environment:
        from ..environments.factory import make_environment

        return make_environment(self.config.worker, self.inputs, self.handle_subcall,
                                max_output_chars=self.config.loop.max_output_chars)

    def _first_messages(self) -> list[Message]:
        loop = self.config.loop
        system_notes = [prompts.NO_SUB_CALLS_NOTE] if not loop.sub_calls else []
        if self.config.tools:
            from .tools import prompt_section

            system_notes.append(prompt_section(self.config.tools))
        user_notes = [self.gate.schema.prompt_note()] if self.gate.schema is not None else []
        if self.turn_note:
            user_notes.append(self.turn_note)
        if self.memory_note:
            user_notes.append(self.memory_note)
        return prompts.first_messages(
            [loaded.metadata for loaded in self.inputs], query=self.query, style=self.style,
            recursion=self.depth + 1 < self.config.limits.max_depth, tables=any(i.tables for i in self.inputs),
            override=loop.system_prompt, max_iterations=self.config.limits.max_iterations,
            system_notes=system_notes, user_notes=user_notes)

    @functools.cached_property
    def memory_note(self) -> str | None:
        """The root prompt's memory section (the workspace's entries, never their values), or None."""
        memory = self.state.memory
        if memory is None or self.depth != 0:
            return None
        return prompts.memory_section(memory.workspace.name, *memory.prompt_entries())

    async def execute(self) -> Result:
        own = self.environment is None  # a session's environment is started already, and stays open
        if own:
            from ..environments.base import StartingInBackground

            env = starting = StartingInBackground(self._make_environment())
        else:
            env = self.environment
        try:
            if own:
                await starting.until_launched()  # its process boots while the input is described
            self._emit_start(env)
        except BaseException:
            if own:
                await env.close()
            raise
        answer: str | None = None
        stopped: StopReason = StopReason.ERROR
        error: str | None = None
        try:
            messages = self._first_messages()
            await self._install_tools(env)
            answer, stopped, error = await self._loop(env, messages)
            if stopped in (StopReason.MAX_ITERATIONS, StopReason.BUDGET):
                answer = await self._ask_for_final(env, messages, stopped)
        except BudgetExceeded as exc:
            stopped, error = StopReason.for_budget(exc.budget), str(exc)
        except RLMError as exc:
            stopped, error = StopReason.ERROR, str(exc)
        except Exception as exc:  # a bug, a provider's reply nobody foresaw, an OSError: the run still ends
            stopped, error = StopReason.ERROR, unexpected_error(exc)
        except asyncio.CancelledError:  # Ctrl-C, a client that went away: recorded as interrupted
            self._finish(None, StopReason.INTERRUPTED, "the run was interrupted before it finished")
            raise
        finally:
            if own and (unclosed := await self._close_own(env)):
                error = f"{error}; {unclosed}" if error else unclosed
        return self._finish(answer, stopped, error)

    @staticmethod
    async def _close_own(env: Environment) -> str | None:
        """Close the run's own environment; why that failed, or None (the run is recorded either way,
        its answer, if any, standing)."""
        try:
            await env.close()
        except Exception as exc:
            return f"the environment did not close: {unexpected_error(exc)}"
        return None

    def _emit_start(self, env: Environment) -> None:
        isolation = env.isolation
        self.emit("run_start", query=self.query, model=self.root_client.name,
                  sub_model=self.config.sub_client.name, environment=self.config.worker.environment,
                  isolation={"layers": isolation.layers, "missing": isolation.missing} if isolation else None,
                  metadata=self.inputs[0].metadata, more_inputs=[loaded.metadata for loaded in self.inputs[1:]],
                  limits=self.config.limits.__dict__, parent_iteration=self.parent_iteration,
                  memory=self.memory_note)

    async def _install_tools(self, env: Environment) -> None:
        """Define the stubs of the user's tools in the REPL (a session's REPL gets them each turn)."""
        if not self.config.tools:
            return
        from .tools import stub_code

        cell = await env.execute(stub_code(self.config.tools), self.config.loop.cell_timeout_s)
        if cell.error:
            raise RLMError(f"could not define the tools in the REPL: {cell.error}")

    def _finish(self, answer: str | None, stopped: StopReason, error: str | None) -> Result:
        state = self.state
        result = Result(answer=answer, stopped_reason=stopped, iterations=self.iterations, usage=state.usage,
                        cost_usd=state.budget.cost_usd, run_id=self.run_id, duration_s=time.monotonic() - self.started,
                        error=error, used_fallback=self.used_fallback, depth=self.depth,
                        parsed=self.gate.parsed if answer is not None else None)
        self.emit("run_end", stopped_reason=stopped.value, answer=answer, error=error,
                  iterations=self.iterations, used_fallback=self.used_fallback,
                  duration_s=round(result.duration_s, 3), budget=state.budget.snapshot(),
                  usage=state.usage.to_dict() if self.depth == 0 else None)
        return result

    def _budget_stop(self) -> Outcome | None:
        """The outcome when a budget ran out during the turn (a refused call inside model code)."""
        exhausted = self.state.budget.exhausted
        if exhausted is None:
            return None
        return None, StopReason.for_budget(exhausted), f"the {exhausted} budget ran out during the run"

    async def _loop(self, env: Environment, messages: list[Message]) -> Outcome:
        """Iterate until an answer or a limit."""
        limits = self.config.limits
        idle_turns = 0
        rejected: str | None = None  # why the last answer the model gave was not accepted
        if self.config.loop.fallback_after == 0:  # a root model known not to write RLM code
            return await self._fallback(env, f"{self.root_client.name} is known not to write RLM code")
        while self.iterations < limits.max_iterations:
            self.iterations += 1
            await self.compactor.keep_within_window(env, messages, iteration=self.iterations, query=self.query)
            try:
                completion = await self.state.scheduler.call(self.root_client, messages, self.site("root"))
            except BudgetExceeded as exc:
                return None, StopReason.for_budget(exc.budget), str(exc)
            except ModelError as exc:
                return None, StopReason.ERROR, str(exc)
            reply = completion.text
            self.compactor.note_sent(len(messages), completion.prompt_tokens)
            parsed = parse_reply(reply)
            # The conversation keeps the reply without its reasoning; the trajectory keeps both.
            messages.append({"role": "assistant", "content": parsed.visible})
            reasoning = "\n\n".join(r for r in (completion.reasoning, parsed.reasoning) if r) or None
            self.emit("iteration", iteration=self.iterations, reply=reply, reasoning=reasoning,
                      code_blocks=len(parsed.code_blocks), final=bool(parsed.final))

            outputs, cell_final, any_worked = await self._run_blocks(env, parsed.code_blocks)
            decision = await self.gate.decide(env, parsed, cell_final=cell_final)
            if decision.accepted:
                return decision.answer, StopReason.FINAL, None
            if decision.verdict is answers.Verdict.GAVE_UP:
                return None, StopReason.ERROR, decision.note
            if decision.note:
                outputs.append(decision.note)
            if decision.verdict is answers.Verdict.REFUSED:
                rejected = decision.note
            if (stop := self._budget_stop()) is not None:
                return stop

            # A turn whose code all failed (does not parse, raises, times out) is no progress either:
            # small models write code that never works, and would otherwise spin to the limit.
            idle_turns = 0 if any_worked else idle_turns + 1
            if self.config.loop.fallback_after and idle_turns >= self.config.loop.fallback_after:
                return await self._fallback(env, f"{idle_turns} replies in a row without working code or an answer")
            content = self.style.turn_message(outputs=outputs, iteration=self.iterations, query=self.query,
                                              max_iterations=limits.max_iterations,
                                              had_code=bool(parsed.code_blocks or parsed.final))
            messages.append({"role": "user", "content": content})
        return None, StopReason.MAX_ITERATIONS, rejected

    async def _run_blocks(self, env: Environment, blocks: list[str]) -> tuple[list[str], str | None, bool]:
        """Run a reply's code blocks in order; stop at the first that gives a final answer."""
        outputs: list[str] = []
        any_worked = False
        per_block = block_share(self.config.loop.max_output_chars, len(blocks))
        for index, code in enumerate(blocks, start=1):
            self.current_cell = index
            try:
                cell = await env.execute(code, self.config.loop.cell_timeout_s,
                                         wall_timeout=self.state.budget.remaining_time())
            finally:
                self.current_cell = None
            any_worked = any_worked or (cell.ran and cell.error is None)
            self.emit("cell", iteration=self._iteration_of_cells() or 0, index=index, code=code, stdout=cell.stdout,
                      stderr=cell.stderr, error=cell.error, final=cell.final, timed_out=cell.timed_out,
                      restarted=cell.restarted, duration_s=round(cell.duration_s, 4))
            note = prompts.VARIABLES_LOST_NOTE if cell.restarted else None
            stderr = cell.stderr or (cell.error or "")
            outputs.append(truncate_output(prompts.format_cell(index, code, cell.stdout, stderr, note), per_block))
            if cell.final is not None:
                return outputs, cell.final, True
            if self.state.budget.exhausted:
                break
        return outputs, None, any_worked

    async def _fallback(self, env: Environment, reason: str) -> Outcome:
        self.used_fallback = True
        weak = is_weak(self.config.sub_client)
        chunk_chars = chunk_chars_for(self.config.sub_client.context_window, weak=weak)
        self.emit("fallback", reason=reason, strategy="map_reduce", chunk_chars=chunk_chars)
        code = map_reduce_code(self.query, chunk_chars, strict=weak)
        self.cell_iteration = FALLBACK_ITERATION
        try:
            outputs, final, worked = await self._run_blocks(env, [code])
        finally:
            self.cell_iteration = None
        decision = await self.gate.decide(env, cell_final=final)
        if decision.accepted:
            return decision.answer, StopReason.FINAL, None
        if decision.verdict is answers.Verdict.GAVE_UP:
            return None, StopReason.ERROR, decision.note
        refused = decision.verdict is answers.Verdict.REFUSED
        if refused:
            outputs.append(decision.note)
        if (stop := self._budget_stop()) is not None:
            return None, stop[1], "\n".join(outputs)
        if worked and not refused:  # the program ran to its end and no chunk answered
            why = [line.split("NOT FOUND: ", 1)[1] for line in "\n".join(outputs).splitlines() if "NOT FOUND: " in line]
            return None, StopReason.NOT_FOUND, f"nothing in the input answers the question: {(why or ['no answer'])[-1]}"
        return None, StopReason.ERROR, "the map-reduce fallback did not produce an answer: " + "\n".join(outputs)

    async def _ask_for_final(self, env: Environment, messages: list[Message], stopped: StopReason) -> str | None:
        """At a limit, ask the root model once for its best answer (if the budget still allows)."""
        budget = self.state.budget
        if budget.exhausted == "time":
            return None
        reason = (f"the limit of {self.config.limits.max_iterations} iterations is reached"
                  if stopped == StopReason.MAX_ITERATIONS else f"the {budget.exhausted} budget is used up")
        await self.compactor.keep_within_window(env, messages, iteration=self.iterations, query=self.query)
        messages.append({"role": "user", "content": self.style.final_ask.format(reason=reason, query=self.query)})
        try:
            reply = (await self.state.scheduler.call(self.root_client, messages, self.site("final"))).text
        except (BudgetExceeded, ModelError) as exc:
            self.emit("final_ask_failed", error=str(exc))
            return None
        decision = await self.gate.decide(env, parse_reply(reply), at_limit=True)
        if not decision.accepted:
            self.emit("final_ask_failed", error=decision.note or "the reply to the final-answer request had no answer")
        return decision.answer
