"""Worker isolation benchmarks: start time, cell round trip, and large inputs, worker vs local.

Run: python benchmarks/worker_isolation.py  (prints a markdown table for docs/SECURITY.md);
`--startup` measures only the start, the round trip and the worker's self-confinement.
Inputs are real text: Python's standard library sources, concatenated and repeated to size.
"""

from __future__ import annotations

import asyncio
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import start_and_round_trip, status_mb, stdlib_text  # noqa: E402
from recursive_llm.environments.local import LocalEnvironment  # noqa: E402
from recursive_llm.environments.host.sandbox import plan_isolation  # noqa: E402
from recursive_llm.environments.host.worker import WorkerEnvironment  # noqa: E402

REPEATS = 5


async def handler(kind, prompts, model, context):
    return [{"ok": True, "text": p} for p in prompts]


async def startup_and_round_trip(kind: str, mode: str = "auto") -> tuple[float, float]:
    def make():
        return WorkerEnvironment("text", handler, sandbox=mode) if kind == "worker" else LocalEnvironment("text", handler)

    starts, trips = await start_and_round_trip(make, REPEATS)
    return statistics.median(starts), statistics.median(trips)


CONFINE = """
import sys, time, json, tempfile
sys.path.insert(0, sys.argv[1])
import recursive_llm.environments.inside.runtime  # what the worker has imported already
started = time.perf_counter()
from recursive_llm.environments.inside.confine import confine
policy = json.loads(sys.argv[2])
policy["write"] = [tempfile.mkdtemp()]
confine(policy)
print(time.perf_counter() - started)
"""


def confinement_seconds() -> float:
    """What confining itself adds to the worker's start: importing ctypes, dropping capabilities,
    Landlock (one rule per allowed directory) and the seccomp filter, in a fresh `python -I -S`
    that has imported what the worker imports anyway."""
    import subprocess

    from recursive_llm.environments.host.sandbox import Limits, _package_root, confinement_policy

    policy = confinement_policy(plan_isolation("process"), input_dir="/tmp", work_dir="/tmp", limits=Limits())
    times = []
    for _ in range(REPEATS):
        done = subprocess.run([sys.executable, "-I", "-S", "-c", CONFINE, _package_root(), policy],
                              capture_output=True, text=True, check=True)
        times.append(float(done.stdout))
    return statistics.median(times)


async def measure_file(kind: str, path: str) -> None:
    """In a fresh process: load the file as a user would, start the environment, read it all.

    Prints seconds until the first cell has the whole input, and the host's peak RSS growth (MB)
    over the process's baseline, including the loaded input itself.
    """
    from recursive_llm.context.loader import load_context

    baseline = status_mb("VmRSS")
    t0 = time.perf_counter()
    value = load_context(Path(path)).value
    env = WorkerEnvironment(value, handler) if kind == "worker" else LocalEnvironment(value, handler)
    await env.start()
    cell = await env.execute("n = len(context)", 120)
    elapsed = time.perf_counter() - t0
    assert cell.error is None, cell.stderr
    await env.close()
    print(f"{elapsed} {status_mb('VmHWM') - baseline}")


def large_input(kind: str, path: Path) -> tuple[float, float]:
    import subprocess

    done = subprocess.run([sys.executable, __file__, "--measure", kind, str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"measuring {kind} on {path} failed:\n{done.stderr[-3000:]}")
    out = done.stdout.split()
    return float(out[0]), float(out[1])


def main(startup_only: bool = False) -> None:
    print(plan_isolation().describe(), file=sys.stderr)
    rows = []
    for kind, mode in (("worker", "auto"), ("worker", "process"), ("local", "")):
        start, trip = asyncio.run(startup_and_round_trip(kind, mode or "auto"))
        name = f"worker (sandbox={mode})" if mode else kind
        rows.append((f"{name}: start", f"{start * 1000:.1f} ms"))
        rows.append((f"{name}: trivial cell round trip", f"{trip * 1000:.3f} ms"))
    rows.append(("worker: confining itself (ctypes, capabilities, Landlock, seccomp)",
                 f"{confinement_seconds() * 1000:.1f} ms"))
    import tempfile

    for size_mb, ascii_only in () if startup_only else ((40, True), (400, True), (40, False), (400, False)):
        label = "ASCII sources" if ascii_only else "all sources, some non-Latin-1 characters"
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "input.txt"
            path.write_text(stdlib_text(size_mb * 1_000_000, ascii_only), encoding="utf-8")
            for kind in ("worker", "local"):
                runs = [large_input(kind, path) for _ in range(3)]
                seconds = statistics.median(r[0] for r in runs)
                grown = statistics.median(r[1] for r in runs)
                rows.append((f"{kind}: {size_mb} MB file ({label}) loaded and usable in the first cell",
                             f"{seconds:.2f} s; host peak RSS +{grown:.0f} MB"))
    print("| measurement (median) | result |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print(f"\npeak host RSS during the run: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--measure":
        asyncio.run(measure_file(sys.argv[2], sys.argv[3]))
    else:
        main(startup_only="--startup" in sys.argv)
