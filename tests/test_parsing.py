from recursive_llm.caps import truncate_output
from recursive_llm.engine.parsing import FinalAnswer, find_code_blocks, find_final, parse_reply


def test_repl_and_python_blocks_in_order():
    reply = "Let me look.\n```repl\nx = 1\n```\ntext\n```python\nprint(x)\n```\n```bash\nls\n```"
    assert find_code_blocks(reply) == ["x = 1", "print(x)"]


def test_unclosed_last_block_counts():
    assert find_code_blocks("```repl\nprint(1)\n") == ["print(1)"]


def test_empty_blocks_are_ignored():
    assert find_code_blocks("```repl\n\n```") == []


def test_final_text():
    assert find_final("Done.\nFINAL(42 apples)") == FinalAnswer(text="42 apples")


def test_final_quoted_and_nested_parentheses():
    assert find_final('FINAL("The answer (roughly) is 7")').text == "The answer (roughly) is 7"
    assert find_final("FINAL(f(x) = g(y))").text == "f(x) = g(y)"


def test_final_multiline():
    assert find_final("FINAL(line one\nline two)").text == "line one\nline two"


def test_final_var():
    assert find_final("FINAL_VAR(result)") == FinalAnswer(variable="result")
    assert find_final("FINAL_VAR('result')") == FinalAnswer(variable="result")


def test_final_inside_code_block_is_not_an_answer():
    reply = "```repl\nprint('FINAL(wrong)')\n```"
    assert find_final(reply) is None
    assert parse_reply(reply).code_blocks == ["print('FINAL(wrong)')"]


def test_final_must_start_a_line():
    assert find_final("I will call FINAL(x) later") is None


def test_truncate_output_keeps_head_and_tail_with_note():
    text = "a" * 1000 + "b" * 1000
    cut = truncate_output(text, 300)
    assert cut.startswith("a" * 200) and cut.endswith("b" * 100)
    assert "output truncated" in cut and "1,700" in cut
    assert truncate_output("short", 300) == "short"
