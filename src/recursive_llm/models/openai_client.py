"""OpenAI and every OpenAI-compatible server (vLLM, Ollama, llama.cpp, LM Studio, OpenRouter)."""

from __future__ import annotations

import functools
import json
import os
import threading
from collections.abc import Callable
from typing import Any

from ..errors import ModelError
from . import reply_tokens
from .base import Completion, Message
from .errors import connection_failed, from_openai_error, timed_out
from .loop_clients import PerLoop


TRANSPORTS = ("httpx", "sdk")
DEFAULT_BASE_URL = "https://api.openai.com/v1"
MAX_BODY_BYTES = 64 * 1024 * 1024  # a response's body (after decoding): far above any chat completion
_prefetched = False


def default_transport() -> str:
    """RLM_OPENAI_TRANSPORT, else `httpx`: the JSON posted with `httpx2`, the HTTP library the
    official SDKs run on. `sdk` (the official client itself, on the same library) is opt-in."""
    return os.environ.get("RLM_OPENAI_TRANSPORT") or "httpx"


def _timeouts(timeout: float | None) -> tuple[float, float]:
    """(to connect, between reads) for a call's `timeout`: at most 5 s to connect; the official
    client's 600 s when there is none."""
    limit = 600.0 if timeout is None else timeout
    return min(limit, 5.0), limit


def _prefetch(transport: str) -> None:
    """Import the transport (the `openai` SDK: 0.6 to 1 s, httpx2: 0.05 s) and build the TLS context
    in a thread, once per process, so that the first call overlaps it with loading the input and
    starting the worker.

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
        else:
            import httpx2  # noqa: F401

        from .tls import shared_ssl_context

        try:
            shared_ssl_context()
        except ModelError:
            pass  # an unusable SSL_CERT_FILE: the first call reports it

    threading.Thread(target=load, name="rlm-http-prefetch").start()


@functools.lru_cache(maxsize=64)
def _timeout_dict(connect: float, read: float) -> dict[str, float]:
    """httpx2's `Timeout(read, connect=connect)` as the request extension httpcore2 reads (never changed)."""
    return {"connect": connect, "read": read, "write": read, "pool": read}


POOL_WIDTH = 16  # calls in flight per httpx2 client (Pools)


