"""Typed answers (issue 14, item 3): completion(..., schema=...) validates the final answer."""

from __future__ import annotations

import re

import pytest
from pydantic import BaseModel

from recursive_llm import RLM
from recursive_llm.errors import ConfigError
from recursive_llm.testing import ScriptedModel


class City(BaseModel):
    name: str
    population: int


def repl(code: str) -> str:
    return f"```repl\n{code}\n```"


def test_an_invalid_answer_is_retried_with_the_errors_and_a_valid_one_is_parsed():
    root = ScriptedModel(['FINAL({"name": "Paris", "population": "many"})',
                          'FINAL(```json\n{"name": "Paris", "population": 2102650}\n```)'])
    result = RLM(model=root).completion("Which city, and how many live there?", "Paris has 2,102,650 people.",
                                        schema=City)
    assert result.stopped_reason == "final"
    assert isinstance(result.parsed, City) and result.parsed.population == 2102650
    assert "JSON schema" in root.calls[0][1]["content"] and '"population"' in root.calls[0][1]["content"]
    told = root.calls[1][-1]["content"]
    assert "does not match the required JSON schema" in told and "population" in told
    assert result.to_dict()["parsed"] == {"name": "Paris", "population": 2102650}


def test_a_json_schema_and_a_dict_built_in_code():
    schema = {"type": "object", "properties": {"count": {"type": "integer"}}, "required": ["count"],
              "additionalProperties": False}
    root = ScriptedModel([repl("out = {'count': len(context.split())}"), "FINAL_VAR(out)"])
    result = RLM(model=root).completion("How many words?", "a b c", schema=schema)
    assert result.parsed == {"count": 3} and result.answer == "{'count': 3}"


def test_answers_that_never_validate_end_the_run_without_an_answer():
    root = ScriptedModel(default="FINAL(not json at all)")
    result = RLM(model=root, schema_retries=1).completion("q", "text", schema=City)
    assert result.answer is None and result.parsed is None
    assert result.stopped_reason == "error" and "did not match the schema after 2 tries" in result.error
    assert len(root.calls) == 2


def test_a_bad_schema_is_a_config_error():
    with pytest.raises(ConfigError, match="not a valid JSON schema"):
        RLM(model=ScriptedModel([])).completion("q", "text", schema={"type": "no-such-type"})
    with pytest.raises(ConfigError, match="pydantic model class or a JSON schema"):
        RLM(model=ScriptedModel([])).completion("q", "text", schema="City")


# -- issue 25: a typed answer or a schema never crashes or stalls the run ----------------------------
def _statuses() -> list[str]:
    from recursive_llm.record.store import Store

    return [run["status"] for run in Store().list_runs()]


# objects, or arrays of arrays to any depth (through a reference to itself)
RECURSIVE = {"anyOf": [{"type": "object"}, {"$ref": "#/$defs/nested"}],
             "$defs": {"nested": {"type": "array", "items": {"$ref": "#/$defs/nested"}}}}


@pytest.mark.parametrize("answer, told", [
    ("1" * 5_000, "a number of 5,000 digits"),  # before: ValueError out of completion()
    ("[" * 100_000 + "]" * 100_000, "nested more than 64 levels"),  # before: RecursionError
    ("[" * 900 + "]" * 900, "nested more than 64 levels"),  # before: RecursionError in jsonschema
    ('{"name": "\\ud800"}', "lone surrogate"),
    ('{"n": NaN}', "NaN is not a JSON number"),
    ('{"n": 1e999}', "too large a number"),
], ids=["5000-digits", "100000-deep", "900-deep-recursive-schema", "lone-surrogate", "nan", "1e999"])
def test_an_answer_that_cannot_be_parsed_or_checked_is_invalid_never_an_exception(answer, told):
    root = ScriptedModel([f"FINAL({answer})", 'FINAL({"fixed": true})'])
    result = RLM(model=root, schema_retries=1).completion("q", "text", schema=RECURSIVE)
    assert result.stopped_reason == "final" and result.parsed == {"fixed": True}
    assert told in root.calls[1][-1]["content"]  # the model was told why, and answered again
    assert _statuses() == ["final"]


