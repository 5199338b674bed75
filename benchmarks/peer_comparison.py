"""Peer comparison: recursive-llm against the reference implementation (PyPI `rlms`) and, if it
installs and runs here, DSPy's `dspy.RLM`, driven by the same simulated model and the same
scripted root policy.

Run: python benchmarks/peer_comparison.py [--venv DIR]
The peers are installed into a separate virtual environment (default: a temporary one). The
simulator runs in its own process; each implementation and scenario runs in a fresh process, so
peak memory is its own. The policy uses only what every RLM offers (`context`,
`llm_query_batched`, and the `answer["ready"] = True` way to finish, the only one `rlms` 0.1.3
knows), so the work is identical; what differs is the framework.

Scenarios (medians of 3):
- fan-out: one cell calls llm_query_batched with 1,000 prompts at 100 ms latency;
- iterations: 10 root iterations of trivial code at 0 ms latency (framework time per iteration);
- memory: a 10M-token (40 MB) context, two iterations: peak resident memory (ours: host + worker);
- prompt tokens per root iteration, as the simulator received them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

SCENARIO = re.compile(r"SCENARIO (\w+) (\d+)")
REPEATS = 3


# -- the simulated model (its own process) ---------------------------------------------------------
def responder_factory(log_path: str):
    def respond(messages: list[dict], model: str) -> str:
        text = "\n".join(str(m.get("content", "")) for m in messages)
        is_root = messages and messages[0]["role"] == "system" and "REPL" in str(messages[0]["content"])
        if not is_root:
            return "ok"
        with open(log_path, "a") as log:
            log.write(f"{len(text)}\n")
        match = SCENARIO.search(text)
        kind, number = (match.group(1), int(match.group(2))) if match else ("iterations", 1)
        turn = sum(1 for m in messages if m["role"] == "assistant")
        finish = "```repl\nanswer['content'] = result\nanswer['ready'] = True\n```"
        if kind == "fanout":
            if turn == 0:
                return (f"```repl\nanswers = llm_query_batched([f'item {{i}}' for i in range({number})])\n"
                        f"result = str(len(answers))\nprint(result)\n```")
            return finish
        if turn < number - 1:
            return f"```repl\nresult = 'iteration {turn}'\nprint(len(context))\n```"
        return finish
    return respond


def serve(port: int, latency: float, log_path: str) -> None:
    from recursive_llm.testing.fake_server import FakeLLMServer, serve_forever

    serve_forever(FakeLLMServer(responder=responder_factory(log_path), latency=latency, port=port), "simulator")


# -- drivers ----------------------------------------------------------------------------------------
OURS = """
import json, sys, time
sys.path.insert(0, {src!r})
from recursive_llm import RLM
base_url, query, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
context = ({corpus!r} * (size // {corpus_len} + 1))[:size] if size else "small input"
rlm = RLM(model="sim", base_url=base_url, max_iterations=30, max_concurrency=32, store=None)
started = time.perf_counter()
result = rlm.completion(query, context)
wall = time.perf_counter() - started
peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]
print(json.dumps({{"wall": wall, "iterations": result.iterations, "answer": result.answer, "peak_mb": int(peak) / 1024}}))
"""

THEIRS = """
import json, sys, time
from rlm import RLM
base_url, query, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
context = ({corpus!r} * (size // {corpus_len} + 1))[:size] if size else "small input"
rlm = RLM(backend="openai", backend_kwargs={{"model_name": "sim", "base_url": base_url, "api_key": "x"}},
          environment="local", max_iterations=30, max_concurrent_subcalls=32)
started = time.perf_counter()
result = rlm.completion(context, root_prompt=query)
wall = time.perf_counter() - started
peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]
print(json.dumps({{"wall": wall, "answer": getattr(result, "response", None), "peak_mb": int(peak) / 1024}}))
"""


def corpus_seed() -> str:
    from common import stdlib_text

    return stdlib_text(2_000_000)


def run_driver(python: str, script: str, base_url: str, query: str, size: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as handle:
        handle.write(script)
    try:
        done = subprocess.run([python, handle.name, base_url, query, str(size)], capture_output=True, text=True,
                              timeout=900, env={**os.environ, "RLM_HOME": tempfile.mkdtemp(prefix="rlm-peer-")})
    finally:
        os.unlink(handle.name)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def ensure_venv(venv: Path) -> str:
    python = str(venv / "bin" / "python")
    if not Path(python).exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "rlms"], check=True)
    return python


def start_simulator(latency: float, log_path: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, __file__, "--serve", "0", str(latency), log_path],
                               stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    return process, process.stdout.readline().split()[-1]


def measure(name: str, python: str, script: str, scenario: str, latency: float, size: int = 0) -> dict:
    log_path = tempfile.mktemp(prefix="rlm-peer-log-")
    process, base_url = start_simulator(latency, log_path)
    try:
        runs = [run_driver(python, script, base_url, f"Do the task. {scenario}", size) for _ in range(REPEATS)]
    finally:
        process.terminate()
        process.wait()
    sizes = [int(x) for x in Path(log_path).read_text().split()] if Path(log_path).exists() else []
    return {"name": name, "wall": statistics.median(r["wall"] for r in runs), "root_calls": len(sizes) / REPEATS,
            "peak_mb": statistics.median(r["peak_mb"] for r in runs),
            "root_prompt_tokens": statistics.mean(sizes) / 4 if sizes else 0, "answer": runs[0].get("answer")}


def worker_peak_mb() -> float:
    """Our worker's own peak memory with a 40 MB context (it is a separate process)."""
    import asyncio

    from recursive_llm.environments.worker import WorkerEnvironment

    async def no_calls(*args):
        return []

    async def go():
        environment = WorkerEnvironment((corpus_seed() * 21)[:40_000_000], no_calls)
        await environment.start()
        cell = await environment.execute("print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]"
                                          ".split()[1])", 30)
        await environment.close()
        return int(cell.stdout.strip()) / 1024
    return asyncio.run(go())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--venv", type=Path, default=None, help="where to install the peers (default: a temp dir)")
    args = parser.parse_args()
    corpus = corpus_seed()
    ours = textwrap.dedent(OURS).format(src=str(ROOT / "src"), corpus=corpus, corpus_len=len(corpus))
    theirs_python = ensure_venv(args.venv or Path(tempfile.mkdtemp(prefix="rlm-peers-")) / "venv")
    theirs = textwrap.dedent(THEIRS).format(corpus=corpus, corpus_len=len(corpus))
    rows = []
    for label, scenario, latency, size in (("1,000 batched sub-calls at 100 ms (wall s)", "SCENARIO fanout 1000", 0.1, 0),
                                           ("10 root iterations at 0 ms (wall s)", "SCENARIO iterations 10", 0.0, 0),
                                           ("10M-token context, 2 iterations (peak MB)", "SCENARIO iterations 2", 0.0,
                                            40_000_000)):
        a = measure("recursive-llm", sys.executable, ours, scenario, latency, size)
        b = measure("rlms", theirs_python, theirs, scenario, latency, size)
        rows.append((label, a, b))
    print("| measurement (median of 3) | recursive-llm | rlms 0.1.3 (reference) | ours / theirs |")
    print("| --- | --- | --- | --- |")
    fan, iterations, memory = rows
    print(f"| {fan[0]} | {fan[1]['wall']:.2f} | {fan[2]['wall']:.2f} | {fan[1]['wall'] / fan[2]['wall']:.2f} |")
    per_ours = iterations[1]["wall"] / iterations[1]["root_calls"]
    per_theirs = iterations[2]["wall"] / iterations[2]["root_calls"]
    print(f"| time per root iteration, 0 ms model (ms) | {per_ours * 1000:.0f} | {per_theirs * 1000:.0f} "
          f"| {per_ours / per_theirs:.2f} |")
    worker = worker_peak_mb()
    total = memory[1]["peak_mb"] + worker
    print(f"| {memory[0]} | {total:.0f} (host {memory[1]['peak_mb']:.0f} + worker {worker:.0f}) "
          f"| {memory[2]['peak_mb']:.0f} | {total / memory[2]['peak_mb']:.2f} |")
    print(f"| root prompt tokens per iteration (10-iteration run, mean) | {iterations[1]['root_prompt_tokens']:.0f} "
          f"| {iterations[2]['root_prompt_tokens']:.0f} "
          f"| {iterations[1]['root_prompt_tokens'] / max(iterations[2]['root_prompt_tokens'], 1):.2f} |")
    print(f"\nanswers: ours {fan[1]['answer']!r} / theirs {fan[2]['answer']!r}; root calls per run: "
          + ", ".join(f"{r[1]['root_calls']:.0f} / {r[2]['root_calls']:.0f}" for r in rows), file=sys.stderr)
    for label, a, b in rows:
        assert a["answer"] == b["answer"], f"{label}: the implementations did different work ({a['answer']!r} vs {b['answer']!r})"


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]), float(sys.argv[3]), sys.argv[4])
    else:
        main()