class Pools:
    """The `httpx` transport's routes (`Route`: an httpx2 client and its connection pool) for one
    endpoint and key on one event loop, each with at most POOL_WIDTH calls in flight: a call takes
    the first route with room, a new one when none has. httpcore2's pool looks at each of its
    connections twice per request: at 64 calls in flight through one client that was 1,750 of a
    call's 3,900 Python function calls; with clients of 16, 570 of 2,700 (docs/BENCHMARKS.md,
    issue 26). Calls one at a time use one route, one connection."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._clients: list[Any] = []
        self._in_flight: list[int] = []

    def acquire(self) -> tuple[int, Any]:
        """(index, client) for the next call; give the index back with `release`."""
        index = next((i for i, count in enumerate(self._in_flight) if count < POOL_WIDTH), len(self._clients))
        if index == len(self._clients):
            self._clients.append(self._make())
            self._in_flight.append(0)
        self._in_flight[index] += 1
        return index, self._clients[index]

    def release(self, index: int) -> None:
        self._in_flight[index] -= 1

    async def aclose(self) -> None:
        clients, self._clients, self._in_flight = self._clients, [], []
        for client in clients:
            await client.aclose()


class Route:
    """One httpx2 client for the endpoint and the transport (connection pool) it chose for the
    endpoint's URL once: the direct pool, or the proxy's from HTTP_PROXY / HTTPS_PROXY / ALL_PROXY
    unless NO_PROXY matches, as httpx2 reads them. A call goes to the transport itself
    (`AsyncHTTPTransport.handle_async_request`, httpx2's public transport interface): the client's
    request building, URL and header merging, auth flow, cookie jar and redirect loop cost about a
    fifth of a call's CPU (issue 26); a redirect, rare, goes back through the client (`redirect`).
    The pool sends a request's head and body in one write (models/coalesced_writes.py).
    The client's cookie jar is not used: cookies a server sets are not sent back."""

    def __init__(self, client: Any, url: Any) -> None:
        from .coalesced_writes import coalesce_writes  # imports httpcore2: only once a route is made

        self.client = client
        # httpx2's own choice of pool for this URL (its proxy mounts); private, made once per route.
        self.transport = client._transport_for_url(url)
        coalesce_writes(self.transport)  # a request's head and body in one write (models/coalesced_writes.py)

    async def redirect(self, request: Any, response: Any) -> Any:
        """The response to `response`'s redirect, through the client: its redirect rules (307 and
        308 keep the POST and its body; Authorization is dropped for another origin) and any
        further redirects. `response` is closed."""
        await response.aclose()
        # httpx2's own redirect request (private), as its redirect loop builds it.
        return await self.client.send(self.client._build_redirect_request(request, response), stream=True)

    async def aclose(self) -> None:
        await self.client.aclose()


class OpenAIClient:
    """Chat completions over the OpenAI-compatible HTTP API, one attempt per call.

    The default transport, `httpx`, posts the JSON with `httpx2` (the HTTP library the official
    SDKs run on), to the transport the httpx2 client chose for the endpoint (`Route`), and never
    imports the SDK (30 to 40 MB less memory, 0.4 to 0.7 s less to the first call). Its pool drops a connection the server closed while it was idle; proxies come from the
    environment as `httpx2` reads them (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY with CIDR
    ranges); the trusted certificate authorities from models/tls.py. `sdk` (opt-in: `transport=` or
    RLM_OPENAI_TRANSPORT) goes through the official `openai` client's low-level `post` on the same
    library, with the same semantics: the same `ModelError`s for the same failures
    (models/errors.py; tests/test_openai_transport.py).
    """

    remote = True  # calls a provider: the scheduler adapts its concurrency per endpoint
    sends_headers = True  # takes the scheduler's per-call X-RLM-* headers (call_ids.py)
    records_logprobs = True  # asks for the reply's tokens when the user does (models/reply_tokens.py)

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
        if transport is None:
            transport = default_transport()
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}: use 'httpx' (the default: plain HTTP with httpx2, "
                             f"no SDK import) or 'sdk' (the official openai client); check RLM_OPENAI_TRANSPORT")
        self.transport = transport
        _prefetch(transport)

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIClient(model={self.model!r}, base_url={self.base_url!r})"

    def _shared_client(self, make):
        """The running loop's HTTP client of this transport for this endpoint and key (loop_clients.py)."""
        return self._http_clients.get((self.transport, self.base_url, self._api_key), make)

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

    def _http(self) -> Pools:
        def make() -> Route:
            import httpx2

            from .tls import shared_ssl_context

            # Proxies from the environment (trust_env); timeouts are per call (_request).
            client = httpx2.AsyncClient(
                headers=self._headers(), verify=shared_ssl_context(), trust_env=True,
                limits=httpx2.Limits(max_connections=POOL_WIDTH, max_keepalive_connections=POOL_WIDTH),
                follow_redirects=True)
            return Route(client, self._url)
        return self._shared_client(lambda: Pools(make))

    @functools.cached_property
    def _url(self) -> Any:
        """The chat completions URL, parsed once (an `httpx2.URL`)."""
        import httpx2

        return httpx2.URL(self._endpoint + "/chat/completions")

    def _request(self, route: Route, body: dict, timeout: float | None, headers: dict[str, str] | None) -> Any:
        """The POST as the client would build it: its headers (ours and httpx2's defaults, such as
        Accept-Encoding), the call's `headers`, the body and the call's timeouts."""
        import httpx2

        connect, read = _timeouts(timeout)
        merged = route.client.headers
        if headers:
            merged = merged.copy()
            merged.update(headers)
        return httpx2.Request("POST", self._url, headers=merged, content=json.dumps(body).encode(),
                              extensions={"timeout": _timeout_dict(connect, read)})

    @functools.cached_property
    def _endpoint(self) -> str:
        """The API root without its trailing slash (api.openai.com's when no base URL is given)."""
        return (self.base_url or DEFAULT_BASE_URL).rstrip("/")

    async def _post(self, body: dict, timeout: float | None, headers: dict[str, str] | None = None) -> dict:
        """One POST of chat/completions; every failure as the `ModelError` the SDK path gives."""
        import httpx2

        pools = self._http()
        index, route = pools.acquire()
        try:
            request = self._request(route, body, timeout, headers)
            response = await route.transport.handle_async_request(request)
            try:
                if response.has_redirect_location:
                    response = await route.redirect(request, response)
                status, headers, content = response.status_code, response.headers, await self._read(response)
            finally:
                await response.aclose()
        except httpx2.TimeoutException:
            raise timed_out(self.provider, self.model) from None
        except httpx2.TransportError as error:
            raise connection_failed(self.provider, self.model, error or type(error).__name__) from None
        finally:
            pools.release(index)
        if status >= 400:
            raise self._status_error(status, headers, content)
        return self._decode(content)

    async def _read(self, response) -> bytes:
        """The response's body, decoded, refused (not retried) past MAX_BODY_BYTES: a server that
        sends without end, or a small gzip that inflates to gigabytes, costs no more memory than that."""
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise ModelError(f"{self.provider} {self.model}: response refused (its body is over "
                                 f"{MAX_BODY_BYTES:,} bytes)", retryable=False)
            chunks.append(chunk)
        return b"".join(chunks)

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

    def _parse(self, data: dict, record_logprobs: str | None = None, max_tokens: int | None = None) -> Completion:
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
        token_ids, logprobs = reply_tokens.parse(first, record_logprobs, max_tokens)
        return Completion(text=message["content"], model=self.name, prompt_tokens=count(usage.get("prompt_tokens")),
                          completion_tokens=count(usage.get("completion_tokens")),
                          finish_reason=finish if isinstance(finish, str) else None, reasoning=reasoning,
                          cached_prompt_tokens=count(details.get("cached_tokens")), token_ids=token_ids,
                          logprobs=logprobs)

    def _body(self, messages: list[Message], max_tokens: int | None, temperature: float | None,
              record_logprobs: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        if max_tokens is not None:
            # api.openai.com's newer models only accept max_completion_tokens; other servers expect max_tokens.
            body["max_tokens" if self.base_url else "max_completion_tokens"] = max_tokens
        if temperature is not None:
            body["temperature"] = temperature
        return {**body, **reply_tokens.request_fields(record_logprobs)}

    async def complete(self, messages: list[Message], *, max_tokens: int | None = None, temperature: float | None = None,
                       timeout: float | None = None, headers: dict[str, str] | None = None,
                       record_logprobs: str | None = None) -> Completion:
        """One request; `headers` are added to it (the scheduler's X-RLM-* ids, call_ids.py);
        `record_logprobs` asks for the reply's tokens (models/reply_tokens.py)."""
        body = self._body(messages, max_tokens, temperature, record_logprobs)
        if self.transport != "sdk":
            return self._parse(await self._post(body, timeout, headers), record_logprobs, max_tokens)
        # The SDK's own HTTP stack, auth, headers, status errors and timeouts, but its low-level post:
        # `chat.completions.create` first walks the request through its TypedDict transform and then
        # builds a pydantic model of the reply, together about 60% of the CPU of a call (profile of
        # `rlm serve`); our messages are plain JSON already and the reply is read like the httpx path's.
        options: dict[str, Any] = {"timeout": timeout} if timeout is not None else {}
        if headers:
            options["headers"] = headers  # the SDK's extra_headers
        try:
            content = await self._sdk().post("/chat/completions", body=body, cast_to=bytes, options=options)
        except Exception as error:
            raise from_openai_error(error, self.provider, self.model, "OPENAI_API_KEY") from None
        return self._parse(self._decode(content), record_logprobs, max_tokens)

    async def aclose(self) -> None:
        """Let go of this loop's HTTP client (the last model client using it closes it); the next
        call on this loop opens a new one."""
        await self._http_clients.release(  # the SDK: close()
            lambda client: client.aclose() if self.transport == "httpx" else client.close())
