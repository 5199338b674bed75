"""Where model-written code runs: an isolated worker process per run (the default), or in-process.

`make_environment` is the one place that turns a `WorkerPolicy` into an environment.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: the worker imports this package at every start
if TYPE_CHECKING:
    from typing import Any

    from ..config import WorkerPolicy
    from .base import Environment, SubCallHandler


def make_environment(policy: "WorkerPolicy", inputs: list[Any], handler: "SubCallHandler", *,
                     max_output_chars: int) -> "Environment":
    """The environment a run's code executes in (not started yet). A cell's captured output is
    kept up to 50 times what the model is shown (at least 1M characters), for the trajectory."""
    from ..caps import captured_chars

    options = {"max_captured_chars": captured_chars(max_output_chars)}
    if policy.environment == "local":
        from .local import LocalEnvironment
        return LocalEnvironment(inputs, handler, **options)
    from .prestart.pool import PooledWorker, current
    from .host.sandbox import Limits as WorkerLimits
    from .host.worker import WorkerEnvironment
    limits = WorkerLimits(memory_mb=policy.memory_mb)
    pool = current()  # pre-started workers (`rlm serve`): one is taken when the run starts
    if pool is not None and pool.matches(policy.sandbox, limits, options["max_captured_chars"]):
        return PooledWorker(pool, inputs, handler, sandbox=policy.sandbox, limits=limits, **options)
    return WorkerEnvironment(inputs, handler, sandbox=policy.sandbox, limits=limits, **options)
