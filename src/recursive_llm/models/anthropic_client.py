"""Anthropic's Messages API through the official `anthropic` client, one attempt per call."""

from __future__ import annotations

from typing import Any

from ..errors import ModelError
from .base import Completion, Message
from .errors import from_sdk_error
from ..usage import reported_count
from .loop_clients import PerLoop

DEFAULT_MAX_TOKENS = 4096


def to_anthropic(messages: list[Message]) -> tuple[str | None, list[dict]]:
    """System messages become `system=`; consecutive same-role messages are merged."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system") or None
    merged: list[dict] = []
    for message in messages:
        if message["role"] == "system":
            continue
        if merged and merged[-1]["role"] == message["role"]:
            merged[-1]["content"] += "\n\n" + message["content"]
        else:
            merged.append({"role": message["role"], "content": message["content"]})
    return system, merged


_EPHEMERAL = {"type": "ephemeral"}


def with_cache_marks(system: str | None, turns: list[dict]) -> tuple[Any, list[dict]]:
    """Mark the stable prefix of a root conversation for Anthropic's prompt cache: the system
    prompt, and the conversation up to its last message (which the next turn starts with).

    Only conversations with a system prompt (the root loop's) are marked: a one-off sub-call
    would pay the cache write (1.25x) and never read it back.
    """
    if not system:
        return system, turns
    marked = [dict(turn) for turn in turns]
    if marked:
        last = marked[-1]
        last["content"] = [{"type": "text", "text": last["content"], "cache_control": _EPHEMERAL}]
    return [{"type": "text", "text": system, "cache_control": _EPHEMERAL}], marked


class AnthropicClient:
    remote = True  # calls a provider: the scheduler adapts its concurrency per endpoint
    sends_headers = True  # takes the scheduler's per-call X-RLM-* headers (call_ids.py)

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 context_window: int | None = 200_000, name: str | None = None, prompt_cache: bool = True) -> None:
        self.model = model
        self.prompt_cache = prompt_cache  # mark root conversations for Anthropic's prompt cache
        self.name = name or model
        self.base_url = base_url
        self.context_window = context_window
        self._api_key = api_key
        self._http_clients = PerLoop()  # one SDK client per event loop (models/loop_clients.py)

    def __repr__(self) -> str:
        return f"AnthropicClient(model={self.model!r}, base_url={self.base_url!r})"

    def _sdk(self):
        def make():
            import anthropic

            from .tls import shared_ssl_context

            return anthropic.AsyncAnthropic(api_key=self._api_key, base_url=self.base_url, max_retries=0,
                                            http_client=anthropic.DefaultAsyncHttpxClient(verify=shared_ssl_context()))
        return self._http_clients.get(("anthropic", self.base_url, self._api_key), make)

    async def complete(self, messages: list[Message], *, max_tokens: int | None = None, temperature: float | None = None,
                       timeout: float | None = None, headers: dict[str, str] | None = None) -> Completion:
        system, turns = to_anthropic(messages)
        if self.prompt_cache:
            system, turns = with_cache_marks(system, turns)
        options: dict[str, Any] = {"max_tokens": max_tokens or DEFAULT_MAX_TOKENS}
        if system:
            options["system"] = system
        if temperature is not None:
            options["temperature"] = temperature
        if timeout is not None:
            options["timeout"] = timeout
        if headers:
            options["extra_headers"] = headers
        try:
            response = await self._sdk().messages.create(model=self.model, messages=turns, **options)
        except Exception as error:
            import anthropic

            raise from_sdk_error(error, anthropic, "anthropic", self.model, "ANTHROPIC_API_KEY") from None
        blocks = getattr(response, "content", None)
        if not isinstance(blocks, list):
            raise ModelError(f"anthropic {self.model}: malformed response (no content)", retryable=True)
        text = "".join(getattr(block, "text", "") for block in blocks if getattr(block, "type", "") == "text")
        thinking = "\n\n".join(getattr(block, "thinking", "") for block in blocks
                                if getattr(block, "type", "") == "thinking" and getattr(block, "thinking", ""))
        usage = getattr(response, "usage", None)
        # Whole numbers before they are added (a forged string or NaN would not add up); the
        # scheduler clamps the sum to what is possible (usage.checked_usage).
        read = reported_count(getattr(usage, "cache_read_input_tokens", 0))
        written = reported_count(getattr(usage, "cache_creation_input_tokens", 0))
        # Anthropic's input_tokens leaves out the cached ones; ours counts every input token.
        return Completion(text=text, model=self.name,
                          prompt_tokens=reported_count(getattr(usage, "input_tokens", 0)) + read + written,
                          completion_tokens=getattr(usage, "output_tokens", 0) or 0,
                          finish_reason=getattr(response, "stop_reason", None), reasoning=thinking or None,
                          cached_prompt_tokens=read, cache_write_tokens=written)

    async def aclose(self) -> None:
        await self._http_clients.release(lambda client: client.close())
