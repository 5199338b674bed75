"""The default environment: model-written code runs in a separate Python process per run.

The host keeps the model clients and the keys; the worker gets a scrubbed environment (no API keys),
its own temporary directory (worker_dir.py), and the input as a file. Its messages, stderr and
sub-calls go through a WorkerChannel (channel.py). A cell that runs past its time limit (or crashes
the process) gets the worker killed and replaced.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from ...config import WorkerPolicy
from ...errors import EnvironmentFailure
from ..base import CellFailed, ReplEnvironment, SubCallHandler, until_set
from .channel import WORKER_FAULTS, WorkerChannel
from .process import start_process
from ...caps import CAPTURED_CHARS
from .sandbox import SANDBOX_TMP, IsolationPlan, Limits, confinement_policy, plan_isolation, sandbox_env, worker_argv
from ..prestart.template import ForkedProcess, WorkerTemplate
from .worker_dir import WorkerDirectory

WORKER_SCRIPT = Path(__file__).parent.parent / "inside" / "worker_main.py"
_warned: set[str] = set()
SHUTDOWN_WAIT_S = 2.0  # a worker asked to leave gets this long before it is killed
CRASH_REPORT_WAIT_S = 2.0  # how long a crashed worker's exit code is waited for, to tell the model


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


class WorkerEnvironment(ReplEnvironment):
    name = "worker"

    def __init__(self, context: Any, handler: SubCallHandler, *, max_captured_chars: int = CAPTURED_CHARS,
                 startup_timeout_s: float = 60.0, python: str = sys.executable, sandbox: str = WorkerPolicy.sandbox,
                 limits: Limits = Limits(), template: WorkerTemplate | None = None) -> None:
        super().__init__(handler)
        self._template = template  # forks this worker instead of starting an interpreter (template.py)
        self._context = context
        self._max_captured_chars = max_captured_chars
        self._startup_timeout_s = startup_timeout_s
        self._python = python
        self._limits = limits
        self.isolation: IsolationPlan = plan_isolation(sandbox)
        self.directory: WorkerDirectory | None = None  # from start() to close()
        self._channel: WorkerChannel | None = None  # while a worker process runs
        self._next_id = 0
        self.pid: int | None = None
        self.launched = asyncio.Event()  # set once its process exists (it boots while the run goes on)

    @property
    def alive(self) -> bool:
        """Is the worker process running (a spare that died while waiting is not)?"""
        return self._channel is not None and self._channel.alive

    @property
    def stderr_tail_bytes(self) -> bytes:
        return bytes(self._channel.stderr_tail_bytes) if self._channel is not None else b""

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Started as a pre-started worker is: its interpreter boots (about 60 ms) while the run
        describes the input (counting a 40M-character input's lines takes as long) and the input is
        written, then it loads the input."""
        await self._make_directory()
        booting = asyncio.ensure_future(self._spawn(waiting=True))
        try:
            await until_set(self.launched, booting)  # launched before the writing takes the CPU
            await self._write_inputs()
        except BaseException:
            booting.cancel()
            await asyncio.gather(booting, return_exceptions=True)  # close() stops what it started
            raise
        await booting
        await self._send_load()

    async def prestart(self) -> None:
        """Start the worker before its input exists (environments/prestart/pool.py): it imports everything,
        sends `waiting` and runs nothing until `load` hands it one request's input."""
        await self._make_directory()
        await self._spawn(waiting=True)

    async def load(self, context: Any, handler: SubCallHandler) -> None:
        """Give a pre-started worker its one request: the input is written into its own input
        directory, and the worker reads it and confines itself before it says `ready`."""
        if self._channel is None or self.directory is None or self.directory.input_file is not None:
            raise EnvironmentFailure("load() needs a pre-started worker that has not been loaded")
        self._context, self._handler = context, handler
        await self._load()

    async def _load(self) -> None:
        await self._write_inputs()
        await self._send_load()

    async def _send_load(self) -> None:
        assert self._channel is not None and self.directory is not None
        await self._channel.send({"op": "load", "manifest": str(self.directory.input_file)})
        await self._handshake("ready")

    async def _make_directory(self) -> None:
        _warn_once(self.isolation)
        spool = self._template.spool if self._template is not None else None
        self.directory = await WorkerDirectory.create(self.isolation, spool)

    async def _write_inputs(self) -> None:
        assert self.directory is not None
        context, self._context = self._context, None  # the files are the worker's copy; keep no second one
        await self.directory.write_inputs(context)

    def _manifest_and_policy(self, waiting: bool) -> tuple[str, str]:
        assert self.directory is not None and (waiting or self.directory.input_file is not None)
        work = SANDBOX_TMP if self.isolation.namespaces else str(self.directory.work_dir)
        policy = confinement_policy(self.isolation, input_dir=str(self.directory.input_dir), work_dir=work,
                                    limits=self._limits)
        return "-" if waiting else str(self.directory.input_file), policy

    def _argv(self, waiting: bool) -> list[str]:
        assert self.directory is not None
        manifest, policy = self._manifest_and_policy(waiting)
        python_argv = [self._python, "-I", str(WORKER_SCRIPT), manifest, str(self._max_captured_chars), policy]
        if self._python == sys.executable:
            # -S: no site processing in the worker; the host's resolved import path is handed over
            # instead, so no .pth hook of the host's installation runs in there (on this machine
            # they cost every worker start 25 ms, importing certifi).
            python_argv.insert(2, "-S")
            python_argv.append(os.pathsep.join(p for p in sys.path if p and os.path.isabs(p)))
        return worker_argv(self.isolation, python_argv, context_dir=str(self.directory.input_dir), limits=self._limits,
                           uid=self.directory.uid)

    def _spawn_options(self) -> dict[str, Any]:
        """How the worker is started. No preexec_fn: the worker sets its resource limits itself
        (they travel in its policy), so CPython can spawn it with vfork instead of forking the host."""
        assert self.directory is not None
        return {"stdin": asyncio.subprocess.PIPE, "stdout": asyncio.subprocess.PIPE, "stderr": asyncio.subprocess.PIPE,
                "cwd": self.directory.work_dir, "env": worker_env(self.directory.work_dir), "start_new_session": True}

    async def _fork_from_template(self, waiting: bool) -> ForkedProcess:
        """The same worker, forked by the template: the settings its command line would carry."""
        assert self._template is not None and self.directory is not None
        manifest, policy = self._manifest_and_policy(waiting)
        namespaces = self.isolation.namespaces
        return await self._template.fork(
            manifest=manifest, max_captured_chars=self._max_captured_chars, policy=policy,
            env=sandbox_env() if namespaces else worker_env(self.directory.work_dir),
            cwd=SANDBOX_TMP if namespaces else str(self.directory.work_dir), uid=self.directory.uid,
            input_dir=str(self.directory.input_dir))

    async def _spawn(self, waiting: bool = False) -> None:
        if self._template is not None and self._template.alive:
            process: Any = await self._fork_from_template(waiting)
        else:
            process = await start_process(*self._argv(waiting), **self._spawn_options())
        self.launched.set()
        self._channel = WorkerChannel(process, self._dispatch)
        await self._handshake("waiting" if waiting else "ready")

    async def _handshake(self, op: str) -> None:
        assert self._channel is not None
        try:
            await self._channel.handshake(op, self._startup_timeout_s)
        except EnvironmentFailure:
            self._channel = None  # the channel stopped the worker
            raise
        self.pid = self._channel.process.pid

    async def _stop_worker(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()

    async def _replace_repl(self) -> None:
        await self._stop_worker()
        await super()._replace_repl()
        await self._spawn()

    async def close(self) -> None:
        try:
            if self._channel is not None:
                await self._channel.shut_down(SHUTDOWN_WAIT_S)
            await self._stop_worker()
            if self.directory is not None:
                await asyncio.to_thread(self.directory.remove)
                self.directory = None
        finally:  # even when the close is cancelled (a loop shutting down): the uid and the directory go
            if self._channel is not None:
                self._channel.kill_now()
            if self.directory is not None:
                self.directory.remove()
                self.directory = None

    # -- the environment interface --------------------------------------------------------------
    def _running(self) -> WorkerChannel:
        if self._channel is None:
            raise EnvironmentFailure("the worker is not running: call start() first")
        return self._channel

    async def _run_cell(self, code: str, timeout: float | None, wall_timeout: float | None) -> dict:
        channel = self._running()
        self._next_id += 1
        cpu = int(timeout) + 1 if timeout else None
        try:
            return await channel.request({"op": "exec", "id": self._next_id, "code": code, "cpu_seconds": cpu},
                                               "result", timeout, wall_timeout)
        except WORKER_FAULTS as error:
            if isinstance(error, (EOFError, ConnectionError)):
                exit_code = await channel.exit_code(CRASH_REPORT_WAIT_S)
                raise CellFailed(f"WorkerCrash: the worker process died (exit code {exit_code})") from None
            raise CellFailed(f"WorkerCrash: the worker broke the protocol ({error}) and was stopped") from None

    async def get_variable(self, name: str) -> dict:
        channel = self._running()
        self._next_id += 1
        try:
            reply = await channel.request({"op": "get_var", "id": self._next_id, "name": name}, "var", 30.0)
        except (asyncio.TimeoutError, *WORKER_FAULTS) as error:
            await self._replace_repl()
            return {"ok": False, "error": f"could not read {name!r} from the worker ({type(error).__name__})"}
        return {"ok": reply["ok"], "text": reply.get("text", ""), "error": reply.get("error", "")}
