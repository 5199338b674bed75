"""Prices in USD per million input / output tokens, matched by the longest model-name prefix.

Extend in code with `register_price`, or with `prices.json` in the RLM home directory:
`{"my-model": [0.5, 1.5]}`.
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
            prices = {str(model): (float(pair[0]), float(pair[1])) for model, pair in data.items()}
        except (ValueError, TypeError, IndexError, AttributeError) as error:
            raise ConfigError(f"{path} is not a valid price file ({error}); expected "
                              f'{{"model-name": [input_usd_per_1M, output_usd_per_1M]}}') from None
        _prices.update(prices)
        _resolved.clear()


def register_price(model: str, input_per_million: float, output_per_million: float) -> None:
    """Set the price of `model` (and of every model name that starts with it)."""
    _load_user_prices()
    _prices[model] = (float(input_per_million), float(output_per_million))
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


def cost_usd(model: str, prompt_tokens: int, completion_tokens: int) -> float:
    price = price_for(model)
    if price is None:
        return 0.0
    return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1_000_000


def reset_for_tests() -> None:
    """Forget registered prices and reload prices.json on next use."""
    global _user_file_loaded
    with _lock:
        _prices.clear()
        _prices.update(_BUILT_IN)
        _resolved.clear()
        _user_file_loaded = False
