"""A reply's tokens from an OpenAI-compatible server, when the user asked for them
(config.CallPolicy.record_logprobs): what to add to the request, and how to read the reply.

- "logprobs": `logprobs: true`, the standard field: `choices[0].logprobs.content` is a list of
  `{token, logprob, bytes, ...}`; the log-probabilities are kept, and the ids when the tokens are ids.
- "token-ids": also vLLM's `return_tokens_as_token_ids: true` (an extra body field, refused by
  servers that reject unknown fields, api.openai.com among them): each `token` is "token_id:<int>".

The reply is a provider's, so it is checked: one malformed entry (a token that is not an id where
ids were asked, a logprob that is not a finite number) or more entries than the call could have
generated drops both lists (None), never a partial list misaligned with the text; the call
itself goes on.
"""

from __future__ import annotations

import math
from typing import Any

MODES = ("logprobs", "token-ids")
MAX_ENTRIES = 1_000_000  # a call with no output cap; with one, at most that many
_PREFIX = "token_id:"


def request_fields(mode: str | None) -> dict[str, Any]:
    """The body fields that ask for the reply's tokens in `mode` (none when it is None)."""
    if not mode:
        return {}
    if mode not in MODES:
        raise ValueError(f"unknown record_logprobs {mode!r}: use 'logprobs' or 'token-ids'")
    return {"logprobs": True, **({"return_tokens_as_token_ids": True} if mode == "token-ids" else {})}


def _token_id(token: Any) -> int | None:
    if not isinstance(token, str) or not token.startswith(_PREFIX) or len(token) > 40:
        return None
    digits = token[len(_PREFIX):]
    return int(digits) if digits.isascii() and digits.isdigit() else None


def _logprob(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def parse(choice: dict, mode: str | None, max_tokens: int | None) -> tuple[list[int] | None, list[float] | None]:
    """(token_ids, logprobs) from a chat completion's first choice; (None, None) when they are
    absent or malformed. Ids are kept when every token is "token_id:<int>"."""
    if not mode:
        return None, None
    block = choice.get("logprobs")
    content = block.get("content") if isinstance(block, dict) else None
    limit = min(MAX_ENTRIES, max_tokens) if max_tokens else MAX_ENTRIES
    if not isinstance(content, list) or not content or len(content) > limit:
        return None, None
    ids: list[int | None] = []
    logprobs: list[float] = []
    for entry in content:
        value = _logprob(entry.get("logprob")) if isinstance(entry, dict) else None
        if value is None:
            return None, None
        logprobs.append(value)
        ids.append(_token_id(entry.get("token")))
    if any(token is None for token in ids):
        return (None, None) if mode == "token-ids" else (None, logprobs)
    return ids, logprobs  # type: ignore[return-value]
