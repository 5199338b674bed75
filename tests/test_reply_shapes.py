"""Reply shapes real models write (issue 14), read by the parser and driven through whole runs.

Reasoning models (DeepSeek-R1, Qwen3, gpt-oss through vLLM or Ollama) put their thinking in
`<think>` blocks; Claude and others invent their code's output and answer from it in the same
reply; models wrap FINAL in markdown, spell fences their own way, and keep talking after FINAL.
"""

from __future__ import annotations

import pytest

from recursive_llm import RLM
from recursive_llm.record.events import read_trajectory
from recursive_llm.engine.parsing import FinalAnswer, find_code_blocks, find_final, parse_reply
from recursive_llm.testing import ScriptedModel

# -- the corpus: (reply, code blocks, final) -------------------------------------------------------
REASONING_BLOCK = """<think>
The user wants the number of lines. Maybe it is 999? Let me write
FINAL(999)
but first I should check with code:
```repl
print('from the reasoning')
```
</think>
Let me count the lines.
```repl
n = len(context.splitlines())
print(n)
```"""

UNCLOSED_REASONING = "<think>\nI could answer FINAL(1) right away, or maybe ```repl\nprint(2)\n```"

TEMPLATE_OPENED_REASONING = """Okay, so I think FINAL(7) but I am not sure.
</think>

```python
print(len(context))
```"""

INVENTED_OUTPUT = """I'll count the lines.
```repl
print(len(context.splitlines()))
```
Output:
```
12
```
FINAL(12)"""

CORPUS = [
    (REASONING_BLOCK, ["n = len(context.splitlines())\nprint(n)"], None),
    ("<thinking>FINAL(no)</thinking>\nFINAL(yes)", [], FinalAnswer(text="yes")),
    (UNCLOSED_REASONING, [], None),
    (TEMPLATE_OPENED_REASONING, ["print(len(context))"], None),
    (INVENTED_OUTPUT, ["print(len(context.splitlines()))"], FinalAnswer(text="12")),
    ("FINAL(first)\nor maybe\nFINAL(second)", [], FinalAnswer(text="first")),
    ("FINAL_VAR(result)\nFINAL(other)", [], FinalAnswer(variable="result")),
    ("FINAL(other)\nFINAL_VAR(result)", [], FinalAnswer(text="other")),
    ("The answer is below.\n\n**FINAL(42)**", [], FinalAnswer(text="42")),
    ("`FINAL(42)`", [], FinalAnswer(text="42")),
    ("> FINAL(Paris)", [], FinalAnswer(text="Paris")),
    ("- FINAL(Paris)\n- because the context says so", [], FinalAnswer(text="Paris")),
    ("## FINAL_VAR(`total`)", [], FinalAnswer(variable="total")),
    ("FINAL(`42`)", [], FinalAnswer(text="42")),
    ("FINAL(The capital is Paris.)\n\nLet me know if you need anything else!", [], FinalAnswer(text="The capital is Paris.")),
    ("I will call FINAL(x) once I know.", [], None),
    ("```Python\nx = 1\n```", ["x = 1"], None),
    ("``` python\nx = 2\n```", ["x = 2"], None),
    ("```python3\nx = 3\n```", ["x = 3"], None),
    ("```py\nx = 4\n```", ["x = 4"], None),
    ("~~~python\nx = 5\n~~~", ["x = 5"], None),
    ("````python\nx = '```'\n````", ["x = '```'"], None),
    ("```REPL\nx = 6\n```", ["x = 6"], None),
    ("```bash\nls\n```\n```json\n{}\n```", [], None),
    ("```\nFINAL(inside a plain fence)\n```", [], None),
    ("```pycon\n>>> x\n```", [], None),
]


@pytest.mark.parametrize("reply, code, final", CORPUS, ids=[f"shape{i}" for i in range(len(CORPUS))])
def test_reply_shapes(reply, code, final):
    parsed = parse_reply(reply)
    assert parsed.code_blocks == code
    assert parsed.final == final


