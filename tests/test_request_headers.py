"""Issue 30 (2): every request a run sends carries its call id and its parent's (X-RLM-* headers),
the same ids `rlm export --format calls` writes, so a trainer's proxy can rebuild the call tree."""

from __future__ import annotations

import pytest

from recursive_llm import RLM
from recursive_llm.record.export import call_records
from recursive_llm.models.openai_client import OpenAIClient
from recursive_llm.record.store import Store
from recursive_llm.testing.fake_server import FakeLLMServer


def scripted(messages: list[dict], model: str) -> str:
    """root -> rlm_query child -> llm_query: the root's first turn starts a child run, the child's
    first turn asks a plain sub-call; a prompt with no system message is that plain sub-call."""
    if not any(m["role"] == "system" for m in messages):
        return "leaf"
    if any(m["role"] == "assistant" for m in messages):
        return "FINAL(done)"
    code = "print(rlm_query('middle task'))" if model == "root-model" else "print(llm_query('leaf question'))"
    return f"```repl\n{code}\n```"


def run_against(server: FakeLLMServer, store: Store, transport: str) -> str:
    root = OpenAIClient("root-model", base_url=server.base_url, api_key="x", transport=transport)
    sub = OpenAIClient("sub-model", base_url=server.base_url, api_key="x", transport=transport)
    result = RLM(model=root, sub_model=sub, max_depth=2, store=store, cell_timeout_s=30).completion("top", "text")
    assert result.answer == "done", result.error
    return result.run_id


def seen(server: FakeLLMServer) -> list[tuple[str, str | None]]:
    return [(h["x-rlm-request-id"], h.get("x-rlm-parent-id")) for h in server.request_headers]


@pytest.mark.parametrize("transport", ["httpx", "sdk"])
def test_request_ids_at_the_server_are_the_exports_ids(tmp_path, transport):
    store = Store(tmp_path / "rlm.db")
    with FakeLLMServer(responder=scripted) as server:
        run_id = run_against(server, store, transport)
    records = call_records(store.run_tree(run_id))
    assert {r["depth"] for r in records} == {0, 1, 2} and len(records) == 5  # 2 root, 2 child turns, 1 sub
    assert set(seen(server)) == {(r["id"], r["parent_id"]) for r in records}
    assert len(seen(server)) == len(records)  # one request per call, no retries here
    headers = server.request_headers
    assert {h["x-rlm-run-id"] for h in headers} == {r["run_id"] for r in records}
    assert sorted(h["x-rlm-depth"] for h in headers) == sorted(str(r["depth"]) for r in records)
    first = [h for h in headers if "x-rlm-parent-id" not in h]
    assert len(first) == 1 and first[0]["x-rlm-run-id"] == run_id and first[0]["x-rlm-purpose"] == "root"


def test_a_retried_call_carries_the_same_request_id(tmp_path):
    store = Store(tmp_path / "rlm.db")
    with FakeLLMServer(responder=scripted, faults=["500"]) as server:  # the first request fails once
        run_id = run_against(server, store, "httpx")
    first, retry = server.request_headers[:2]
    assert first["x-rlm-request-id"] == retry["x-rlm-request-id"] and "x-rlm-parent-id" not in retry
    records = call_records(store.run_tree(run_id))
    attempts = [r for r in records if r["request_id"] == first["x-rlm-request-id"]]
    assert [r["status"] for r in attempts] == ["error", "ok"]  # two rows, two export ids, one request id
    assert {(h["x-rlm-request-id"], h.get("x-rlm-parent-id")) for h in server.request_headers} == \
        {(r["request_id"], r["parent_request_id"]) for r in records}


def test_the_anthropic_client_sends_the_headers():
    import asyncio

    from recursive_llm.models.anthropic_client import AnthropicClient

    with FakeLLMServer() as server:
        client = AnthropicClient("claude-x", base_url=server.base_url.removesuffix("/v1"), api_key="x")

        async def one() -> None:
            await client.complete([{"role": "user", "content": "hi"}], headers={"X-RLM-Request-Id": "r:1"})
            await client.aclose()
        asyncio.run(one())
    assert server.request_headers[0]["x-rlm-request-id"] == "r:1"
