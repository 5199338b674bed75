"""The worker process: runs model-written code in a REPL and asks the host for every sub-call.

Started by `WorkerEnvironment` as
`python -I -S worker_main.py MANIFEST MAX_CAPTURED_CHARS POLICY IMPORT_PATH` (without -S and
IMPORT_PATH when it runs another Python than the host's). MANIFEST `-`: a pre-started worker that
sends `waiting` and reads its manifest from the host's first frame (`load`). The host talks to it over the process's
original stdin/stdout; fds 0 and 1 are then pointed at /dev/null so that nothing the model's code
writes (even with os.write) can reach the protocol stream.

First of all, before it reads anything, the worker sets the resource limits POLICY (JSON, from
sandbox.confinement_policy) carries; then, before any model code and while it has a single thread,
it confines itself as POLICY asks: capabilities, Landlock, seccomp (see confine.py). If a limit or a
layer the host asked for cannot be applied, it exits instead of running unconfined.
"""

from __future__ import annotations

import json
import os
import queue
import resource
import signal
import sys
import threading
import types

if __name__ == "__main__":  # make the package importable from a source checkout or an install
    # Started with -S, the host passes its resolved import path (argv[3]) instead of site processing.
    handed = sys.argv[4].split(os.pathsep) if len(sys.argv) > 4 else []
    sys.path += [path for path in handed if path not in sys.path]
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))))

from recursive_llm.bounds import HOST_BOUNDS  # noqa: E402
from recursive_llm.environments import protocol  # noqa: E402
from recursive_llm.environments.inside import runtime  # noqa: E402
from recursive_llm.environments.inside.confine import ConfinementError, apply_rlimits, confine  # noqa: E402
from recursive_llm.environments.protocol import HEADER, decode_body, encode, read_inputs  # noqa: E402
from recursive_llm.environments.inside.runtime import CAPTURED_CHARS, REPL  # noqa: E402


class HostChannel:
    """Frames to and from the host; sub-call replies are routed to the waiting caller thread."""

    def __init__(self, reader, writer) -> None:
        self._reader = reader
        self._writer = writer
        self._send_lock = threading.Lock()
        self._pending: dict[int, tuple[threading.Event, list]] = {}
        self._pending_lock = threading.Lock()
        self._next_id = 0
        self.commands: "queue.Queue[dict | None]" = queue.Queue()

    def send(self, message: dict) -> None:
        """One message to the host; FrameTooLarge (nothing sent) over HostBounds.max_message_bytes
        or max_message_values, which the host would refuse as a broken worker's."""
        frame = encode(message, HOST_BOUNDS.max_message_bytes, HOST_BOUNDS.max_message_values)
        with self._send_lock:
            self._writer.write(frame)
            self._writer.flush()

    def _read_exact(self, size: int) -> bytes | None:
        chunks, remaining = [], size
        while remaining:
            chunk = self._reader.read(remaining)
            if not chunk:
                return None
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def read_one(self) -> dict | None:
        """One frame, read on the calling thread (before the reader thread exists)."""
        header = self._read_exact(HEADER.size)
        body = self._read_exact(HEADER.unpack(header)[0]) if header else None
        return decode_body(body) if body is not None else None

    def read_forever(self) -> None:
        """Reader thread: replies wake their caller, everything else is a command for the main loop."""
        while True:
            header = self._read_exact(HEADER.size)
            body = self._read_exact(HEADER.unpack(header)[0]) if header else None
            if body is None:
                self.commands.put(None)
                return
            try:
                message = decode_body(body)
            except Exception as error:  # a broken channel: end the worker (the host replaces it)
                sys.stderr.write(f"worker: unreadable frame from the host: {error}\n")
                self.commands.put(None)
                return
            if message["op"] == "reply":
                with self._pending_lock:
                    waiter = self._pending.pop(message["id"], None)
                if waiter:
                    waiter[1].append(message["results"])
                    waiter[0].set()
            else:
                self.commands.put(message)

    def call_host(self, kind: str, prompts: list[str], model: str | None, context) -> list[dict]:
        event, box = threading.Event(), []
        with self._pending_lock:
            self._next_id += 1
            call_id = self._next_id
            self._pending[call_id] = (event, box)
        try:
            self.send({"op": "call", "id": call_id, "kind": kind, "prompts": prompts, "model": model,
                       "context": context})
        except protocol.FrameTooLarge as error:
            with self._pending_lock:
                self._pending.pop(call_id, None)
            raise ValueError(f"this call is too large to send to the host ({error}); send less at once: less "
                             f"text (beyond ASCII a character takes 2 to 4 bytes), or a large context as one "
                             f"text (json.dumps) rather than as many small values") from None
        event.wait()
        return box[0]

    def send_result(self, message: dict) -> None:
        """A cell's result; output too large for one message is cut to fit, with a note."""
        try:
            return self.send(message)
        except protocol.FrameTooLarge:
            share = HOST_BOUNDS.max_message_bytes // 10  # characters of at most 4 bytes, two outputs
        for key in ("stdout", "stderr"):
            text = message[key]
            if len(text) > share:
                message[key] = (text[:share] + f"\n... [{len(text) - share:,} more characters were cut: one message "
                                f"to the host holds at most {HOST_BOUNDS.max_message_bytes:,} bytes]")
        self.send(message)


