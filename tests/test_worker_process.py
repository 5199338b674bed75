"""Starting and stopping a worker's process never hangs the host (environments/process.py).

Real processes. The shapes are the two that hung `rlm serve`'s shutdown: a start cancelled while
asyncio connects the pipes, and a process whose descendant keeps the pipes open after the kill."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

from recursive_llm.environments.host.process import start_process, stop_process

PIPES = {"stdin": asyncio.subprocess.PIPE, "stdout": asyncio.subprocess.PIPE, "stderr": asyncio.subprocess.PIPE}
MARK = "61.357"  # a sleep no other process on the machine runs


def _running(mark: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", f"sleep {mark}"], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def test_a_start_cancelled_at_any_point_ends_and_leaves_nothing_running():
    # A shell that leaves a child holding the pipes: asyncio's own create_subprocess_exec, cancelled
    # while it connects them, waits for that child for ever (the shutdown hang this guards against).
    async def cancel_after(yields: int) -> None:
        starting = asyncio.ensure_future(start_process("sh", "-c", f"sleep {MARK} & exec sleep 60",
                                                       start_new_session=True, **PIPES))
        for _ in range(yields):
            await asyncio.sleep(0)
        starting.cancel()
        done, _ = await asyncio.wait({starting}, timeout=20)
        assert done and starting.cancelled(), f"a start cancelled after {yields} steps did not end"

    async def every_point() -> None:
        for yields in range(8):
            await cancel_after(yields)

    try:
        asyncio.run(every_point())
        assert _running(MARK) == []  # the whole session was killed, descendants too
    finally:
        for pid in _running(MARK):
            os.kill(pid, signal.SIGKILL)


def test_a_stop_returns_although_an_escaped_descendant_holds_the_pipes():
    escape = (f"import os, subprocess, sys\n"
              f"child = subprocess.Popen(['sleep', '{MARK}'], start_new_session=True)\n"  # out of the group
              f"print(child.pid, flush=True)\n"
              f"import time; time.sleep(60)\n")

    async def scenario() -> tuple[int | None, int]:
        process = await start_process(sys.executable, "-c", escape, start_new_session=True, **PIPES)
        escaped = int(await asyncio.wait_for(process.stdout.readline(), 20))
        code = await asyncio.wait_for(stop_process(process, wait_s=1.0), 20)  # wait() alone never returns
        return code, escaped

    escaped = None
    try:
        code, escaped = asyncio.run(scenario())
        assert code == -signal.SIGKILL  # the process itself was killed and reaped
        os.kill(escaped, 0)  # the descendant is still there (it left the session): the stop did not wait for it
    finally:
        for pid in _running(MARK):
            os.kill(pid, signal.SIGKILL)


def test_stopping_a_process_that_already_exited_reports_its_code():
    async def scenario() -> int | None:
        process = await start_process(sys.executable, "-c", "raise SystemExit(4)", start_new_session=True, **PIPES)
        await process.wait()
        return await stop_process(process)

    assert asyncio.run(scenario()) == 4
