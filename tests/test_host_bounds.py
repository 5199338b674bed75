"""What one cell can make the host hold, start or write (issue 15), and that an error is never an answer.

Each test runs a whole run through the real worker process with scripted models.
"""

from __future__ import annotations


import pytest

from recursive_llm import RLM
from recursive_llm.config import HOST_BOUNDS
from recursive_llm.errors import ModelError
from recursive_llm.record.events import read_trajectory
from recursive_llm.testing import ScriptedModel


def repl(code: str) -> str:
    return f"```repl\n{code}\n```"


def bounds(monkeypatch, **values) -> None:
    smaller = HOST_BOUNDS._replace(**values)
    for module in ("subcalls", "answers", "scheduler"):  # the host's modules that apply them
        monkeypatch.setattr(f"recursive_llm.engine.{module}.HOST_BOUNDS", smaller)


def outputs(root: ScriptedModel) -> str:
    return "\n".join(call[-1]["content"] for call in root.calls[1:])


def test_a_huge_batch_is_refused_in_the_repl_before_it_reaches_the_host():
    sub = ScriptedModel(default="x")
    root = ScriptedModel([repl(f"r = llm_query_batched(['x'] * {HOST_BOUNDS.max_batch_prompts + 1})"), "FINAL(done)"])
    result = RLM(model=root, sub_model=sub).completion("q", "some text")
    assert result.answer == "done"
    assert "over the limit of 10,000" in outputs(root) and "smaller batches" in outputs(root)
    assert sub.calls == []


def test_a_batch_sent_around_the_repl_is_refused_by_the_host_with_one_short_reply():
    code = ("call_host = llm_query_batched.__self__._call_host\n"
            "replies = call_host('llm', ['x'] * 300_000, None, None)\n"
            "print(len(replies), replies[0])")
    sub = ScriptedModel(default="x")
    root = ScriptedModel([repl(code), "FINAL(done)"])
    result = RLM(model=root, sub_model=sub).completion("q", "some text")
    assert result.answer == "done"
    assert "1 {'ok': False, 'error': 'a batch of 300,000 prompts is over the limit" in outputs(root)
    assert sub.calls == []


def test_an_oversized_prompt_is_refused_and_a_run_cannot_pile_up_prompt_text(monkeypatch):
    bounds(monkeypatch, max_prompt_chars=1_000, max_call_chars=5_000, max_pending_chars=5_000)
    code = ("try:\n    llm_query('x' * 2_000)\nexcept Exception as e:\n    print('single:', e)\n"
            "print('batch:', llm_query_batched(['y' * 900] * 8)[0])\n"
            "print('fine:', llm_query_batched(['z' * 900] * 3))")
    sub = ScriptedModel(default="ok")
    root = ScriptedModel([repl(code), "FINAL(done)"])
    result = RLM(model=root, sub_model=sub).completion("q", "some text")
    assert result.answer == "done"
    seen = outputs(root)
    assert "single: sub-call refused: its prompt has 2,000 characters, over the limit of 1,000" in seen
    assert "batch: Error: sub-call refused: its prompts hold 7,200 characters, over the limit of 5,000" in seen
    assert "fine: ['ok', 'ok', 'ok']" in seen
    assert len(sub.calls) == 3


def test_an_oversized_answer_is_not_accepted_and_the_model_is_told(monkeypatch):
    bounds(monkeypatch, max_answer_chars=1_000)
    root = ScriptedModel([repl("big = 'a' * 5_000"), "FINAL_VAR(big)", "FINAL(short)"])
    result = RLM(model=root).completion("q", "some text")
    assert result.answer == "short" and result.stopped_reason == "final"
    assert "it has 5,000 characters, over the limit of 1,000" in outputs(root)


def test_huge_prompts_are_recorded_in_part_but_sent_whole(monkeypatch):
    bounds(monkeypatch, max_recorded_chars=1_000)
    sub = ScriptedModel(default="ok")
    root = ScriptedModel([repl("print(llm_query('p' * 50_000))"), "FINAL(done)"])
    result = RLM(model=root, sub_model=sub).completion("q", "some text")
    assert len(sub.calls[0][-1]["content"]) == 50_000
    calls = [e for e in read_trajectory(result.trajectory_path) if e["type"] == "llm_call" and e["purpose"] == "sub"]
    recorded = calls[0]["messages"][-1]["content"]
    assert len(recorded) < 1_100 and "50,000 characters in all" in recorded