class CPUTimeExceeded(Exception):
    """Raised in the cell when it used its CPU seconds (SIGXCPU from RLIMIT_CPU)."""


def _on_sigxcpu(signum, frame):
    raise CPUTimeExceeded("the cell used up its CPU time and was stopped")


def limit_cell_cpu(seconds: float | None) -> None:
    """Lower the soft CPU limit to what this worker has used plus `seconds` (the hard limit stays)."""
    if not seconds:
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = usage.ru_utime + usage.ru_stime
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    soft = int(used + seconds) + 1
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


class Guard:
    """Puts back, before every command, what model code could rebind to forge what later cells see.

    In a session, a cell of one question could replace `llm_query`'s machinery (the REPL's
    `_call_host`, a method of REPL or HostChannel, a function's `__code__`, `json.loads` that
    parses the host's replies, ...) or what the REPL provides (`memory`, `search`, the `_user_tool`
    the tools' stubs call, the helpers' classes, builtins) so that every later question got answers
    the host never sent. This restores the classes, functions, module globals, instance attributes
    and the REPL's provided names from references taken before any model code ran; the model's own
    variables are left as they are. It cannot be complete: code in the same process can reach any
    object (gc, ctypes), and a thread an earlier cell left running can rebind a name again while a
    later cell runs. What holds regardless is on the host's side: every frame is validated,
    budgets, keys and models live only there."""

    def __init__(self, repl: REPL, channel: "HostChannel") -> None:
        modules = _guarded_modules()
        self._classes = [(cls, dict(cls.__dict__)) for cls in _guarded_classes()]
        self._functions = [_function_state(f) for _, snapshot in self._classes for f in snapshot.values()
                           if isinstance(f, types.FunctionType)]
        self._functions += [_function_state(f) for m in modules for f in vars(m).values()
                            if isinstance(f, types.FunctionType)]
        self._modules = [(m, dict(vars(m))) for m in modules]
        self._repl, self._provided = repl, repl.provided()
        self._tables = {name: dict(vars(repl)[name]) for name in ("_contract", "_helpers", "_internals", "_inputs")}
        self._memory_ask = self._provided["memory"]._ask
        self._instances = [(repl, {k: v for k, v in vars(repl).items() if k not in self._tables and k != "_final"}),
                           (channel, {k: v for k, v in vars(channel).items() if k != "_next_id"})]

    def restore(self) -> None:
        for cls, snapshot in self._classes:
            for name, value in snapshot.items():
                if name not in ("__dict__", "__weakref__", "__doc__") and cls.__dict__.get(name) is not value:
                    setattr(cls, name, value)
            for name in [n for n in cls.__dict__ if n not in snapshot]:
                delattr(cls, name)
        for function, code, defaults, kwdefaults in self._functions:
            if function.__code__ is not code:
                function.__code__ = code
            if function.__defaults__ is not defaults:
                function.__defaults__ = defaults
            if function.__kwdefaults__ is not kwdefaults:
                function.__kwdefaults__ = kwdefaults
        for module, snapshot in self._modules:
            namespace = vars(module)
            for name, value in snapshot.items():
                if namespace.get(name) is not value:
                    namespace[name] = value
        for instance, snapshot in self._instances:
            attributes = vars(instance)
            for name in [n for n in attributes if n not in snapshot and hasattr(type(instance), n)]:
                del attributes[name]  # an instance attribute shadowing a method
            attributes.update(snapshot)
        self._restore_provided()

    def _restore_provided(self) -> None:
        """The REPL's tables of what it provides (copies: a cell may have changed their contents),
        `memory`'s way to the host, and each provided name in the namespace."""
        vars(self._repl).update({name: dict(table) for name, table in self._tables.items()})
        object.__setattr__(self._provided["memory"], "_ask", self._memory_ask)
        self._repl.restore_provided()


