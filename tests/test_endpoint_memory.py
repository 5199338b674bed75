"""The width an endpoint took is remembered across processes (endpoint_memory.py, issue 31 (1)):
a new process starts where the last one left off, unless that memory is too old; a refusal still
halves it at once. Processes are real subprocesses against the test server; no assertion on time."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time

from recursive_llm.engine.endpoint_memory import memory_path, recall, save
from recursive_llm.errors import ModelError
from recursive_llm.engine.scheduler import START_LIMIT, EndpointLimit, endpoint_key, endpoint_limit
from recursive_llm.models.openai_client import OpenAIClient
from recursive_llm.testing import FakeLLMServer
from scripted_root import is_root

BATCH = "r = llm_query_batched([f'#{i}' for i in range(101)])\nprint(sum(x.startswith('sub:') for x in r))"
PROCESS = ("import sys\nfrom recursive_llm import RLM\n"
           "result = RLM(model='m', base_url=sys.argv[1], api_key='secret-key-123', max_concurrency=256)"
           ".completion(sys.argv[2], 'text')\nassert result.answer == 'done', result\n")


def respond(messages: list[dict], model: str) -> str:
    """The root runs the 101-prompt batch twice when the query says "warm", else once."""
    if not is_root(messages):
        return "sub:" + str(messages[-1]["content"])
    if any(m["role"] == "assistant" for m in messages):
        return "FINAL(done)"
    batches = 2 if "warm" in str(messages[1]["content"]) else 1
    return "```repl\n" + "\n".join([BATCH] * batches) + "\n```"


def run_process(base_url: str, query: str) -> None:
    subprocess.run([sys.executable, "-c", PROCESS, base_url, query], check=True, timeout=120, env=os.environ.copy())


def widest(server: FakeLLMServer, base_url: str, query: str) -> int:
    """The most requests in flight at the server while one new process runs."""
    server.max_in_flight = 0
    run_process(base_url, query)
    return server.max_in_flight


def test_a_new_process_starts_at_the_width_the_endpoint_took_before():
    with FakeLLMServer(responder=respond, latency=0.5) as server:
        cold = widest(server, server.base_url, "cold")  # no memory: starts at START_LIMIT
        widest(server, server.base_url, "warm")  # two batches: the width grows to the batch's 101
        warm = widest(server, server.base_url, "again")
    assert cold < 90, cold
    assert warm >= 90, warm  # the whole batch in one wave from the first round trip
    text = memory_path().read_text()
    assert stat.S_IMODE(os.stat(memory_path()).st_mode) == 0o600
    assert "secret-key" not in text and "127.0.0.1" not in text  # neither keys nor URLs are stored
    entries = json.loads(text)
    assert len(entries) == 1 and next(iter(entries.values()))["limit"] >= 90


def _used(key: str, limit: float) -> EndpointLimit:
    endpoint = EndpointLimit(key, start=int(limit))
    endpoint.successes = 1
    return endpoint


def test_a_memory_older_than_the_bound_is_ignored(monkeypatch):
    save([_used("old-endpoint", 100)], now=time.time() - 25 * 3600)
    assert recall("old-endpoint") is None  # the default bound is 24 h
    monkeypatch.setenv("RLM_WIDTH_MEMORY_HOURS", "48")
    assert recall("old-endpoint").limit == 100
    monkeypatch.setenv("RLM_WIDTH_MEMORY_HOURS", "0")  # 0: no memory
    assert recall("old-endpoint") is None


def test_an_old_memory_gives_a_new_process_the_default_start(monkeypatch):
    client = OpenAIClient("m-old", base_url="http://127.0.0.1:9/v1", api_key="k")
    save([_used(endpoint_key(client), 100)], now=time.time() - 25 * 3600)
    assert endpoint_limit(client).limit == START_LIMIT
    fresh = OpenAIClient("m-fresh", base_url="http://127.0.0.1:9/v1", api_key="k")
    save([_used(endpoint_key(fresh), 100)])
    assert endpoint_limit(fresh).limit == 100


def test_a_refusal_halves_a_remembered_width_and_is_remembered():
    client = OpenAIClient("m-refused", base_url="http://127.0.0.1:9/v1", api_key="k")
    save([_used(endpoint_key(client), 100)])
    limit = endpoint_limit(client)
    assert limit.limit == 100 and limit.slow_start

    async def refuse() -> None:
        started = await limit.acquire()
        limit.release(started, ModelError("429", retryable=True, status_code=429))

    asyncio.run(refuse())
    assert limit.limit == 50 and not limit.slow_start
    save([limit])
    remembered = recall(endpoint_key(client))
    assert remembered.limit == 50 and not remembered.slow_start and remembered.refused_at is not None


def test_a_broken_memory_file_is_a_cold_start(monkeypatch):
    path = memory_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    assert recall("any") is None
    save([_used("any", 40)])  # rewritten whole
    assert recall("any").limit == 40
    monkeypatch.setenv("RLM_WIDTH_MEMORY_HOURS", "a day")
    try:
        recall("any")
    except ValueError as error:
        assert "RLM_WIDTH_MEMORY_HOURS='a day' is not a number of hours" in str(error)
    else:
        raise AssertionError("a bad setting must be named")


def test_runs_that_leave_the_width_unchanged_write_the_file_once_and_off_the_event_loop(monkeypatch):
    """`rlm serve` ends a run per request: the memory is written when a width changed, not at every
    run's end, and the write happens in a thread, never on the event loop."""
    from recursive_llm import RLM

    writes: list[bool] = []  # per write of endpoints.json: whether an event loop runs in that thread
    replace = os.replace

    def spying_replace(source, destination):
        if str(destination) == str(memory_path()):
            try:
                asyncio.get_running_loop()
                writes.append(True)
            except RuntimeError:
                writes.append(False)
        return replace(source, destination)

    monkeypatch.setattr(os, "replace", spying_replace)
    with FakeLLMServer(responder=lambda messages, model: "FINAL(done)") as server:
        rlm = RLM(model="m-quiet", base_url=server.base_url, api_key="k", store=False)
        for _ in range(3):
            assert rlm.completion("q", "text").answer == "done"
        rlm.close()
        client = OpenAIClient("m-quiet", base_url=server.base_url, api_key="k")
    assert writes == [False]  # the first run's width, written once, from a thread
    assert recall(endpoint_key(client)) is not None


def test_a_width_that_moved_by_a_tenth_or_refused_is_written_again():
    from recursive_llm.engine.endpoint_memory import Width, save_changed

    assert save_changed([Width("moving", 40.0, True, None)], now=1_000.0)
    assert not save_changed([Width("moving", 42.0, True, None)], now=1_001.0)  # 5%: not worth a write
    assert save_changed([Width("moving", 44.5, True, None)], now=1_002.0)
    assert save_changed([Width("moving", 22.0, False, 1_002.0)], now=1_003.0)  # a refusal
    assert save_changed([Width("moving", 22.0, False, 1_002.0)], now=1_003.0 + 3600)  # the hourly refresh
