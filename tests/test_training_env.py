"""Issue 30 (3): rollouts are RLM runs against the trainer's endpoint, rewarded by the bench
families' known answers; the verifiers environment when verifiers is installed."""

from __future__ import annotations

import asyncio
import re

import pytest

from recursive_llm.training import TRAINING_SAFE, examples, reward, rollout
from recursive_llm.testing.fake_server import FakeLLMServer

SEARCH = "```repl\nimport re\nprint(re.search(r'special magic number for {key} is (\\d+)', context).group(1))\n```"


def policy(wrong_keys: set[str]):
    """A scripted policy: searches `context` for the needle, then answers what it found (or 0 for
    the keys in `wrong_keys`)."""
    def respond(messages: list[dict], model: str) -> str:
        key = re.search(r"magic number for (\S+)\?", next(m["content"] for m in messages if m["role"] == "user"))
        if not any(m["role"] == "assistant" for m in messages):
            return SEARCH.replace("{key}", re.escape(key.group(1)))
        found = re.findall(r"\b(\d{4,})\b", messages[-1]["content"])
        return "FINAL(0)" if key.group(1) in wrong_keys else f"FINAL({found[-1]})"
    return respond


def key_of(example: dict) -> str:
    return re.search(r"magic number for (\S+)\?", example["query"]).group(1)


def test_examples_and_rewards_are_the_bench_families():
    two = examples("niah", "8k", count=2)
    assert [e["task"]["seed"] for e in two] == [0, 1] and two[0]["query"] != two[1]["query"]
    assert reward(two[0], two[0]["answer"]) == 1.0 and reward(two[0], "0") == 0.0
    with pytest.raises(ValueError, match="unknown task family"):
        examples("nope", "8k")


def test_rollouts_against_a_scripted_endpoint_are_rewarded_by_exact_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("RLM_HOME", str(tmp_path))
    right, wrong = examples("niah", "8k", count=2)
    with FakeLLMServer(responder=policy({key_of(wrong)})) as server:
        results = [asyncio.run(rollout(e, model="policy", base_url=server.base_url, max_iterations=4))
                   for e in (right, wrong)]
    assert [r.reward for r in results] == [1.0, 0.0], results
    assert results[0].answer == right["answer"] and results[1].answer == "0"
    assert all(body["model"] == "policy" for body in server.requests)  # every call went to the trainer


def test_training_safe_runs_never_compact():
    from recursive_llm import RLM
    from recursive_llm.testing import ScriptedModel

    loop = RLM(model=ScriptedModel(default="FINAL(x)"), **TRAINING_SAFE).config.loop
    assert loop.compact_at is None and loop.fallback_after is None


def test_the_verifiers_environment_rolls_out_rlm_runs_and_rewards_exact_answers(tmp_path, monkeypatch):
    """Needs verifiers (>= 0.4), which pins openai<3 and mcp==2.0.0: it runs where verifiers is
    installed (a venv of its own), and is skipped in the shared environment."""
    vf = pytest.importorskip("verifiers.v1")
    from verifiers.v1.configs.client import EvalClientConfig

    from recursive_llm.training import load_environment

    monkeypatch.setenv("RLM_HOME", str(tmp_path))
    monkeypatch.setenv("FAKE_TRAINER_KEY", "x")
    right, wrong = examples("niah", "8k", count=2)
    env = load_environment(task="niah", size="8k", count=2)
    tasks = list(env.taskset)
    assert [t.data.task for t in tasks] == [right["task"], wrong["task"]]

    async def evaluate(server: FakeLLMServer) -> list:
        trainer = vf.ModelContext(model="policy", client=EvalClientConfig(base_url=server.base_url,
                                                                            api_key_var="FAKE_TRAINER_KEY"))
        async with env.serving():  # verifiers' interception server between the RLM and the "trainer"
            return [await env.run_episode(task, trainer) for task in tasks]

    with FakeLLMServer(responder=policy({key_of(wrong)})) as server:
        episodes = asyncio.run(evaluate(server))
    traces = [episode.traces[0] for episode in episodes]
    assert all(episode.ok for episode in episodes), [episode.errors for episode in episodes]
    assert [trace.rewards["exact_answer"].score for trace in traces] == [1.0, 0.0]
    assert [trace.info["rlm_answer"] for trace in traces] == [right["answer"], "0"]
    assert len(server.requests) == 4  # two turns per rollout, every one through the interception
    assert all("x-rlm-request-id" in headers for headers in server.request_headers)  # the ids reach the trainer
