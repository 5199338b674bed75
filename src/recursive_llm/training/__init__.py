"""RLM-native training (issue 30): rollouts that are RLM runs against a trainer's endpoint, rewarded
by the `rlm bench` families' known answers, and a verifiers environment over them.

The plain functions need nothing beyond recursive-llm: `examples` (a bench family's tasks),
`rollout` (one RLM run against an OpenAI-compatible `base_url` + `model`, training-safe), `reward`
(the family's own scorer). `load_environment(task=..., size=...)` wraps them as a verifiers
environment (`verifiers_env.py`) when `verifiers` is installed (docs/TRAINING.md).
"""

from __future__ import annotations

from typing import Any

from .rollouts import TRAINING_SAFE, Rollout, examples, reward, rollout

__all__ = ["TRAINING_SAFE", "Rollout", "examples", "load_environment", "reward", "rollout"]


def load_environment(task: str = "niah", size: int | str = "8k", count: int = 8, seed: int = 0, **options: Any):
    """A verifiers environment whose rollouts are RLM runs (verifiers_env.py); needs `verifiers`."""
    try:
        from .verifiers_env import environment
    except ImportError as error:
        raise ImportError(f"load_environment needs the verifiers package ({error}); install it in an environment "
                          "of its own (`pip install verifiers`): it pins openai<3 and mcp==2.0.0 "
                          "(docs/TRAINING.md)") from None
    return environment(task=task, size=size, count=count, seed=seed, **options)
