import json

import pytest

from recursive_llm.errors import ConfigError
from recursive_llm.models import pricing


@pytest.fixture(autouse=True)
def fresh_prices():
    pricing.reset_for_tests()
    yield
    pricing.reset_for_tests()


def test_longest_prefix_and_provider_prefixes():
    assert pricing.price_for("gpt-5") == (1.25, 10.0)
    assert pricing.price_for("gpt-5-mini-2025-08-07") == (0.25, 2.0)
    assert pricing.price_for("openai/gpt-4o-mini") == (0.15, 0.60)
    assert pricing.price_for("litellm/anthropic/claude-sonnet-4-5") == (3.0, 15.0)
    assert pricing.price_for("unknown-model") is None
    assert pricing.cost_usd("unknown-model", 1000, 1000) == 0.0
    assert pricing.cost_usd("gpt-5", 1_000_000, 100_000) == pytest.approx(2.25)


def test_register_price():
    pricing.register_price("my-model", 1.0, 2.0)
    assert pricing.cost_usd("my-model-v2", 500_000, 500_000) == pytest.approx(1.5)


def test_prices_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RLM_HOME", str(tmp_path))
    (tmp_path / "prices.json").write_text(json.dumps({"house-model": [0.5, 1.5]}))
    assert pricing.price_for("house-model") == (0.5, 1.5)


def test_malformed_prices_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RLM_HOME", str(tmp_path))
    (tmp_path / "prices.json").write_text('{"x": "cheap"}')
    with pytest.raises(ConfigError, match="prices.json"):
        pricing.price_for("x")


def test_known_context_windows_by_longest_prefix():
    from recursive_llm.models.windows import context_window_for

    assert context_window_for("gpt-5-mini") == 400_000 and context_window_for("openai/gpt-4o-mini") == 128_000
    assert context_window_for("litellm/anthropic/claude-sonnet-4-5") == 200_000
    assert context_window_for("my-self-hosted-model") is None
