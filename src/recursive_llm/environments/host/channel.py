"""The host's side of one worker process: frames both ways, the worker's stderr, its sub-calls.

One task owns the worker's stdout and moves every message into an inbox, so a wait elsewhere can
be cancelled without losing half a frame. While a command runs, the worker may ask the host for
sub-calls (`call` messages); each is served in a task of its own, and the time the worker spends
waiting on them does not count against the cell's compute limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from ...errors import EnvironmentFailure
from ..base import SubCallHandler
from .process import kill_session, stop_process
from ...bounds import HOST_BOUNDS
from ...caps import tail
from ..protocol import HEADER, ProtocolError, decode_body, encode, validate_worker_message, within_values

STDERR_TAIL_BYTES = 64 * 1024  # the host keeps this much of the worker's stderr (for start failures)
START_LOG_WAIT_S = 2.0  # how long a failed start waits for the worker's last words on stderr
# What a broken worker can make the host's decoding raise: the worker's fault, never the host's.
WORKER_FAULTS = (EOFError, ProtocolError, ConnectionError, ValueError, RecursionError)


class WorkerChannel:
    """Talks to one running worker process; `close` kills it and releases its pipes."""

    def __init__(self, process: asyncio.subprocess.Process, handler: SubCallHandler) -> None:
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None
        self.process = process
        self._handler = handler  # called for every sub-call; the environment's own dispatcher
        self._write_lock = asyncio.Lock()
        self._inbox: asyncio.Queue = asyncio.Queue()
        self._reader: asyncio.Task | None = None
        self._call_tasks: set[asyncio.Task] = set()
        self._calls_in_flight = 0
        self._waiting_total = 0.0
        self._waiting_since = 0.0
        # stderr is a pipe drained here, keeping only its tail: a worker writing to fd 2 for ever
        # costs neither disk nor host memory.
        self.stderr_tail_bytes = bytearray()
        self._stderr_task: asyncio.Task | None = asyncio.create_task(self._drain_stderr(process.stderr))

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    # -- starting -------------------------------------------------------------------------------
    async def handshake(self, op: str, timeout: float) -> None:
        """Wait for the worker to say `op` (`waiting`, then `ready`); after `ready` its messages
        are read. A worker that says anything else, or nothing in time, is stopped, and the error
        carries the tail of its stderr."""
        try:
            first = await asyncio.wait_for(self._read_message(), timeout)
        except (asyncio.TimeoutError, ProtocolError, EOFError) as error:
            if self._stderr_task is not None:
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(self._stderr_task), START_LOG_WAIT_S)
            log = self.stderr_tail()
            await self.close()
            raise EnvironmentFailure(f"the worker process did not start ({type(error).__name__}: {error}). "
                                     f"Worker log:\n{log}") from None
        if first.get("op") != op:
            await self.close()
            raise EnvironmentFailure(f"the worker sent {first.get('op')!r} instead of {op!r}")
        if op == "ready":
            self._reader = asyncio.create_task(self._read_forever())

    def stderr_tail(self) -> str:
        return tail(bytes(self.stderr_tail_bytes).decode("utf-8", "replace"))

    async def _drain_stderr(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            self.stderr_tail_bytes += chunk
            if len(self.stderr_tail_bytes) > STDERR_TAIL_BYTES:
                del self.stderr_tail_bytes[:-STDERR_TAIL_BYTES]

    # -- frames ---------------------------------------------------------------------------------
    async def send(self, message: dict) -> None:
        assert self.process.stdin is not None
        async with self._write_lock:
            self.process.stdin.write(encode(message))
            await self.process.stdin.drain()

    async def _read_message(self) -> dict:
        assert self.process.stdout is not None
        try:
            header = await self.process.stdout.readexactly(HEADER.size)
            size = HEADER.unpack(header)[0]
            if size > HOST_BOUNDS.max_message_bytes:  # refused before its body is read
                raise ProtocolError(f"the worker announced a {size:,}-byte message "
                                    f"(limit {HOST_BOUNDS.max_message_bytes:,})")
            body = await self.process.stdout.readexactly(size)
        except asyncio.IncompleteReadError:
            raise EOFError("the worker closed its channel") from None
        if not within_values(body, HOST_BOUNDS.max_message_values):  # refused before it is decoded
            raise ProtocolError(f"a message of more than {HOST_BOUNDS.max_message_values:,} JSON values")
        return validate_worker_message(decode_body(body))

    async def _read_forever(self) -> None:
        """Move the worker's messages into the inbox (a failure is delivered as the exception itself)."""
        while True:
            try:
                message = await self._read_message()
            except Exception as error:
                await self._inbox.put(error)
                return
            await self._inbox.put(message)

    # -- a command and the sub-calls it makes -----------------------------------------------------
    async def request(self, message: dict, reply_op: str, compute_timeout: float | None,
                      wall_timeout: float | None = None) -> dict:
        """Send a command and serve the worker's sub-calls until its reply arrives.

        `compute_timeout` counts only time the worker is not waiting for sub-calls (a cell that fans
        out 1,000 calls is not a runaway loop); `wall_timeout` counts everything. Past either,
        `asyncio.TimeoutError` (the worker is still busy: the caller replaces it).
        """
        started = time.monotonic()
        self._waiting_total = 0.0
        await self.send(message)
        while True:
            wait = self._time_left(started, compute_timeout, wall_timeout)
            if wait is not None and wait <= 0:
                raise asyncio.TimeoutError
            if self._calls_in_flight and wait is not None:
                wait = min(wait, 0.5)  # re-check: time spent waiting on calls extends the limit
            try:
                incoming = await asyncio.wait_for(self._inbox.get(), wait)
            except asyncio.TimeoutError:
                continue
            if isinstance(incoming, Exception):
                raise incoming
            if incoming["op"] == "call":
                task = asyncio.create_task(self._serve_call(incoming))
                self._call_tasks.add(task)
                task.add_done_callback(self._call_tasks.discard)
            elif incoming["op"] == reply_op and incoming["id"] == message["id"]:
                return incoming
            else:
                raise ProtocolError(f"unexpected {incoming['op']!r} message from the worker")

    def _time_left(self, started: float, compute_timeout: float | None, wall_timeout: float | None) -> float | None:
        elapsed = time.monotonic() - started
        limits = []
        if compute_timeout is not None:
            limits.append(compute_timeout - (elapsed - self._waited_on_calls()))
        if wall_timeout is not None:
            limits.append(wall_timeout - elapsed)
        return min(limits) if limits else None

    def _waited_on_calls(self) -> float:
        ongoing = time.monotonic() - self._waiting_since if self._calls_in_flight else 0.0
        return self._waiting_total + ongoing

    async def _serve_call(self, message: dict) -> None:
        self._calls_in_flight += 1
        if self._calls_in_flight == 1:
            self._waiting_since = time.monotonic()
        try:
            results = await self._handler(message["kind"], message["prompts"], message.get("model"),
                                          message.get("context"))
        except Exception as error:  # the handler reports per prompt; this is a last resort
            results = [{"ok": False, "error": f"{type(error).__name__}: {error}"}] * len(message["prompts"])
        finally:
            self._calls_in_flight -= 1
            if self._calls_in_flight == 0:
                self._waiting_total += time.monotonic() - self._waiting_since
        with contextlib.suppress(ConnectionError, AttributeError, AssertionError):
            try:
                await self.send({"op": "reply", "id": message["id"], "results": results})
            except ProtocolError as error:  # the replies do not fit in one frame: say so in every slot
                failed = {"ok": False, "error": f"the replies to this call are too large to send ({error}); "
                                                f"ask for shorter answers or send smaller batches"}
                await self.send({"op": "reply", "id": message["id"], "results": [failed] * len(results)})

    # -- stopping -------------------------------------------------------------------------------
    async def exit_code(self, wait_s: float) -> int | None:
        """The worker's exit code, waiting up to `wait_s` for it (None if it is still running)."""
        with contextlib.suppress(asyncio.TimeoutError):
            return await asyncio.wait_for(self.process.wait(), wait_s)
        return None

    async def shut_down(self, wait_s: float) -> None:
        """Ask the worker to leave, and give it `wait_s` to do so (then `close` kills it anyway)."""
        if self.alive:
            with contextlib.suppress(Exception):
                await self.send({"op": "shutdown"})
                await asyncio.wait_for(self.process.wait(), wait_s)

    async def close(self) -> None:
        for task in [*self._call_tasks, *(t for t in (self._reader, self._stderr_task) if t)]:
            task.cancel()
        self._call_tasks.clear()
        self._reader = self._stderr_task = None
        await stop_process(self.process)  # bounded: a descendant holding the pipes cannot make it hang

    def kill_now(self) -> None:
        """Synchronous kill (a close that is being cancelled can still call it)."""
        kill_session(self.process)
