"""Prices in USD per million input / output tokens, matched by the longest model-name prefix.

Input tokens read from the provider's prompt cache, and (Anthropic) written to it, have prices of
their own (`cache_prices`): OpenAI bills cached input at a tenth of the input price for the GPT-5
family (a quarter to a half for older models) and charges nothing extra to write; Anthropic bills
cache reads at 0.1x and cache writes at 1.25x the input price. A model with no cache prices pays
the input price for every input token.

Extend in code with `register_price`, or with `prices.json` in the RLM home directory:
`{"my-model": [0.5, 1.5]}` or `[input, output, cached_input, cache_write]`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable

from ..errors import ConfigError

_BUILT_IN: dict[str, tuple[float, float]] = {
    "gpt-5": (1.25, 10.0),
    "gpt-5-mini": (0.25, 2.0),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-4.1": (2.0, 8.0),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4o": (2.50, 10.0),
    "gpt-4o-mini": (0.15, 0.60),
    "o3": (2.0, 8.0),
    "o4-mini": (1.10, 4.40),
    "claude-opus-4-5": (5.0, 25.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-sonnet-4-5": (3.0, 15.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-3-5-haiku": (0.80, 4.0),
    "local": (0.0, 0.0),
}
_PROVIDER_PREFIXES = ("openai/", "anthropic/", "ollama/")
# USD per million cached input tokens (reads); writes cost the input price unless listed below.
_BUILT_IN_CACHED: dict[str, float] = {
    "gpt-5": 0.125, "gpt-5-mini": 0.025, "gpt-5-nano": 0.005, "gpt-4.1": 0.50, "gpt-4.1-mini": 0.10,
    "gpt-4.1-nano": 0.025, "gpt-4o": 1.25, "gpt-4o-mini": 0.075, "o3": 0.50, "o4-mini": 0.275,
}
_ANTHROPIC_READ, _ANTHROPIC_WRITE = 0.1, 1.25  # of the input price (5-minute cache)
_cache_prices: dict[str, tuple[float, float]] = {}  # registered: model -> (read, write) per million

_prices: dict[str, tuple[float, float]] = dict(_BUILT_IN)
_resolved: dict[str, tuple[float, float] | None] = {}  # model name as asked -> its price (or None)
_user_file_loaded = False
_lock = threading.Lock()


def _load_user_prices() -> None:
    global _user_file_loaded
    with _lock:
        if _user_file_loaded:
            return
        _user_file_loaded = True
        from ..paths import rlm_home

        path = rlm_home() / "prices.json"
        if not path.exists():
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            prices = {str(model): [float(value) for value in pair] for model, pair in data.items()}
            if any(len(values) not in (2, 3, 4) for values in prices.values()):
                raise ValueError("each price has 2 to 4 numbers")
        except (ValueError, TypeError, IndexError, AttributeError) as error:
            raise ConfigError(f"{path} is not a valid price file ({error}); expected "
                              f'{{"model-name": [input_usd_per_1M, output_usd_per_1M]}}, optionally with '
                              f'cached-input and cache-write prices as third and fourth numbers') from None
        for model, values in prices.items():
            _prices[model] = (values[0], values[1])
            if len(values) > 2:
                _cache_prices[model] = (values[2], values[3] if len(values) > 3 else values[0])
        _resolved.clear()


def register_price(model: str, input_per_million: float, output_per_million: float, *,
                   cached_input_per_million: float | None = None, cache_write_per_million: float | None = None) -> None:
    """Set the price of `model` (and of every model name that starts with it)."""
    _load_user_prices()
    _prices[model] = (float(input_per_million), float(output_per_million))
    if cached_input_per_million is not None or cache_write_per_million is not None:
        _cache_prices[model] = (float(cached_input_per_million if cached_input_per_million is not None
                                      else input_per_million),
                                float(cache_write_per_million if cache_write_per_million is not None
                                      else input_per_million))
    _resolved.clear()


def bare_name(model: str) -> str:
    if model.startswith("litellm/"):
        model = model.split("/", 2)[-1]
    for prefix in _PROVIDER_PREFIXES:
        if model.startswith(prefix):
            return model[len(prefix):]
    return model


def longest_match(model: str, names: Iterable[str]) -> str | None:
    """The longest of `names` that is `model` (without its provider prefix) or a prefix of it up to
    a `-` or `@`: "gpt-5" matches "openai/gpt-5-2025-08-07" but not "gpt-50"."""
    name = bare_name(model)
    matches = [key for key in names if name == key or name.startswith(key + "-") or name.startswith(key + "@")]
    return max(matches, key=len) if matches else None


def price_for(model: str) -> tuple[float, float] | None:
    if model in _resolved:  # every call asks, twice: answer from memory after the first time
        return _resolved[model]
    _load_user_prices()
    key = longest_match(model, _prices)
    price = _prices[key] if key is not None else None
    _resolved[model] = price
    return price


def cache_prices(model: str) -> tuple[float, float] | None:
    """(cached input read, cache write) in USD per million tokens, or None for an unpriced model."""
    price = price_for(model)
    if price is None:
        return None
    key = longest_match(model, _cache_prices)
    if key is not None:
        return _cache_prices[key]
    if "claude" in bare_name(model):
        return price[0] * _ANTHROPIC_READ, price[0] * _ANTHROPIC_WRITE
    key = longest_match(model, _BUILT_IN_CACHED)
    return (_BUILT_IN_CACHED[key] if key is not None else price[0]), price[0]


def worst_case_price(model: str) -> tuple[float, float] | None:
    """The price a budget reserves at: an input token costs at most the dearer of the input and
    the cache-write price (Anthropic bills cache writes at 1.25x)."""
    price = price_for(model)
    if price is None:
        return None
    caching = cache_prices(model)
    return (max(price[0], caching[1]) if caching else price[0]), price[1]


def cost_usd(model: str, prompt_tokens: int, completion_tokens: int, *, cached_tokens: int = 0,
             cache_write_tokens: int = 0) -> float:
    """The cost of one call. `prompt_tokens` counts every input token, `cached_tokens` and
    `cache_write_tokens` among them."""
    price = price_for(model)
    if price is None:
        return 0.0
    cost = (prompt_tokens - cached_tokens - cache_write_tokens) * price[0] + completion_tokens * price[1]
    if cached_tokens or cache_write_tokens:
        read, write = cache_prices(model) or (price[0], price[0])
        cost += cached_tokens * read + cache_write_tokens * write
    return cost / 1_000_000


def reset_for_tests() -> None:
    """Forget registered prices and reload prices.json on next use."""
    global _user_file_loaded
    with _lock:
        _prices.clear()
        _prices.update(_BUILT_IN)
        _cache_prices.clear()
        _resolved.clear()
        _user_file_loaded = False
