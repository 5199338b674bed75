"""The default environment: model-written code runs in a separate Python process per run.

The host keeps the model clients and the keys; the worker gets a scrubbed environment (no API keys),
its own temporary directory, and the input as a file. Sub-calls come back to the host as messages.
A cell that runs past its time limit (or crashes the process) gets the worker killed and replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import EnvironmentFailure
from .base import CellResult, SubCallHandler
from .process import kill_session, start_process, stop_process
from .protocol import HEADER, MAX_FRAME_BYTES, ProtocolError, decode_body, encode, validate_worker_message, write_inputs
from .sandbox import (SANDBOX_TMP, IsolationPlan, Limits, allocate_worker_uid, confinement_policy, limits_preexec, plan_isolation,
                      release_worker_uid, sandbox_env, worker_argv)

_WORKER_SCRIPT = Path(__file__).with_name("worker_main.py")
_warned: set[str] = set()
STDERR_TAIL_BYTES = 64 * 1024  # the host keeps this much of the worker's stderr (for start failures)
_DIR_PREFIX = "rlm-worker-"
_swept = False


def sweep_stale_dirs(directory: str | None = None) -> list[str]:
    """Remove worker directories that a dead host process left behind (kill -9, a lost stream).

    A directory is `rlm-worker-<host pid>-<random>`; it is removed only when it belongs to this
    user (lstat, not followed) and no process with that pid exists."""
    removed = []
    directory = directory or tempfile.gettempdir()
    try:
        entries = os.listdir(directory)
    except OSError:
        return removed
    for name in entries:
        match = re.fullmatch(re.escape(_DIR_PREFIX) + r"(\d+)-\w+", name)
        if not match or int(match.group(1)) == os.getpid():
            continue
        path = os.path.join(directory, name)
        try:
            info = os.lstat(path)
            if info.st_uid != os.geteuid() or not os.path.isdir(path) or os.path.islink(path):
                continue
            os.kill(int(match.group(1)), 0)
            continue  # the host is alive
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        except OSError:  # PermissionError: a live process of another user
            continue
    return removed


def worker_env(private_dir: Path) -> dict[str, str]:
    """Built from scratch: locale and paths only, never the host's variables (keys among them)."""
    env = sandbox_env()
    env.update({"HOME": str(private_dir), "TMPDIR": str(private_dir)})
    return env


def _warn_once(plan: IsolationPlan) -> None:
    import warnings

    for missing in plan.missing:
        if missing.startswith("namespaces") and missing not in _warned and plan.mode == "auto":
            _warned.add(missing)
            warnings.warn(f"recursive-llm worker isolation is weaker on this machine: {missing}. "
                          f"See docs/SECURITY.md.", RuntimeWarning, stacklevel=3)


