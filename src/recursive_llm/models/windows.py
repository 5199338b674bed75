"""Context windows (tokens) of well-known models, matched like prices (`pricing.longest_match`).

Used to keep the root conversation inside the root model's window (see `RLM(compact_at=...)`), and to
refuse a sub-call whose prompt cannot fit before it is sent (`subcalls.over_window`).
A client that knows its own window (the embedded model, Anthropic) says so itself; for any other
model, pass `RLM(root_context_window=...)`.
"""

from __future__ import annotations

from .pricing import longest_match

KNOWN_WINDOWS: dict[str, int] = {
    "gpt-5": 400_000,
    "gpt-4.1": 1_047_576,
    "gpt-4o": 128_000,
    "o3": 200_000,
    "o4-mini": 200_000,
    "claude": 200_000,
}


def context_window_for(model: str) -> int | None:
    key = longest_match(model, KNOWN_WINDOWS)
    return KNOWN_WINDOWS[key] if key is not None else None
