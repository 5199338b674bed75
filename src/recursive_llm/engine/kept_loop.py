"""The event loop `RLM.completion` runs on, kept from one call to the next.

`asyncio.run` makes a loop per call and closes it, and with it the HTTP clients of that loop
(models/loop_clients.py): every call opened new connections to the provider, a TCP and TLS
handshake for each of a fan-out's concurrent calls. On a kept loop the configured models' clients
stay open, so the next call of the same `RLM` reuses those connections. A call made while
another thread is running one gets a loop of its own, as before (its clients are closed when it
ends); so does a call in a process forked from the one that made the loop (its sockets are the
parent's).

Closing: `RLM.close()` (and `with RLM(...)`) closes at once. An RLM that is garbage-collected only
notes its loop (`drop`): a finalizer runs at whatever allocation triggers the collection, in any
thread (inside the start of a new thread, say), where running a loop to close connections can
deadlock. The next `completion()` of any RLM closes the noted loops, and the exit closes every
loop still open.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
import weakref
from collections.abc import Coroutine
from typing import Any

_live: "weakref.WeakSet[KeptLoop]" = weakref.WeakSet()
_dropped: list["KeptLoop"] = []  # of garbage-collected RLMs, to close in a safe place


class KeptLoop:
    def __init__(self, clients: list) -> None:
        self._clients = clients  # the configured models' clients, closed with the loop
        self._runner: asyncio.Runner | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        _live.add(self)

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        """Run `coroutine` to its end: on the kept loop, or on one of its own while another thread
        uses the kept loop."""
        close_dropped()
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

    def close(self) -> None:
        """Close the clients on the kept loop, then the loop. Never raises. Called inside another
        event loop (an async app), the closing is done on a thread of its own."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._close()
        closing = threading.Thread(target=self._close, name="rlm-close-kept-loop")
        closing.start()
        closing.join()

    def _close(self) -> None:
        from .run import close_clients

        if not self._lock.acquire(blocking=False):
            return  # a call is running on it (a daemon thread at exit): it is left as it is
        try:
            runner, self._runner = self._runner, None
            if runner is None or self._pid != os.getpid():
                return
            with contextlib.suppress(Exception):
                runner.run(close_clients(self._clients))
            with contextlib.suppress(Exception):
                runner.close()
        finally:
            self._lock.release()


def drop(kept: KeptLoop) -> None:
    """The finalizer of a garbage-collected RLM: note its loop, close nothing here (see above)."""
    _dropped.append(kept)


def close_dropped() -> None:
    """Close the loops of the RLMs collected since the last time."""
    while _dropped:
        try:
            kept = _dropped.pop()
        except IndexError:  # another thread took the last one
            return
        kept.close()


@atexit.register
def _close_all() -> None:
    close_dropped()
    for kept in list(_live):
        kept.close()