def test_child_runs_start_at_most_max_concurrency_workers_at_once():
    active, peak = set(), [0]

    def watch(event: dict) -> None:
        if event.get("depth") == 1 and event["type"] == "run_start":
            active.add(event["run_id"])
            peak[0] = max(peak[0], len(active))
        elif event.get("depth") == 1 and event["type"] == "run_end":
            active.discard(event["run_id"])

    def reply(messages) -> str:  # children and the root share the root model; each is told by its query
        child = "task " in messages[1]["content"]
        script = ([repl("import time; time.sleep(0.05)"), "FINAL(child)"] if child else
                  [repl("r = rlm_query_batched([f'task {i}' for i in range(9)])\nprint(r)"), "FINAL(done)"])
        return script[len(messages) > 2]

    root = ScriptedModel(default=reply)
    result = RLM(model=root, max_depth=2, max_concurrency=3, on_event=watch).completion("q", "some text")
    assert result.answer == "done"
    assert "['child', 'child'" in outputs(root)
    assert 1 < peak[0] <= 3


# -- an error is never an answer ------------------------------------------------------------------
def failing_sub() -> ScriptedModel:
    def fail(messages):
        raise ModelError("openai gpt-5-mini: HTTP 429: too many requests in flight", retryable=True,
                         status_code=429)
    return ScriptedModel(default=fail, name="sub")


def test_a_failed_sub_calls_error_text_is_never_the_answer():
    root = ScriptedModel([repl("notes = llm_query_batched(['find it'])\nans = notes[0]\nprint(ans)"),
                          "FINAL_VAR(ans)", "FINAL_VAR(notes)"],
                         default="FINAL_VAR(ans)")
    result = RLM(model=root, sub_model=failing_sub(), max_retries=1, max_iterations=4,
                 fallback_after=None).completion("q", "some text")
    assert result.answer is None or "429" not in result.answer
    assert result.stopped_reason != "final"
    assert "not accepted: it is the error text of a failed sub-call" in outputs(root)
    assert "not accepted" in (result.error or "")


def test_an_answer_that_only_mentions_a_failure_is_accepted():
    report = ("Nine of the ten sections were read. The totals are 41, 7 and 12; the revenue grew by "
              "twelve percent and the main risk is the supplier contract. One section failed: ")
    root = ScriptedModel([repl("notes = llm_query_batched(['find it'])\nreport = " + repr(report) + " + notes[0]"),
                          "FINAL_VAR(report)"])
    result = RLM(model=root, sub_model=failing_sub(), max_retries=0).completion("q", "some text")
    assert result.stopped_reason == "final" and result.answer.startswith("Nine of the ten")


@pytest.mark.parametrize("how", ["FINAL_VAR(big)", "```repl\nFINAL(big)\n```", "```repl\nFINAL_VAR('big')\n```",
                                 "```repl\nanswer['content'] = big; answer['ready'] = True\n```"])
def test_a_huge_answer_never_reaches_the_host(how):
    big = HOST_BOUNDS.max_answer_chars + 10
    root = ScriptedModel([repl(f"big = 'a' * {big}"), how, "FINAL(short)"])
    result = RLM(model=root).completion("q", "some text")
    assert result.answer == "short"
    assert f"{big:,} characters, over the limit of {HOST_BOUNDS.max_answer_chars:,}" in outputs(root)


def test_oversized_prompts_are_refused_in_the_repl_before_anything_is_sent():
    limit = HOST_BOUNDS.max_prompt_chars
    code = (f"for call in (lambda: llm_query('x' * {limit + 1}), lambda: rlm_query('x' * {limit + 1}),\n"
            f"             lambda: llm_query_batched(['y' * 1_000_000] * 65)):\n"
            "    try:\n        call()\n    except ValueError as e:\n        print('refused:', e)")
    sub = ScriptedModel(default="x")
    root = ScriptedModel([repl(code), "FINAL(done)"])
    result = RLM(model=root, sub_model=sub).completion("q", "some text")
    seen = outputs(root)
    assert seen.count(f"refused: the prompt has {limit + 1:,} characters, over the limit of {limit:,}") == 2
    assert "refused: the prompts hold 65,000,000 characters, over the limit of 64,000,000 per call" in seen
    assert sub.calls == [] and result.answer == "done"


def test_replies_too_large_for_one_frame_come_back_as_errors(monkeypatch):
    monkeypatch.setattr("recursive_llm.environments.protocol.MAX_FRAME_BYTES", 200_000)
    sub = ScriptedModel(default="r" * 50_000)
    root = ScriptedModel([repl("r = llm_query_batched(['a'] * 8)\nprint(r[0][:60])"), "FINAL(done)"])
    result = RLM(model=root, sub_model=sub).completion("q", "some text")
    assert result.answer == "done"
    assert "Error: the replies to this call are too large to send" in outputs(root)


