"""Kernel confinement the worker applies to itself before any model code runs. Stdlib only (ctypes).

First of all (`apply_rlimits`, before the worker reads anything): its resource limits, soft and
hard, which everything it starts inherits. Then three layers, none of which needs a privilege:

1. Capabilities: every set emptied (bounding, ambient, inheritable, permitted, effective) and
   `no_new_privs`. A worker that keeps the host's uid 0 is then root by name only.
2. Landlock (Linux >= 5.13; scoping needs ABI 6, Linux 6.12): reads only of the Python
   installation, this package, the system's library directories and the run's input; writes only
   in the worker's private directory; no TCP bind/connect at all; no signal to, and no ptrace
   (hence no /proc/<pid>/environ or mem) of, any process outside the worker's own domain; no
   connection to an abstract unix socket outside it. Each worker creates its own domain, so
   workers of concurrent runs are as separate from each other as from the host.
3. seccomp: no socket() at all (socketpair stays, for asyncio), no ptrace, process_vm_*, keyrings,
   bpf, perf, io_uring, namespaces, mounts, SysV IPC / POSIX queues, chmod/chown/utime/xattrs
   (Landlock does not cover file metadata, and a worker with the uid of a file's owner could
   otherwise change its mode), prlimit/sched/priority of other processes; optionally no new
   processes (fork, vfork, clone without CLONE_THREAD; clone3 answers ENOSYS so that the C
   library falls back to clone for threads).

Landlock and seccomp apply to the calling thread and what it starts afterwards: call `confine()`
while the worker has a single thread.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import struct
import sys

# -- resource limits --------------------------------------------------------------------------
RLIMIT_NAMES = ("AS", "FSIZE", "NOFILE", "CPU", "STACK", "CORE", "NPROC")


def apply_rlimits(limits: dict[str, int]) -> None:
    """Set each `RLIMIT_<name>` of `limits` (built by sandbox.worker_rlimits) as soft and hard
    limit. Lowering a hard limit needs no privilege, and once the capabilities are dropped it
    cannot be raised again."""
    for name, value in limits.items():
        if name not in RLIMIT_NAMES or isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfinementError(errno.EINVAL, f"not a resource limit: {name}={value!r}")
        resource.setrlimit(getattr(resource, f"RLIMIT_{name}"), (value, value))


# -- Landlock ---------------------------------------------------------------------------------
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # the same on every arch
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH, _RULE_NET_PORT = 1, 2

FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_TRUNCATE, FS_IOCTL_DEV = 1 << 14, 1 << 15
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1

# The system directories code may read and execute from; single files it may read.
SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc/alternatives")
# Read-only, no execute: cgroup limits (DuckDB sizes its memory and threads from them).
INFO_DIRS = ("/sys/fs/cgroup",)
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/dev/urandom", "/dev/random", "/dev/zero",
                "/proc/meminfo", "/proc/cpuinfo", "/proc/stat")
# The worker's own /proc/<pid> (resolved when the rule is made, so not its children's, nor anyone
# else's): DuckDB reads /proc/self/cgroup for its memory limit.
OWN_PROC = "/proc/self"
READ_WRITE_FILES = ("/dev/null",)


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    libc.prctl.restype = ctypes.c_int
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return libc


def landlock_abi() -> int:
    """The Landlock ABI version this kernel offers to this process (0: none)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        version = _libc().syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    except (OSError, AttributeError):
        return 0
    return max(int(version), 0)


def _fs_rights(abi: int) -> int:
    return _FS_BY_ABI[max(k for k in _FS_BY_ABI if k <= abi)]


class ConfinementError(OSError):
    pass


def _check(result: int, what: str) -> int:
    if result < 0:
        error = ctypes.get_errno()
        raise ConfinementError(error, f"{what}: {os.strerror(error)}")
    return result


