"""The verifiers plugin id `rlm_verifiers` (verifiers imports a plugin by a top-level module name):
the taskset and harness of `recursive_llm.training.verifiers_env`."""

from recursive_llm.training.verifiers_env import RLMHarness, RLMTaskset

__all__ = ["RLMHarness", "RLMTaskset"]
