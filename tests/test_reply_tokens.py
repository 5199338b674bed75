"""Token ids and logprobs from an OpenAI-compatible server, when the user asks for them
(`--record-logprobs`, RLM(record_logprobs=...)), through the real fake HTTP server to
`rlm export --format calls` (issue 30)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from recursive_llm import RLM
from recursive_llm.errors import ConfigError
from recursive_llm.record.export import call_records
from recursive_llm.models import reply_tokens
from recursive_llm.record.store import Store
from recursive_llm.testing import FakeLLMServer
from recursive_llm.testing.fake_server import fake_logprobs

CODE = "```repl\nprint(llm_query('leaf question'))\n```"


def responder(messages: list[dict], model: str) -> str:
    """The root writes one sub-call, then answers; the sub-call's reply is plain text."""
    if messages[-1]["content"] == "leaf question":
        return "the leaf answer"
    return "FINAL(ok)" if any(m["role"] == "assistant" for m in messages) else CODE


def _calls(server: FakeLLMServer, tmp_path, **options) -> list[dict]:
    store = Store(tmp_path / "rlm.db")
    rlm = RLM(model="m", base_url=server.base_url, api_key="x", environment="local", store=store, **options)
    result = rlm.completion("q", "some text")
    assert result.answer == "ok"
    return call_records(store.run_tree(result.run_id))


@pytest.mark.parametrize("transport", ["httpx", "sdk"])
def test_token_ids_and_logprobs_from_a_vllm_server_reach_the_export(tmp_path, monkeypatch, transport):
    monkeypatch.setenv("RLM_OPENAI_TRANSPORT", transport)
    with FakeLLMServer(responder) as server:
        records = _calls(server, tmp_path, record_logprobs="token-ids")
    assert len(server.requests) == 3 and all(
        r["logprobs"] is True and r["return_tokens_as_token_ids"] is True for r in server.requests)
    assert len(records) == 3
    for record in records:
        sent = fake_logprobs(record["completion"], as_ids=True)["content"]
        assert record["token_ids"] == [int(e["token"].split(":")[1]) for e in sent]
        assert record["logprobs"] == [e["logprob"] for e in sent]


def test_logprobs_alone_for_servers_without_token_ids(tmp_path):
    """`logprobs`: only the standard field is sent; tokens that are text give logprobs, no ids."""
    with FakeLLMServer(responder) as server:
        records = _calls(server, tmp_path, record_logprobs="logprobs")
    assert all(r["logprobs"] is True and "return_tokens_as_token_ids" not in r for r in server.requests)
    for record in records:
        assert "token_ids" not in record
        assert record["logprobs"] == [e["logprob"] for e in fake_logprobs(record["completion"], False)["content"]]


def test_off_by_default_nothing_is_asked_and_nothing_is_kept(tmp_path):
    with FakeLLMServer(responder) as server:
        records = _calls(server, tmp_path)
    assert server.requests and all("logprobs" not in r and "return_tokens_as_token_ids" not in r
                                   for r in server.requests)
    assert records and all("token_ids" not in r and "logprobs" not in r for r in records)


HOSTILE = [
    "not a dict", {"content": "not a list"}, {"content": [1, 2, 3]},
    {"content": [{"token": "token_id:1", "logprob": float("nan")}]},
    {"content": [{"token": "token_id:1", "logprob": float("-inf")}]},
    {"content": [{"token": "token_id:1", "logprob": True}]},
    {"content": [{"token": "token_id:-1", "logprob": -0.5}]},
    {"content": [{"token": "token_id:" + "9" * 5000, "logprob": -0.5}]},
    {"content": [{"token": ["token_id:1"], "logprob": -0.5}]},
    {"content": [{"token": "token_id:1", "logprob": -0.5}] * 300_000},  # more than a call can generate
]


@pytest.mark.parametrize("forged", HOSTILE, ids=range(len(HOSTILE)))
def test_a_hostile_logprobs_shape_is_dropped_and_the_run_goes_on(tmp_path, forged):
    with FakeLLMServer(responder, logprobs=forged) as server:
        records = _calls(server, tmp_path, record_logprobs="token-ids", max_output_tokens=100_000)
    assert len(records) == 3 and all("token_ids" not in r and "logprobs" not in r for r in records)


def test_the_parser_caps_entries_at_the_output_cap():
    choice = {"logprobs": {"content": [{"token": "token_id:7", "logprob": -1.0}] * 11}}
    assert reply_tokens.parse(choice, "token-ids", 10) == (None, None)
    assert reply_tokens.parse(choice, "token-ids", 11) == ([7] * 11, [-1.0] * 11)
    assert reply_tokens.parse(choice, None, 11) == (None, None)  # not asked: not read


def test_an_unknown_mode_is_a_clear_error():
    with pytest.raises(ConfigError, match="record_logprobs.*'token-ids'"):
        RLM(model="m", base_url="http://127.0.0.1:9", record_logprobs="ids")


def test_record_logprobs_from_the_command_line_to_the_export(tmp_path):
    """`rlm ask --record-logprobs token-ids` against the fake server, then `rlm export --format calls`."""
    env = {**os.environ, "RLM_HOME": str(tmp_path)}
    with FakeLLMServer(responder) as server:
        asked = subprocess.run(
            [sys.executable, "-m", "recursive_llm", "ask", "q", "--model", "m", "--base-url", server.base_url,
             "--api-key", "x", "--environment", "local", "--record-logprobs", "token-ids", "--json"],
            input="some text", capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert asked.returncode == 0, asked.stderr
    assert server.requests and all(r["return_tokens_as_token_ids"] is True for r in server.requests)
    run_id = json.loads(asked.stdout)["run_id"]
    exported = subprocess.run([sys.executable, "-m", "recursive_llm", "export", run_id, "--format", "calls"],
                              capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    records = [json.loads(line) for line in exported.stdout.splitlines()]
    assert len(records) == 3
    for record in records:
        assert record["token_ids"] == [1000 + i for i in range(len(record["logprobs"]))] and record["token_ids"]


def test_recording_tokens_turns_the_default_cache_off(tmp_path):
    """At temperature 0 the call cache is on by default, but a cached reply has no tokens: a second
    identical run asks the server again and keeps its tokens."""
    with FakeLLMServer(responder) as server:
        _calls(server, tmp_path, record_logprobs="token-ids", temperature=0)
        again = _calls(server, tmp_path, record_logprobs="token-ids", temperature=0)
    assert len(server.requests) == 6 and all(r["token_ids"] for r in again)
