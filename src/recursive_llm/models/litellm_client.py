"""The long tail of providers through LiteLLM (an optional extra: `litellm`)."""

from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigError, ModelError
from ..extras import install_hint
from .base import Completion, Message
from .errors import from_openai_error


class LiteLLMClient:
    remote = True  # calls a provider: the scheduler adapts its concurrency per endpoint

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 context_window: int | None = None) -> None:
        # Without this, LiteLLM fetches its price list from the network at import time.
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        try:
            import litellm  # noqa: F401  (fail at construction, not at the first call)
        except ImportError:
            raise ConfigError(f"model 'litellm/{model}' needs LiteLLM: {install_hint('litellm')}") from None
        self.model = model
        self.name = f"litellm/{model}"
        self.base_url = base_url
        self.context_window = context_window
        self._api_key = api_key

    async def complete(self, messages: list[Message], *, max_tokens: int | None = None,
                       temperature: float | None = None, timeout: float | None = None) -> Completion:
        import litellm

        options: dict[str, Any] = {"num_retries": 0}
        for key, value in (("max_tokens", max_tokens), ("temperature", temperature), ("timeout", timeout),
                           ("api_base", self.base_url), ("api_key", self._api_key)):
            if value is not None:
                options[key] = value
        try:
            response = await litellm.acompletion(model=self.model, messages=messages, **options)
        except Exception as error:
            raise from_openai_error(error, "litellm", self.model, "the provider's API key variable") from None
        try:
            choice = response.choices[0]
            text = choice.message.content
            usage = getattr(response, "usage", None)
        except (AttributeError, IndexError):
            raise ModelError(f"litellm {self.model}: malformed response", retryable=True) from None
        if not isinstance(text, str):
            raise ModelError(f"litellm {self.model}: malformed response (no message text)", retryable=True)
        details = getattr(usage, "prompt_tokens_details", None)
        return Completion(text=text, model=self.name, prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                          completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
                          finish_reason=getattr(choice, "finish_reason", None),
                          cached_prompt_tokens=getattr(details, "cached_tokens", 0) or 0)

    async def aclose(self) -> None:
        return None
