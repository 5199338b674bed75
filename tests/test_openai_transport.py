"""The two transports of OpenAIClient (plain HTTP with httpx2, the default; the official `openai`
SDK) give the same completions and the same `ModelError`s for the same server behaviour."""

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


def test_the_default_transport_is_httpx_and_the_sdk_is_available(monkeypatch):
    monkeypatch.delenv("RLM_OPENAI_TRANSPORT", raising=False)
    assert OpenAIClient("m", base_url="http://127.0.0.1:9/v1").transport == "httpx"
    monkeypatch.setenv("RLM_OPENAI_TRANSPORT", "sdk")
    assert OpenAIClient("m", base_url="http://127.0.0.1:9/v1").transport == "sdk"
    with pytest.raises(ValueError, match="unknown transport"):
        OpenAIClient("m", transport="carrier-pigeon")


def test_same_completion_and_request_body():
    reasoning = lambda messages, model: "thinking..."  # noqa: E731
    (ours, our_requests), (sdk, sdk_requests) = (
        outcome(t, reasoning=reasoning, prompt_cache=True, call={"max_tokens": 50, "temperature": 0.0})
        for t in ("httpx", "sdk"))
    assert (ours.text, ours.prompt_tokens, ours.completion_tokens, ours.finish_reason, ours.reasoning,
            ours.cached_prompt_tokens) == (sdk.text, sdk.prompt_tokens, sdk.completion_tokens, sdk.finish_reason,
                                           sdk.reasoning, sdk.cached_prompt_tokens)
    assert ours.reasoning == "thinking..."
    assert our_requests == sdk_requests  # the same JSON body: model, messages, max_tokens, temperature


@pytest.mark.parametrize("fault", ["429", "500", "503", "garbage", "drop"])
def test_same_errors_for_the_same_faults(fault):
    ours, _ = outcome("httpx", faults=[fault], retry_after="7")
    sdk, _ = outcome("sdk", faults=[fault], retry_after="7")
    assert isinstance(ours, ModelError) and isinstance(sdk, ModelError)
    assert (ours.retryable, ours.retry_after, ours.status_code) == (sdk.retryable, sdk.retry_after, sdk.status_code)
    assert SECRET not in str(ours)
    if fault in ("429", "500", "503"):
        assert str(ours) == str(sdk)
    else:  # the underlying exception's text differs: the kind of failure is the same
        kind = "malformed response" if fault == "garbage" else "connection failed"
        assert kind in str(ours) and kind in str(sdk)


def test_same_error_for_a_refused_connection_and_a_timeout():
    async def both(base_url, **options):
        results = []
        for transport in ("httpx", "sdk"):
            client = OpenAIClient("m", base_url=base_url, api_key=SECRET, transport=transport)
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


def test_a_call_over_httpx_does_not_import_the_sdk():
    code = ("import asyncio, sys\n"
            "from recursive_llm.models.openai_client import OpenAIClient\n"
            "from recursive_llm.testing import FakeLLMServer\n"
            "with FakeLLMServer() as server:\n"
            "    client = OpenAIClient('m', base_url=server.base_url, transport='httpx')\n"
            "    async def go():\n"
            "        try:\n"
            "            return await client.complete([{'role': 'user', 'content': 'hi'}])\n"
            "        finally:\n"
            "            await client.aclose()\n"
            "    print(asyncio.run(go()).text, 'openai' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["echo:", "hi", "False"], done.stderr[-2000:]