def test_a_context_sent_with_every_prompt_is_counted_with_every_prompt(monkeypatch):
    """`rlm_query(prompt, context=...)` at max depth sends the sub-model both in one message; a call
    around the REPL with many prompts and one context is counted as it would be sent."""
    bounds(monkeypatch, max_call_chars=5_000)
    code = ("call_host = llm_query.__self__._call_host\n"
            "print('many:', call_host('llm', ['q'] * 8, None, 'c' * 1_000)[0])\n"
            "print('few:', call_host('llm', ['q'] * 3, None, 'c' * 1_000))\n"
            "print('one:', rlm_query('what is it?', context=['a', 'b']))")
    sub = ScriptedModel(default="ok")
    root = ScriptedModel([repl(code), "FINAL(done)"])
    result = RLM(model=root, sub_model=sub).completion("q", "some text")
    seen = outputs(root)
    assert result.answer == "done"
    assert ("many: {'ok': False, 'error': 'sub-call refused: its prompts hold 8,192 characters, over the limit of "
            "5,000 per call (each of the 8 prompts carries the 1,000-character context)") in seen
    assert "few: [{'ok': True, 'text': 'ok'}, {'ok': True, 'text': 'ok'}, {'ok': True, 'text': 'ok'}]" in seen
    assert "one: ok" in seen
    sent = [call[-1]["content"] for call in sub.calls]
    assert len(sent) == 4 and sent[0] == "q\n\n<context>\n" + "c" * 1_000 + "\n</context>"
    assert sent[3] == "what is it?\n\n<context>\na\n\nb\n</context>"  # a list context as text


def test_a_message_over_max_message_bytes_is_refused_in_the_worker_and_output_is_cut_to_fit():
    """The host refuses a worker frame over `max_message_bytes` as a broken worker's: the worker
    itself refuses to send a call that large (8 prompts of 4M three-byte characters: 96 MB, within
    `max_call_chars`), and cuts a cell's output to fit rather than dying."""
    limit = HOST_BOUNDS.max_message_bytes
    code = ("try:\n    llm_query_batched(['\\u20ac' * 4_000_000] * 8)\nexcept ValueError as e:\n    print('refused:', e)\n"
            "print(llm_query('still there?'))\n"
            f"print('y' * {limit + 10_000_000})")
    sub = ScriptedModel(default="yes")
    root = ScriptedModel([repl(code), "FINAL(done)"])
    result = RLM(model=root, sub_model=sub, max_output_chars=2_000_000, cell_timeout_s=60).completion("q", "text")
    seen = outputs(root)
    assert result.answer == "done" and "WorkerCrash" not in seen
    assert f"refused: this call is too large to send to the host (message of 96,000,115 bytes exceeds the {limit:,}" in seen
    assert "yes" in seen and [call[-1]["content"] for call in sub.calls] == ["still there?"]
    cells = [e for e in read_trajectory(result.trajectory_path) if e["type"] == "cell"]
    assert f"more characters were cut: one message to the host holds at most {limit:,} bytes]" in cells[0]["stdout"]


def test_a_sub_call_over_the_sub_models_window_is_refused_before_any_request():
    """Issue 31 (4): a prompt longer than the sub-model's window is not sent (the provider would
    refuse it, and some charge for it); model code gets the window and the prompt's size in its slot,
    and the batch's other prompts are answered."""
    from recursive_llm.models.openai_client import OpenAIClient
    from recursive_llm.testing import FakeLLMServer
    from scripted_root import is_root, root_then_sub

    code = ("r = llm_query_batched(['first', 'word ' * 3_000, 'third'])\nprint('batch:', r)\n"
            "try:\n    llm_query('word ' * 3_000)\nexcept Exception as e:\n    print('single:', e)\n"
            "print('fits:', llm_query('word ' * 900)[:9])")
    with FakeLLMServer(responder=root_then_sub([repl(code), "FINAL(done)"])) as server:
        sub = OpenAIClient("small-sub", base_url=server.base_url, api_key="k", context_window=1_000)
        result = RLM(model="m", sub_model=sub, base_url=server.base_url, api_key="k").completion("q", "text")
        sent = [r["messages"][-1]["content"] for r in server.requests if not is_root(r["messages"])]
    assert result.answer == "done"
    assert sorted(sent) == ["first", "third", "word " * 900]  # the long prompts never left the host (sent concurrently)
    output = next(r["messages"][-1]["content"] for r in server.requests
                  if is_root(r["messages"]) and "batch:" in r["messages"][-1]["content"])
    assert "batch: ['sub:first', 'Error: sub-call refused before sending: its prompt is about 3,001 tokens " in output
    assert "(15,000 characters; counted offline with the o200k_base tokenizer), over the 1,000-token window " \
           "of small-sub; split the text into chunks of at most about 3,748 characters" in output
    assert "'sub:third']" in output and "single: sub-call refused before sending" in output
    assert "fits: sub:word" in output  # 4,500 characters, 900 tokens: under the window, sent


def test_an_unknown_window_sends_the_prompt_as_before():
    import asyncio

    from recursive_llm.engine.subcalls import over_window, sub_window

    assert sub_window(ScriptedModel(default="x", name="no-such-model")) is None
    assert sub_window(ScriptedModel(default="x", name="gpt-4o-mini")) == 128_000  # models/windows.py
    assert asyncio.run(over_window("é" * 400, 1_000, "m")) is None  # 800 bytes: fits without counting
    assert asyncio.run(over_window("word " * 1_001, 1_000, "m")) is not None
