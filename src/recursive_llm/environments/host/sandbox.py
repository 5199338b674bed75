"""Isolation layers for the worker process, strongest available first.

1. A scrubbed environment (no API keys or host variables) and a private working directory.
2. Resource limits (setrlimit, inherited by everything the worker starts): address space, file
   size, processes, open files, and a CPU-time ceiling, set by the worker on itself first thing
   (`worker_rlimits`); the worker also lowers its CPU limit per cell.
3. Kernel confinement the worker applies to itself before any model code (`confine.py`): no
   capabilities, Landlock (reads only of what Python needs and the input, writes only in its
   private directory, no TCP, signals / ptrace / abstract sockets scoped to itself) and a seccomp
   filter (no sockets, no ptrace, no namespaces or mounts, no metadata changes, ...). Without
   namespaces the filter also refuses new processes. Unprivileged: works in any container.
4. Linux namespaces through bubblewrap, when the machine allows them: no network (a private
   loopback), its own PID/IPC/UTS namespaces, a read-only view of only what Python needs (the
   Python install, this package, the input), a size-limited private tmpfs as the only writable
   place, and, when started as root, a uid of its own with no capabilities.

Without namespaces the worker keeps the host's uid (as root: with every capability dropped):
another uid could not start a Python installed under a 0700 directory (`/root`, `mktemp -d`),
and Landlock's scoping separates workers from the host and from each other as a uid would. Only
where Landlock lacks scoping (ABI < 6) does a root host fall back to a uid of the worker's own,
when that uid can run this Python and import this package.

`plan_isolation()` finds out once per process what is available; `rlm doctor` prints it.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from ...config import SANDBOX_MODES as MODES, WorkerPolicy

NOBODY = 65534  # the user the probes run as
# When the host is root, each worker runs as a uid of its own, above any real user's: workers of
# concurrent runs cannot signal or trace each other, and the process limit counts per worker.
WORKER_UID_BASE = 1_000_000_000
WORKER_UID_SLOTS = 256
_live_uids: set[int] = set()
_SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc/alternatives")
SANDBOX_TMP = "/tmp"  # the worker's private, size-limited, writable directory inside the sandbox


@dataclass(frozen=True)
class Limits:
    """Resource limits of one worker (and every process it starts)."""

    memory_mb: int = WorkerPolicy.memory_mb
    max_file_mb: int = 1024
    private_dir_mb: int = 512
    max_processes: int = 64
    max_open_files: int = 512
    stack_mb: int = 256
    cpu_seconds: int = 3600  # the whole worker; cells are bounded per cell as well


@dataclass
class IsolationPlan:
    mode: str
    namespaces: bool
    drop_uid: bool
    landlock: int = 0  # the Landlock ABI the worker confines itself with (0: none)
    seccomp: bool = False
    processes: bool = True  # may model code start processes (False: fork/clone refused by seccomp)
    layers: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"isolation mode: {self.mode}"]
        lines += [f"  active: {layer}" for layer in self.layers]
        lines += [f"  missing: {item}" for item in self.missing]
        return "\n".join(lines)


@functools.lru_cache(maxsize=1)
def _python_roots() -> tuple[str, ...]:
    """Directories the worker needs to run this Python and import this package and its deps (the
    same for the whole process: worked out once, not for every worker)."""
    roots = {sys.base_prefix, sys.prefix, sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"],
             sysconfig.get_paths()["platlib"], str(Path(__file__).resolve().parents[3])}
    roots.add(str(Path(sys.executable).resolve().parent))
    return tuple(sorted(r for r in roots if r and os.path.isdir(r)))


def _ancestors(path: str) -> list[str]:
    parts = Path(path).parts
    return ["/" + "/".join(parts[1:i]) for i in range(2, len(parts))]


def _outermost(paths: list[str]) -> list[str]:
    """`paths` without those inside another of them: one bind shows its subdirectories already, and
    a bind below another bind is a mount with a parent mount, which a worker forked without root
    could not bind again (the kernel refuses a non-recursive bind of a mount whose child mounts are
    locked, as a nested user namespace's are: EINVAL, issue 25: a venv under a private directory
    in /tmp with its site-packages bound on top of it)."""
    return [p for p in paths if not any(p.startswith(q + "/") for q in paths if q != p)]


def bwrap_command(*, context_dir: str, private_mb: int, drop_uid: bool, template: bool = False) -> list[str]:
    """The bubblewrap prefix that runs a command inside the sandbox. `template`: the worker
    template (template_main.py), which keeps its capabilities (in an unprivileged user namespace
    when not root) to give each worker it forks namespaces and a uid of its own."""
    command = ["bwrap", "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
               "--unshare-cgroup-try", "--die-with-parent", "--new-session"]
    if not drop_uid:  # not root: an unprivileged user namespace, with no capabilities in it
        command += ["--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY),
                    "--cap-add" if template else "--cap-drop", "ALL"]
    # As root, setpriv (run next, inside) needs CAP_SETUID to become 65534; it then clears every
    # capability set (--inh-caps=-all --bounding-set=-all) and the kernel drops the rest on setuid.
    binds = [d for d in _SYSTEM_DIRS if os.path.isdir(d)]
    for directory in binds:
        command += ["--ro-bind", directory, directory]
    # The private tmpfs first: binds below /tmp (the input often is) must be mounted on top of it.
    command += ["--proc", "/proc", "--dev", "/dev",
                "--perms", "1777", "--size", str(private_mb * 1024 * 1024), "--tmpfs", SANDBOX_TMP]
    covered = [*binds, SANDBOX_TMP]
    extra = _outermost([r for r in _python_roots() if not any(r == d or r.startswith(d + "/") for d in binds)])
    made: set[str] = set()
    for path in [*extra, context_dir]:
        for parent in _ancestors(path):  # bwrap would create missing parents as 0700
            if parent not in made and parent not in covered and not any(parent.startswith(d + "/") for d in binds):
                command += ["--perms", "0755", "--dir", parent]
                made.add(parent)
    for directory in extra:
        command += ["--ro-bind", directory, directory]
    command += ["--ro-bind", context_dir, context_dir, "--chdir", SANDBOX_TMP, "--clearenv"]
    return command


def allocate_worker_uid() -> int:
    """A uid no other live worker on this machine has: unique per host process and live slot.

    Slots are reused only after `release_worker_uid`; with every slot of this process taken, a new
    worker is refused rather than given a uid that a live worker already has."""
    base = WORKER_UID_BASE + os.getpid() * WORKER_UID_SLOTS
    for slot in range(WORKER_UID_SLOTS):
        if base + slot not in _live_uids:
            _live_uids.add(base + slot)
            return base + slot
    from ...errors import EnvironmentFailure

    raise EnvironmentFailure(f"{WORKER_UID_SLOTS} workers of this process are alive; close some first")


def release_worker_uid(uid: int | None) -> None:
    _live_uids.discard(uid)


def setpriv_command(uid: int = NOBODY) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all", "--no-new-privs"]


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[3])


# Run as the worker would run: this Python, its standard library and this package must import.
_PROBE_CODE = ("import os, sys, json; sys.path.insert(0, sys.argv[1]); "
               "import recursive_llm.environments.protocol; print(os.getuid())")


@functools.lru_cache(maxsize=None)
def _namespaces_work(drop_uid: bool) -> tuple[bool, str]:
    """Start a trivial sandboxed Python once: the only reliable test of what this machine allows."""
    if shutil.which("bwrap") is None:
        return False, "bubblewrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    if drop_uid and shutil.which("setpriv") is None:
        return False, "setpriv is not installed (util-linux), needed to drop root"
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rlm-probe-") as probe:
        os.chmod(probe, 0o755)
        command = bwrap_command(context_dir=probe, private_mb=8, drop_uid=drop_uid)
        if drop_uid:
            command += ["--", *setpriv_command()]
        else:
            command += ["--"]
        command += [sys.executable, "-I", "-S", "-c", _PROBE_CODE, _package_root()]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired) as error:
            return False, f"bubblewrap could not start ({error})"
    if done.returncode != 0 or done.stdout.strip() != str(NOBODY):
        reason = (done.stderr.strip().splitlines() or ["unknown error"])[-1]
        return False, f"bubblewrap is installed but cannot create namespaces here ({reason})"
    return True, ""


@functools.lru_cache(maxsize=None)
def _uid_drop_works() -> bool:
    """Without namespaces, a root host can still run the worker as uid 65534 through setpriv, if
    that uid can run this Python and import this package (under a 0700 directory it cannot: a
    Python under /root even starts, on the system's standard library, and fails later)."""
    if shutil.which("setpriv") is None:
        return False
    try:
        done = subprocess.run([*setpriv_command(), sys.executable, "-I", "-S", "-c", _PROBE_CODE, _package_root()],
                              cwd="/", capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0 and done.stdout.strip() == str(NOBODY)


_CONFINE_PROBE = """
import os, sys, tempfile
sys.path.insert(0, sys.argv[1])
from recursive_llm.environments.inside import confine
abi = confine.landlock_abi()
work = tempfile.mkdtemp()
policy = {"drop_caps": True, "landlock": abi if abi >= 6 else 0, "seccomp": True, "processes": False,
          "read": sys.argv[2:], "write": [work]}
try:
    active = confine.confine(policy)
    import colorsys  # a module imported after confinement still loads
    os.listdir(sys.argv[1])
    try:
        os.fork()
        active.append("fork-allowed")
    except OSError:
        pass
except Exception as error:
    print(abi, "failed", error)
else:
    print(abi, " ".join(active))
"""


@functools.lru_cache(maxsize=None)
def _confinement() -> tuple[int, bool, str]:
    """(Landlock ABI usable with scoping or 0, seccomp usable, why not) from one real attempt."""
    try:
        done = subprocess.run([sys.executable, "-I", "-S", "-c", _CONFINE_PROBE, _package_root(), *_read_roots()],
                              cwd="/", capture_output=True, text=True, timeout=20, env=sandbox_env())
    except (OSError, subprocess.SubprocessError) as error:
        return 0, False, f"the probe did not run ({error})"
    words = done.stdout.split()
    if done.returncode != 0 or len(words) < 2:
        return 0, False, (done.stderr.strip().splitlines() or ["the probe failed"])[-1]
    if words[1] == "failed":
        return 0, False, " ".join(words[2:])
    abi = int(words[0])
    landlock = abi if any(w.startswith("landlock") for w in words[1:]) else 0
    seccomp = "seccomp" in words and "fork-allowed" not in words
    why = "" if landlock else (f"Landlock ABI {abi} lacks signal and abstract-socket scoping (needs 6, Linux 6.12)"
                               if abi else "Landlock is not available in this kernel")
    return landlock, seccomp, why


def _read_roots() -> list[str]:
    """What the worker may read (and execute) besides the system directories and its input: the
    Python installation, this package, and the site directories of the host's import path."""
    return list(_read_roots_for(tuple(sys.path)))


@functools.lru_cache(maxsize=8)
def _read_roots_for(path: tuple[str, ...]) -> tuple[str, ...]:  # per import path, not per worker
    roots = set(_python_roots())
    roots.update(p for p in path if p and os.path.isabs(p) and os.path.isdir(p)
                 and os.path.basename(p.rstrip("/")) in ("site-packages", "dist-packages"))
    return tuple(sorted(roots))


def _probe(mode: str, root: bool) -> tuple[bool, str, tuple[int, bool, str]]:
    """(namespaces work, why not, (Landlock ABI, seccomp, why not)): the two probes start a
    process each, once per process, so they run side by side."""
    import threading

    probed: list = []
    cache_info = getattr(_confinement, "cache_info", None)
    confinement_probe = None
    if cache_info is not None and cache_info().currsize:  # known already: no thread per worker
        probed.append(_confinement())
    else:
        confinement_probe = threading.Thread(target=lambda: probed.append(_confinement()), daemon=True)
        confinement_probe.start()
    works, reason = (False, "disabled (sandbox='process')") if mode == "process" else _namespaces_work(root)
    if confinement_probe is not None:
        confinement_probe.join()
    return works, reason, probed[0]


def plan_isolation(mode: str = "auto") -> IsolationPlan:
    if mode not in MODES:
        from ...errors import ConfigError

        raise ConfigError(f"unknown sandbox mode {mode!r}: use 'auto' (strongest available), 'namespaces' "
                          f"(require bubblewrap namespaces) or 'process' (no namespaces)")
    root = os.geteuid() == 0
    plan = IsolationPlan(mode=mode, namespaces=False, drop_uid=False,
                         layers=["separate process with a scrubbed environment (no API keys)",
                                 "resource limits: memory, file size, open files, CPU time"])
    works, reason, (landlock, seccomp, why_not) = _probe(mode, root)
    if works:
        plan.namespaces = True
        plan.layers.append("namespaces (bubblewrap): no network, own PID/IPC/UTS, read-only system view, "
                           "size-limited private /tmp as the only writable place")
    elif mode == "namespaces":
        from ...errors import ConfigError

        raise ConfigError(f"sandbox='namespaces' was required but {reason}")
    else:
        plan.missing.append(f"namespaces: {reason}" + ("" if landlock and seccomp else
                            "; model code can reach the network and read the host's world-readable files"))
    plan.layers.append("no capabilities, no_new_privs")
    if landlock:
        plan.landlock = landlock
        plan.layers.append(f"Landlock ABI {landlock}: reads only Python, this package, system libraries and the "
                           f"input; writes only its private directory; no TCP; signals, ptrace (/proc/<pid>) and "
                           f"abstract unix sockets scoped to the worker")
    else:
        plan.missing.append(f"Landlock: {why_not}")
    if seccomp:
        plan.seccomp = True
        plan.processes = works  # without a PID namespace, a process started by a cell could outlive the run
        plan.layers.append("seccomp: no sockets, ptrace, namespaces, mounts, keyrings, bpf, SysV IPC, file-mode "
                           "changes" + ("" if works else ", no new processes (fork/clone)"))
    else:
        plan.missing.append("seccomp: the filter could not be installed here (x86_64 Linux only)")
    if root and (works or (not (landlock and seccomp) and _uid_drop_works())):
        plan.drop_uid = True
        plan.layers.append(f"a uid of its own per worker (from {WORKER_UID_BASE:,}), at most "
                           f"{Limits().max_processes} processes (the host runs as root)")
    elif not works and not (landlock and seccomp):
        plan.missing.append("separation from the host's uid: without namespaces and Landlock scoping the worker "
                            "keeps the host's uid and could signal the host or read its files")
    elif works and not root:
        plan.missing.append("process-count limit: only applied when the host runs as root (workers get uids of "
                            "their own); a fork bomb is bounded by memory and the cell's time limit")
    return plan


def what_it_stops(plan: IsolationPlan) -> list[tuple[str, bool]]:
    """What a worker under `plan` is kept from doing, as `rlm doctor` and docs/SECURITY.md say it
    (tests/test_attacks.py holds the attack behind each line, with the same conditions)."""
    files = plan.namespaces or bool(plan.landlock)
    return [
        ("read the host's API keys: its environment is built from scratch", True),
        ("read files outside Python, this package, system libraries and its input (other runs' inputs, the "
         "run store and trajectories, 0644 files with keys, /proc/<pid>/cmdline such as `rlm serve --token`)", files),
        ("write outside its private directory", files or plan.drop_uid),
        ("reach the network: TCP to the host's 127.0.0.1 or anywhere, UDP, DNS, abstract unix sockets",
         plan.namespaces or bool(plan.landlock and plan.seccomp)),
        ("signal, ptrace or read the memory/environment of the host or of another run's worker",
         plan.namespaces or bool(plan.landlock) or plan.drop_uid),
        ("leave a process running after the run (double fork)", plan.namespaces or not plan.processes),
        ("fork-bomb the machine", (plan.namespaces and plan.drop_uid) or not plan.processes),
        ("change file modes or owners, mount, unshare, use keyrings, bpf, io_uring, SysV IPC", plan.seccomp),
        ("exhaust memory, CPU, disk, open files or the host's memory with output", True),
        ("break the host with forged channel frames: validated, the worker is replaced", True),
    ]


def confinement_policy(plan: IsolationPlan, *, input_dir: str, work_dir: str, limits: Limits) -> str:
    """What the worker applies to itself: its resource limits at once, the rest before model code
    (JSON for its command line)."""
    read = [*_read_roots(), input_dir] if plan.landlock else []
    return json.dumps({"rlimits": worker_rlimits(limits, nproc=plan.drop_uid), "drop_caps": True,
                       "landlock": plan.landlock, "seccomp": plan.seccomp, "processes": plan.processes,
                       "read": read, "write": [work_dir] if plan.landlock else []})


def worker_argv(plan: IsolationPlan, python_argv: list[str], *, context_dir: str, limits: Limits,
                uid: int | None = None) -> list[str]:
    """The worker's command line; `uid` is the worker's own uid when the plan drops root."""
    setpriv = setpriv_command(uid if uid is not None else NOBODY) if plan.drop_uid else []
    if not plan.namespaces:
        return [*setpriv, *python_argv]
    command = bwrap_command(context_dir=context_dir, private_mb=limits.private_dir_mb, drop_uid=plan.drop_uid)
    for name, value in sandbox_env().items():
        command += ["--setenv", name, value]
    return [*command, "--", *setpriv, *python_argv]


def sandbox_env() -> dict[str, str]:
    env = {name: os.environ[name] for name in ("LANG", "LC_ALL", "TZ") if name in os.environ}
    env.update({"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": SANDBOX_TMP, "TMPDIR": SANDBOX_TMP,
                "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8"})
    return env


def worker_rlimits(limits: Limits, *, nproc: bool) -> dict[str, int]:
    """The resource limits the worker sets on itself first thing (`confine.apply_rlimits`), before
    it reads its input or runs anything; inherited by everything it starts. `nproc` only when the
    worker runs as a uid of its own: RLIMIT_NPROC counts every process of the real uid, and root
    is exempt from it anyway. Set in the worker rather than between fork and exec, the host's
    spawn needs no preexec_fn and CPython can use vfork instead of copying the host."""
    mb = 1024 * 1024
    values = {"AS": limits.memory_mb * mb, "FSIZE": limits.max_file_mb * mb, "NOFILE": limits.max_open_files,
              "CPU": limits.cpu_seconds, "STACK": limits.stack_mb * mb, "CORE": 0}
    if nproc:
        values["NPROC"] = limits.max_processes
    return values