def test_an_answer_that_never_parses_ends_the_run_with_an_error():
    root = ScriptedModel(default="FINAL(" + "1" * 5_000 + ")")
    result = RLM(model=root, schema_retries=1).completion("q", "text", schema={"type": "integer"})
    assert result.stopped_reason == "error" and result.answer is None and result.parsed is None
    assert "a number of 5,000 digits" in result.error
    assert _statuses() == ["error"]


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("schema, problem", [
    ({"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(6_000)}},
     "more than 10,000 objects and values"),
    ({"type": "string", "description": "x" * 600_000}, "more than 500,000 characters"),
    ({"$defs": {"x": _nested(70)}}, "nested more than 64 levels"),
    ({"type": "string", "pattern": "a" * 1_001}, "a pattern of 1,001 characters"),
    ({"type": "string", "pattern": "(?:a{1000}){1000}"}, "repeats 1,000,000 times"),
    ({"type": "object", "patternProperties": {f"^p{i}$": {} for i in range(300)}}, "300 patterns"),
    ({"$ref": "http://127.0.0.1:9/x.json"}, "does not point inside the schema"),
    ({"$ref": "file:///etc/passwd"}, "does not point inside the schema"),
    ({"$ref": "#/$defs/missing"}, "does not point inside the schema"),
    ({"properties": {"a": {"$ref": "other.json#/x"}}}, "does not point inside the schema"),
    ({"patternProperties": {"^a": {}}, "unevaluatedProperties": False}, "use additionalProperties"),
    ({"$schema": ["not", "a", "uri"], "type": "object"}, "not a valid JSON schema"),
])
def test_a_schema_past_a_bound_or_pointing_outside_itself_is_a_config_error(schema, problem):
    with pytest.raises(ConfigError, match=re.escape(problem)):
        RLM(model=ScriptedModel([])).completion("q", "text", schema=schema)
    assert _statuses() == []  # refused before any run started


def test_references_inside_the_schema_resolve_and_nothing_is_fetched_for_them():
    schema = {"$defs": {"city": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
                        "scoped": {"$id": "https://example.com/scoped", "$defs": {"n": {"type": "integer"}},
                                   "$ref": "#/$defs/n"}},
              "type": "object", "properties": {"cities": {"type": "array", "items": {"$ref": "#/$defs/city"}},
                                               "count": {"$ref": "https://example.com/scoped"}}}
    root = ScriptedModel(['FINAL({"cities": [{"name": 1}], "count": 1})',
                          'FINAL({"cities": [{"name": "Paris"}], "count": 1})'])
    result = RLM(model=root).completion("q", "text", schema=schema)
    assert result.parsed == {"cities": [{"name": "Paris"}], "count": 1}
    assert "cities.0.name: 1 is not of type 'string'" in root.calls[1][-1]["content"]


def test_patterns_keep_their_meaning_with_the_bounded_engine():
    from recursive_llm.engine.answer_schema import AnswerSchema

    schema = AnswerSchema({"type": "object", "properties": {"id": {"type": "string", "pattern": "^[A-Z]{2}\\d{3}$"}},
                           "patternProperties": {"^x-": {"type": "integer"}}, "additionalProperties": False})
    assert schema.validate('{"id": "AB123", "x-count": 3}') == ({"id": "AB123", "x-count": 3}, None)
    assert "does not match" in schema.validate('{"id": "ab123"}')[1]
    assert "x-count: 'three' is not of type 'integer'" in schema.validate('{"x-count": "three"}')[1]
    assert "additional properties are not allowed ('other' was unexpected)" in schema.validate('{"other": 1}')[1]


def test_unique_items_keeps_json_equality():
    from recursive_llm.engine.answer_schema import AnswerSchema

    unique = AnswerSchema({"type": "array", "uniqueItems": True})
    assert unique.validate('[1, true, "1", {"a": 1, "b": 2}, [1]]')[1] is None
    assert "appears more than once" in unique.validate("[1, 1.0]")[1]
    assert "appears more than once" in unique.validate('[{"a": 1, "b": [2]}, {"b": [2.0], "a": 1}]')[1]
    many = "[" + ", ".join(f'{{"k": {i}}}' for i in range(20_000)) + "]"  # jsonschema compares these pairwise
    assert unique.validate(many)[1] is None


async def test_a_backtracking_pattern_is_timed_out_off_the_event_loop():
    """`^(a|a)*$` backtracks for minutes in `re` and in `regex`: the check gives up at its deadline, in a
    thread that does not hold the GIL, so the event loop keeps answering (the bound is the issue's: 1 s)."""
    import asyncio
    import time

    from recursive_llm.engine.answer_schema import AnswerSchema, SchemaBounds

    schema = AnswerSchema({"type": "object", "properties": {"code": {"type": "string", "pattern": "^(a|a)*$"}}},
                          bounds=SchemaBounds(check_s=1.0))
    gaps: list[float] = []

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.05)
            gaps.append(time.monotonic() - last)
            last = time.monotonic()

    ticker = asyncio.create_task(tick())
    value, problem = await schema.check('{"code": "' + "a" * 40 + '!"}')
    ticker.cancel()
    assert value is None and "took over 1 s" in problem
    assert gaps and max(gaps) < 1.0, max(gaps)


def test_a_provider_reply_with_a_lone_surrogate_is_text_the_run_can_write(capsys):
    """An OpenAI-compatible server's JSON body with the escape `\\ud800` in the message content: the run,
    its trajectory and the store get U+FFFD in its place (before: the trajectory and the store failed)."""
    import json as _json

    from recursive_llm.record.store import Store
    from recursive_llm.testing import FakeLLMServer

    with FakeLLMServer(responder=lambda messages, model: "FINAL(bad \ud800 char)") as server:
        result = RLM(model="openai/m", base_url=server.base_url, api_key="x").completion("q", "text")
    assert result.stopped_reason == "final" and result.answer == "bad \ufffd char"
    recorded = Store().run_tree(result.run_id)
    assert recorded["runs"][0]["status"] == "final" and recorded["runs"][0]["answer"] == "bad \ufffd char"
    lines = [_json.loads(line) for line in open(recorded["runs"][0]["trajectory_path"], encoding="utf-8")]
    assert lines[-1]["type"] == "run_end" and lines[-1]["answer"] == "bad \ufffd char"
    assert "warning" not in capsys.readouterr().err
