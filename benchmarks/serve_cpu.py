"""Issue 17: CPU that `rlm serve` spends per request, side by side for source trees, in one run.

Run: TREES="before=/tmp/before/src,after=src" REPEATS=2 python benchmarks/serve_cpu.py

A burst of N requests (2 root calls and one cell each, 100 ms model), C at a time, against
`rlm serve` with pre-started workers; the server process's own user and system CPU (from
/proc/<pid>/stat) over the burst, divided by N. CPU time is much less sensitive than wall time to
other jobs on the machine. Workers run in bubblewrap namespaces, where their CPU is not reported to
the server (it is not the server's cost either way); requests/s and p50 are printed for context.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import serve_burst, start_serve  # noqa: E402
from scripted_root import root_then_sub  # noqa: E402

from recursive_llm.testing import FakeLLMServer  # noqa: E402

REQUESTS = int(os.environ.get("N", "100"))
CONCURRENT = int(os.environ.get("C", "25"))
REPEATS = int(os.environ.get("REPEATS", "2"))


def process_cpu_s(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of one process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def one_burst(src: str) -> tuple[float, float, float, float]:
    """(user ms, system ms) of the server per request, requests/s, p50 latency."""
    turns = ["```repl\nprint(len(context))\n```", "FINAL(done)"]
    with FakeLLMServer(responder=root_then_sub(turns), latency=0.1) as backend:
        process, url = start_serve(backend.base_url, CONCURRENT, src=src, env={"RLM_WORKER_POOL": "1"})
        try:
            asyncio.run(serve_burst(url, CONCURRENT, CONCURRENT))  # warm-up: imports, the first workers
            time.sleep(1.5)  # the pool refills
            before = process_cpu_s(process.pid)
            wall, latencies, failed = asyncio.run(serve_burst(url, REQUESTS, CONCURRENT))
            after = process_cpu_s(process.pid)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    assert failed == 0, f"{failed} requests failed"
    user, system = ((b - a) * 1000 / REQUESTS for a, b in zip(before, after))
    return user, system, REQUESTS / wall, statistics.median(latencies)


def main() -> None:
    trees = [tuple(item.split("=", 1)) for item in os.environ.get("TREES", "").split(",") if item]
    trees = trees or [("ours", str(ROOT / "src"))]
    rows: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name, _ in trees}
    for _ in range(REPEATS):  # the trees alternate, so a noisy minute hits both
        for name, src in trees:
            rows[name].append(one_burst(str(Path(src).resolve())))
    print(f"\n| rlm serve, {REQUESTS} requests {CONCURRENT} at a time, pre-started workers (median of {REPEATS}) "
          f"| server CPU per request | user | system | requests/s | p50 |\n| --- | --- | --- | --- | --- | --- |")
    for name, results in rows.items():
        user, system, rate, p50 = (statistics.median(column) for column in zip(*results))
        print(f"| {name} | {user + system:.1f} ms | {user:.1f} ms | {system:.1f} ms | {rate:.1f} | {p50:.2f} s |")


if __name__ == "__main__":
    main()
