"""The reference implementation's prompt style (issue 14, item 6), for models trained as RLMs."""

from __future__ import annotations

import pytest

from recursive_llm import RLM
from recursive_llm.errors import ConfigError
from recursive_llm.testing import ScriptedModel

# Replies in the shape the reference (rlms 0.1.3) accepts: ```repl blocks, and the `answer` dict
# to submit (that version no longer reads FINAL(...)).
REFERENCE_REPLIES = [
    "Let me look at the context first.\n```repl\nprint(len(context))\nprint(context[:40])\n```",
    "The magic number is in the text; let me ask a sub-LLM.\n```repl\n"
    "found = llm_query(f'What is the magic number? {context}')\nprint(found)\n```",
    "```repl\nanswer[\"content\"] = found.strip()\nanswer[\"ready\"] = True\n```",
]


def test_a_reference_style_run_is_driven_to_an_answer_by_the_replies_the_reference_accepts():
    root = ScriptedModel(REFERENCE_REPLIES)
    sub = ScriptedModel(default="4217")
    text = "Notes from the meeting. The magic number is 4217. Nothing else happened."
    result = RLM(model=root, sub_model=sub, prompt_style="reference", max_iterations=5).completion(
        "What is the magic number?", text)
    assert result.answer == "4217" and result.stopped_reason == "final" and result.iterations == 3
    system, first = root.calls[0][0]["content"], root.calls[0][1]["content"]
    assert system.startswith("You are a Recursive Language Model (RLM)")
    for name in ("`context`", "llm_query(", "llm_query_batched(", "rlm_query(", "SHOW_VARS()", '`answer["ready"] = True`'):
        assert name in system, name
    assert first.startswith("Answer the following: What is the magic number?")
    assert f"Your context is a str of {len(text)} total characters" in first and first.endswith("Turn 1/5:")
    second_turn = root.calls[1][-1]["content"]
    assert second_turn.startswith("REPL output:\n") and str(len(text)) in second_turn
    assert second_turn.endswith("Turn 2/5:")


def test_reference_style_several_blocks_and_a_reply_without_code():
    root = ScriptedModel(["```repl\nprint('a')\n```\n```repl\nprint('b')\n```", "I am thinking about it.",
                          "```repl\nanswer['content'] = 'done'; answer['ready'] = True\n```"])
    result = RLM(model=root, prompt_style="reference").completion("q", "text")
    assert result.answer == "done"
    shown = root.calls[1][-1]["content"]
    assert "REPL output (block 1):\na" in shown and "REPL output (block 2):\nb" in shown
    assert root.calls[2][-1]["content"] == "Turn 3/20:"


def test_the_default_style_is_unchanged_and_unknown_styles_are_refused():
    root = ScriptedModel(["FINAL(x)"])
    RLM(model=root).completion("q", "text")
    assert root.calls[0][1]["content"].startswith("Query: q")
    with pytest.raises(ConfigError, match="prompt_style"):
        RLM(model=root, prompt_style="paper")


def test_every_selectable_style_has_prompts_and_every_prompt_set_is_selectable():
    """The style names are declared once (config.PROMPT_STYLES: RLM(...) and --prompt-style check
    against them); prompts.py must hold a text for each and no other."""
    from recursive_llm.engine import prompts
    from recursive_llm.config import PROMPT_STYLES
    from recursive_llm.cli.options import table

    assert set(prompts.STYLES) == set(PROMPT_STYLES)
    assert list(table()["prompt_style"].kwargs["type"].choices) == list(PROMPT_STYLES)
