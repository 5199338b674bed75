"""Model clients over real HTTP (official openai / anthropic SDKs) against FakeLLMServer."""

from __future__ import annotations

import asyncio

import pytest

from recursive_llm.engine.budget import Budget, Limits
from recursive_llm.errors import ModelError
from recursive_llm.record.events import EventLog
from recursive_llm.models.anthropic_client import AnthropicClient, to_anthropic
from recursive_llm.models.openai_client import OpenAIClient
from recursive_llm.engine.scheduler import CallSite, RetryPolicy, Scheduler
from recursive_llm.testing import FakeLLMServer
from recursive_llm.usage import UsageSummary

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
SECRET = "sk-secret-value-123"


def complete(client, **options):
    async def go():
        try:
            return await client.complete(MESSAGES, **options)
        finally:
            await client.aclose()
    return asyncio.run(go())


def test_openai_text_and_usage():
    with FakeLLMServer() as server:
        completion = complete(OpenAIClient("m", base_url=server.base_url, api_key=SECRET), max_tokens=50)
        body = server.requests[0]
    assert completion.text == "echo: hello there"
    assert completion.prompt_tokens > 0 and completion.completion_tokens > 0
    assert body["max_tokens"] == 50 and body["messages"] == MESSAGES


def test_anthropic_text_usage_and_system():
    with FakeLLMServer(responder=lambda messages, model: f"{messages[0]['content']}|{len(messages)}") as server:
        client = AnthropicClient("claude-x", base_url=server.base_url.removesuffix("/v1"), api_key=SECRET)
        completion = complete(client)
        body = server.requests[0]
    # A conversation with a system prompt (the root loop's) is marked for the prompt cache.
    mark = {"type": "ephemeral"}
    assert body["system"] == [{"type": "text", "text": "be brief", "cache_control": mark}]
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hello there",
                                                               "cache_control": mark}]}]
    assert body["max_tokens"] == 4096
    assert completion.text == "be brief|2" and completion.prompt_tokens > 0


def test_anthropic_merges_same_role_messages():
    system, turns = to_anthropic([{"role": "system", "content": "s"}, {"role": "user", "content": "a"},
                                  {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}])
    assert system == "s" and turns == [{"role": "user", "content": "a\n\nb"}, {"role": "assistant", "content": "c"}]


@pytest.mark.parametrize("fault, retryable", [("429", True), ("500", True), ("503", True), ("garbage", True),
                                              ("drop", True)])
def test_openai_faults_map_to_model_errors(fault, retryable):
    with FakeLLMServer(faults=[fault], retry_after="7") as server:
        with pytest.raises(ModelError) as info:
            complete(OpenAIClient("m", base_url=server.base_url, api_key=SECRET))
    assert info.value.retryable is retryable
    assert SECRET not in str(info.value)
    if fault == "429":
        assert info.value.retry_after == 7.0 and info.value.status_code == 429


@pytest.mark.parametrize("fault", ["429", "500", "garbage", "drop"])
def test_anthropic_faults_map_to_model_errors(fault):
    with FakeLLMServer(faults=[fault], retry_after="3") as server:
        with pytest.raises(ModelError) as info:
            complete(AnthropicClient("c", base_url=server.base_url.removesuffix("/v1"), api_key=SECRET))
    assert info.value.retryable and SECRET not in str(info.value)


def test_per_call_timeout():
    with FakeLLMServer(faults=["timeout"], hang_seconds=3) as server:
        with pytest.raises(ModelError, match="timed out") as info:
            complete(OpenAIClient("m", base_url=server.base_url, api_key=SECRET), timeout=0.5)
    assert info.value.retryable


def test_unauthorized_is_not_retryable_and_names_the_key_variable():
    from recursive_llm.models.errors import from_status

    error = from_status("openai", "gpt-5", 401, "Incorrect API key provided", None, "OPENAI_API_KEY")
    assert not error.retryable and "OPENAI_API_KEY" in str(error)
    assert from_status("openai", "m", 404, "no", None).retryable is False
    assert from_status("openai", "m", 502, "bad gateway", {"retry-after": "2"}).retry_after == 2.0


