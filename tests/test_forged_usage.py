"""A provider's usage numbers cannot lift the budgets (issue 25): the fake OpenAI-compatible server
reports forged usage (negative counts, NaN, strings, 10M cached tokens of a small prompt) to real
runs through the real client; every count is clamped to what is possible for what was sent and
received (`usage.checked_usage`, in `Scheduler._attempt`) before it counts."""

from __future__ import annotations

import math

import pytest

from recursive_llm import RLM
from recursive_llm.testing import FakeLLMServer
from recursive_llm.usage import MAX_BYTES_PER_TOKEN, checked_usage
from scripted_root import root_then_sub

# The root never answers: each turn asks a sub-model about the next slice of the input, so the run
# goes on until a budget stops it.
NEVER_DONE = ["```repl\nprint(llm_query(context[:4000]))\n```"]
INPUT = "The ledger shows a transfer of 300 units on a Tuesday in spring. " * 400
KEY = "sk-test-0123456789"


def _run(usage: dict | None, **limits) -> tuple[int, object]:
    """(the model requests made, the result) of a run stopped by a budget."""
    with FakeLLMServer(responder=root_then_sub(NEVER_DONE, lambda prompt: "noted"), usage=usage) as server:
        rlm = RLM(model="gpt-5-mini", base_url=server.base_url, api_key=KEY, max_iterations=200,
                  max_llm_calls=400, **limits)
        result = rlm.completion("What happened on Tuesday?", INPUT)
        return server.request_count, result


@pytest.mark.parametrize("forged", [{"prompt_tokens": -2_000_000, "completion_tokens": -2_000_000},
                                    {"prompt_tokens": 0, "completion_tokens": 0},
                                    {"prompt_tokens": "many", "completion_tokens": None},
                                    {"prompt_tokens": 1.5e300, "completion_tokens": -1e300}],
                         ids=["negative", "zero", "not-numbers", "huge-floats"])
def test_forged_token_counts_do_not_lift_a_token_budget(forged):
    honest_calls, honest = _run(None, max_tokens=50_000)
    forged_calls, result = _run(forged, max_tokens=50_000)
    assert honest.stopped_reason == result.stopped_reason == "budget", (honest.stopped_reason, result.stopped_reason)
    total = result.usage.total
    assert total.prompt_tokens > 0 and total.completion_tokens >= 0 and result.cost_usd >= 0
    assert total.total_tokens <= 50_000 + 20_000  # the last call may settle over what was left, not millions
    # The floor (half the offline count of what was sent) is within a factor of two of an honest
    # report: at most about twice the honest run's calls (before the fix: 42 against 5).
    assert forged_calls <= 2 * honest_calls + 2, (forged_calls, honest_calls)


def test_forged_cached_tokens_make_no_negative_cost_and_do_not_lift_a_cost_budget():
    honest_calls, honest = _run(None, max_cost_usd=0.05)
    forged_calls, result = _run({"prompt_tokens_details": {"cached_tokens": 10_000_000}}, max_cost_usd=0.05)
    total = result.usage.total
    assert result.stopped_reason == "budget" and result.cost_usd > 0
    assert total.cached_prompt_tokens <= total.prompt_tokens
    assert result.cost_usd <= 0.05 * 1.5
    # All input priced as cached is the most the forgery can still do: a few times the honest calls.
    assert forged_calls <= 8 * honest_calls, (forged_calls, honest_calls)


def test_checked_usage_clamps_each_field_to_what_is_possible():
    import asyncio

    from recursive_llm.models.base import Completion

    messages = [{"role": "user", "content": "word " * 1000}]  # 5,000 bytes, about 1,000 tokens
    def check(**fields):
        return asyncio.run(checked_usage(Completion(text="a reply of some words", model="m", **fields), messages, 50))

    sane = check(prompt_tokens=1003, completion_tokens=5, cached_prompt_tokens=512)
    assert (sane.prompt_tokens, sane.completion_tokens, sane.cached_prompt_tokens) == (1003, 5, 512)
    forged = check(prompt_tokens=-5, completion_tokens=10**12, cached_prompt_tokens=10**9, cache_write_tokens=-3)
    assert 5000 // MAX_BYTES_PER_TOKEN <= forged.prompt_tokens <= 5000 + 8 + 4096
    assert forged.prompt_tokens >= 400  # half the offline count of "word " * 1000 (1,000 tokens), not 40
    assert forged.completion_tokens == 50  # the output cap the call was sent with
    assert forged.cached_prompt_tokens == forged.prompt_tokens and forged.cache_write_tokens == 0
    odd = check(prompt_tokens=float("nan"), completion_tokens=True, cached_prompt_tokens=float("inf"))
    assert all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 and math.isfinite(v) for v in
               (odd.prompt_tokens, odd.completion_tokens, odd.cached_prompt_tokens))
    written = check(prompt_tokens=1000, cached_prompt_tokens=700, cache_write_tokens=900)
    assert written.cached_prompt_tokens + written.cache_write_tokens == 1000
