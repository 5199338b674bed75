"""The plain training functions (no dependency beyond recursive-llm): a bench family's examples, a
training-safe rollout against a trainer's endpoint, and the family's reward. Kept apart from
`training/__init__.py` so that `verifiers_env.py` imports them without importing its own importer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..bench.families import FAMILIES
from ..bench.tasks import parse_size
from ..record.export import bench_scorer

# A training run's root conversation is append-only: no compaction (a summary would replace turns
# the trainer has already seen), no map-reduce fallback (a program, not the policy, would answer),
# no cached replies (each rollout samples), and the policy's sampling as the trainer sets it.
TRAINING_SAFE: dict[str, Any] = {"compact_at": None, "fallback_after": None, "cache": False}


@dataclass(frozen=True)
class Rollout:
    """One RLM run on one example: its answer, the run's id in the store, and the reward."""

    answer: str | None
    reward: float
    run_id: str | None
    error: str | None = None


def examples(task: str, size: int | str, count: int = 8, seed: int = 0) -> list[dict[str, Any]]:
    """`count` tasks of bench family `task` at `size` tokens (e.g. "8k"), seeds `seed`, `seed`+1, ...:
    each `{"query", "context", "answer", "task": {"family", "size_tokens", "seed"}}`."""
    if task not in FAMILIES:
        raise ValueError(f"unknown task family {task!r}: use one of {', '.join(sorted(FAMILIES))}")
    tokens = parse_size(size) if isinstance(size, str) else int(size)
    built = [FAMILIES[task](tokens, seed + index) for index in range(count)]
    return [{"query": t.query, "context": t.context, "answer": t.answer,
             "task": {"family": t.family, "size_tokens": t.size_tokens, "seed": t.seed}} for t in built]


def reward(example: dict[str, Any], answer: str | None) -> float:
    """The family's own score of `answer` (exact match, a number, or set F1): 1.0 right, 0.0 wrong."""
    score = bench_scorer(example["task"])
    if score is None:
        raise ValueError(f"example has no known bench task: {example.get('task')!r}")
    return float(score(answer))


async def rollout(example: dict[str, Any], *, model: str, base_url: str, api_key: str | None = None,
                  **options: Any) -> Rollout:
    """One training-safe RLM run of `example` whose every call (root and sub-calls) goes to the
    trainer's endpoint; `options` are `RLM(...)` keywords on top of `TRAINING_SAFE`."""
    from ..rlm import RLM

    rlm = RLM(model=model, base_url=base_url, api_key=api_key or "not-needed", **{**TRAINING_SAFE, **options})
    result = await rlm.acompletion(example["query"], example["context"])
    store = rlm._open_store()
    if store is not None and result.run_id:  # `rlm export` then gives the same reward
        store.label_task(result.run_id, example["task"])
    return Rollout(result.answer, reward(example, result.answer), result.run_id, result.error)
