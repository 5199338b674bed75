"""Core benchmarks: batched fan-out over real HTTP, and the worker's start and round-trip times.

Run: python benchmarks/core_overhead.py   (results are printed as a markdown table; copy them into
docs/BENCHMARKS.md with the date and machine). Medians over several repetitions in one run.
python benchmarks/core_overhead.py --http-pairs 15: ours against the bare openai client, back to back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import statistics
import sys
import tempfile
import time
from pathlib import Path

SRC = os.environ.get("RLM_BENCH_SRC") or str(Path(__file__).resolve().parents[1] / "src")  # or another tree
sys.path.insert(0, SRC)
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("RLM_HOME", tempfile.mkdtemp(prefix="rlm-bench-"))

from common import bare_openai, start_and_round_trip  # noqa: E402
from recursive_llm import RLM  # noqa: E402
from recursive_llm.environments.host.worker import WorkerEnvironment  # noqa: E402
from recursive_llm.record.events import read_trajectory  # noqa: E402
from recursive_llm.testing import ScriptedModel  # noqa: E402

REPEATS = 5


@contextlib.contextmanager
def server_process(latency: float, lean: bool = False):
    """The fake OpenAI-compatible server in its own process, so it does not share our GIL; `lean`:
    benchmarks/lean_server.py instead (a fixed reply, a few tens of microseconds of CPU per request)."""
    server = [str(Path(__file__).with_name("lean_server.py"))] if lean else ["-m", "recursive_llm.testing.fake_server"]
    proc = subprocess.Popen([sys.executable, *server, "--latency", str(latency)],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": SRC})
    try:
        yield proc.stdout.readline().split()[-1]  # "fake server: <base url>" / "lean server: <base url>"
    finally:
        proc.terminate()
        proc.wait()


def fan_out_in_process(prompts: int, latency: float, concurrency: int) -> float:
    """The same batch against an in-process model with the same latency: the framework alone."""
    code = (f"import time\nt0 = time.perf_counter()\nr = llm_query_batched([str(i) for i in range({prompts})])\n"
            f"print(time.perf_counter() - t0)")
    root = ScriptedModel([f"```repl\n{code}\n```", "FINAL(done)"])
    sub = ScriptedModel(default="ok", delay=latency, name="sub")
    result = RLM(model=root, sub_model=sub, max_concurrency=concurrency).completion("q", "text")
    cell = next(e for e in read_trajectory(result.trajectory_path) if e["type"] == "cell")
    return float(cell["stdout"].strip())


def fan_out(base_url: str, prompts: int, concurrency: int) -> float:
    """Seconds for one llm_query_batched of `prompts` prompts over HTTP, measured inside the worker."""
    code = (f"import time\nt0 = time.perf_counter()\nr = llm_query_batched([str(i) for i in range({prompts})])\n"
            f"assert len(r) == {prompts} and not any(x.startswith('Error') for x in r), r[:3]\n"
            f"print(time.perf_counter() - t0)")
    root = ScriptedModel([f"```repl\n{code}\n```", "FINAL(done)"])
    result = RLM(model=root, sub_model="bench", base_url=base_url, max_concurrency=concurrency).completion("q", "text")
    cell = next(e for e in read_trajectory(result.trajectory_path) if e["type"] == "cell")
    return float(cell["stdout"].strip())


def root_iterations(iterations: int, latency: float) -> float:
    """Wall seconds of a run whose root model (in-process, `latency` per reply) takes `iterations`
    turns of trivial code: everything but the model's latency is the framework's per-iteration cost."""
    replies = [f"```repl\nstep = {i}\nprint(step)\n```" for i in range(iterations - 1)] + ["FINAL(done)"]
    root = ScriptedModel(replies, delay=latency)
    started = time.perf_counter()
    result = RLM(model=root, max_iterations=iterations + 1).completion("q", "text")
    assert result.iterations == iterations, result
    return time.perf_counter() - started


async def worker_timings() -> tuple[list[float], list[float]]:
    async def handler(kind, prompts, model, context):
        return [{"ok": True, "text": p} for p in prompts]

    return await start_and_round_trip(lambda: WorkerEnvironment("some text", handler), REPEATS)


def main() -> None:
    rows = []
    latency = 0.1
    for prompts, concurrency in ((100, 32), (1000, 64)):
        ideal = -(-prompts // concurrency) * latency
        with server_process(latency) as base_url:
            runs = [fan_out(base_url, prompts, concurrency) for _ in range(REPEATS)]
            raw = [asyncio.run(bare_openai(base_url, prompts, concurrency)) for _ in range(REPEATS)]
        local = [fan_out_in_process(prompts, latency, concurrency) for _ in range(REPEATS)]
        label = f"{prompts} prompts, {latency * 1000:.0f} ms latency, concurrency {concurrency}"
        median = statistics.median(runs)
        rows.append((f"llm_query_batched over HTTP (openai client, fake server process): {label}",
                     f"{median:.3f} s", f"ideal {ideal:.2f} s (ratio {median / ideal:.2f}); "
                     f"sequential {prompts * latency:.0f} s"))
        rows.append((f"the raw openai client alone, same server: {label}", f"{statistics.median(raw):.3f} s",
                     f"ours / raw client = {median / statistics.median(raw):.2f}"))
        rows.append((f"llm_query_batched, in-process model with the same latency: {label}",
                     f"{statistics.median(local):.3f} s", f"ideal {ideal:.2f} s "
                     f"(ratio {statistics.median(local) / ideal:.2f})"))
    fixed = [root_iterations(1, 0.0) for _ in range(REPEATS)]  # start-up and one turn: paid once per run
    bare = [root_iterations(10, 0.0) for _ in range(REPEATS)]
    per_iteration = (statistics.median(bare) - statistics.median(fixed)) / 9
    rows.append(("framework time per root iteration (in-process model at 0 ms; 10 iterations minus 1)",
                 f"{per_iteration * 1000:.1f} ms", f"run start-up and first turn: {statistics.median(fixed) * 1000:.0f} ms"))
    slow = [root_iterations(10, 0.5) for _ in range(REPEATS)]
    rows.append(("10 root iterations, model latency 500 ms (wall)", f"{statistics.median(slow):.3f} s",
                 f"ideal 5.00 s (ratio {statistics.median(slow) / 5:.3f})"))
    starts, trips = asyncio.run(worker_timings())
    rows.append(("worker start (spawn + load a small input + ready)", f"{statistics.median(starts) * 1000:.1f} ms", ""))
    rows.append(("trivial cell round trip in the worker", f"{statistics.median(trips) * 1000:.2f} ms",
                 f"p95 {sorted(trips)[int(len(trips) * 0.95)] * 1000:.2f} ms"))
    print(f"| measurement (median of {REPEATS}) | result | reference |")
    print("| --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def http_pairs(pairs: int, prompts: int = 1000, concurrency: int = 64) -> None:
    """Ours and the bare client back to back, `pairs` times: a steadier ratio on a noisy machine."""
    with server_process(0.1) as base_url:
        ours, raw = [], []
        for _ in range(pairs):
            ours.append(fan_out(base_url, prompts, concurrency))
            raw.append(asyncio.run(bare_openai(base_url, prompts, concurrency)))
    print(f"{pairs} pairs, {prompts} prompts at concurrency {concurrency}: ours median {statistics.median(ours):.3f} s, "
          f"bare client median {statistics.median(raw):.3f} s, ratio {statistics.median(ours) / statistics.median(raw):.3f}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--http-pairs":
        http_pairs(int(sys.argv[2]))
    else:
        main()
