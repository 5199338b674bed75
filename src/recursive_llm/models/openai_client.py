"""OpenAI and every OpenAI-compatible server (vLLM, Ollama, llama.cpp, LM Studio, OpenRouter)."""

from __future__ import annotations

import functools
import json
import os
import threading
from typing import Any

from ..errors import ModelError
from .base import Completion, Message
from .errors import connection_failed, from_openai_error, timed_out
from .loop_clients import PerLoop


TRANSPORTS = ("lean", "aiohttp", "httpx", "sdk")
DEFAULT_BASE_URL = "https://api.openai.com/v1"
_prefetched = False


def http_library():
    """The HTTP client library of the `httpx` transport: `httpx2` (the fork the `openai` SDK itself
    runs on, installed with it) when it is installed, else `httpx` (the same API). On this machine
    plain `httpx` 0.29 took 4.4x as long as `httpx2` for 300 calls 64 wide."""
    try:
        import httpx2 as library
    except ImportError:
        import httpx as library
    return library


def default_transport() -> str:
    """RLM_OPENAI_TRANSPORT, else `lean` (models/lean_http.py on `httptools`, both dependencies, with
    aiohttp for proxies and redirects: the least CPU per call, benchmarks/speed_limits.py fanout),
    else `aiohttp` (its C HTTP parser spends a third of httpx2's CPU per call), else `httpx`."""
    import importlib.util

    chosen = os.environ.get("RLM_OPENAI_TRANSPORT")
    if chosen:
        return chosen
    if importlib.util.find_spec("aiohttp") is None:
        return "httpx"
    return "lean" if importlib.util.find_spec("httptools") is not None else "aiohttp"


def _timeouts(timeout: float | None) -> tuple[float, float]:
    """(to connect, between reads) for a call's `timeout`, in every plain transport (lean, aiohttp,
    httpx): at most 5 s to connect; the official client's 600 s when there is none."""
    limit = 600.0 if timeout is None else timeout
    return min(limit, 5.0), limit


def _prefetch(transport: str) -> None:
    """Import the transport (the `openai` SDK: 0.6 to 1 s, aiohttp: 0.1 s, httpx2: 0.05 s) and build the
    TLS context in a thread, once per process, so that the first call overlaps it with loading the
    input and starting the worker.

    The thread is not a daemon: a process that ends early (`rlm ask` with no input) waits for it.
    A daemon thread still inside an extension module's import or OpenSSL's certificate loading while
    the interpreter finalizes crashed the process (SIGSEGV or SIGBUS, 38 of 100 runs of that `rlm ask`)."""
    global _prefetched
    if _prefetched:
        return
    _prefetched = True

    def load() -> None:
        if transport == "sdk":
            import openai  # noqa: F401
        elif transport == "lean":
            import httptools  # noqa: F401
        elif transport == "aiohttp":
            import aiohttp  # noqa: F401
        else:
            http_library()

        from .tls import shared_ssl_context

        shared_ssl_context()

    threading.Thread(target=load, name="rlm-http-prefetch").start()


