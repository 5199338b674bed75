"""The worker template: one pre-imported interpreter inside the sandbox that forks workers.

Started like a worker (`worker_main.py + MAX_CAPTURED_CHARS POLICY IMPORT_PATH`, in the same
bubblewrap namespaces and scrubbed environment, see template.py), it has imported everything a
worker needs and serves, on its only thread, the host's control socket (POLICY's `control_fd`, a
SOCK_SEQPACKET socket). It never reads an input and never runs model code. A `fork` request
carries three pipe ends (the new worker's stdin, stdout and stderr) and that worker's settings;
the forked process is set up as a freshly started worker would be, and then runs
`worker_main.run` exactly as one does (limits, `waiting`, `load`, confinement before model code):

- with namespaces: a PID namespace of its own (entered through a small keeper process, since this
  process may create one PID namespace for its children only once), a mount namespace with a fresh
  size-limited tmpfs on /tmp, of the template's spool only its own input directory bound read-only
  into it (and again what the sandbox binds below /tmp: Python or this package may live there),
  and a /proc that shows only its own processes; as root, the uid of its own;
- always: its own session, SIGKILL when its parent dies, the three pipes as fds 0-2 and no other
  descriptor of the template, the worker's environment and working directory, and no capability
  (those the template keeps are needed only for the steps above).

The host learns the template's pid in its own PID namespace from the credentials the kernel attaches
to every message (SO_PASSCRED), each worker's from /proc (the child of the keeper the reply names),
and each exit from an `exit` message.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import select
import signal
import socket
import struct
import sys
from typing import NoReturn

from ..inside.confine import drop_capabilities

CLONE_NEWNS, CLONE_NEWPID = 0x00020000, 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG = 1
MAX_REQUEST = 1 << 20  # a fork request is a few kilobytes of JSON
_FDS_PER_WORKER = 3

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    encode = (lambda text: text.encode() if text is not None else None)
    _check(_libc.mount(encode(source), target.encode(), encode(fstype), flags, encode(data)), f"mount {target}")


def _mounts_below(top: str) -> list[str]:
    """Mount points strictly below `top` in this mount namespace, parents first."""
    found = set()
    with open("/proc/self/mountinfo") as info:
        for line in info:
            point = re.sub(r"\\([0-7]{3})", lambda escape: chr(int(escape.group(1), 8)), line.split()[4])
            if point.startswith(top + "/"):
                found.add(point)
    return sorted(found, key=lambda path: (path.count("/"), path))


def _private_mounts(input_dir: str, private_mb: int) -> None:
    """A mount namespace of the worker's own: a fresh tmpfs on /tmp with what the sandbox had bound
    below /tmp (Python, this package, when they live there) bound again, and of the template's
    spool only this worker's input directory; all read-only. Then a /proc of its own PID namespace."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    # Opened in this namespace, before the tmpfs covers them; the spool (the mount holding every
    # worker's directory) is left out, the worker's own input directory is bound instead.
    kept = [path for path in _mounts_below("/tmp") if not input_dir.startswith(path + "/")] + [input_dir]
    handles = [(path, os.open(path, os.O_PATH)) for path in kept]
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={private_mb * 1024 * 1024},mode=1777")
    for path, handle in handles:
        if os.path.isdir(f"/proc/self/fd/{handle}"):
            os.makedirs(path, mode=0o755, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
        _mount(f"/proc/self/fd/{handle}", path, None, MS_BIND)
        _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        os.close(handle)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _become_worker(request: dict, fds: list[int], run_worker) -> NoReturn:
    """In the forked process: set up as a started worker would be, then be one. Never returns."""
    code = 3
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.closerange(_FDS_PER_WORKER, 1 << 16)  # the control socket and every other pipe of the template
        os.setsid()
        if request["namespaces"]:
            _private_mounts(request["input_dir"], request["private_mb"])
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        if request["uid"] is not None:
            uid = request["uid"]
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # after setuid: a uid change clears it
        drop_capabilities()  # what the template kept for the steps above; confinement drops them again
        run_worker(request["manifest"], request["max_captured_chars"], request["policy"])
        code = 0
    except SystemExit as leaving:  # the worker's own exit (it refused to run model code, say), its code
        code = 0 if leaving.code is None else leaving.code if isinstance(leaving.code, int) else 1
    except BaseException as error:  # noqa: BLE001 - reported on the worker's stderr, then gone
        _report(2, f"worker template: could not start the worker: {error}")
    finally:  # a copy of the template: never back into its loop, whatever happened
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(code)


def _report(fd: int, message: str) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, f"{message}\n".encode(errors="replace"))


