"""The REPL namespace itself (shared by the worker and the in-process environment)."""

from recursive_llm.context.document import Document
from recursive_llm.environments.inside.runtime import REPL


def echo_host(kind, prompts, model, context):
    return [{"ok": True, "text": f"{kind}:{model}:{p}"} if p != "fail" else {"ok": False, "error": "boom"}
            for p in prompts]


def make(context="abc"):
    return REPL(context, echo_host)


def test_state_persists_and_last_expression_is_shown():
    repl = make()
    assert repl.execute("x = len(context)")["stdout"] == ""
    assert repl.execute("x * 2")["stdout"] == "6\n"


def test_batched_keeps_order_and_failure_slots():
    repl = make()
    out = repl.execute("r = llm_query_batched(['a', 'fail', 'c'])\nprint(r)")
    assert out["stdout"] == "['llm:None:a', 'Error: boom', 'llm:None:c']\n"


def test_single_failure_raises_in_code():
    out = make().execute("llm_query('fail')")
    assert out["error"].startswith("SubCallError") and "boom" in out["stderr"]


def test_final_forms():
    repl = make()
    assert repl.execute("FINAL('done')")["final"] == "done"
    assert repl.execute("y = [1, 2]\nFINAL_VAR('y')")["final"] == "[1, 2]"
    assert repl.execute("answer['content'] = 'z'; answer['ready'] = True")["final"] == "z"
    assert repl.execute("print('FINAL(not me)')")["final"] is None


def test_final_var_missing_names_defined_variables():
    out = make().execute("a = 1\nFINAL_VAR('b')")
    assert "no variable named 'b'" in out["stderr"] and "a" in out["stderr"]


def test_show_vars_and_contract_restored():
    repl = make()
    repl.execute("import re\nn = 3\nllm_query = None")
    assert repl.show_vars() == {"context": "str", "n": "int"}
    out = repl.execute("llm_query('q')")
    assert out["stdout"] == "'llm:None:q'\n"


def test_errors_and_exit_are_reported():
    repl = make()
    assert repl.execute("1/0")["error"] == "ZeroDivisionError: division by zero"
    assert repl.execute("raise SystemExit(3)")["error"].startswith("SystemExit")
    assert repl.execute("def f(:")["error"].startswith("SyntaxError")


def test_output_is_capped():
    repl = REPL("", echo_host, max_captured_chars=100)
    out = repl.execute("print('x' * 1000)")
    assert len(out["stdout"]) < 200 and "discarded" in out["stdout"]


def test_documents_keep_paths():
    repl = make([Document("hello", "a/b.txt")])
    assert repl.execute("context[0].path, context[0].upper()")["stdout"] == "('a/b.txt', 'HELLO')\n"


def test_map_reduce_fallback_chunks_and_combines():
    calls = []

    def host(kind, prompts, model, context):
        calls.append(prompts)
        return [{"ok": True, "text": f"note {i}" if len(prompts) > 1 else "combined"} for i in range(len(prompts))]

    repl = REPL("line\n" * 1000, host)
    out = repl.execute("_map_reduce('q?', chunk_chars=1000)")
    assert len(calls[0]) == 5 and all("q?" in p for p in calls[0])
    assert "Using only these notes" in calls[-1][0] and all(f"note {i}" in calls[-1][0] for i in range(5))
    assert out["stdout"].endswith("'combined'\n")
    calls.clear()  # the same answer from every chunk is that answer: nothing to combine
    same = REPL("line\n" * 1000, lambda kind, prompts, model, context: [{"ok": True, "text": "note"}] * len(prompts))
    assert same.execute("_map_reduce('q?', chunk_chars=1000)")["stdout"].endswith("'note'\n")
