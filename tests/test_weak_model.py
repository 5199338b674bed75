"""A root model known to be weak (the embedded SmolLM2-135M: `writes_code = False`) goes straight
to the map-reduce program: chunk, ask each chunk with a prompt that lets the model say NOT FOUND,
combine. Tables are read as rows of text. A run in which no chunk answered is `not_found`, never a
"final" answer. Scripted models here; tests/test_local_model_e2e.py runs the real embedded model."""

from __future__ import annotations

import pytest

from recursive_llm import RLM
from recursive_llm.cli.support import _EXIT_BY_STOP, EXIT_OK
from recursive_llm.environments.inside import map_reduce
from recursive_llm.record.events import read_trajectory
from recursive_llm.engine.fallback import auto_fallback_after
from recursive_llm.result import StopReason
from recursive_llm.testing import ScriptedModel

HELLO = ("Project notes, week 12.\n\nThe team met on Tuesday in room 4B. Maria Lopez presented the new billing "
         "dashboard.\n\nThe staging server is called kestrel. It runs in the Frankfurt data centre.\n\n"
         "Coffee supplies will be reordered on Friday.\n")


def weak(default, name: str = "weak") -> ScriptedModel:
    model = ScriptedModel(default=default, name=name, context_window=8192)
    model.writes_code = False  # what models.local.LocalModel says of the shipped SmolLM2-135M
    return model


def make(root, **options) -> RLM:
    return RLM(model=root, environment="local", store=None, **options)


def prompt_of(messages) -> str:
    return messages[-1]["content"]


def test_a_weak_root_model_goes_straight_to_the_program(tmp_path):
    model = weak(lambda m: "Frankfurt" if "Frankfurt" in prompt_of(m) else "NOT FOUND")
    result = make(model, trajectory_dir=tmp_path).completion("Where does the staging server run?", HELLO)
    assert result.stopped_reason == "final" and result.answer == "Frankfurt"
    assert result.used_fallback and result.iterations == 0
    assert len(model.calls) == 1  # no root turn: one chunk asked, nothing else
    assert "NOT FOUND" in prompt_of(model.calls[0]) and "Where does the staging server run?" in prompt_of(model.calls[0])
    events = read_trajectory(result.trajectory_path)
    fallback = [e for e in events if e["type"] == "fallback"]
    assert fallback and "known not to write RLM code" in fallback[0]["reason"]


def test_nothing_found_is_not_found_and_never_final(tmp_path):
    model = weak("NOT FOUND")
    result = make(model).completion("Who presented the billing dashboard?", HELLO)
    assert result.stopped_reason == StopReason.NOT_FOUND and result.answer is None
    assert not result.ok and "nothing in the input answers" in result.error
    assert len(model.calls) == 1


def test_a_question_sharing_no_word_with_the_input_asks_nothing():
    """"What is the CEO's salary?" against notes that never mention a CEO or a salary: a weak model
    would invent one, so it is not asked at all."""
    model = weak("Maria Lopez, who is a Spanish-American medical doctor")
    result = make(model).completion("What is the CEO's salary?", HELLO)
    assert result.stopped_reason == "not_found" and result.answer is None
    assert model.calls == []


def test_an_answer_not_in_its_chunk_is_set_aside():
    model = weak("The salary is $250,000 a year")
    result = make(model).completion("What is the salary of the staging server team?", HELLO)
    assert result.stopped_reason == "not_found" and result.answer is None
    events_free = make(weak("kestrel")).completion("What is the staging server called?", HELLO)
    assert events_free.answer == "kestrel"


def test_chunks_answers_are_combined_and_only_relevant_chunks_asked():
    text = "".join(f"Line {i}: the weather was mild.\n" for i in range(400))
    text += "The staging server is called kestrel.\n" + "".join(f"Row {i}: coffee.\n" for i in range(400))
    text += "The backup server is called osprey.\n"
    model = weak(lambda m: ("NOT FOUND" if "Notes taken" not in prompt_of(m) and "server" not in prompt_of(m)
                            else "kestrel and osprey" if "Notes taken" in prompt_of(m)
                            else "kestrel" if "kestrel" in prompt_of(m) else "osprey"))
    result = make(model).completion("What are the servers called?", text)
    assert result.answer == "kestrel and osprey" and result.stopped_reason == "final"
    asked = [prompt_of(c) for c in model.calls]
    assert all("server" in p for p in asked)  # the weather chunks share no word with the question
    assert len(asked) == 3  # two chunks, then one call that combines


