"""The interface every model client implements.

A client turns chat messages into a `Completion`. It makes exactly one attempt per call: retries,
budgets and concurrency live in `recursive_llm.engine.scheduler`, never in a client. A client raises
`ModelError(retryable=..., retry_after=...)` for provider failures so the scheduler can decide.

A client that sends HTTP requests may declare `sends_headers = True`: its `complete` then also takes
`headers=` (the call's X-RLM-* ids, call_ids.py) and adds them to the request. Other clients are
called without it. Likewise `records_logprobs = True`: `complete` also takes `record_logprobs=`
("logprobs" or "token-ids", config.CallPolicy) when the user asked for the reply's tokens, and
fills `Completion.token_ids` / `logprobs` from what the provider returned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

Message = dict  # {"role": "system"|"user"|"assistant", "content": str}
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def has_lone_surrogate(text: str) -> bool:
    """A JSON escape such as `\\ud800` decodes to a lone surrogate, which UTF-8 cannot carry: the
    store, the trajectory and the next request would fail on it."""
    return not text.isascii() and _LONE_SURROGATE.search(text) is not None


def unicode_text(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD."""
    return _LONE_SURROGATE.sub("\ufffd", text) if has_lone_surrogate(text) else text


@dataclass
class Completion:
    text: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    # What the provider returned as reasoning apart from the text (OpenAI-compatible servers'
    # `reasoning_content` / `reasoning`, Anthropic's thinking blocks): recorded, never parsed.
    reasoning: str | None = None
    # Of `prompt_tokens` (every input token): read from the provider's prompt cache, and written to
    # it (Anthropic's cache_creation_input_tokens).
    cached_prompt_tokens: int = 0
    cache_write_tokens: int = 0
    # The reply's token ids and their log-probabilities, when the provider returned them (a client
    # fills them only if it was asked to): stored with the call, exported for training.
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None

    def __post_init__(self) -> None:  # every provider's reply enters here: text the rest can write
        if isinstance(self.text, str):
            self.text = unicode_text(self.text)
        if isinstance(self.reasoning, str):
            self.reasoning = unicode_text(self.reasoning)


@runtime_checkable
class ModelClient(Protocol):
    """One model behind one provider. `name` is the model string shown in usage and trajectories."""

    name: str
    # Largest prompt the model accepts, in tokens, if known (used to size chunks in the fallback).
    context_window: int | None

    async def complete(self, messages: list[Message], *, max_tokens: int | None = None,
                       temperature: float | None = None, timeout: float | None = None) -> Completion:
        ...

    async def aclose(self) -> None:
        ...
