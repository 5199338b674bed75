"""The worker process: runs model-written code in a REPL and asks the host for every sub-call.

Started by `WorkerEnvironment` as `python -I -S worker_main.py MANIFEST MAX_CAPTURED_CHARS IMPORT_PATH`
(without -S and IMPORT_PATH when it runs another Python than the host's). The host talks to it over
the process's original stdin/stdout; fds 0 and 1 are then pointed at /dev/null so that nothing the
model's code writes (even with os.write) can reach the protocol stream.
"""

from __future__ import annotations

import os
import queue
import resource
import signal
import sys
import threading
from pathlib import Path

if __name__ == "__main__":  # make the package importable from a source checkout or an install
    # Started with -S, the host passes its resolved import path (argv[3]) instead of site processing.
    handed = sys.argv[3].split(os.pathsep) if len(sys.argv) > 3 else []
    sys.path += [path for path in handed if path not in sys.path]
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from recursive_llm.environments.protocol import HEADER, decode_body, encode, read_inputs  # noqa: E402
from recursive_llm.environments.runtime import REPL  # noqa: E402


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
        frame = encode(message)
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

    def read_forever(self) -> None:
        """Reader thread: replies wake their caller, everything else is a command for the main loop."""
        while True:
            header = self._read_exact(HEADER.size)
            body = self._read_exact(HEADER.unpack(header)[0]) if header else None
            if body is None:
                self.commands.put(None)
                return
            message = decode_body(body)
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
        self.send({"op": "call", "id": call_id, "kind": kind, "prompts": prompts, "model": model,
                   "context": context})
        event.wait()
        return box[0]


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


def main() -> None:
    reader = os.fdopen(os.dup(0), "rb", buffering=0)
    writer = os.fdopen(os.dup(1), "wb", buffering=0)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    sys.stdin = open(os.devnull, encoding="utf-8")
    sys.stdout = open(os.devnull, "w", encoding="utf-8")

    signal.signal(signal.SIGXCPU, _on_sigxcpu)
    channel = HostChannel(reader, writer)
    contexts, tables = read_inputs(Path(sys.argv[1]))
    repl = REPL(contexts[0], channel.call_host, more_contexts=contexts[1:], tables=tables,
                max_captured_chars=int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000)
    threading.Thread(target=channel.read_forever, name="host-reader", daemon=True).start()
    channel.send({"op": "ready", "pid": os.getpid()})
    while True:
        command = channel.commands.get()
        if command is None or command["op"] == "shutdown":
            return
        if command["op"] == "exec":
            limit_cell_cpu(command.get("cpu_seconds"))
            channel.send({"op": "result", "id": command["id"], **repl.execute(command["code"])})
        elif command["op"] == "get_var":
            channel.send({"op": "var", "id": command["id"], **repl.get_variable(command["name"])})


if __name__ == "__main__":
    main()
