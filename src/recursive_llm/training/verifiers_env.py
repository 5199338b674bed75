"""The verifiers (>= 0.4, `verifiers.v1`) environment of `recursive_llm.training`: a taskset of
`rlm bench` tasks, a harness whose program is an RLM run, and the family's scorer as the reward.

verifiers finds a plugin by a top-level module name: `rlm_verifiers` exports this module's
`Taskset` and `Harness` subclasses (`__all__`), so `EnvConfig(taskset=RLMTasksetConfig(id=TASKSET_ID, ...))` loads a `SingleAgentEnv`
whose agent plays each task with `RLMHarness`. The harness runs the RLM loop in-process (verifiers'
contract allows it: every model call goes to the interception `endpoint` with its `secret`), so the
trainer sees every root turn and sub-call, each with the X-RLM-* headers (docs/TRAINING.md).
"""

from __future__ import annotations

from typing import Any

import verifiers.v1 as vf
from verifiers.v1.runtimes.subprocess import SubprocessConfig

from .rollouts import examples, reward, rollout

TASKSET_ID = "rlm_verifiers"  # the plugin module (src/rlm_verifiers)


class RLMTaskData(vf.TaskData):
    """One bench task: the query is the prompt, the long input stays in the RLM's REPL."""

    context: str
    answer: str | list[str]
    task: dict[str, Any]  # {"family", "size_tokens", "seed"}: the scorer rebuilds the known answer


class RLMTask(vf.Task[RLMTaskData]):
    @vf.reward
    async def exact_answer(self, task: RLMTaskData, trace: vf.Trace) -> float:
        """The family's score of the run's answer (1.0 right, 0.0 wrong; set F1 for list answers)."""
        return reward({"task": task.task}, trace.info.get("rlm_answer"))


class RLMTasksetConfig(vf.TasksetConfig):
    family: str = "niah"
    size: str = "8k"
    count: int = 8
    seed: int = 0


class RLMTaskset(vf.Taskset[RLMTask, RLMTasksetConfig]):
    def load(self):
        config = self.config
        for example in examples(config.family, config.size, config.count, config.seed):
            data = RLMTaskData(id=f"{config.family}-{example['task']['size_tokens']}-{example['task']['seed']}",
                               prompt=example["query"], context=example["context"], answer=example["answer"],
                               task=example["task"])
            yield RLMTask(data, config.task)


class RLMHarnessConfig(vf.HarnessConfig):
    max_iterations: int = 8
    max_depth: int = 1


class RLMHarness(vf.Harness[RLMHarnessConfig]):
    EXECUTES_CODE = False  # model code runs in recursive-llm's own sandboxed worker, not the runtime
    NEEDS_CONTAINER = False

    async def launch(self, ctx: vf.ModelContext, trace: vf.Trace, runtime: vf.Runtime, endpoint: str,
                     secret: str, mcp_urls: dict[str, str], data: RLMTaskData, **_: Any) -> vf.ProgramResult:
        example = {"query": data.prompt_text, "context": data.context, "task": data.task}
        done = await rollout(example, model=ctx.model, base_url=endpoint, api_key=secret,
                             max_iterations=self.config.max_iterations, max_depth=self.config.max_depth)
        trace.info.update(rlm_answer=done.answer, rlm_run_id=done.run_id, rlm_error=done.error)
        return vf.ProgramResult(exit_code=0, stdout=done.answer or "", stderr=done.error or "")


def environment(*, task: str, size: int | str, count: int, seed: int, **harness: Any) -> vf.Env:
    """The SingleAgentEnv over `count` tasks of family `task`, played by `RLMHarness`."""
    taskset = RLMTasksetConfig(id=TASKSET_ID, family=task, size=str(size), count=count, seed=seed)
    agent = vf.AgentConfig(harness=RLMHarnessConfig(id=TASKSET_ID, **harness), runtime=SubprocessConfig())
    return vf.load_environment(vf.SingleAgentEnvConfig(taskset=taskset, agent=agent))