def test_connection_refused_is_retryable():
    with pytest.raises(ModelError, match="connection failed") as info:
        complete(OpenAIClient("m", base_url="http://127.0.0.1:9/v1", api_key=SECRET))
    assert info.value.retryable


# -- the scheduler's retries, over real HTTP --------------------------------------------------------
def run_scheduler(server, **retry):
    async def go():
        scheduler = Scheduler(Budget(Limits()), EventLog(None), UsageSummary(),
                              retry=RetryPolicy(base_delay_s=0.01, **retry))
        client = OpenAIClient("m", base_url=server.base_url, api_key=SECRET)
        try:
            return await scheduler.call(client, MESSAGES, CallSite("run", 0, "root"))
        finally:
            await client.aclose()
    return asyncio.run(go())


def test_retries_survive_transient_faults():
    with FakeLLMServer(faults=["429", "500", "garbage", "drop"]) as server:
        assert run_scheduler(server).text == "echo: hello there"
        assert server.request_count == 5


def test_retry_after_is_honoured():
    import time

    with FakeLLMServer(faults=["429"], retry_after="1") as server:
        started = time.monotonic()
        run_scheduler(server)
        assert time.monotonic() - started >= 1.0


def test_retries_give_up_after_the_limit():
    with FakeLLMServer(faults=["500"] * 5) as server:
        with pytest.raises(ModelError, match="500"):
            run_scheduler(server, max_retries=2)
        assert server.request_count == 3


# -- LiteLLM (the optional extra; scripts/setup.sh installs it) ------------------------------------
def test_litellm_over_http():
    pytest.importorskip("litellm", reason="the litellm extra is not installed: pip install litellm")
    from recursive_llm.models.resolver import resolve_model

    with FakeLLMServer() as server:
        client = resolve_model("litellm/openai/fake-model", base_url=server.base_url, api_key="sk-x")
        completion = complete(client, max_tokens=20)
        assert completion.text == "echo: hello there" and completion.prompt_tokens > 0
        assert server.requests[0]["model"] == "fake-model"
    with FakeLLMServer(faults=["429"], retry_after="2") as server:
        client = resolve_model("litellm/openai/fake-model", base_url=server.base_url, api_key="sk-x")
        with pytest.raises(ModelError) as info:
            complete(client)
        assert info.value.retryable and info.value.status_code == 429


CLIENT_KINDS = {"openai httpx": lambda url: OpenAIClient("m", base_url=url, api_key=SECRET, transport="httpx"),
                "openai sdk": lambda url: OpenAIClient("m", base_url=url, api_key=SECRET, transport="sdk"),
                "anthropic": lambda url: AnthropicClient("claude-test", base_url=url.rsplit("/v1", 1)[0],
                                                         api_key=SECRET)}


@pytest.mark.parametrize("kind", CLIENT_KINDS)
def test_one_model_client_serves_several_event_loops_at_once(kind):
    """Each `RLM.completion` runs on an event loop of its own, and threads may call one RLM side by
    side: its model client keeps one HTTP client per loop. (It kept one for all: the second loop's
    calls failed with "attached to a different loop", and the first run to end closed the client
    under the others.)"""
    import threading

    from recursive_llm import RLM
    from scripted_root import root_then_sub

    code = "r = llm_query_batched([f'#{i}' for i in range(12)])\nprint(sum(x.startswith('sub:') for x in r))"
    with FakeLLMServer(responder=root_then_sub(["```repl\n" + code + "\n```", "FINAL_VAR(r)"]),
                       latency=0.05) as server:
        client = CLIENT_KINDS[kind](server.base_url)
        rlm = RLM(model=client, sub_model=client, store=None)
        results: list = []
        threads = [threading.Thread(target=lambda: results.append(rlm.completion("q", "text")), daemon=True)
                   for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert len(results) == 4
    for result in results:
        assert result.stopped_reason.value == "final", result
        assert result.answer.count("sub:") == 12, result.answer