def _guarded_modules() -> tuple[types.ModuleType, ...]:
    """The modules whose globals and functions the guard restores: the REPL's, the wire format's,
    this one's, the helpers' (and the classes their results are made of), `json` and builtins."""
    import builtins
    import json

    from recursive_llm.context import document
    from recursive_llm.environments.inside import helpers, map_reduce

    return runtime, protocol, sys.modules[__name__], json, helpers, map_reduce, document, builtins


def _guarded_classes() -> list[type]:
    """The REPL's and the channel's classes and the ones the helpers' results are made of (with
    their bases of this package: a namedtuple's generated class)."""
    from recursive_llm.context import document
    from recursive_llm.environments.inside import helpers

    own = {helpers.__name__, document.__name__}
    made = {base for module in (helpers, document) for value in vars(module).values() if isinstance(value, type)
            for base in value.__mro__ if base.__module__ in own}
    return [REPL, HostChannel, runtime.CappedBuffer, runtime.Memory, threading.Event, queue.Queue,
            *sorted(made, key=lambda cls: (cls.__module__, cls.__qualname__))]


def _function_state(function: types.FunctionType) -> tuple:
    return function, function.__code__, function.__defaults__, function.__kwdefaults__


def _refuse(error: Exception) -> None:
    sys.stderr.write(f"worker: could not confine itself, refusing to run model code: {error}\n")
    sys.exit(3)


def main() -> None:
    if sys.argv[1] == "+":  # the template: forks workers on the host's request (template_main.py)
        from recursive_llm.environments.prestart import template_main

        template_main.serve(sys.argv[3], run)
        return
    run(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else CAPTURED_CHARS, sys.argv[3] if len(sys.argv) > 3 else "{}")


def run(manifest: str, max_captured_chars: int, policy_json: str) -> None:
    """Be the worker: limits first, then the channel on fds 0/1, the input, confinement, the REPL."""
    try:
        policy = json.loads(policy_json)
        apply_rlimits(policy.get("rlimits", {}))
    except (ConfinementError, OSError, ValueError) as error:
        _refuse(error)
    reader = os.fdopen(os.dup(0), "rb", buffering=0)
    writer = os.fdopen(os.dup(1), "wb", buffering=0)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    sys.stdin = open(os.devnull, encoding="utf-8")
    sys.stdout = open(os.devnull, "w", encoding="utf-8")

    signal.signal(signal.SIGXCPU, _on_sigxcpu)
    channel = HostChannel(reader, writer)
    if manifest == "-":
        # Pre-started (environments/prestart/pool.py): this process has run nothing of any request yet. It
        # waits, on its only thread, for the one request it will serve; then it reads that input and
        # confines itself exactly as a worker started for the request does.
        channel.send({"op": "waiting", "pid": os.getpid()})
        command = channel.read_one()
        if command is None or command.get("op") != "load" or not isinstance(command.get("manifest"), str):
            return
        manifest = command["manifest"]
    contexts, tables = read_inputs(manifest)
    try:
        if policy.get("landlock"):  # this interpreter's own installation (it may not be the host's)
            policy["read"] = [*policy.get("read", []), sys.prefix, sys.base_prefix, os.path.dirname(os.__file__)]
        confine(policy)
    except (ConfinementError, OSError, ValueError) as error:
        _refuse(error)
    repl = REPL(contexts[0], channel.call_host, more_contexts=contexts[1:], tables=tables,
                max_captured_chars=max_captured_chars)
    guard = Guard(repl, channel)
    threading.Thread(target=channel.read_forever, name="host-reader", daemon=True).start()
    channel.send({"op": "ready", "pid": os.getpid()})
    while True:
        command = channel.commands.get()
        if command is None or command["op"] == "shutdown":
            # Every frame is written (the writer is unbuffered) and the host removes the worker's
            # directory: nothing is left to finish. Leaving without the interpreter's teardown
            # (modules, the input's memory, the model's threads and atexit hooks) takes about 9 ms
            # off every run's close.
            os._exit(0)
        guard.restore()
        if command["op"] == "exec":
            limit_cell_cpu(command.get("cpu_seconds"))
            channel.send_result({"op": "result", "id": command["id"], **repl.execute(command["code"])})
        elif command["op"] == "get_var":
            channel.send({"op": "var", "id": command["id"], **repl.get_variable(command["name"])})

if __name__ == "__main__":
    main()
