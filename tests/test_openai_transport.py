"""The four transports of OpenAIClient (plain HTTP with our lean pool, the default, with aiohttp or
with httpx2; the official `openai` SDK) give the same completions and the same `ModelError`s for the
same server behaviour."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from recursive_llm.errors import ModelError
from recursive_llm.models.openai_client import OpenAIClient
from recursive_llm.testing import FakeLLMServer

from test_models import MESSAGES, SECRET, complete  # the same request and helper as the SDK tests


def outcome(transport: str, **server_options):
    options = server_options.pop("call", {})
    with FakeLLMServer(**server_options) as server:
        try:
            return complete(OpenAIClient("m", base_url=server.base_url, api_key=SECRET, transport=transport),
                            **options), server.requests
        except ModelError as error:
            return error, server.requests


PLAIN = ("lean", "aiohttp", "httpx")  # the transports that post the JSON themselves, each compared with the SDK


def test_the_default_transport_is_lean_and_the_others_are_available(monkeypatch):
    import importlib.util

    monkeypatch.delenv("RLM_OPENAI_TRANSPORT", raising=False)
    assert OpenAIClient("m", base_url="http://127.0.0.1:9/v1").transport == "lean"
    for chosen in ("aiohttp", "httpx", "sdk"):
        monkeypatch.setenv("RLM_OPENAI_TRANSPORT", chosen)
        assert OpenAIClient("m", base_url="http://127.0.0.1:9/v1").transport == chosen
    monkeypatch.delenv("RLM_OPENAI_TRANSPORT")
    real_find_spec = importlib.util.find_spec
    for missing, fallback in (("httptools", "aiohttp"), ("aiohttp", "httpx")):
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a, missing=missing: None if name == missing else real_find_spec(name, *a))
        assert OpenAIClient("m", base_url="http://127.0.0.1:9/v1").transport == fallback
    with pytest.raises(ValueError, match="unknown transport"):
        OpenAIClient("m", transport="carrier-pigeon")


@pytest.mark.parametrize("transport", PLAIN)
def test_same_completion_and_request_body(transport):
    reasoning = lambda messages, model: "thinking..."  # noqa: E731
    (ours, our_requests), (sdk, sdk_requests) = (
        outcome(t, reasoning=reasoning, prompt_cache=True, call={"max_tokens": 50, "temperature": 0.0})
        for t in (transport, "sdk"))
    assert (ours.text, ours.prompt_tokens, ours.completion_tokens, ours.finish_reason, ours.reasoning,
            ours.cached_prompt_tokens) == (sdk.text, sdk.prompt_tokens, sdk.completion_tokens, sdk.finish_reason,
                                           sdk.reasoning, sdk.cached_prompt_tokens)
    assert ours.reasoning == "thinking..."
    assert our_requests == sdk_requests  # the same JSON body: model, messages, max_tokens, temperature


@pytest.mark.parametrize("transport", PLAIN)
@pytest.mark.parametrize("fault", ["429", "500", "503", "garbage", "drop"])
def test_same_errors_for_the_same_faults(fault, transport):
    ours, _ = outcome(transport, faults=[fault], retry_after="7")
    sdk, _ = outcome("sdk", faults=[fault], retry_after="7")
    assert isinstance(ours, ModelError) and isinstance(sdk, ModelError)
    assert (ours.retryable, ours.retry_after, ours.status_code) == (sdk.retryable, sdk.retry_after, sdk.status_code)
    assert SECRET not in str(ours)
    if fault in ("429", "500", "503"):
        assert str(ours) == str(sdk)
    else:  # the underlying exception's text differs: the kind of failure is the same
        kind = "malformed response" if fault == "garbage" else "connection failed"
        assert kind in str(ours) and kind in str(sdk)


@pytest.mark.parametrize("transport", PLAIN)
def test_same_error_for_a_refused_connection_and_a_timeout(transport):
    async def both(base_url, **options):
        results = []
        for transport_used in (transport, "sdk"):
            client = OpenAIClient("m", base_url=base_url, api_key=SECRET, transport=transport_used)
            try:
                await client.complete(MESSAGES, **options)
            except ModelError as error:
                results.append(error)
            finally:
                await client.aclose()
        return results

    ours, sdk = asyncio.run(both("http://127.0.0.1:9/v1"))  # nothing listens there
    assert "connection failed" in str(ours) and "connection failed" in str(sdk) and ours.retryable
    with FakeLLMServer(faults=["timeout", "timeout"], hang_seconds=3) as server:
        ours, sdk = asyncio.run(both(server.base_url, timeout=0.5))
    assert str(ours) == str(sdk) and "timed out" in str(ours) and ours.retryable


@pytest.mark.parametrize("transport", PLAIN)
def test_a_plain_call_does_not_import_the_sdk(transport):
    code = ("import asyncio, sys\n"
            "from recursive_llm.models.openai_client import OpenAIClient\n"
            "from recursive_llm.testing import FakeLLMServer\n"
            "with FakeLLMServer() as server:\n"
            f"    client = OpenAIClient('m', base_url=server.base_url, transport={transport!r})\n"
            "    async def go():\n"
            "        try:\n"
            "            return await client.complete([{'role': 'user', 'content': 'hi'}])\n"
            "        finally:\n"
            "            await client.aclose()\n"
            "    print(asyncio.run(go()).text, 'openai' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["echo:", "hi", "False"], done.stderr[-2000:]


@pytest.mark.parametrize("transport", PLAIN)
def test_the_proxy_comes_from_the_environment(transport, monkeypatch):
    """HTTP_PROXY is used (the fake server stands in for the proxy: it answers the absolute URL it
    is sent) and NO_PROXY bypasses it, as the SDK's client does."""
    for name in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    unreachable = "http://model.invalid:9/v1"  # never resolved when the proxy is used
    with FakeLLMServer() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.base_url.rsplit("/v1", 1)[0])
        through_proxy = complete(OpenAIClient("m", base_url=unreachable, api_key=SECRET, transport=transport))
        monkeypatch.setenv("NO_PROXY", "model.invalid")
        with pytest.raises(ModelError, match="connection failed"):
            complete(OpenAIClient("m", base_url=unreachable, api_key=SECRET, transport=transport))
    assert through_proxy.text.startswith("echo:")
