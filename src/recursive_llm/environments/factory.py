"""Making the environment a run's `WorkerPolicy` asks for: in-process, a spare from the running
loop's pool of pre-started workers, or a worker started for the run. The one place that chooses.
Each kind is imported when it is chosen (an in-process run never loads the worker's host side)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..caps import captured_chars

if TYPE_CHECKING:
    from ..config import WorkerPolicy
    from .base import Environment, SubCallHandler


def make_environment(policy: WorkerPolicy, inputs: list[Any], handler: SubCallHandler, *,
                     max_output_chars: int) -> Environment:
    """The environment a run's code executes in (not started yet). A cell's captured output is
    kept up to 50 times what the model is shown (at least 1M characters), for the trajectory."""
    max_captured_chars = captured_chars(max_output_chars)
    if policy.environment == "local":
        from .local import LocalEnvironment

        return LocalEnvironment(inputs, handler, max_captured_chars=max_captured_chars)
    from .host.sandbox import Limits
    from .host.worker import WorkerEnvironment
    from .prestart.pool import PooledWorker, current

    limits = Limits(memory_mb=policy.memory_mb)
    pool = current()  # pre-started workers (`rlm serve`): one is taken when the run starts
    if pool is not None and pool.matches(policy.sandbox, limits, max_captured_chars):
        return PooledWorker(pool, inputs, handler, sandbox=policy.sandbox, limits=limits,
                            max_captured_chars=max_captured_chars)
    return WorkerEnvironment(inputs, handler, sandbox=policy.sandbox, limits=limits,
                             max_captured_chars=max_captured_chars)