def _keep(worker: int, status_write: int) -> NoReturn:
    """The keeper (namespaces only): the parent of the worker, which is the first process of a new
    PID namespace. It tells the template the worker's pid, outlives the worker by nothing and exits
    as it did, killed by the same signal or with the same code. It never returns into the
    template's code, whatever happens (it is a copy of the template)."""
    code = 1
    try:
        os.write(status_write, struct.pack("i", worker))
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.closerange(3, 1 << 16)
        while True:
            try:
                _, status = os.waitpid(worker, 0)
                break
            except InterruptedError:
                continue
        if os.WIFSIGNALED(status):
            killed_by = os.WTERMSIG(status)
            code = 128 + killed_by
            if killed_by not in (signal.SIGKILL, signal.SIGSTOP):  # their action cannot be set (nor changed)
                signal.signal(killed_by, signal.SIG_DFL)
            os.kill(os.getpid(), killed_by)
        else:
            code = os.WEXITSTATUS(status)
    finally:
        os._exit(code)


class Template:
    def __init__(self, control: socket.socket, run_worker) -> None:
        self.control = control
        self.run_worker = run_worker
        self.waiting: dict[int, int] = {}  # pid this process waits for (keeper or worker) -> request id
        self.workers: dict[int, int] = {}  # request id -> the worker's pid here (killed when the host goes)

    def reply(self, message: dict) -> None:
        self.control.sendmsg([json.dumps(message).encode()])  # with this process's credentials (SO_PASSCRED)

    def fork(self, request: dict, fds: list[int]) -> None:
        request_id = request["id"]
        status_read, status_write = os.pipe()
        child = os.fork()
        if child == 0:
            worker = 0
            try:
                os.close(status_read)
                if request["namespaces"]:
                    _check(_libc.unshare(CLONE_NEWPID), "unshare(CLONE_NEWPID)")
                    worker = os.fork()
            except BaseException as error:  # noqa: BLE001 - never back into the template's loop
                _report(fds[2], f"worker template: could not fork the worker: {error}")
                os._exit(3)
            if worker:
                _keep(worker, status_write)
            _become_worker(request, fds, self.run_worker)
        os.close(status_write)
        for fd in fds:
            os.close(fd)
        worker = child
        if request["namespaces"]:
            data = os.read(status_read, 4)
            worker = struct.unpack("i", data)[0] if len(data) == 4 else child
        os.close(status_read)
        self.waiting[child] = request_id
        self.workers[request_id] = worker
        # With namespaces both pids are this namespace's: the host finds the worker as the child of
        # the keeper (its pid in the host's namespace, through /proc); without, they are the host's.
        self.reply({"op": "forked", "id": request_id, "pid": worker, "keeper": child if request["namespaces"] else None})

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            request_id = self.waiting.pop(pid, None)
            if request_id is not None:
                self.workers.pop(request_id, None)
                self.reply({"op": "exit", "id": request_id, "code": os.waitstatus_to_exitcode(status)})

    def handle(self) -> bool:
        """One message from the host; False when the host has gone."""
        data, ancillary, _, _ = self.control.recvmsg(MAX_REQUEST, socket.CMSG_SPACE(_FDS_PER_WORKER * 4))
        fds: list[int] = []
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += list(struct.unpack(f"{len(payload) // 4}i", payload[: len(payload) // 4 * 4]))
        if not data:
            return False
        request = json.loads(data)
        if request.get("op") != "fork" or len(fds) != _FDS_PER_WORKER:
            for fd in fds:
                os.close(fd)
            self.reply({"op": "error", "id": request.get("id"), "error": "a fork request needs three descriptors"})
            return True
        try:
            self.fork(request, fds)
        except OSError as error:
            self.reply({"op": "error", "id": request["id"], "error": str(error)})
        return True

    def stop_all(self) -> None:
        for worker in self.workers.values():
            try:
                os.kill(worker, signal.SIGKILL)
            except ProcessLookupError:
                pass


def serve(policy_json: str, run_worker) -> None:
    """The template's loop: fork requests and exits until the host closes the control socket."""
    policy = json.loads(policy_json)
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # the host gone, the template goes
    control = socket.socket(fileno=int(policy["control_fd"]))
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    template = Template(control, run_worker)
    template.reply({"op": "template"})
    try:
        while True:
            readable, _, _ = select.select([control, wake_read], [], [])
            if wake_read in readable:
                os.read(wake_read, 4096)
                template.reap()
            if control in readable and not template.handle():
                return
    except (OSError, ValueError) as error:
        sys.stderr.write(f"worker template: stopped: {error}\n")
    finally:
        template.stop_all()
