"""The host's side of the worker template: cheap workers forked from a pre-imported interpreter.

A fresh worker costs an interpreter start and its imports (60 to 90 ms of CPU here, see
benchmarks/worker_start.py). A `WorkerTemplate` pays that once: it starts one process with the
worker's command line inside the same sandbox (`template_main.py`), and asks it to fork each
worker. Every forked worker is still used once, by one run, and is set up as a started worker
would be (its own PID and mount namespaces, private /tmp and uid with namespaces; its own
session; the worker's environment) before it confines itself (capabilities, Landlock, seccomp)
exactly as any worker does; the template itself runs no request's code and reads no input.

Used by the pool of pre-started workers (pool.py) for `rlm serve`; `RLM_WORKER_TEMPLATE=0` turns
it off (the pool then starts a fresh interpreter per worker).

`ForkedProcess` is what the rest of the host sees: the pipes, pid, `returncode`, `wait()`,
`kill()` of an `asyncio.subprocess.Process`, so WorkerChannel and process.py treat both the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import sys
import tempfile
from pathlib import Path

from ...errors import EnvironmentFailure
from ..host.process import start_process, stop_process
from ..host.sandbox import IsolationPlan, Limits, bwrap_command, sandbox_env
from ..host.worker_dir import DIR_PREFIX

MAX_MESSAGE = 64 * 1024
START_TIMEOUT_S = 60.0


class ForkedProcess:
    """A worker forked by the template, with the interface of `asyncio.subprocess.Process` that
    the host uses."""

    def __init__(self, pid: int, stdin: asyncio.StreamWriter, stdout: asyncio.StreamReader,
                 stderr: asyncio.StreamReader, transports: list[asyncio.BaseTransport]) -> None:
        self.pid = pid
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.returncode: int | None = None
        self._exited = asyncio.get_running_loop().create_future()
        self._transports = transports

    def exited(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
        if not self._exited.done():
            self._exited.set_result(code)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def close_pipes(self) -> None:
        for transport in self._transports:
            transport.close()


async def _pipes() -> tuple[list[int], asyncio.StreamWriter, asyncio.StreamReader, asyncio.StreamReader, list]:
    """Three pipes: the worker's ends (stdin's read end, stdout's and stderr's write ends) and the
    host's as asyncio streams."""
    loop = asyncio.get_running_loop()
    ends = [os.pipe() for _ in range(3)]
    theirs = [ends[0][0], ends[1][1], ends[2][1]]
    try:
        stdin_transport, stdin_protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, open(ends[0][1], "wb", buffering=0))
        stdin = asyncio.StreamWriter(stdin_transport, stdin_protocol, None, loop)
        readers, transports = [], [stdin_transport]
        for read_end in (ends[1][0], ends[2][0]):
            reader = asyncio.StreamReader(limit=2 ** 16, loop=loop)
            transport, _ = await loop.connect_read_pipe(lambda r=reader: asyncio.StreamReaderProtocol(r, loop=loop),
                                                        open(read_end, "rb", buffering=0))
            readers.append(reader)
            transports.append(transport)
    except BaseException:
        for fd in theirs:
            os.close(fd)
        raise
    return theirs, stdin, readers[0], readers[1], transports


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            return [int(child) for child in children.read().split()]
    except (OSError, ValueError):
        return []