def test_a_table_is_read_as_rows_of_text(tmp_path):
    table = tmp_path / "staff.csv"
    table.write_text("name,city,salary\nAnn,Paris,100\nBob,Oslo,200\n")
    model = weak(lambda m: "Oslo" if "name: Bob; city: Oslo" in prompt_of(m) else "NOT FOUND")
    result = make(model).completion("Which city is Bob in?", table)
    assert result.answer == "Oslo", [prompt_of(c) for c in model.calls]
    assert "Table(" not in prompt_of(model.calls[0])


def test_a_failing_sub_model_is_an_error_not_not_found():
    from recursive_llm.errors import ModelError

    model = weak(None)
    model._default = lambda m: (_ for _ in ()).throw(ModelError("provider down"))
    result = make(model, max_retries=0).completion("Where does the staging server run?", HELLO)
    assert result.stopped_reason == "error" and result.answer is None


def test_the_loop_runs_when_the_user_asks_for_it():
    model = weak("FINAL(kestrel)")
    result = make(model, fallback_after=None).completion("What is the staging server called?", HELLO)
    assert result.answer == "kestrel" and not result.used_fallback and result.iterations == 1


def test_capable_models_keep_their_turns():
    assert auto_fallback_after("auto", ScriptedModel()) == 3
    assert auto_fallback_after("auto", weak("x")) == 0
    assert auto_fallback_after(None, weak("x")) is None and auto_fallback_after(2, weak("x")) == 2
    # SmolLM2 served elsewhere is the same weak model
    assert auto_fallback_after("auto", ScriptedModel(name="ollama/smollm2:135m")) == 0
    assert auto_fallback_after("auto", ScriptedModel(name="smollm2")) == 0


@pytest.mark.parametrize("reply, found", [
    ("NOT FOUND", True), ("not found.", True), ("The text does not mention the CEO's salary.", True),
    ("", True), ("Frankfurt", False), ("kestrel", False)])
def test_says_not_found(reply, found):
    assert map_reduce.says_not_found(reply) is found


def test_grounded():
    assert map_reduce.grounded("It runs in Frankfurt.", HELLO, "Where does the staging server run?")
    assert not map_reduce.grounded("In Berlin.", HELLO, "Where does the staging server run?")
    assert map_reduce.grounded("Yes", HELLO, "Is there a staging server?")


def test_every_stop_reason_has_an_exit_code_and_only_final_is_zero():
    for reason in StopReason:
        assert reason.value in _EXIT_BY_STOP
        assert (_EXIT_BY_STOP[reason.value] == EXIT_OK) is (reason is StopReason.FINAL)


def test_logs_show_names_the_program_s_entry(tmp_path):
    from recursive_llm.record.store import Store
    from recursive_llm.record.viewer import trajectory_text

    model = weak(lambda m: "Frankfurt" if "Frankfurt" in prompt_of(m) else "NOT FOUND")
    result = RLM(model=model, environment="local").completion("Where does the staging server run?", HELLO)
    shown = trajectory_text(Store().run_tree(result.run_id))
    assert "-- map-reduce fallback (the built-in program)" in shown and "-- iteration 0" not in shown
    assert " · 0 iterations · " in shown


def test_the_readme_shows_what_a_not_found_run_prints():
    """README's console example is the message a run prints (through `rlm ask`'s "Stopped:" line)."""
    from pathlib import Path

    result = make(weak("x")).completion("What is the CEO's salary?", HELLO)
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert f"Stopped: not_found ({result.error})" in readme


def test_a_fallback_answer_the_schema_refuses_stops_with_the_schemas_reason_not_not_found():
    """Issue 26: the fallback's answer passes the same decision as a root turn's (answers.Gate.decide);
    an answer that gives up on the schema is an error saying so, not "nothing in the input answers"."""
    model = weak(lambda m: "Frankfurt" if "Frankfurt" in prompt_of(m) else "NOT FOUND")
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    result = make(model, schema_retries=0).completion("Where does the staging server run?", HELLO, schema=schema)
    assert result.stopped_reason == StopReason.ERROR and result.answer is None
    assert "did not match the schema" in result.error