class WorkerEnvironment:
    name = "worker"

    def __init__(self, context: Any, handler: SubCallHandler, *, max_captured_chars: int = 1_000_000,
                 startup_timeout_s: float = 60.0, python: str = sys.executable, sandbox: str = "auto",
                 limits: Limits = Limits()) -> None:
        self._context = context
        self._handler = handler
        self._max_captured_chars = max_captured_chars
        self._startup_timeout_s = startup_timeout_s
        self._python = python
        self._dir: Path | None = None
        self._context_file: Path | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._write_lock = asyncio.Lock()
        self._call_tasks: set[asyncio.Task] = set()
        self._reader: asyncio.Task | None = None
        self._inbox: asyncio.Queue = asyncio.Queue()
        self._calls_in_flight = 0
        self._waiting_total = 0.0
        self._waiting_since = 0.0
        self._next_id = 0
        self.pid: int | None = None
        self.restarts = 0
        self.isolation: IsolationPlan = plan_isolation(sandbox)
        self._limits = limits
        self._uid: int | None = None  # the worker's own uid, from start() to close(), when the plan drops root
        self._stderr_tail_buffer = bytearray()
        self._stderr_task: asyncio.Task | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        await self._make_dirs()
        await self._write_inputs()
        await self._spawn()

    async def prestart(self) -> None:
        """Start the worker before its input exists (environments/pool.py): it imports everything,
        sends `waiting` and runs nothing until `load` hands it one request's input."""
        await self._make_dirs()
        await self._spawn(waiting=True)

    async def load(self, context: Any, handler: SubCallHandler) -> None:
        """Give a pre-started worker its one request: the input is written into its own input
        directory, and the worker reads it and confines itself before it says `ready`."""
        if self._proc is None or self._reader is not None or self._context_file is not None:
            raise EnvironmentFailure("load() needs a pre-started worker that has not been loaded")
        self._context, self._handler = context, handler
        await self._write_inputs()
        await self._send({"op": "load", "manifest": str(self._context_file)})
        await self._await_ready("ready")

    async def _make_dirs(self) -> None:
        global _swept
        _warn_once(self.isolation)
        if not _swept:
            _swept = True
            await asyncio.to_thread(sweep_stale_dirs)
        # <dir> (0700, the host's) / input (read-only for the worker) / work (its cwd when there
        # are no namespaces; with namespaces it gets a private tmpfs instead). Every one 0700: no
        # other user, and no other run's worker, may read the input.
        self._dir = Path(tempfile.mkdtemp(prefix=f"{_DIR_PREFIX}{os.getpid()}-"))
        (self._dir / "input").mkdir(mode=0o700)
        (self._dir / "work").mkdir(mode=0o700)
        if self.isolation.drop_uid:
            self._uid = allocate_worker_uid()
            self._hand_over_to_worker_uid()

    async def _write_inputs(self) -> None:
        assert self._dir is not None
        from ..context.loader import as_inputs

        inputs = as_inputs(self._context)
        self._context_file = await asyncio.to_thread(write_inputs, inputs, self._dir / "input")
        self._context = None  # the files are the worker's copy; do not keep a second one here
        if self.isolation.drop_uid:
            self._hand_over_to_worker_uid()
        else:
            self._owner_only_files()

    def _owner_only_files(self) -> None:
        assert self._dir is not None
        for directory, _, files in os.walk(self._dir / "input"):
            for name in files:
                path = os.path.join(directory, name)
                if os.stat(path).st_nlink == 1:  # ours, not a link to a user's (world-readable) file
                    os.chmod(path, 0o600)

    def _hand_over_to_worker_uid(self) -> None:
        """The worker's own uid must read the input: it gets ownership of the input (read-only
        modes) instead of anyone getting wider permissions. A hard link to a user's file keeps its
        owner and mode (only world-readable files are linked)."""
        assert self._dir is not None and self._uid is not None
        for directory, _, files in os.walk(self._dir / "input"):
            os.chown(directory, self._uid, self._uid)
            os.chmod(directory, 0o500)
            for name in files:
                path = os.path.join(directory, name)
                if os.stat(path).st_nlink == 1:  # ours
                    os.chown(path, self._uid, self._uid)
                    os.chmod(path, 0o400)
        if not self.isolation.namespaces:  # it reaches input/ and work/ through the host's dir
            os.chown(self._dir, -1, self._uid)
            os.chmod(self._dir, 0o710)
            os.chown(self._dir / "work", self._uid, self._uid)

    async def _spawn(self, waiting: bool = False) -> None:
        assert self._dir is not None and (waiting or self._context_file is not None)
        work = SANDBOX_TMP if self.isolation.namespaces else str(self._dir / "work")
        policy = confinement_policy(self.isolation, input_dir=str(self._dir / "input"), work_dir=work)
        python_argv = [self._python, "-I", str(_WORKER_SCRIPT), "-" if waiting else str(self._context_file),
                       str(self._max_captured_chars), policy]
        if self._python == sys.executable:
            # -S: no site processing in the worker; the host's resolved import path is handed over
            # instead, so no .pth hook of the host's installation runs in there (on this machine
            # they cost every worker start 25 ms, importing certifi).
            python_argv.insert(2, "-S")
            python_argv.append(os.pathsep.join(p for p in sys.path if p and os.path.isabs(p)))
        argv = worker_argv(self.isolation, python_argv, context_dir=str(self._dir / "input"), limits=self._limits,
                           uid=self._uid)
        # stderr is a pipe the host drains, keeping only its tail: a worker writing to fd 2 for
        # ever costs neither disk nor host memory.
        self._proc = await start_process(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            cwd=self._dir / "work", env=worker_env(self._dir / "work"), start_new_session=True,
            preexec_fn=limits_preexec(self._limits, nproc=self.isolation.drop_uid))
        self._stderr_tail_buffer = bytearray()
        self._stderr_task = asyncio.create_task(self._drain_stderr(self._proc.stderr))
        self._inbox = asyncio.Queue()
        self._calls_in_flight = 0
        self._waiting_total = 0.0
        self._waiting_since = 0.0
        await self._await_ready("waiting" if waiting else "ready")

    async def _await_ready(self, op: str) -> None:
        """Wait for the worker's `op` (`waiting`, then `ready`); start reading its messages after `ready`."""
        assert self._proc is not None
        try:
            ready = await asyncio.wait_for(self._read_message(), self._startup_timeout_s)
        except (asyncio.TimeoutError, ProtocolError, EOFError) as error:
            if self._stderr_task is not None:
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(self._stderr_task), 2.0)
            log = self._stderr_tail()
            await self._kill()
            raise EnvironmentFailure(f"the worker process did not start ({type(error).__name__}: {error}). "
                                     f"Worker log:\n{log}") from None
        if ready.get("op") != op:
            await self._kill()
            raise EnvironmentFailure(f"the worker sent {ready.get('op')!r} instead of {op!r}")
        self.pid = self._proc.pid
        if op == "ready":
            self._reader = asyncio.create_task(self._read_forever(self._inbox))

    async def _drain_stderr(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            self._stderr_tail_buffer += chunk
            if len(self._stderr_tail_buffer) > STDERR_TAIL_BYTES:
                del self._stderr_tail_buffer[:-STDERR_TAIL_BYTES]

    def _stderr_tail(self) -> str:
        return bytes(self._stderr_tail_buffer).decode("utf-8", "replace")[-2000:]

    async def _kill(self) -> None:
        for task in [*self._call_tasks, *(t for t in (self._reader, self._stderr_task) if t)]:
            task.cancel()
        self._call_tasks.clear()
        self._reader = self._stderr_task = None
        proc, self._proc = self._proc, None
        if proc is not None:
            await stop_process(proc)  # bounded: a descendant holding the pipes cannot make it hang

    async def _restart(self) -> None:
        await self._kill()
        self.restarts += 1
        await self._spawn()

    async def close(self) -> None:
        try:
            if self._proc is not None and self._proc.returncode is None:
                with contextlib.suppress(Exception):
                    await self._send({"op": "shutdown"})
                    await asyncio.wait_for(self._proc.wait(), 2.0)
            await self._kill()
        finally:  # even when the close is cancelled (a loop shutting down): the uid and the directory go
            if self._proc is not None:
                kill_session(self._proc)
            release_worker_uid(self._uid)
            self._uid = None
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    # -- protocol -------------------------------------------------------------------------------
    async def _send(self, message: dict) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        async with self._write_lock:
            self._proc.stdin.write(encode(message))
            await self._proc.stdin.drain()

    async def _read_message(self) -> dict:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            header = await self._proc.stdout.readexactly(HEADER.size)
            size = HEADER.unpack(header)[0]
            if size > MAX_FRAME_BYTES:
                raise ProtocolError(f"the worker announced a {size:,}-byte message (limit {MAX_FRAME_BYTES:,})")
            body = await self._proc.stdout.readexactly(size)
        except asyncio.IncompleteReadError:
            raise EOFError("the worker closed its channel") from None
        return validate_worker_message(decode_body(body))

    async def _read_forever(self, inbox: asyncio.Queue) -> None:
        """Move the worker's messages into `inbox` (a failure is delivered as the exception itself).

        One task owns the stream, so waits elsewhere can be cancelled without losing half a frame.
        """
        while True:
            try:
                message = await self._read_message()
            except Exception as error:
                await inbox.put(error)
                return
            await inbox.put(message)

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
                await self._send({"op": "reply", "id": message["id"], "results": results})
            except ProtocolError as error:  # the replies do not fit in one frame: say so in every slot
                failed = {"ok": False, "error": f"the replies to this call are too large to send ({error}); "
                                                f"ask for shorter answers or send smaller batches"}
                await self._send({"op": "reply", "id": message["id"], "results": [failed] * len(results)})

    def _waited_on_calls(self) -> float:
        ongoing = time.monotonic() - self._waiting_since if self._calls_in_flight else 0.0
        return self._waiting_total + ongoing

    async def _request(self, message: dict, reply_op: str, compute_timeout: float | None,
                       wall_timeout: float | None = None) -> dict:
        """Send a command and serve the worker's sub-calls until its reply arrives.

        `compute_timeout` counts only time the worker is not waiting for sub-calls (a cell that fans
        out 1,000 calls is not a runaway loop); `wall_timeout` counts everything.
        """
        started = time.monotonic()
        self._waiting_total = 0.0
        await self._send(message)
        while True:
            now = time.monotonic()
            limits = []
            if compute_timeout is not None:
                limits.append(compute_timeout - (now - started - self._waited_on_calls()))
            if wall_timeout is not None:
                limits.append(wall_timeout - (now - started))
            wait = min(limits) if limits else None
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

    # -- the environment interface --------------------------------------------------------------
    def rebind(self, handler: SubCallHandler) -> None:
        """Send later sub-calls to `handler` (a session's next turn is a new run on the same REPL)."""
        self._handler = handler

    async def execute(self, code: str, timeout: float | None, wall_timeout: float | None = None) -> CellResult:
        if self._proc is None:
            raise EnvironmentFailure("the worker is not running: call start() first")
        self._next_id += 1
        started = time.monotonic()
        try:
            cpu = int(timeout) + 1 if timeout else None
            reply = await self._request({"op": "exec", "id": self._next_id, "code": code, "cpu_seconds": cpu}, "result",
                                        timeout, wall_timeout)
        except asyncio.TimeoutError:
            await self._restart()
            return CellResult(error="TimeoutError: the cell ran past its time limit and was stopped",
                              timed_out=True, restarted=True, duration_s=time.monotonic() - started)
        except (EOFError, ProtocolError, ConnectionError, ValueError, RecursionError) as error:
            # (ValueError, RecursionError: whatever a forged frame makes fail is the worker's fault)
            code_ = None
            if self._proc is not None and isinstance(error, (EOFError, ConnectionError)):
                with contextlib.suppress(asyncio.TimeoutError):
                    code_ = await asyncio.wait_for(self._proc.wait(), 2.0)
            await self._restart()
            what = (f"the worker process died (exit code {code_})" if isinstance(error, (EOFError, ConnectionError))
                    else f"the worker broke the protocol ({error}) and was stopped")
            return CellResult(error=f"WorkerCrash: {what}", restarted=True,
                              duration_s=time.monotonic() - started)
        return CellResult(stdout=reply["stdout"], stderr=reply["stderr"], error=reply.get("error"),
                          final=reply.get("final") if isinstance(reply.get("final"), str) else None,
                          duration_s=time.monotonic() - started)

    async def get_variable(self, name: str) -> dict:
        self._next_id += 1
        try:
            reply = await self._request({"op": "get_var", "id": self._next_id, "name": name}, "var", 30.0)
        except (asyncio.TimeoutError, EOFError, ProtocolError, ConnectionError, ValueError, RecursionError) as error:
            await self._restart()
            return {"ok": False, "error": f"could not read {name!r} from the worker ({type(error).__name__})"}
        return {"ok": reply["ok"], "text": reply.get("text", ""), "error": reply.get("error", "")}