def apply_landlock(*, read: list[str], write: list[str], abi: int | None = None) -> int:
    """Restrict this thread (and everything it starts) to `read` (read + execute) and `write`
    (everything), with no TCP and, from ABI 6, signals and abstract sockets scoped. Returns the ABI."""
    libc = _libc()
    abi = landlock_abi() if abi is None else abi
    if abi < 1:
        raise ConfinementError(errno.ENOSYS, "Landlock is not available")
    handled_fs = _fs_rights(abi)
    handled_net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    attr = struct.pack("=QQQ", handled_fs, handled_net, scoped)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    buffer = ctypes.create_string_buffer(attr[:size], size)
    ruleset = _check(libc.syscall(_SYS_CREATE_RULESET, buffer, ctypes.c_size_t(size), ctypes.c_uint32(0)),
                     "landlock_create_ruleset")
    try:
        read_rights = (FS_EXECUTE | FS_READ_FILE | FS_READ_DIR) & handled_fs
        for paths, rights in ((read, read_rights), (write, handled_fs)):
            for path in paths:
                _allow(libc, ruleset, path, rights)
        for path in SYSTEM_DIRS:
            _allow(libc, ruleset, path, read_rights)
        for path in INFO_DIRS:
            _allow(libc, ruleset, path, (FS_READ_FILE | FS_READ_DIR) & handled_fs)
        for path in SYSTEM_FILES:
            _allow(libc, ruleset, path, FS_READ_FILE)
        _allow(libc, ruleset, OWN_PROC, (FS_READ_FILE | FS_READ_DIR) & handled_fs)
        for path in READ_WRITE_FILES:
            _allow(libc, ruleset, path, FS_READ_FILE | FS_WRITE_FILE | (FS_TRUNCATE & handled_fs))
        _set_no_new_privs(libc)
        _check(libc.syscall(_SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)), "landlock_restrict_self")
    finally:
        os.close(ruleset)
    return abi


def _allow(libc, ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # absent here (e.g. /lib32): nothing to allow
    try:
        if not os.path.isdir(path):
            rights &= _FILE_RIGHTS
        attr = ctypes.create_string_buffer(struct.pack("=Qi", rights, fd), 12)
        _check(libc.syscall(_SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH), attr,
                            ctypes.c_uint32(0)), f"landlock_add_rule({path})")
    finally:
        os.close(fd)


# -- capabilities -----------------------------------------------------------------------------
_PR_SET_NO_NEW_PRIVS, _PR_CAPBSET_DROP, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 38, 24, 47, 4
_PR_SET_SECUREBITS = 28
# SECBIT_NOROOT (+ lock), KEEP_CAPS_LOCKED (off), NO_CAP_AMBIENT_RAISE (+ lock)
_SECUREBITS = 0x1 | 0x2 | 0x20 | 0x40 | 0x80


def _set_no_new_privs(libc) -> None:
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")


def drop_capabilities() -> None:
    """Empty every capability set for good; a uid 0 left without capabilities cannot regain them."""
    libc = _libc()
    if os.geteuid() == 0:
        libc.prctl(_PR_SET_SECUREBITS, _SECUREBITS, 0, 0, 0)  # best effort: needs CAP_SETPCAP
    for cap in range(64):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 and ctypes.get_errno() == errno.EINVAL:
            break  # past the last capability this kernel knows
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = ctypes.create_string_buffer(struct.pack("=Ii", 0x20080522, 0), 8)  # _LINUX_CAPABILITY_VERSION_3
    data = ctypes.create_string_buffer(24)  # two zeroed {effective, permitted, inheritable}
    _check(libc.syscall(126 if os.uname().machine == "x86_64" else 91, header, data), "capset")
    _set_no_new_privs(libc)


# -- seccomp ----------------------------------------------------------------------------------
# x86_64 system-call numbers (the filter refuses every other architecture's calls).
_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_BIT = 0x40000000
_DENY = {
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312, "pidfd_getfd": 438,
    "process_madvise": 440, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "swapon": 167,
    "swapoff": 168, "reboot": 169, "sethostname": 170, "setdomainname": 171, "init_module": 175,
    "delete_module": 176, "finit_module": 313, "kexec_load": 246, "kexec_file_load": 320, "acct": 163,
    "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
    "unshare": 272, "setns": 308, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "open_by_handle_at": 304, "name_to_handle_at": 303, "open_tree": 428, "move_mount": 429, "fsopen": 430,
    "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442, "quotactl": 179, "quotactl_fd": 443,
    "iopl": 172, "ioperm": 173, "modify_ldt": 154, "personality": 135, "syslog": 103, "vhangup": 153,
    "uselib": 134, "lookup_dcookie": 212, "settimeofday": 164, "clock_settime": 227, "adjtimex": 159,
    "clock_adjtime": 305, "migrate_pages": 256, "move_pages": 279, "ioprio_set": 251,
    "fanotify_init": 300, "fanotify_mark": 301, "inotify_add_watch": 254,
    "shmget": 29, "shmat": 30, "shmctl": 31, "semget": 64, "semop": 65, "semctl": 66, "semtimedop": 220,
    "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71, "mq_open": 240, "mq_unlink": 241,
    "mq_timedsend": 242, "mq_timedreceive": 243, "mq_notify": 244, "mq_getsetattr": 245,
    "socket": 41,
    "chmod": 90, "fchmod": 91, "fchmodat": 268, "fchmodat2": 452, "chown": 92, "fchown": 93, "lchown": 94,
    "fchownat": 260, "utime": 132, "utimes": 235, "futimesat": 261, "utimensat": 280,
    "setxattr": 188, "lsetxattr": 189, "fsetxattr": 190, "removexattr": 197, "lremovexattr": 198,
    "fremovexattr": 199, "setxattrat": 463, "removexattrat": 466,
}
# Allowed only on the caller itself: argument `index` must be 0 (pid / who).
_SELF_ONLY = {"prlimit64": (302, 0), "setpriority": (141, 1), "sched_setaffinity": (203, 0),
              "sched_setscheduler": (144, 0), "sched_setparam": (142, 0), "sched_setattr": (314, 0)}
