"""Route very wide `llm_query_batched` fan-outs through Ray workers.

Only the model request itself moves: the host's scheduler still reserves the budget, retries,
consults the cache and records every call, exactly as for a local call. `RayModelClient` wraps a
client and sends each `complete` to a Ray task that rebuilds the client from its model string in
the worker (keys and `RLM_*`/`OPENAI_*` settings travel in Ray's runtime environment, as for
`rlm batch`). Useful when one machine's network stack or CPU is the limit for thousands of
concurrent calls; for everything else, asyncio in one process is faster (Ray adds ~ms per task).
"""

from __future__ import annotations

import os
from typing import Any

from ..models.base import Completion, Message, ModelClient

_remote = None


def _complete_in_worker(model: str, base_url: str | None, messages: list[Message], options: dict[str, Any]) -> dict:
    import asyncio

    from ..models.resolver import resolve_model

    from ..errors import ModelError

    async def go() -> Completion:
        client = resolve_model(model, base_url=base_url)
        try:
            return await client.complete(messages, **options)
        finally:
            await client.aclose()

    try:
        completion = asyncio.run(go())
    except ModelError as error:  # sent back as data, so the host's retry decision stays exact
        return {"error": str(error), "retryable": error.retryable, "retry_after": error.retry_after,
                "status_code": error.status_code}
    return {"text": completion.text, "model": completion.model, "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens, "finish_reason": completion.finish_reason}


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to Ray if this process is not yet: the cluster at `address`, else a local Ray bound to
    127.0.0.1. Provider keys and RLM settings reach the workers through Ray's runtime environment.
    Returns whether this call started it (so the caller knows to shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    forwarded = {name: value for name, value in os.environ.items()
                 if name.startswith(("RLM_", "OPENAI_", "ANTHROPIC_", "OLLAMA_")) or name == "PYTHONPATH"}
    options: dict[str, Any] = {"runtime_env": {"env_vars": forwarded}, "include_dashboard": False,
                               "log_to_driver": False}
    if address:
        options["address"] = address
    else:
        options.update(num_cpus=num_cpus, _node_ip_address="127.0.0.1")
    ray.init(**options)
    return True


def _remote_function():
    global _remote
    import ray

    ensure_ray(os.environ.get("RLM_RAY_ADDRESS") or None)
    if _remote is None:
        _remote = ray.remote(num_cpus=0, max_retries=0)(_complete_in_worker)
    return _remote


class RayModelClient:
    """A ModelClient whose requests run as Ray tasks (the model must be given as a model string)."""

    dispatched = 0  # Ray tasks sent by this process (for tests and diagnostics)

    def __init__(self, inner: ModelClient, model: str, base_url: str | None) -> None:
        self.inner, self.model, self.base_url = inner, model, base_url
        self.name = inner.name

    async def complete(self, messages: list[Message], *, max_tokens: int | None = None,
                       temperature: float | None = None, timeout: float | None = None) -> Completion:
        options = {"max_tokens": max_tokens, "temperature": temperature, "timeout": timeout}
        RayModelClient.dispatched += 1
        reply = await _remote_function().remote(self.model, self.base_url, messages, options)
        if "error" in reply:
            from ..errors import ModelError

            raise ModelError(reply["error"], retryable=reply["retryable"], retry_after=reply["retry_after"],
                             status_code=reply["status_code"])
        return Completion(**reply)

    async def aclose(self) -> None:
        await self.inner.aclose()
