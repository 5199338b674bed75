"""Typed answers (issue 14, item 3): completion(..., schema=...) validates the final answer."""

from __future__ import annotations

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
