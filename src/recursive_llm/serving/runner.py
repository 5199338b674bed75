"""A request's run on `rlm serve`: admission (at most `max_concurrent` runs; past it a 429 with a
`Retry-After` from the runs in flight), the RLM it builds with its client's own run store (the call
cache is per client) and memory workspace, its errors as 400 or 502, and its slot given back."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..cli.options import make_rlm
from ..errors import ConfigError, ContextError, RLMError
from .config import ServeConfig
from .errors import RequestError
from .limits import as_keywords
from .request import RunRequest
from .runs import NO_RETRY, Attempts, RunClock
from .tokens import LOOPBACK_CLIENT


@dataclass
class ServerState:
    """What the server keeps across requests: the runs in flight and how long runs take (`clock`),
    the runs a retry may join (`attempts`), one run store per client (`stores`)."""

    started: float = field(default_factory=time.time)
    active: int = 0
    clock: RunClock = field(default_factory=RunClock)
    attempts: Attempts = field(default_factory=Attempts)
    stores: dict[str, Any] = field(default_factory=dict)

    def admit(self, config: ServeConfig) -> None:
        """Take a slot for a request, or RequestError 429 when all `max_concurrent` are taken."""
        if self.active >= config.max_concurrent:
            raise RequestError(429, f"the server is running {config.max_concurrent} requests, its limit; retry "
                                    f"shortly", "rate_limit_error", "too_many_requests",
                               headers={"Retry-After": self.clock.retry_after()})
        self.active += 1

    def release(self, request: RunRequest | None = None) -> None:
        """Give a request's slot back (and its run's ticket, when it got one)."""
        self.active -= 1
        if request is not None:
            self.clock.end(request.ticket)

    def close(self) -> None:
        for store in self.stores.values():
            store.close()


def store_for(stores: dict[str, Any], client: str | None):
    """The run store of a client's requests: one per client for the server's life (opening one per
    request cost CPU under load), so the call cache is per client: one client's cached calls never
    answer (and so reveal) another's. A store that failed is replaced for the next request (the
    runs still using it finish with it)."""
    from ..record.store import Store

    namespace = client or LOOPBACK_CLIENT
    store = stores.get(namespace)
    if store is None or store.error is not None:
        store = stores[namespace] = Store(cache_namespace=namespace)
    return store


def workspace_for(request: RunRequest):
    """The request's memory workspace, scoped to its client: another client's token never reaches it."""
    from ..engine.memory import Workspace

    return None if request.memory is None else Workspace(request.memory, owner=request.client or LOOPBACK_CLIENT)


def top_run_id(event: dict[str, Any]) -> str | None:
    """The run id of a top-level run's `run_start` event (None for any other event): what a
    request's access-log line names, also for a run its client left."""
    return event["run_id"] if event["type"] == "run_start" and event.get("parent_run_id") is None else None


async def run_request(config: ServeConfig, request: RunRequest, on_event: Callable[[dict], None] | None,
                      stores: dict[str, Any]):
    """The result of the request's run. A client that leaves (the task cancelled) marks it interrupted."""
    store = store_for(stores, request.client)
    started: dict[str, str] = {}

    def listen(event: dict[str, Any]) -> None:
        if top_run_id(event):
            started["run_id"] = event["run_id"]
        if on_event is not None:
            on_event(event)

    try:
        rlm = make_rlm(as_keywords(request.limits), model=request.model, sub_model=config.sub_model,
                       base_url=config.base_url, sandbox=config.sandbox, temperature=request.temperature,
                       max_retries=config.max_retries, max_output_tokens=None, call_timeout_s=config.call_timeout_s,
                       on_event=listen, store=store, memory=workspace_for(request))
        return await rlm.acompletion(request.query, request.context, schema=request.schema)
    except asyncio.CancelledError:  # the client went away (or shutdown ran out of grace): it will not end
        if "run_id" in started:
            store.interrupt(started["run_id"], "the client disconnected before the run finished; it was stopped")
        raise
    except ContextError as error:
        raise RequestError(400, f"bad context: {error}") from None
    except ConfigError as error:
        raise RequestError(400, f"bad configuration: {error}") from None
    except RLMError as error:
        raise RequestError(502, f"the run failed: {error}", "server_error", headers=NO_RETRY) from None
