"""Multi-turn sessions: one REPL (and its variables) kept alive across questions.

Each question is a run of its own (recorded with the session's id), but all of them execute in
the same environment, so what the model computed for one question (an index, a list of findings)
is still there for the next. In the REPL, `session_history` lists the earlier questions with their
answers and run ids, and `previous_answers[n]` is the answer to question n (from 1). (`history` is
compaction's: the turns it replaced by a summary, added to across the session's questions.)

A session owns an event loop on a thread of its own, because the worker process is tied to the
loop it was started on; `ask` works from any thread, `aask` from any event loop.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from typing import TYPE_CHECKING, Any

from .errors import RLMError
from .engine.run import new_run_id

if TYPE_CHECKING:
    from .environments.base import Environment
    from .result import Result
    from .rlm import RLM

TURN_NOTE = ("This is question {number} of a session. The REPL still holds every variable you defined "
             "for earlier questions; `session_history` lists them with their answers, and "
             "`previous_answers[n]` is the answer to question n: {summary}")


class Session:
    def __init__(self, rlm: "RLM", context: Any = None, *, contexts: list[Any] | None = None,
                 **load_options: Any) -> None:
        from .context.loader import load_inputs

        sources = ([] if context is None else [context]) + list(contexts or [])
        self.rlm = rlm
        self.inputs = load_inputs(sources or [""], **load_options)
        self.session_id = time.strftime("s%Y%m%d-%H%M%S-") + secrets.token_hex(3)
        self.history: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"rlm-{self.session_id}", daemon=True)
        self._thread.start()
        self._environment: Environment | None = None
        self._closed = False
        self._idle = threading.Event()  # set while no question is being answered
        self._idle.set()
        self.interrupted_run_id: str | None = None  # the run a Ctrl-C in `ask` interrupted

    # -- asking ---------------------------------------------------------------------------------
    def ask(self, question: str, *, run_config: dict[str, Any] | None = None) -> "Result":
        """Answer one question in this session (blocking). Ctrl-C (KeyboardInterrupt) while it runs
        cancels the run and waits until it is recorded as interrupted (`interrupted_run_id`), then
        goes on up; `run_config` is added to what the store keeps of the run (for a resume)."""
        run_id = new_run_id()
        future = self._submit(self._ask(question, run_id, run_config))
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()  # cancels the run's task on the session's loop
            self._idle.wait(timeout=60)  # the run records itself as interrupted (run.Run.execute)
            self.interrupted_run_id = run_id
            raise

    async def aask(self, question: str) -> "Result":
        return await asyncio.wrap_future(self._submit(self._ask(question, new_run_id(), None)))

    def _submit(self, coroutine):
        if self._closed:
            coroutine.close()
            raise RLMError("this session is closed; start a new one with rlm.session(...)")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    async def _ask(self, question: str, run_id: str, run_config: dict[str, Any] | None) -> "Result":
        self._idle.clear()
        try:
            return await self._answer(question, run_id, run_config)
        finally:
            self._idle.set()

    async def _answer(self, question: str, run_id: str, run_config: dict[str, Any] | None) -> "Result":
        from .environments.factory import make_environment

        if not isinstance(question, str) or not question.strip():
            raise RLMError("the question is empty")
        if self._environment is None:
            self._environment = make_environment(self.rlm.config.worker, self.inputs, _no_handler,
                                                 max_output_chars=self.rlm.config.loop.max_output_chars)
            await self._environment.start()
        await self._set_history()
        note = None
        if self.history:
            summary = "; ".join(f"{i + 1}. {h['question'][:80]!r}" for i, h in enumerate(self.history[-10:]))
            note = TURN_NOTE.format(number=len(self.history) + 1, summary=summary)
        result = await self.rlm.run_inputs(question, self.inputs, environment=self._environment,
                                           session_id=self.session_id, turn_note=note, run_id=run_id,
                                           run_config={"query": question, "session_id": self.session_id,
                                                       "turn": len(self.history) + 1, **(run_config or {})})
        self.history.append({"question": question, "answer": result.answer, "run_id": result.run_id,
                             "stopped_reason": result.stopped_reason})
        return result

    async def _set_history(self) -> None:
        """Start the question in the REPL: the inputs as loaded and `answer` unanswered
        (`REPL.new_question`), and `session_history` and `previous_answers` (a restarted worker gets
        them back here). Compaction's `history` is another variable, and is left alone."""
        encoded = json.dumps([{"question": h["question"], "answer": h["answer"], "run_id": h["run_id"]}
                              for h in self.history])
        code = ("_new_question()\n"
                f"session_history = __import__('json').loads({encoded!r})\n"
                "previous_answers = {n: turn['answer'] for n, turn in enumerate(session_history, start=1)}")
        cell = await self._environment.execute(code, 30)
        if cell.error:
            raise RLMError(f"could not set up the session's REPL: {cell.error}")

    # -- lifetime -------------------------------------------------------------------------------
    def close(self) -> None:
        from .engine.run import close_clients

        if self._closed:
            return
        self._closed = True

        async def shutdown() -> None:
            if self._environment is not None:
                await self._environment.close()
            await close_clients([self.rlm.root_client, self.rlm.sub_client])

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort when a user forgets close()
        if not getattr(self, "_closed", True):
            try:
                self.close()
            except Exception:
                pass


async def _no_handler(kind, prompts, model, context):
    return [{"ok": False, "error": "no run is active in this session"}] * len(prompts)
