"""Final answers, decided in one place.

A run's answer comes from one of: `FINAL(text)` in the root model's reply (in a reply without
code: see `resolve`), `FINAL_VAR(name)` in the reply (resolved here against the REPL), `FINAL(...)`/`FINAL_VAR(...)` called in code or the
`answer` dict (set in the REPL: `environments/inside/runtime.py`), the map-reduce fallback, or the last
request at a limit. Whatever its source, every answer passes `accept` before the run may end
with it: an answer that is too large, or made of the error texts of failed sub-calls, is refused
with a message for the model (an error is never an answer). With a schema (`completion(...,
schema=...)`), the answer must also be JSON that validates: the model is told the validation
errors and tries again, a bounded number of times (the schema and the check: `answer_schema.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from . import prompts
from .answer_schema import AnswerSchema
from ..config import HOST_BOUNDS
from ..caps import ANSWER_QUOTE_CHARS, FAILURE_QUOTE_CHARS, SCHEMA_ERRORS_CHARS, truncate_output
from .parsing import FinalAnswer, ParsedReply


class Verdict(Enum):
    """What a turn means for the run's answer."""

    ACCEPTED = "accepted"  # the run ends with `Decision.answer`
    REFUSED = "refused"    # an answer the run must not end with; `note` tells the model why
    NONE = "none"          # no answer yet (`note`, if any, is what the model is told)
    GAVE_UP = "gave_up"    # too many answers that did not match the schema; `note` says why the run stops


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    answer: str | None = None
    note: str | None = None

    @property
    def accepted(self) -> bool:
        return self.verdict is Verdict.ACCEPTED


if TYPE_CHECKING:
    from ..environments.base import Environment


async def resolve(env: Environment, final: FinalAnswer, *, with_code: bool = False) -> tuple[str | None, str | None]:
    """A reply's FINAL / FINAL_VAR as text: `(answer, None)` or `(None, what the model is told)`.

    `with_code`: the same reply also had code. A `FINAL(text)` there was written before the model
    saw what its code printed (models invent the output and answer from it), so it is not taken:
    the model sees the real output and is asked to confirm or correct it. `FINAL_VAR(name)` reads
    state the code computed, so it stands.
    """
    if final.variable is None:
        if with_code:
            return None, prompts.CONFIRM_FINAL_NOTE.format(answer=truncate_output(final.text or "", ANSWER_QUOTE_CHARS))
        return final.text, None
    value = await env.get_variable(final.variable)
    if value["ok"]:
        return value["text"], None
    return None, f"FINAL_VAR failed: {value['error']}. Define the variable in a ```repl block first."


async def _from_reply(env: Any, reply: ParsedReply, at_limit: bool) -> tuple[str | None, str | None]:
    """The answer a reply gives by itself, or `(None, what the model is told)`."""
    if reply.final is not None:
        return await resolve(env, reply.final, with_code=bool(reply.code_blocks) and not at_limit)
    if not at_limit:
        return None, None
    if reply.code_blocks:  # code that was never run is not an answer
        return None, "the reply to the final-answer request had no answer: only code, which is not run at a limit"
    text = reply.visible.strip()
    return (text, None) if text else (None, "the reply to the final-answer request had no answer: it was empty")


@dataclass
class Gate:
    """The gate one run's answers pass: `accept` for every answer; with a schema, `parsed` is the
    validated value and `gave_up` says why the run stops after too many invalid answers."""

    failures: set[str]
    schema: AnswerSchema | None = None
    schema_retries: int = 2
    invalid: int = 0
    parsed: Any = None
    gave_up: str | None = None
    _last_problem: str | None = field(default=None, repr=False)

    async def decide(self, env: Any, reply: ParsedReply | None = None, *, cell_final: str | None = None,
                     at_limit: bool = False) -> Decision:
        """The one decision of what a turn means for the run (the loop's turns, the map-reduce
        fallback's cell, the final-answer request at a limit all ask here).

        The loop runs a reply's code first (`ParsedReply.code_blocks`: the code to run); an answer
        that code set (`cell_final`: FINAL in code, the `answer` dict, the map-reduce program) comes
        before the reply's own FINAL / FINAL_VAR. `at_limit`: the reply answers the final-answer
        request, whose code is never run: its FINAL(text) stands even next to code, and a reply in
        prose without code is its answer."""
        candidate, note = cell_final, None
        if candidate is None and reply is not None:
            candidate, note = await _from_reply(env, reply, at_limit)
        answer, refused = await self.accept(candidate)
        if answer is not None:
            return Decision(Verdict.ACCEPTED, answer)
        if self.gave_up:
            return Decision(Verdict.GAVE_UP, note=self.gave_up)
        if refused:
            return Decision(Verdict.REFUSED, note=refused)
        return Decision(Verdict.NONE, note=note)

    async def accept(self, answer: str | None) -> tuple[str | None, str | None]:
        answer, refused = accept(answer, self.failures)
        if answer is None or self.schema is None:
            return answer, refused
        value, problem = await self.schema.check(answer)
        if problem is None:
            self.parsed = value
            return answer, None
        self.invalid += 1
        if self.invalid > self.schema_retries:
            self.gave_up = (f"the answer did not match the schema after {self.invalid} tries: {problem}. "
                            f"Last answer: {truncate_output(answer, ANSWER_QUOTE_CHARS)}")
            return None, None
        return None, prompts.SCHEMA_RETRY_NOTE.format(errors=truncate_output(problem, SCHEMA_ERRORS_CHARS))


def accept(answer: str | None, failures: set[str]) -> tuple[str | None, str | None]:
    """`(answer, None)`, or `(None, why)` for an answer the run must not end with. `failures` are
    the error texts that sub-calls returned to model code in this run."""
    if answer is None:
        return None, None
    if len(answer) > HOST_BOUNDS.max_answer_chars:
        return None, (f"The answer was not accepted: it has {len(answer):,} characters, over the limit of "
                      f"{HOST_BOUNDS.max_answer_chars:,}. Answer with less (a summary, or the part asked for).")
    failure = mostly_failures(answer, failures)
    if failure is not None:
        return None, ("The answer was not accepted: it is the error text of a failed sub-call "
                      f"({truncate_output(failure, FAILURE_QUOTE_CHARS)}), not an answer. Retry the calls that failed, or "
                      "answer from the ones that worked.")
    return answer, None


def mostly_failures(answer: str, failures: set[str]) -> str | None:
    """The first failed sub-call's error text in `answer`, when the answer is mostly such texts
    (what is left without them is under a fifth of its letters and digits); else None."""
    found = [text for text in sorted(failures, key=len, reverse=True) if text and text in answer]
    if not found:
        return None
    rest = answer
    for text in found:
        rest = rest.replace(text, "")
    rest_alnum = _alnum(rest) - 5 * rest.count("Error")  # the "Error: " the REPL puts before each
    return found[0] if rest_alnum < 0.2 * max(1, _alnum(answer)) else None


def _alnum(text: str) -> int:
    return sum(ch.isalnum() for ch in text)
