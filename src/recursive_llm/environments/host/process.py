"""Starting and stopping a worker's OS process so that neither can hang the host.

Two properties of asyncio's subprocess transport (CPython 3.11, still so in 3.12) make the obvious
code hang for ever, and both were seen in `rlm serve` shutting down:

- `Process.wait()` returns only when the process has exited *and* every one of its pipes is
  closed. A process that leaves a descendant holding the pipes (bubblewrap killed while it was
  still setting up its namespace leaves the sandboxed interpreter running; model code can fork
  and `setsid()` out of the process group) keeps `wait()` pending although the process is gone.
- `create_subprocess_exec` cancelled halfway (a server stopping while a spare worker starts)
  kills the new process and then waits for the same condition, with pipes it had not connected
  yet and never will: that wait never ends, and neither does the shutdown awaiting it.

`start_process` lets a start finish even when its caller is cancelled (it takes milliseconds) and
then stops what it started; `stop_process` kills the whole session, closes the host's end of the
worker's stdin (a worker that escaped the kill reads EOF and leaves), and waits a bounded time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

STOP_WAIT_S = 5.0  # how long a stop waits for the exit to be reported before closing the pipes


async def start_process(*argv: str, **options: Any) -> asyncio.subprocess.Process:
    """`asyncio.create_subprocess_exec(*argv, **options)`, safe to cancel: a cancelled start is
    allowed to complete, and the process it made is stopped before the cancellation goes on."""
    starting = asyncio.ensure_future(asyncio.create_subprocess_exec(*argv, **options))
    try:
        return await asyncio.shield(starting)
    except asyncio.CancelledError:
        done, _ = await asyncio.wait({starting}, timeout=30)
        if done and not starting.cancelled() and starting.exception() is None:
            await stop_process(starting.result())
        raise


def kill_session(process: asyncio.subprocess.Process) -> None:
    """SIGKILL the session `process` leads (children the cell started too), or the process alone
    when it leads none. Synchronous: a close that is being cancelled can still call it."""
    if process.returncode is not None:
        return
    try:
        os.killpg(process.pid, 9)
    except ProcessLookupError:  # not a session leader
        # (`kill` polls first, and so reaps a process that is already dead: not after killpg,
        # or the child watcher finds its pid gone and logs "Unknown child process")
        with contextlib.suppress(ProcessLookupError):
            process.kill()


async def stop_process(process: asyncio.subprocess.Process, wait_s: float = STOP_WAIT_S) -> int | None:
    """Kill `process` and its session, release its pipes, and return its exit code (None when
    no exit was reported within `wait_s`; its pipes are closed either way)."""
    kill_session(process)
    if process.stdin is not None:
        process.stdin.close()  # a descendant the kill missed reads EOF on its channel and exits
    try:
        return await asyncio.wait_for(process.wait(), wait_s)
    except asyncio.TimeoutError:
        return process.returncode
    finally:
        # Close the host's ends now rather than when the transport is collected (possibly after
        # the event loop is gone); this also ends a wait that a lingering descendant would hold.
        close_pipes = getattr(process, "close_pipes", None)  # a worker forked by the template
        transport = getattr(process, "_transport", None)
        if close_pipes is not None:
            close_pipes()
        elif transport is not None:
            transport.close()