_NEW_PROCESS = {"fork": 57, "vfork": 58}
_CLONE, _CLONE3, _CLONE_THREAD = 56, 435, 0x00010000

_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_RET_ALLOW, _RET_KILL_PROCESS = 0x7FFF0000, 0x80000000


def _errno(value: int) -> int:
    return 0x00050000 | value


def _program(no_new_processes: bool) -> list[tuple[int, int, int, int]]:
    """The BPF program. The accumulator holds the call's number between blocks: a block either
    returns, or jumps past its own end without touching it (jt/jf count the instructions skipped)."""
    deny = _errno(errno.EPERM)

    def arg_low(index: int) -> int:
        return 16 + 8 * index  # seccomp_data.args[index]; little-endian, the low half first

    body = [(_LD_W_ABS, 0, 0, 4), (_JEQ, 1, 0, _AUDIT_ARCH_X86_64), (_RET, 0, 0, _RET_KILL_PROCESS),
            (_LD_W_ABS, 0, 0, 0), (_JGE, 0, 1, _X32_BIT), (_RET, 0, 0, _errno(errno.ENOSYS))]
    for nr in _DENY.values():
        body += [(_JEQ, 0, 1, nr), (_RET, 0, 0, deny)]
    for nr, index in _SELF_ONLY.values():  # allowed when the 64-bit argument is 0
        body += [(_JEQ, 0, 6, nr), (_LD_W_ABS, 0, 0, arg_low(index)), (_JEQ, 0, 2, 0),
                 (_LD_W_ABS, 0, 0, arg_low(index) + 4), (_JEQ, 1, 0, 0), (_RET, 0, 0, deny),
                 (_RET, 0, 0, _RET_ALLOW)]
    if no_new_processes:
        for nr in _NEW_PROCESS.values():
            body += [(_JEQ, 0, 1, nr), (_RET, 0, 0, deny)]
        body += [(_JEQ, 0, 1, _CLONE3), (_RET, 0, 0, _errno(errno.ENOSYS))]
        body += [(_JEQ, 0, 4, _CLONE), (_LD_W_ABS, 0, 0, arg_low(0)), (_JSET, 1, 0, _CLONE_THREAD),
                 (_RET, 0, 0, deny), (_RET, 0, 0, _RET_ALLOW)]
    body.append((_RET, 0, 0, _RET_ALLOW))
    return body


def apply_seccomp(*, no_new_processes: bool) -> None:
    if os.uname().machine != "x86_64":
        raise ConfinementError(errno.ENOSYS, f"the seccomp filter is written for x86_64, not {os.uname().machine}")
    libc = _libc()
    program = _program(no_new_processes)
    filters = b"".join(struct.pack("=HBBI", code, jt, jf, k) for code, jt, jf, k in program)
    array = ctypes.create_string_buffer(filters, len(filters))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(len(program), ctypes.addressof(array))
    _set_no_new_privs(libc)
    # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    _check(libc.prctl(22, 2, ctypes.addressof(prog), 0, 0), "PR_SET_SECCOMP")


def confine(policy: dict) -> list[str]:
    """Apply what `policy` (built by sandbox.confinement_policy) asks for; return what is active.

    Raises ConfinementError when a requested layer cannot be applied: the worker must then not run
    model code at all."""
    active = []
    if policy.get("drop_caps"):
        drop_capabilities()
        active.append("capabilities")
    if policy.get("landlock"):
        apply_landlock(read=policy.get("read", []), write=policy.get("write", []), abi=policy["landlock"])
        active.append(f"landlock-{policy['landlock']}")
    if policy.get("seccomp"):
        apply_seccomp(no_new_processes=not policy.get("processes", True))
        active.append("seccomp")
    return active
