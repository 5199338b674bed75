"""Real workers for tests: each started on its own, or forked by one pre-started template (the way
`rlm serve` starts them), in a sandbox mode ("auto" or "process")."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from recursive_llm.environments.host.sandbox import Limits, plan_isolation

MODES = {mode: plan_isolation(mode) for mode in ("auto", "process")}


async def no_calls(*args: Any) -> list:
    """A host handler for workers whose code makes no sub-calls."""
    return []


@contextlib.asynccontextmanager
async def real_workers(mode: str, origin: str, *contexts: Any) -> AsyncIterator[tuple[list, Any]]:
    """One started worker per context, `origin` "started" (each its own process) or "forked" (all by
    one template, siblings): yields (workers, template or None); closes them all afterwards."""
    from recursive_llm.environments.host.worker import WORKER_SCRIPT, WorkerEnvironment
    from recursive_llm.environments.prestart import template as worker_template

    template, workers = None, []  # closed whatever step fails
    try:
        if origin == "forked":
            template = worker_template.WorkerTemplate(MODES[mode], Limits(), worker_template.python_argv_for_template(
                str(WORKER_SCRIPT)))
            await template.start()
        workers = [WorkerEnvironment(context, no_calls, sandbox=mode, template=template) for context in contexts]
        for worker in workers:
            await worker.start()
        assert template is None or template.forks == len(workers)
        yield workers, template
    finally:
        for worker in reversed(workers):
            await worker.close()
        if template is not None:
            await template.close()
