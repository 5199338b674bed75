"""`answers.Gate.decide`: the one place that says what a turn means for the run (the loop's turns,
the map-reduce fallback's cell and the final-answer request at a limit all ask it)."""

from __future__ import annotations

import asyncio

from recursive_llm.engine import prompts
from recursive_llm.engine.answers import Gate, Verdict
from recursive_llm.engine.parsing import parse_reply


class Env:
    """The REPL as `FINAL_VAR` sees it: `variables` by name."""

    def __init__(self, **variables: str) -> None:
        self.variables = variables

    async def get_variable(self, name: str) -> dict:
        if name in self.variables:
            return {"ok": True, "text": self.variables[name]}
        return {"ok": False, "error": f"NameError: {name!r} is not defined"}


def decide(reply: str | None, *, cell_final: str | None = None, at_limit: bool = False, gate: Gate | None = None,
           env: Env | None = None):
    gate = gate or Gate(set())
    parsed = parse_reply(reply) if reply is not None else None
    return asyncio.run(gate.decide(env or Env(), parsed, cell_final=cell_final, at_limit=at_limit))


def test_an_answer_set_by_code_comes_before_the_replys_own_final():
    decision = decide("```repl\nFINAL('from code')\n```\nFINAL(from the reply)", cell_final="from code")
    assert decision.verdict is Verdict.ACCEPTED and decision.answer == "from code"


def test_a_final_written_next_to_code_is_not_taken_in_a_turn_but_is_at_a_limit():
    reply = "```repl\nprint(1)\n```\nFINAL(42)"
    turn = decide(reply)
    assert turn.verdict is Verdict.NONE and turn.answer is None
    assert turn.note == prompts.CONFIRM_FINAL_NOTE.format(answer="42")
    assert decide(reply, at_limit=True).answer == "42"


def test_final_var_reads_the_repl_and_its_failure_is_told_to_the_model():
    assert decide("FINAL_VAR(result)", env=Env(result="7")).answer == "7"
    missing = decide("FINAL_VAR(result)")
    assert missing.verdict is Verdict.NONE and missing.note.startswith("FINAL_VAR failed: NameError")
    assert decide("FINAL_VAR(result)", at_limit=True).note.startswith("FINAL_VAR failed")


def test_prose_is_an_answer_only_at_a_limit_and_code_never_is():
    assert decide("The answer is 9.").verdict is Verdict.NONE
    assert decide("The answer is 9.").note is None
    assert decide("The answer is 9.", at_limit=True).answer == "The answer is 9."
    only_code = decide("```repl\nprint(9)\n```", at_limit=True)
    assert only_code.verdict is Verdict.NONE and "only code" in only_code.note
    assert "empty" in decide("   ", at_limit=True).note


def test_a_failed_sub_calls_error_text_is_refused_with_a_reason():
    failure = "Error: the model call failed: 503 Service Unavailable"
    decision = decide(None, cell_final=failure, gate=Gate({failure}))
    assert decision.verdict is Verdict.REFUSED and decision.answer is None
    assert "error text of a failed sub-call" in decision.note


def test_an_answer_over_the_schema_too_often_gives_up():
    from recursive_llm.engine.answer_schema import AnswerSchema

    gate = Gate(set(), AnswerSchema({"type": "object", "required": ["n"]}), schema_retries=1)
    first = decide("FINAL(not json)", gate=gate)
    assert first.verdict is Verdict.REFUSED and first.note  # the model is told the validation errors
    second = decide("FINAL(still not json)", gate=gate)
    assert second.verdict is Verdict.GAVE_UP and "did not match the schema after 2 tries" in second.note
    assert decide('FINAL({"n": 1})', gate=Gate(set(), AnswerSchema({"type": "object"}))).accepted
