"""Peer comparison: recursive-llm against the reference implementation (PyPI `rlms`) and DSPy's
`dspy.RLM`, driven by the same simulated model and the same scripted root policy.

Run: python benchmarks/peer_comparison.py [--venv DIR]
The peers are installed into a separate virtual environment (default: a temporary one); a peer
that does not install is left out. The simulator runs in its own process; each implementation and
scenario runs in a fresh process, so peak memory is its own. The policy uses only what every RLM
offers (`context`, `llm_query_batched`), so the work is identical; what differs is the framework.
Only the envelope differs: ours and `rlms` finish with `answer["ready"] = True` (the only form
`rlms` 0.1.3 knows), DSPy wants its chat-adapter fields and `SUBMIT(...)`. DSPy runs with its own
`LocalInterpreter`: its default (Pyodide under Deno) fetches Pyodide from the npm registry at run
time, which this machine cannot reach.

Scenarios (medians of 3):
- fan-out: one cell calls llm_query_batched with 1,000 prompts at 100 ms latency;
- iterations: runs of 2 and of 10 root iterations of trivial code at 0 ms latency: the whole run
  is framework time (for us that includes starting the sandboxed worker, which a model slower
  than about 60 ms hides);
- memory: a 10M-token (40 MB) context, two iterations: the peak, sampled every 20 ms, of the
  proportional set size (shared pages counted once) of the process and all its children (our
  sandboxed worker, DSPy's interpreter process; `rlms` runs code in-process);
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

SCENARIO = re.compile(r"SCENARIO (\w+) (\d+)")
DSPY_ITERATION = re.compile(r"\[\[ ## iteration ## \]\]\s*(\d+)/")
FINISH = "answer['content'] = result\nanswer['ready'] = True"  # the only way to finish that rlms 0.1.3 knows
REPEATS = 3


# -- the simulated model (its own process) ---------------------------------------------------------
def policy(kind: str, number: int, turn: int) -> str | None:
    """The same root policy for every implementation: the code of this turn, or None to finish."""
    if kind == "fanout":
        return (f"answers = llm_query_batched([f'item {{i}}' for i in range({number})])\n"
                f"result = str(len(answers))\nprint(result)") if turn == 0 else None
    return f"result = 'iteration {turn}'\nprint(len(context))" if turn < number - 1 else None


def responder_factory(log_path: str):
    def respond(messages: list[dict], model: str) -> str:
        text = "\n".join(str(m.get("content", "")) for m in messages)
        is_root = messages and messages[0]["role"] == "system" and "REPL" in str(messages[0]["content"])
        if not is_root:
            return "ok"
        match = SCENARIO.search(text)
        kind, number = (match.group(1), int(match.group(2))) if match else ("iterations", 2)  # the warm-up
        if match:
            with open(log_path, "a") as log:
                log.write(f"{len(text)}\n")
        dspy_iteration = DSPY_ITERATION.search(text)  # DSPy sends one prompt per step, with the history in it
        turn = int(dspy_iteration.group(1)) - 1 if dspy_iteration else sum(m["role"] == "assistant" for m in messages)
        code = policy(kind, number, turn)
        if dspy_iteration:  # DSPy's chat adapter fields; it finishes with SUBMIT(...)
            return (f"[[ ## reasoning ## ]]\nNext step.\n\n[[ ## code ## ]]\n```python\n{code or 'SUBMIT(result)'}\n"
                    "```\n\n[[ ## completed ## ]]")
        return f"```repl\n{code or FINISH}\n```"
    return respond


def serve(port: int, latency: float, log_path: str) -> None:
    from recursive_llm.testing.fake_server import FakeLLMServer, serve_forever

    serve_forever(FakeLLMServer(responder=responder_factory(log_path), latency=latency, port=port), "simulator")


# -- drivers: each prints wall time, the answer, and peak memory of the process and of its children --
PROLOGUE = """
import json, os, sys, threading, time

