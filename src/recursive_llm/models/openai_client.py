"""OpenAI and every OpenAI-compatible server (vLLM, Ollama, llama.cpp, LM Studio, OpenRouter)."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from ..errors import ModelError
from .base import Completion, Message
from .errors import from_openai_error


TRANSPORTS = ("httpx", "sdk")
DEFAULT_BASE_URL = "https://api.openai.com/v1"
_prefetched = False
# (id(event loop), transport, base_url, api key) -> [HTTP client, clients using it, the loop]: see _shared_client
_SHARED_CLIENTS: dict[tuple, list] = {}


def http_library():
    """The HTTP client library of the `httpx` transport: `httpx2` (the fork the `openai` SDK itself
    runs on, installed with it) when it is installed, else `httpx` (the same API). On this machine
    plain `httpx` 0.29 took 4.4x as long as `httpx2` for 300 calls 64 wide."""
    try:
        import httpx2 as library
    except ImportError:
        import httpx as library
    return library


def _prefetch(transport: str) -> None:
    """Import the transport (the `openai` SDK: 0.6 to 1 s, httpx2: 0.2 s) and build the TLS context in a thread,
    once per process, so that the first call overlaps it with loading the input and starting the worker."""
    global _prefetched
    if _prefetched:
        return
    _prefetched = True

    def load() -> None:
        if transport == "sdk":
            import openai  # noqa: F401
        else:
            http_library()

        from .tls import shared_ssl_context

        shared_ssl_context()

    threading.Thread(target=load, name="rlm-httpx-prefetch", daemon=True).start()


class OpenAIClient:
    """Chat completions over the OpenAI-compatible HTTP API, one attempt per call.

    Two transports with the same semantics (one attempt, errors mapped by `models/errors.py` to the
    same `ModelError`s, the same messages; tests/test_openai_transport.py): `httpx` (the default)
    posts the JSON itself with `httpx2`, the HTTP library the SDK runs on (plain `httpx` without
    it), and never imports the SDK: 40 MB less memory and 0.4 to 0.7 s less to the first call, and
    as fast at a wide fan-out (benchmarks/speed_limits.py fanout); `sdk` (`transport="sdk"` or
    RLM_OPENAI_TRANSPORT=sdk) goes through the official `openai` client's low-level `post`.
    """

    remote = True  # calls a provider: the scheduler adapts its concurrency per endpoint

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 context_window: int | None = None, name: str | None = None, provider: str = "openai",
                 transport: str | None = None) -> None:
        self.model = model
        self.name = name or model
        self.base_url = base_url
        self.context_window = context_window
        self.provider = provider
        self._api_key = api_key
        self._client: Any = None
        self._shared_key: tuple | None = None
        if transport is None:
            transport = os.environ.get("RLM_OPENAI_TRANSPORT", "httpx")
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}: use 'httpx' (the default: a plain HTTP client, "
                             f"no SDK import) or 'sdk' (the official openai client)")
        self.transport = transport
        _prefetch(transport)

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIClient(model={self.model!r}, base_url={self.base_url!r})"

    def _shared_client(self, make):
        """The HTTP client, shared by this event loop's clients of the same transport, endpoint and key
        while any of them is open: runs side by side (`rlm serve`) reuse its connections instead of
        each opening its own (and paying the client's construction, ~2.5 ms, per run)."""
        if self._client is None:
            import asyncio

            loop = asyncio.get_running_loop()
            key = (id(loop), self.transport, self.base_url, self._api_key)
            entry = _SHARED_CLIENTS.get(key)
            if entry is None or entry[2] is not loop:
                entry = _SHARED_CLIENTS[key] = [make(), 0, loop]
            entry[1] += 1
            self._client, self._shared_key = entry[0], key
        return self._client

    def _sdk(self):
        def make():
            import openai

            from .tls import shared_ssl_context

            return openai.AsyncOpenAI(api_key=self._api_key or "not-needed", base_url=self.base_url, max_retries=0,
                                      http_client=openai.DefaultAsyncHttpxClient(verify=shared_ssl_context()))
        return self._shared_client(make)

    def _http(self):
        def make():
            from .tls import shared_ssl_context

            httpx = http_library()
            headers = {"Authorization": f"Bearer {self._api_key or 'not-needed'}",
                       "Content-Type": "application/json", "Accept": "application/json",
                       "User-Agent": "recursive-llm"}
            for variable, header in (("OPENAI_ORG_ID", "OpenAI-Organization"), ("OPENAI_PROJECT_ID", "OpenAI-Project")):
                if os.environ.get(variable):
                    headers[header] = os.environ[variable]
            # The official client's defaults: 600 s (5 s to connect), up to 1,000 connections.
            return httpx.AsyncClient(
                base_url=(self.base_url or DEFAULT_BASE_URL).rstrip("/") + "/", headers=headers,
                verify=shared_ssl_context(), timeout=httpx.Timeout(600.0, connect=5.0),
                limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100), follow_redirects=True)
        return self._shared_client(make)

    async def _post(self, body: dict, timeout: float | None) -> dict:
        """One POST of chat/completions; every failure as the `ModelError` the SDK path gives."""
        from .errors import from_status

        httpx = http_library()

        label = f"{self.provider} {self.model}"
        try:
            response = await self._http().post(
                "chat/completions", content=json.dumps(body).encode(),
                **({"timeout": httpx.Timeout(timeout, connect=min(timeout, 5.0))} if timeout is not None else {}))
        except httpx.TimeoutException:
            raise ModelError(f"{label}: the request timed out", retryable=True) from None
        except httpx.TransportError as error:
            raise ModelError(f"{label}: connection failed ({error or type(error).__name__})", retryable=True) from None
        if response.status_code >= 400:
            detail = f"Error code: {response.status_code}"  # the SDK's message for a status error
            try:
                data = json.loads(response.text.strip())
                error = data.get("error", data) if isinstance(data, dict) else None
                message = error.get("message") if isinstance(error, dict) else None
                if isinstance(message, str) and message:
                    detail += f" - {message}"
            except ValueError:
                pass
            raise from_status(self.provider, self.model, response.status_code, detail, response.headers,
                              "OPENAI_API_KEY")
        return self._decode(response.content)

    def _decode(self, content: bytes) -> dict:
        try:
            data = json.loads(content)
        except ValueError as error:
            raise ModelError(f"{self.provider} {self.model}: malformed response ({error})", retryable=True) from None
        if not isinstance(data, dict):
            raise ModelError(f"{self.provider} {self.model}: malformed response (not a JSON object)", retryable=True)
        return data

    def _parse(self, data: dict) -> Completion:
        choices = data.get("choices")
        first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
        message = first.get("message") if isinstance(first.get("message"), dict) else {}
        if not isinstance(message.get("content"), str):
            raise ModelError(f"{self.provider} {self.model}: malformed response (no message text)", retryable=True)
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        details = usage.get("prompt_tokens_details") if isinstance(usage.get("prompt_tokens_details"), dict) else {}
        reasoning = next((value for value in (message.get("reasoning_content"), message.get("reasoning"))
                          if isinstance(value, str) and value), None)

        def count(value: Any) -> int:
            return value if isinstance(value, int) and not isinstance(value, bool) else 0
        finish = first.get("finish_reason")
        return Completion(text=message["content"], model=self.name, prompt_tokens=count(usage.get("prompt_tokens")),
                          completion_tokens=count(usage.get("completion_tokens")),
                          finish_reason=finish if isinstance(finish, str) else None, reasoning=reasoning,
                          cached_prompt_tokens=count(details.get("cached_tokens")))

    async def complete(self, messages: list[Message], *, max_tokens: int | None = None,
                       temperature: float | None = None, timeout: float | None = None) -> Completion:
        if self.transport == "httpx":
            body: dict[str, Any] = {"model": self.model, "messages": messages}
            if max_tokens is not None:
                body["max_tokens" if self.base_url else "max_completion_tokens"] = max_tokens
            if temperature is not None:
                body["temperature"] = temperature
            return self._parse(await self._post(body, timeout))
        body = {"model": self.model, "messages": messages}
        if max_tokens is not None:
            # api.openai.com's newer models only accept max_completion_tokens; other servers expect max_tokens.
            body["max_tokens" if self.base_url else "max_completion_tokens"] = max_tokens
        if temperature is not None:
            body["temperature"] = temperature
        # The SDK's own HTTP stack, auth, headers, status errors and timeouts, but its low-level post:
        # `chat.completions.create` first walks the request through its TypedDict transform and then
        # builds a pydantic model of the reply, together about 60% of the CPU of a call (profile of
        # `rlm serve`); our messages are plain JSON already and the reply is read like the httpx path's.
        try:
            content = await self._sdk().post("/chat/completions", body=body, cast_to=bytes,
                                             options={"timeout": timeout} if timeout is not None else {})
        except Exception as error:
            raise from_openai_error(error, self.provider, self.model, "OPENAI_API_KEY") from None
        return self._parse(self._decode(content))

    async def aclose(self) -> None:
        """Close the HTTP client; the next call opens a new one (possibly on another event loop)."""
        client, self._client = self._client, None
        if client is None:
            return
        entry = _SHARED_CLIENTS.get(self._shared_key)
        if entry is not None and entry[0] is client:
            entry[1] -= 1
            if entry[1] > 0:  # other runs on this loop still use it
                return
            del _SHARED_CLIENTS[self._shared_key]
        await (client.aclose() if self.transport == "httpx" else client.close())