class WorkerTemplate:
    """One template process for one event loop and one isolation plan, from `start` to `close`."""

    def __init__(self, isolation: IsolationPlan, limits: Limits, python_argv: list[str]) -> None:
        self.isolation = isolation
        self.limits = limits
        self._python_argv = python_argv  # the worker's command line up to its policy (worker_main.py +)
        self.spool: Path | None = None  # with namespaces: where the workers' directories are made
        self._process: asyncio.subprocess.Process | None = None
        self._control: socket.socket | None = None
        self._next_id = 0
        self._replies: dict[int, asyncio.Future] = {}
        self._forked: dict[int, ForkedProcess] = {}
        self._ready: asyncio.Future | None = None
        self._host_pid: int | None = None  # the template process's pid in the host's PID namespace
        self.forks = 0

    @property
    def alive(self) -> bool:
        return self._control is not None and self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        host_end, template_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        host_end.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        host_end.setblocking(False)
        self._control = host_end
        policy = json.dumps({"control_fd": template_end.fileno()})
        argv = [*self._python_argv[:4], "+", "0", policy, *self._python_argv[4:]]
        cwd = "/"
        if self.isolation.namespaces:
            self.spool = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-"))
            os.chmod(self.spool, 0o700)
            prefix = bwrap_command(context_dir=str(self.spool), private_mb=8, drop_uid=self.isolation.drop_uid,
                                   template=True)
            for name, value in sandbox_env().items():
                prefix += ["--setenv", name, value]
            argv = [*prefix, "--", *argv]
        self._ready = loop.create_future()
        loop.add_reader(host_end.fileno(), self._on_message)
        try:
            self._process = await start_process(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.DEVNULL, pass_fds=(template_end.fileno(),),
                                                cwd=cwd, env=sandbox_env(), start_new_session=True)
        finally:
            template_end.close()
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), START_TIMEOUT_S)
        except (asyncio.TimeoutError, EnvironmentFailure) as error:
            await self.close()
            raise EnvironmentFailure(f"the worker template did not start ({error or 'timed out'})") from None

    def _on_message(self) -> None:
        assert self._control is not None
        while True:
            try:
                data, ancillary, _, _ = self._control.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(12))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, ancillary = b"", []
            if not data:
                self._lost()
                return
            pid = None
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= 12:
                    pid = struct.unpack("iII", payload[:12])[0]
            self._dispatch(json.loads(data), pid)

    def _dispatch(self, message: dict, sender_pid: int | None) -> None:
        op, request_id = message.get("op"), message.get("id")
        if op == "template" and self._ready is not None and not self._ready.done():
            self._host_pid = sender_pid  # the template's pid here (the kernel's, from SO_PASSCRED)
            self._ready.set_result(None)
        elif op in ("forked", "error") and request_id in self._replies:
            future = self._replies.pop(request_id)
            if not future.done():
                keeper = message.get("keeper")
                pid = message.get("pid") if keeper is None else self._worker_pid(keeper)
                future.set_result((message, pid))
        elif op == "exit" and request_id in self._forked:
            self._forked.pop(request_id).exited(int(message.get("code", -9)))

    def _worker_pid(self, keeper: object) -> int | None:
        """With namespaces: the worker's pid in the host's PID namespace, the only child of the
        keeper whose pid in the template's namespace is `keeper` (/proc/<pid>/status NSpid)."""
        if self._host_pid is None or not isinstance(keeper, int):
            return None
        for child in _children(self._host_pid):
            try:
                with open(f"/proc/{child}/status") as status:
                    nspid = next((line.split()[1:] for line in status if line.startswith("NSpid:")), [])
            except OSError:
                continue
            if nspid[1:2] == [str(keeper)]:
                workers = _children(child)
                return workers[0] if len(workers) == 1 else None
        return None

    def _lost(self) -> None:
        """The template is gone, and with it every worker it forked."""
        if self._control is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._control.fileno())
            self._control.close()
            self._control = None
        failure = EnvironmentFailure("the worker template stopped")
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(failure)
        for future in self._replies.values():
            if not future.done():
                future.set_exception(failure)
        self._replies.clear()
        for forked in self._forked.values():
            forked.exited(-signal.SIGKILL)
        self._forked.clear()

    async def fork(self, *, manifest: str, max_captured_chars: int, policy: str, env: dict[str, str], cwd: str,
                   uid: int | None, input_dir: str) -> ForkedProcess:
        """A new worker process, as `worker_main.py MANIFEST MAX_CAPTURED_CHARS POLICY` would start."""
        if not self.alive:
            raise EnvironmentFailure("the worker template is not running")
        assert self._control is not None
        self._next_id += 1
        request_id = self._next_id
        request = {"op": "fork", "id": request_id, "manifest": manifest, "max_captured_chars": max_captured_chars,
                   "policy": policy, "env": env, "cwd": cwd, "uid": uid, "input_dir": input_dir,
                   "namespaces": self.isolation.namespaces, "private_mb": self.limits.private_dir_mb}
        theirs, stdin, stdout, stderr, transports = await _pipes()
        reply = asyncio.get_running_loop().create_future()
        self._replies[request_id] = reply
        try:
            self._control.sendmsg([json.dumps(request).encode()],
                                  [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("3i", *theirs))])
        except OSError as error:
            self._replies.pop(request_id, None)
            for transport in transports:
                transport.close()
            raise EnvironmentFailure(f"the worker template did not take the request ({error})") from None
        finally:
            for fd in theirs:
                os.close(fd)
        try:
            message, pid = await asyncio.wait_for(reply, START_TIMEOUT_S)
        except BaseException:
            for transport in transports:
                transport.close()
            raise
        if message["op"] != "forked" or not isinstance(pid, int) or pid <= 0:
            for transport in transports:
                transport.close()
            raise EnvironmentFailure(f"the worker template could not fork a worker ({message.get('error')})")
        forked = ForkedProcess(pid, stdin, stdout, stderr, transports)
        self._forked[request_id] = forked
        self.forks += 1
        return forked

    async def close(self) -> None:
        """Stop the template (the workers it forked go with it) and remove its spool."""
        control, process = self._control, self._process
        if control is not None:
            with contextlib.suppress(Exception):
                control.shutdown(socket.SHUT_RDWR)  # the template reads EOF, kills its workers and leaves
        if process is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(process.wait()), 2.0)
            await stop_process(process)
        self._lost()
        if self.spool is not None:
            import shutil

            await asyncio.to_thread(shutil.rmtree, self.spool, True)
            self.spool = None


def python_argv_for_template(worker_script: str, python: str = sys.executable) -> list[str]:
    """The worker's command line without its per-worker arguments: python -I -S SCRIPT, and the
    host's import path last (see WorkerEnvironment._argv)."""
    return [python, "-I", "-S", worker_script, os.pathsep.join(p for p in sys.path if p and os.path.isabs(p))]


def enabled() -> bool:
    """Workers come from a template unless `RLM_WORKER_TEMPLATE=0` (Linux only: namespaces, fork)."""
    return sys.platform.startswith("linux") and os.environ.get("RLM_WORKER_TEMPLATE", "1") != "0"