def tree_pss_kb():
    # proportional set size of this process and all its descendants: shared pages counted once
    total, pending = 0, [os.getpid()]
    while pending:
        pid = pending.pop()
        try:
            with open(f"/proc/{{pid}}/smaps_rollup") as rollup:
                total += next(int(l.split()[1]) for l in rollup if l.startswith("Pss:"))
            for task in os.listdir(f"/proc/{{pid}}/task"):
                with open(f"/proc/{{pid}}/task/{{task}}/children") as children:
                    pending += [int(c) for c in children.read().split()]
        except (OSError, StopIteration):
            pass
    return total

peak, done = [0], threading.Event()
def sample():
    while not done.wait(0.02):
        peak[0] = max(peak[0], tree_pss_kb())
threading.Thread(target=sample, daemon=True).start()
base_url, query, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
context = ({corpus!r} * (size // {corpus_len} + 1))[:size] if size else "small input"
"""
EPILOGUE = """
wall = time.perf_counter() - started
done.set()
host = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]
print(json.dumps({{"wall": wall, "answer": answer, "host_mb": int(host) / 1024, "tree_mb": peak[0] / 1024}}))
"""
DRIVERS = {
    "recursive-llm": """
sys.path.insert(0, {src!r})
from recursive_llm import RLM
rlm = RLM(model="sim", base_url=base_url, max_iterations=30, max_concurrency=32, store=None)
run = lambda query, context: rlm.completion(query, context).answer
""",
    "rlms": """
from rlm import RLM
rlm = RLM(backend="openai", backend_kwargs={{"model_name": "sim", "base_url": base_url, "api_key": "x"}},
          environment="local", max_iterations=30, max_concurrent_subcalls=32)
run = lambda query, context: getattr(rlm.completion(context, root_prompt=query), "response", None)
""",
    # DSPy's default interpreter (Pyodide under Deno) fetches Pyodide from the npm registry at run
    # time, which this machine cannot reach; DSPy's own LocalInterpreter (a local subprocess) runs.
    "dspy": """
import dspy
from dspy.primitives.local_interpreter import LocalInterpreter
dspy.configure(lm=dspy.LM("openai/sim", api_base=base_url, api_key="x", cache=False))
rlm = dspy.RLM("context, query -> answer", max_iters=30, max_llm_calls=5000, interpreter_factory=LocalInterpreter)
run = lambda query, context: rlm(context=context, query=query).answer
""",
}
# One small run first, untimed: what is measured is a run in a warm process (imports done, clients
# made), the way a server or a batch runs them; each implementation imports and connects lazily
# in its own way.
TIMED = """
run("warm up", "small input")
started = time.perf_counter()
answer = run(query, context)
"""
CONCURRENCY = {"recursive-llm": 32, "rlms": 32, "dspy": 8}  # DSPy's llm_query_batched: 8 threads, fixed
PEERS = {"rlms": ("rlms", "rlm"), "dspy": ("dspy", "dspy")}  # implementation -> (PyPI package, module)


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
    """A virtual environment with the peers that install (one that does not is reported and skipped)."""
    python = str(venv / "bin" / "python")
    if not Path(python).exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    for package, _ in PEERS.values():
        done = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", package],
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(f"could not install {package}: {done.stderr[-500:]}", file=sys.stderr)
    return python


def installed(python: str, implementation: str) -> str | None:
    """The implementation's version in that interpreter, or None."""
    package, module = PEERS[implementation]
    done = subprocess.run([python, "-c", f"import importlib.metadata as m; import {module}; "
                           f"print(m.version({package!r}))"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def start_simulator(latency: float, log_path: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, __file__, "--serve", "0", str(latency), log_path],
                               stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    return process, process.stdout.readline().split()[-1]


def measure(python: str, script: str, scenario: str, latency: float, size: int = 0) -> dict:
    log_path = tempfile.mktemp(prefix="rlm-peer-log-")
    process, base_url = start_simulator(latency, log_path)
    try:
        runs = [run_driver(python, script, base_url, f"Do the task. {scenario}", size) for _ in range(REPEATS)]
    finally:
        process.terminate()
        process.wait()
    sizes = [int(x) for x in Path(log_path).read_text().split()] if Path(log_path).exists() else []
    return {"wall": statistics.median(r["wall"] for r in runs), "root_calls": len(sizes) / REPEATS,
            "peak_mb": statistics.median(r["tree_mb"] for r in runs),
            "host_mb": statistics.median(r["host_mb"] for r in runs),
            "root_prompt_tokens": statistics.mean(sizes) / 4 if sizes else 0, "answer": runs[0].get("answer")}


SCENARIOS = (("fanout", "SCENARIO fanout 1000", 0.1, 0), ("iterations", "SCENARIO iterations 10", 0.0, 0),
             ("short", "SCENARIO iterations 2", 0.0, 0), ("memory", "SCENARIO iterations 2", 0.0, 40_000_000))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--venv", type=Path, default=None, help="where to install the peers (default: a temp dir)")
    args = parser.parse_args()
    corpus = corpus_seed()
    peers_python = ensure_venv(args.venv or Path(tempfile.mkdtemp(prefix="rlm-peers-")) / "venv")
    pythons = {"recursive-llm": sys.executable}
    versions = {"recursive-llm": "this tree"}
    for name in PEERS:
        if version := installed(peers_python, name):
            pythons[name], versions[name] = peers_python, version
    results: dict[str, dict[str, dict]] = {}
    for name, python in pythons.items():
        script = textwrap.dedent(PROLOGUE + DRIVERS[name] + TIMED + EPILOGUE).format(
            src=str(ROOT / "src"), corpus=corpus, corpus_len=len(corpus))
        results[name] = {kind: measure(python, script, scenario, latency, size)
                         for kind, scenario, latency, size in SCENARIOS}
    ours = results["recursive-llm"]
    names = list(results)
    header = " | ".join(f"{n} ({versions[n]})" for n in names)
    print(f"| measurement (median of {REPEATS}) | {header} | " + " | ".join(f"ours / {n}" for n in names[1:]) + " |")
    print("| --- |" + " --- |" * (2 * len(names) - 1))

    def row(label: str, value, text=lambda v: f"{v:.2f}") -> None:
        values = [value(results[n]) for n in names]
        print(f"| {label} | " + " | ".join(text(v) for v in values) + " | "
              + " | ".join(f"{values[0] / v:.2f}" if v > 0.05 else "n/a" for v in values[1:]) + " |")

    row("1,000 batched sub-calls at 100 ms (wall s)", lambda r: r["fanout"]["wall"])
    print("| ideal for that (1,000 x 0.1 s / its concurrency) | " + " | ".join(
        f"{100 / CONCURRENCY[n]:.2f} (x{CONCURRENCY[n]})" for n in names) + " |" + " |" * (len(names) - 1))
    row("a run of 2 root iterations, 0 ms model (wall ms)", lambda r: r["short"]["wall"] * 1000,
        lambda v: f"{v:.0f}")
    row("a run of 10 root iterations, 0 ms model (wall ms)", lambda r: r["iterations"]["wall"] * 1000,
        lambda v: f"{v:.0f}")
    row("10M-token context, 2 iterations: peak MB, the process and its children (PSS)",
        lambda r: r["memory"]["peak_mb"], lambda v: f"{v:.0f}")
    print("| of which the driving process alone (peak RSS, MB) | " + " | ".join(
        f"{results[n]['memory']['host_mb']:.0f}" for n in names) + " |" + " |" * (len(names) - 1))
    row("root prompt tokens per iteration (10-iteration run, mean)", lambda r: r["iterations"]["root_prompt_tokens"],
        lambda v: f"{v:.0f}")
    print("\nroot calls per run: " + "; ".join(
        f"{n}: " + ", ".join(f"{results[n][k]['root_calls']:.0f}" for k, *_ in SCENARIOS) for n in names),
        file=sys.stderr)
    for name in names[1:]:
        for kind, *_ in SCENARIOS:
            a, b = ours[kind]["answer"], results[name][kind]["answer"]
            assert str(a) == str(b), f"{kind}: {name} did different work ({a!r} vs ours {b!r})"


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]), float(sys.argv[3]), sys.argv[4])
    else:
        main()
