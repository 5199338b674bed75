"""HTTP clients per event loop, shared by the model clients that talk to the same endpoint.

An HTTP client (httpx2's, the openai and anthropic SDKs') belongs to the event loop it was
made on. One model client can be used on several loops, one after the other or at once: every
`RLM.completion` runs on a loop of its own, and threads may call one `RLM` side by side. So a model
client holds one HTTP client per loop (`PerLoop`), and model clients of the same kind, endpoint and
key on one loop share it: runs side by side (`rlm serve`) reuse its connections instead of each
opening its own and paying the client's construction (~2.5 ms) per run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

# (id(loop), *key) -> [HTTP client, model clients holding it, the loop]
_SHARED: dict[tuple, list] = {}


class PerLoop:
    """One model client's hold on an HTTP client in each event loop it runs on."""

    def __init__(self) -> None:
        self._held: dict[int, tuple[asyncio.AbstractEventLoop, tuple, Any]] = {}  # id(loop) -> (loop, key, client)

    def get(self, key: tuple, make: Callable[[], Any]) -> Any:
        """The running loop's HTTP client for `key`: this holder's, another holder's, or a new one."""
        loop = asyncio.get_running_loop()
        held = self._held.get(id(loop))
        if held is not None and held[0] is loop:
            return held[2]
        shared_key = (id(loop), *key)
        entry = _SHARED.get(shared_key)
        if entry is None or entry[2] is not loop:  # none yet, or a dead loop's whose id was reused
            entry = _SHARED[shared_key] = [make(), 0, loop]
        entry[1] += 1
        self._held[id(loop)] = (loop, shared_key, entry[0])
        return entry[0]

    async def release(self, close: Callable[[Any], Awaitable[Any]]) -> None:
        """Let go of the running loop's HTTP client; the last holder on that loop closes it. The
        clients held on other loops stay (their runs are still going)."""
        loop = asyncio.get_running_loop()
        held = self._held.get(id(loop))
        if held is None or held[0] is not loop:
            return
        del self._held[id(loop)]
        _, shared_key, client = held
        entry = _SHARED.get(shared_key)
        if entry is not None and entry[0] is client:
            entry[1] -= 1
            if entry[1] > 0:  # other model clients on this loop still use it
                return
            del _SHARED[shared_key]
        await close(client)
