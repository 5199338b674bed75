"""The weak-model fallback: a fixed map-reduce program for root models that cannot write RLM code.

Small local models often reply with neither runnable code nor an answer. Instead of looping to the
iteration limit, the run executes this program in the same REPL, so it uses the same sub-call path,
budgets and trajectory as model-written code: chunk the input, ask the sub-model about each chunk
in parallel, then combine the notes.
"""

from __future__ import annotations

DEFAULT_WINDOW_TOKENS = 32_000
_CHARS_PER_TOKEN = 3  # conservative, so a chunk plus the question fits the sub-model's window
_PROMPT_OVERHEAD_TOKENS = 900


def chunk_chars_for(window_tokens: int | None) -> int:
    """The largest chunk (in characters) that leaves room for instructions and an answer."""
    window = window_tokens or DEFAULT_WINDOW_TOKENS
    return max(2_000, min(400_000, (window - _PROMPT_OVERHEAD_TOKENS) * _CHARS_PER_TOKEN))


def map_reduce_code(query: str, chunk_chars: int) -> str:
    """The cell the run executes; `_map_reduce` is defined in the REPL (see runtime.map_reduce)."""
    return f"_fallback_answer = _map_reduce({query!r}, chunk_chars={chunk_chars})\nFINAL_VAR('_fallback_answer')"
