"""Provider prompt caching (issue 14, item 4): marks, usage, cost and budget, against the test
server's model of the providers' caches (FakeLLMServer(prompt_cache=True)) through the real SDKs."""

from __future__ import annotations

import pytest

from recursive_llm import RLM
from recursive_llm.models import pricing
from recursive_llm.models.anthropic_client import AnthropicClient
from recursive_llm.testing import FakeLLMServer

ITERATIONS = 10


def root(messages, model) -> str:
    turns = sum(1 for m in messages if m["role"] == "assistant")
    return "FINAL(done)" if turns >= ITERATIONS - 1 else f"```repl\nprint('line {turns} ' * 200)\n```"


def expected_cost(model: str, usage, cached: int, written: int) -> float:
    (price_in, price_out), (read, write) = pricing.price_for(model), pricing.cache_prices(model)
    uncached = usage.prompt_tokens - cached - written
    return (uncached * price_in + cached * read + written * write + usage.completion_tokens * price_out) / 1e6


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_ten_iteration_runs_cached_tokens_and_cost_match_what_the_server_says(provider, tmp_path):
    with FakeLLMServer(responder=root, prompt_cache=True) as server:
        if provider == "openai":
            model = "gpt-5-mini"
            rlm = RLM(model=model, base_url=server.base_url, api_key="sk-test-0123456789", max_cost_usd=1.0)
        else:
            model = "claude-sonnet-4-5"
            rlm = RLM(model=AnthropicClient(model, base_url=server.base_url.removesuffix("/v1"),
                                            api_key="sk-test-0123456789"), max_cost_usd=1.0)
        result = rlm.completion("Print ten things, then say done.", "some input text " * 100)
        cache = server.prompt_cache
    total = result.usage.total
    assert result.answer == "done" and result.iterations == ITERATIONS
    assert total.cached_prompt_tokens == cache.cached_tokens > 0.5 * total.prompt_tokens
    assert total.cache_write_tokens == cache.written_tokens
    assert (cache.written_tokens > 0) == (provider == "anthropic")
    assert result.cost_usd == pytest.approx(expected_cost(model, total, cache.cached_tokens, cache.written_tokens))
    assert result.cost_usd < expected_cost(model, total, 0, 0) * 0.5  # well under the uncached price
    assert result.usage.to_dict()["total"]["cached_prompt_tokens"] == cache.cached_tokens
    assert total.cost_usd == pytest.approx(result.cost_usd)  # result.usage prices the cache like the budget


def test_sub_calls_are_not_marked_and_the_budget_reserves_at_the_cache_write_price():
    with FakeLLMServer(prompt_cache=True) as server:
        client = AnthropicClient("claude-sonnet-4-5", base_url=server.base_url.removesuffix("/v1"), api_key="sk-x-0123")
        import asyncio

        async def once():
            try:
                return await client.complete([{"role": "user", "content": "a one-off question"}])
            finally:
                await client.aclose()

        asyncio.run(once())
        body = server.requests[0]
    assert body["messages"] == [{"role": "user", "content": "a one-off question"}] and "system" not in body
    price_in, _ = pricing.price_for("claude-sonnet-4-5")
    assert pricing.worst_case_price("claude-sonnet-4-5")[0] == pytest.approx(price_in * 1.25)
    assert pricing.worst_case_price("gpt-5-mini") == pricing.price_for("gpt-5-mini")


def test_cache_prices_of_the_table_and_of_prices_json(tmp_path, monkeypatch):
    pricing.reset_for_tests()
    monkeypatch.setenv("RLM_HOME", str(tmp_path))
    (tmp_path / "prices.json").write_text('{"house-model": [1.0, 2.0, 0.1, 1.5]}')
    try:
        assert pricing.cache_prices("house-model") == (0.1, 1.5)
        assert pricing.cost_usd("house-model", 1_000_000, 0, cached_tokens=500_000) == pytest.approx(0.55)
        assert pricing.cache_prices("gpt-5-mini") == (0.025, 0.25)
        assert pricing.cache_prices("claude-sonnet-4-5") == pytest.approx((0.3, 3.75))
        assert pricing.cache_prices("unknown") is None
    finally:
        pricing.reset_for_tests()
