"""OpenAI and every OpenAI-compatible server (vLLM, Ollama, llama.cpp, LM Studio, OpenRouter)."""

from __future__ import annotations

from typing import Any

from ..errors import ModelError
from .base import Completion, Message
from .errors import from_openai_error


class OpenAIClient:
    """Chat completions through the official `openai` client, one attempt per call."""

    remote = True  # calls a provider: the scheduler adapts its concurrency per endpoint

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 context_window: int | None = None, name: str | None = None, provider: str = "openai") -> None:
        self.model = model
        self.name = name or model
        self.base_url = base_url
        self.context_window = context_window
        self.provider = provider
        self._api_key = api_key
        self._client: Any = None

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIClient(model={self.model!r}, base_url={self.base_url!r})"

    def _sdk(self):
        if self._client is None:
            import openai

            from .tls import shared_ssl_context

            self._client = openai.AsyncOpenAI(api_key=self._api_key or "not-needed", base_url=self.base_url,
                                              max_retries=0, http_client=openai.DefaultAsyncHttpxClient(
                                                  verify=shared_ssl_context()))
        return self._client

    async def complete(self, messages: list[Message], *, max_tokens: int | None = None,
                       temperature: float | None = None, timeout: float | None = None) -> Completion:
        options: dict[str, Any] = {}
        if max_tokens is not None:
            # api.openai.com's newer models only accept max_completion_tokens; other servers expect max_tokens.
            options["max_tokens" if self.base_url else "max_completion_tokens"] = max_tokens
        if temperature is not None:
            options["temperature"] = temperature
        if timeout is not None:
            options["timeout"] = timeout
        try:
            response = await self._sdk().chat.completions.create(model=self.model, messages=messages, **options)
        except Exception as error:
            raise from_openai_error(error, self.provider, self.model, "OPENAI_API_KEY") from None
        choices = getattr(response, "choices", None)
        if not choices or not isinstance(getattr(choices[0].message, "content", None), str):
            raise ModelError(f"{self.provider} {self.model}: malformed response (no message text)", retryable=True)
        usage = getattr(response, "usage", None)
        message = choices[0].message
        reasoning = next((value for value in (getattr(message, "reasoning_content", None),
                                              getattr(message, "reasoning", None)) if isinstance(value, str) and value),
                         None)
        details = getattr(usage, "prompt_tokens_details", None)
        return Completion(text=message.content, model=self.name,
                          prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                          completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
                          finish_reason=choices[0].finish_reason, reasoning=reasoning,
                          cached_prompt_tokens=getattr(details, "cached_tokens", 0) or 0)

    async def aclose(self) -> None:
        """Close the HTTP client; the next call opens a new one (possibly on another event loop)."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()
