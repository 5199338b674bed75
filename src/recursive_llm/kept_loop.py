"""The event loop `RLM.completion` runs on, kept from one call to the next.

`asyncio.run` makes a loop per call and closes it, and with it the HTTP clients of that loop
(models/loop_clients.py): every call opened new connections to the provider, a TCP and TLS
handshake for each of a fan-out's concurrent calls. On a kept loop the configured models' clients
stay open, so the next call of the same `RLM` reuses those connections. A call made while
another thread is running one gets a loop of its own, as before (its clients are closed when it
ends); so does a call in a process forked from the one that made the loop (its sockets are the
parent's). `close()` closes the clients and the loop; `RLM.close()` and garbage collection call it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Coroutine
from typing import Any


class KeptLoop:
    def __init__(self) -> None:
        self._runner: asyncio.Runner | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        """Run `coroutine` to its end: on the kept loop, or on one of its own while another thread
        uses the kept loop."""
        if not self._lock.acquire(blocking=False):
            return asyncio.run(coroutine)
        try:
            if self._runner is None or self._pid != os.getpid():
                self._runner, self._pid = asyncio.Runner(), os.getpid()  # a forked child leaves the parent's be
                self._runner.get_loop()
            return self._runner.run(coroutine)
        finally:
            self._lock.release()

    def is_running_here(self) -> bool:
        """Is the running event loop the kept one (so the configured clients stay open after the run)?"""
        runner = self._runner
        if runner is None or self._pid != os.getpid():
            return False
        try:
            return runner.get_loop() is asyncio.get_running_loop()
        except RuntimeError:
            return False

    def close(self, clients: list) -> None:
        """Close `clients` on the kept loop, then the loop. Never raises (it also runs from a finalizer,
        which may run inside another event loop: then the closing is done on a thread of its own)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._close(clients)
        closing = threading.Thread(target=self._close, args=(clients,), name="rlm-close-kept-loop")
        closing.start()
        closing.join()

    def _close(self, clients: list) -> None:
        from .run import close_clients

        if not self._lock.acquire(blocking=False):
            return  # a call is running on it (a daemon thread at exit): it is left as it is
        try:
            runner, self._runner = self._runner, None
            if runner is None or self._pid != os.getpid():
                return
            with contextlib.suppress(Exception):
                runner.run(close_clients(clients))
            with contextlib.suppress(Exception):
                runner.close()
        finally:
            self._lock.release()
