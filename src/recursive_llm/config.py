"""Validating configuration values: the one place where a number from a user, a CLI flag or a
request body is checked before it becomes a limit.

A limit that is NaN or infinite passes every `value <= 0` test and defeats every `min(value,
ceiling)` (NaN compares false with everything), so each limit goes through `check_number`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


def check_number(name: str, value: Any, *, integer: bool = False, minimum: float = 0.0,
                 inclusive: bool = False, allow_none: bool = True) -> Any:
    """`value` if it is a finite number above `minimum` (at or above it with `inclusive`), else
    ValueError naming the setting. Booleans are not numbers here; `integer` also refuses 2.5."""
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"{name} is required (got None)")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if integer and not float(value).is_integer():
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if value < minimum or (value == minimum and not inclusive):
        bound = f"at least {minimum:g}" if inclusive else f"more than {minimum:g}"
        raise ValueError(f"{name} must be {bound}" + (" (or None for no limit)" if allow_none else "")
                         + f", got {value!r}")
    return int(value) if integer else value


@dataclass(frozen=True)
class HostBounds:
    """What one run's model code can make the host hold, start or write. Past a bound, model code
    gets an error that names it; the host never grows with what a cell asks for.

    - `max_batch_prompts`: prompts in one `llm_query_batched` / `rlm_query_batched` call.
    - `max_prompt_chars`: one sub-call's prompt (about 1M tokens: more than any model's window).
    - `max_call_chars`: all prompts of one call together (a whole 10M-token input fits).
    - `max_pending_chars`: prompt text of the run's sub-calls being served at once, across every
      thread of model code.
    - `max_answer_chars`: a final answer (`FINAL`, `FINAL_VAR`, the `answer` dict).
    - `max_recorded_chars`: one message or response as written to the trajectory and the store
      (the rest is replaced by a note with its length; the cache key still covers all of it).
    """

    max_batch_prompts: int = 10_000
    max_prompt_chars: int = 4_000_000
    max_call_chars: int = 64_000_000
    max_pending_chars: int = 128_000_000
    max_answer_chars: int = 1_000_000
    max_recorded_chars: int = 200_000


HOST_BOUNDS = HostBounds()
