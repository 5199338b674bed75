"""`ScriptedModel`: a deterministic model for tests, yours and ours.

Give it the replies the model should make, in order. It records every conversation it was sent, so
a test can assert on prompts. A reply may be a string, a callable `(messages) -> str`, or an
exception instance to raise.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Union

from ..errors import ModelError
from ..models.base import Completion, Message

Reply = Union[str, Callable[[list[Message]], str], BaseException]


def estimate_tokens(text: str) -> int:
    """About four characters per token: good enough for scripted usage figures."""
    return len(text) // 4 + 1


class ScriptedModel:
    """A `ModelClient` that answers from a script.

    `replies` are consumed in order; when they run out, `default` answers (a string or a callable);
    with no default, the call fails with a non-retryable `ModelError` so the test sees why.
    """

    def __init__(self, replies: Sequence[Reply] = (), *, name: str = "scripted",
                 default: str | Callable[[list[Message]], str] | None = None, delay: float = 0.0,
                 context_window: int | None = None) -> None:
        self.name = name
        self.context_window = context_window
        self._replies = list(replies)
        self._default = default
        self._delay = delay
        self._lock = threading.Lock()
        self.calls: list[list[Message]] = []
        self.max_tokens_seen: list[int | None] = []
        self.in_flight = 0
        self.max_in_flight = 0

    @property
    def remaining(self) -> int:
        return len(self._replies)

    def _next_reply(self, messages: list[Message]) -> str:
        with self._lock:
            reply: Reply | None = self._replies.pop(0) if self._replies else self._default
        if reply is None:
            raise ModelError(f"ScriptedModel {self.name!r} ran out of replies after {len(self.calls)} calls")
        if isinstance(reply, BaseException):
            raise reply
        return reply(messages) if callable(reply) else reply

    async def complete(self, messages: list[Message], *, max_tokens: int | None = None,
                       temperature: float | None = None, timeout: float | None = None) -> Completion:
        with self._lock:
            self.calls.append([dict(m) for m in messages])
            self.max_tokens_seen.append(max_tokens)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self._delay:
                await asyncio.sleep(self._delay)
            text = self._next_reply(messages)
        finally:
            with self._lock:
                self.in_flight -= 1
        prompt = sum(estimate_tokens(str(m.get("content", ""))) for m in messages)
        completion = estimate_tokens(text)
        if max_tokens is not None:
            completion = min(completion, max_tokens)
        return Completion(text=text, model=self.name, prompt_tokens=prompt,
                          completion_tokens=completion, finish_reason="stop")

    async def aclose(self) -> None:
        return None
