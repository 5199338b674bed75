"""The weak-model fallback: a fixed map-reduce program for root models that cannot write RLM code.

Small local models often reply with neither runnable code nor an answer. Instead of looping to the
iteration limit, the run executes this program in the same REPL, so it uses the same sub-call path,
budgets and trajectory as model-written code: chunk the input, ask the sub-model about each chunk
in parallel (each may say NOT FOUND), then combine what they found. A root model known to be weak
(the embedded model) goes to it at once, with no root turn (`fallback_after=0`); a run in which no
chunk answered ends with `stopped_reason="not_found"`.
"""

from __future__ import annotations

from typing import Any

from ..config import LoopPolicy

DEFAULT_WINDOW_TOKENS = 32_000
_CHARS_PER_TOKEN = 3  # conservative, so a chunk plus the question fits the sub-model's window
_PROMPT_OVERHEAD_TOKENS = 900


def auto_fallback_after(value: int | None | str, root_client: Any) -> int | None:
    """`fallback_after="auto"`: 0 (the program at once, no root turn) for a root model known not to
    write RLM code (a client with `writes_code = False`: the embedded SmolLM2-135M), else the
    loop policy's default (a few idle turns first). Any other value is the user's."""
    if value != "auto":
        return value  # type: ignore[return-value]
    return 0 if is_weak(root_client) else LoopPolicy.fallback_after


STRICT_CHUNK_CHARS = 1_500  # a weak sub-model reads a short text far better than a long one


def chunk_chars_for(window_tokens: int | None, weak: bool = False) -> int:
    """The largest chunk (in characters) that leaves room for instructions and an answer; for a
    weak sub-model, a short one."""
    window = window_tokens or DEFAULT_WINDOW_TOKENS
    fits = max(2_000, min(400_000, (window - _PROMPT_OVERHEAD_TOKENS) * _CHARS_PER_TOKEN))
    return min(fits, STRICT_CHUNK_CHARS) if weak else fits


# Models known not to write RLM code wherever they are served (llama.cpp, Ollama, ...): SmolLM2,
# the embedded model's family (`ollama/smollm2:135m`, a llama.cpp server's `smollm2` alias).
KNOWN_WEAK_NAMES = ("smollm2", "smollm-")


def is_weak(client: Any) -> bool:
    """A model known not to write RLM code (and to invent answers): a client that says so
    (`writes_code = False`: the embedded model), or one of `KNOWN_WEAK_NAMES`; a client that says
    `writes_code = True` (a GGUF of the user's own) is taken at its word."""
    says = getattr(client, "writes_code", None)
    if says is not None:
        return says is False
    name = str(getattr(client, "name", "")).lower().rsplit("/", 1)[-1]
    return any(weak in name for weak in KNOWN_WEAK_NAMES)


def map_reduce_code(query: str, chunk_chars: int, strict: bool = False) -> str:
    """The cell the run executes; `_map_reduce` is defined in the REPL (environments/inside/map_reduce.py).
    It returns None when no chunk answers: the cell then ends without a final answer and without an
    error, which the run reports as `not_found`."""
    return (f"_fallback_answer = _map_reduce({query!r}, chunk_chars={chunk_chars}, strict={strict!r})\n"
            f"if _fallback_answer is not None:\n    FINAL_VAR('_fallback_answer')")