def test_reasoning_is_set_aside_and_kept():
    parsed = parse_reply(REASONING_BLOCK)
    assert "Maybe it is 999" in parsed.reasoning and "print('from the reasoning')" in parsed.reasoning
    assert "999" not in parsed.visible and "Let me count the lines." in parsed.visible
    assert parse_reply(TEMPLATE_OPENED_REASONING).reasoning.startswith("Okay, so I think FINAL(7)")
    assert find_code_blocks("no code") == [] and find_final("") is None


# -- whole runs ------------------------------------------------------------------------------------
def repl(code: str) -> str:
    return f"```repl\n{code}\n```"


TEXT = "one\ntwo\nthree"


def test_a_final_inside_a_reasoning_block_does_not_end_the_run():
    root = ScriptedModel([REASONING_BLOCK, "FINAL_VAR(n)"])
    result = RLM(model=root).completion("How many lines?", TEXT)
    assert result.answer == "3" and result.iterations == 2
    assert "999" not in root.calls[1][2]["content"]  # the conversation keeps the reply without its reasoning
    iteration = next(e for e in read_trajectory(result.trajectory_path) if e["type"] == "iteration")
    assert "Maybe it is 999" in iteration["reasoning"] and iteration["reply"] == REASONING_BLOCK


def test_an_invented_output_is_not_the_answer_the_model_confirms_after_seeing_the_real_one():
    def second_reply(messages) -> str:
        shown = messages[-1]["content"]
        assert "not taken as the answer" in shown and "FINAL(12)" in shown
        return "FINAL(3)" if "\n3" in shown else "FINAL(12)"

    root = ScriptedModel([INVENTED_OUTPUT, second_reply])
    result = RLM(model=root).completion("How many lines?", TEXT)
    assert result.answer == "3" and result.stopped_reason == "final" and result.iterations == 2


def test_final_var_after_code_in_the_same_reply_stays_immediate():
    root = ScriptedModel([repl("n = len(context.splitlines())") + "\nFINAL_VAR(n)"])
    result = RLM(model=root).completion("How many lines?", TEXT)
    assert result.answer == "3" and result.iterations == 1


def test_final_called_inside_code_stays_immediate():
    root = ScriptedModel([repl("FINAL(len(context.splitlines()))") + "\nFINAL(12)"])
    result = RLM(model=root).completion("How many lines?", TEXT)
    assert result.answer == "3" and result.iterations == 1


def test_a_model_that_keeps_guessing_with_code_ends_at_the_limit_with_its_confirmed_answer():
    root = ScriptedModel(default=INVENTED_OUTPUT)
    result = RLM(model=root, max_iterations=2).completion("How many lines?", TEXT)
    # The final request at the limit allows no code, so its FINAL(12) is the model's answer then.
    assert result.stopped_reason == "max_iterations" and result.iterations == 2


# -- providers' separate reasoning fields, through the official SDKs -------------------------------
def test_reasoning_fields_of_both_sdks_are_recorded_and_never_parsed(tmp_path):
    from recursive_llm.testing import FakeLLMServer

    def responder(messages, model) -> str:
        return "FINAL(from the answer)" if len(messages) > 2 else repl("x = 41 + 1")

    def reasoning(messages, model) -> str:
        return "I could just say FINAL(from the reasoning)\n" + repl("print('never run')")

    with FakeLLMServer(responder=responder, reasoning=reasoning) as server:
        for model, base_url in (("gpt-5-mini", server.base_url),
                                ("anthropic/claude-sonnet-4-5", server.base_url.removesuffix("/v1"))):
            rlm = RLM(model=model, base_url=base_url, api_key="sk-test-0123456789", trajectory_dir=tmp_path)
            result = rlm.completion("q", "some text")
            assert result.answer == "from the answer", model
            events = read_trajectory(result.trajectory_path)
            iteration = next(e for e in events if e["type"] == "iteration")
            assert "FINAL(from the reasoning)" in iteration["reasoning"], model
            cells = [e for e in events if e["type"] == "cell"]
            assert [c["code"] for c in cells] == ["x = 41 + 1"], model


def test_a_fenced_body_inside_final_is_unwrapped():
    assert find_final('FINAL(```json\n{"a": 1}\n```)') == FinalAnswer(text='{"a": 1}')