class OpenAIClient:
    """Chat completions over the OpenAI-compatible HTTP API, one attempt per call.

    Four transports with the same semantics (one attempt, errors mapped by `models/errors.py` to
    the same `ModelError`s, the same messages; tests/test_openai_transport.py). `lean` (the
    default), `aiohttp` and `httpx` post the JSON themselves and never import the SDK (30 to 40 MB
    less memory, 0.4 to 0.7 s less to the first call). `lean` is our own keep-alive pool
    (models/lean_http.py, httptools's parser) and spends the least CPU per call at a wide fan-out; a
    proxied endpoint and a redirect go through aiohttp. `aiohttp` has a C HTTP parser; `httpx` runs
    on `httpx2`, the HTTP library the SDK runs on (plain `httpx` without it), as fast as the SDK
    (benchmarks/speed_limits.py fanout). `sdk` goes through the official `openai` client's
    low-level `post`. Choose with `transport=` or RLM_OPENAI_TRANSPORT.
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
        self._http_clients = PerLoop()  # the transport's HTTP client per event loop (models/loop_clients.py)
        self._aiohttp_clients = PerLoop()  # aiohttp's, for the `aiohttp` transport and `lean`'s proxies and redirects
        if transport is None:
            transport = default_transport()
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}: use 'lean' (the default), 'aiohttp' or 'httpx' (plain "
                             f"HTTP clients, no SDK import) or 'sdk' (the official openai client)")
        self.transport = transport
        _prefetch(transport)

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIClient(model={self.model!r}, base_url={self.base_url!r})"

    def _shared_client(self, make, kind: str | None = None):
        """The running loop's HTTP client of `kind` (this transport's by default) for this endpoint
        and key (loop_clients.py)."""
        holder = self._aiohttp_clients if kind == "aiohttp" else self._http_clients
        return holder.get((kind or self.transport, self.base_url, self._api_key), make)

    def _sdk(self):
        def make():
            import openai

            from .tls import shared_ssl_context

            return openai.AsyncOpenAI(api_key=self._api_key or "not-needed", base_url=self.base_url, max_retries=0,
                                      http_client=openai.DefaultAsyncHttpxClient(verify=shared_ssl_context()))
        return self._shared_client(make)

    def _headers(self) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self._api_key or 'not-needed'}",
                   "Content-Type": "application/json", "Accept": "application/json", "User-Agent": "recursive-llm"}
        for variable, header in (("OPENAI_ORG_ID", "OpenAI-Organization"), ("OPENAI_PROJECT_ID", "OpenAI-Project")):
            if os.environ.get(variable):
                headers[header] = os.environ[variable]
        return headers

    def _http(self):
        def make():
            from .tls import shared_ssl_context

            httpx = http_library()
            # The official client's defaults: up to 1,000 connections; timeouts are per call (_post_httpx).
            return httpx.AsyncClient(
                base_url=self._endpoint + "/", headers=self._headers(), verify=shared_ssl_context(),
                limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100), follow_redirects=True)
        return self._shared_client(make)

    def _aiohttp(self):
        def make():
            import aiohttp

            from .tls import shared_ssl_context

            # As the other transports: up to 1,000 connections, redirects followed, the proxy from the
            # environment (self._proxy); timeouts are per call (_post_aiohttp).
            return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000, ssl=shared_ssl_context()),
                                         headers=self._headers())
        return self._shared_client(make, "aiohttp")

    def _lean(self):
        def make():
            from .lean_http import LeanPool
            from .tls import shared_ssl_context

            return LeanPool(self._chat_url, self._headers(), ssl_context=shared_ssl_context)
        return self._shared_client(make)

    @functools.cached_property
    def _proxy(self) -> str | None:
        """The endpoint's proxy from HTTPS_PROXY / HTTP_PROXY / ALL_PROXY and NO_PROXY, read once per
        client (aiohttp's `trust_env` reads the environment and ~/.netrc on every request: 70% of
        the transport's CPU per call)."""
        import urllib.request
        from urllib.parse import urlsplit

        parts = urlsplit(self._chat_url)
        if not parts.hostname or urllib.request.proxy_bypass(parts.hostname):
            return None
        proxies = urllib.request.getproxies()
        return proxies.get(parts.scheme) or proxies.get("all")

    @functools.cached_property
    def _endpoint(self) -> str:
        """The API root without its trailing slash (api.openai.com's when no base URL is given)."""
        return (self.base_url or DEFAULT_BASE_URL).rstrip("/")

    @functools.cached_property
    def _chat_url(self) -> str:
        return self._endpoint + "/chat/completions"

    async def _post(self, body: dict, timeout: float | None) -> dict:
        """One POST of chat/completions; every failure as the `ModelError` the SDK path gives."""
        data = json.dumps(body).encode()
        if self.transport == "lean" and self._proxy is None:
            status, headers, content = await self._post_lean(data, timeout)
            if 300 <= status < 400:  # a redirect: aiohttp follows it, as the other transports do
                status, headers, content = await self._post_aiohttp(data, timeout)
        elif self.transport in ("lean", "aiohttp"):
            status, headers, content = await self._post_aiohttp(data, timeout)
        else:
            status, headers, content = await self._post_httpx(data, timeout)
        if status >= 400:
            raise self._status_error(status, headers, content)
        return self._decode(content)

    async def _post_lean(self, data: bytes, timeout: float | None) -> tuple[int, Any, bytes]:
        from .lean_http import ResponseRefused

        connect, read = _timeouts(timeout)
        try:
            return await self._lean().post(data, connect_timeout=connect, read_timeout=read)
        except TimeoutError:
            raise timed_out(self.provider, self.model) from None
        except ResponseRefused as error:
            raise ModelError(f"{self.provider} {self.model}: response refused ({error})", retryable=False) from None
        except OSError as error:  # ConnectionError, ssl.SSLError, socket.gaierror
            raise connection_failed(self.provider, self.model, error or type(error).__name__) from None

    async def _post_httpx(self, data: bytes, timeout: float | None) -> tuple[int, Any, bytes]:
        httpx = http_library()
        connect, read = _timeouts(timeout)
        try:
            response = await self._http().post("chat/completions", content=data,
                                               timeout=httpx.Timeout(read, connect=connect))
        except httpx.TimeoutException:
            raise timed_out(self.provider, self.model) from None
        except httpx.TransportError as error:
            raise connection_failed(self.provider, self.model, error or type(error).__name__) from None
        return response.status_code, response.headers, response.content

    async def _post_aiohttp(self, data: bytes, timeout: float | None) -> tuple[int, Any, bytes]:
        import asyncio

        import aiohttp

        connect, read = _timeouts(timeout)
        try:
            async with self._aiohttp().post(self._chat_url, data=data, proxy=self._proxy,
                                            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect,
                                                                          sock_read=read)) as response:
                return response.status, response.headers, await response.read()
        except asyncio.TimeoutError:  # aiohttp's own timeouts are TimeoutErrors too
            raise timed_out(self.provider, self.model) from None
        except aiohttp.ClientError as error:
            raise connection_failed(self.provider, self.model, error or type(error).__name__) from None

    def _status_error(self, status: int, headers: Any, content: bytes) -> ModelError:
        from .errors import from_status

        detail = f"Error code: {status}"  # the SDK's message for a status error
        try:
            data = json.loads(content.decode("utf-8", "replace").strip())
            error = data.get("error", data) if isinstance(data, dict) else None
            message = error.get("message") if isinstance(error, dict) else None
            if isinstance(message, str) and message:
                detail += f" - {message}"
        except ValueError:
            pass
        return from_status(self.provider, self.model, status, detail, headers, "OPENAI_API_KEY")

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
        if self.transport != "sdk":
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
        """Let go of this loop's HTTP client (the last model client using it closes it); the next
        call on this loop opens a new one."""
        await self._http_clients.release(  # aiohttp, the SDK: close()
            lambda client: client.aclose() if self.transport in ("httpx", "lean") else client.close())
        await self._aiohttp_clients.release(lambda client: client.close())
