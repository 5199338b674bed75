"""Issue 17 against the reference implementation (PyPI `rlms` 0.1.3), side by side in one run.

Run: python benchmarks/peer_speed.py [--venv DIR] [needle] [cold] [memory]   (all three by default)

- needle (warm): 3 root calls and one `llm_query_batched` of 101 sub-calls over a 2M-character
  haystack (stdlib source with one sentence inserted in the middle), 100 ms per call, a server
  without a cap: the critical path is 4 model latencies (0.40 s). Each implementation runs the task
  twice untimed in the same process (imports, clients; our adaptive width doubles once per round
  trip, 16 to 32 to 64 in the first run and to 101 in the second), then twice timed; REPEATS rounds
  of fresh processes, interleaved; the median is reported. A bare `openai.AsyncOpenAI` sending the
  same calls is the floor this machine allows. Against two servers, each in its own process: the
  simulator (`recursive_llm.testing.fake_server`), and the lean server (benchmarks/lean_server.py
  with this file's `respond`: the same replies at a few percent of the simulator's CPU, which on a
  2-core machine competes with the client's, as a remote provider's does not).
- cold: the same task as a whole one-question process (`python driver.py`, imports included), timed
  from the parent's fork to the child's exit.
- memory: a 10M-token (40M-character) `str` as the context, 2 root iterations: the peak of the
  whole process tree (sampled every 20 ms from the parent, PSS: shared pages once; and RSS summed),
  our host + sandboxed worker against `rlms`, which runs code in its own process.
The peers go into a virtual environment (`--venv`, default /tmp/rlm-peers/venv). Both sides use the
same simulator process, the same root policy and the same answer check.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src")
sys.path.insert(0, SRC)
sys.path.insert(0, str(ROOT / "benchmarks"))

REPEATS = int(os.environ.get("REPEATS", "5"))
LATENCY = 0.1
NEEDLE = "The secret code is 7341."
FINISH = "answer['content'] = result\nanswer['ready'] = True"  # the only way to finish that rlms 0.1.3 knows
FANOUT = 101


def root_code(kind: str, turn: int) -> str:
    """The root policy (identical for both): the code of this turn."""
    if kind == "needle":
        return [(f"step = -(-len(context) // {FANOUT})\n"
                 f"chunks = [context[i * step:(i + 1) * step] for i in range({FANOUT})]\n"
                 "answers = llm_query_batched(['Find the secret code; reply NONE if absent.\\n' + c for c in chunks])\n"
                 "print(len(answers))"),
                "hits = [a for a in answers if a != 'NONE']\nresult = hits[0] if hits else 'none'\nprint(result)",
                FINISH][min(turn, 2)]
    return "result = str(len(context))\nprint(result)" if turn == 0 else FINISH


def respond(messages: list[dict], model: str) -> str:
    text = "\n".join(str(m.get("content", "")) for m in messages)
    if not (messages and messages[0]["role"] == "system" and "REPL" in str(messages[0]["content"])):
        return "7341" if NEEDLE in text else "NONE"  # a sub-call
    kind = "needle" if "TASK needle" in text else "plain"
    return f"```repl\n{root_code(kind, sum(m['role'] == 'assistant' for m in messages))}\n```"


def simulate(port: int) -> None:
    from recursive_llm.testing.fake_server import FakeLLMServer, serve_forever

    serve_forever(FakeLLMServer(responder=respond, latency=LATENCY, port=port), "simulator")


DRIVER = """
import json, sys, time
started = time.perf_counter()
base_url, task, size, warm, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
{setup}
corpus = {corpus!r}
context = (corpus * (size // len(corpus) + 1))[:size]
if task == "needle":
    context = context[:size // 2] + {needle!r} + context[size // 2:]
query = f"Find the secret code. TASK {{task}}"
times, answers = [], []
for _ in range(warm):
    run(query, context)
for _ in range(repeats):
    t0 = time.perf_counter()
    answers.append(run(query, context))
    times.append(time.perf_counter() - t0)
print(json.dumps({{"times": times, "answers": answers, "in_process": time.perf_counter() - started}}))
"""
SETUP = {
    "recursive-llm": """
sys.path.insert(0, {src!r})
from recursive_llm import RLM
rlm = RLM(model="sim", base_url=base_url, max_iterations=30, store=None)
run = lambda query, context: rlm.completion(query, context).answer
""",
    # The machine's floor: the same model calls (3 root calls, the 101 sub-calls' prompts at full
    # width) sent by a bare openai.AsyncOpenAI, no framework.
    "bare SDK": """
import asyncio, openai
client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
async def calls(context):
    root = [{{"role": "system", "content": "REPL"}}, {{"role": "user", "content": "bare"}}]
    await client.chat.completions.create(model="sim", messages=root)
    step = -(-len(context) // 101)
    replies = await asyncio.gather(*(client.chat.completions.create(model="sim", messages=[{{"role": "user",
        "content": "Find the secret code; reply NONE if absent.\\n" + context[i * step:(i + 1) * step]}}])
        for i in range(101)))
    for _ in range(2):
        await client.chat.completions.create(model="sim", messages=root)
    return next(r.choices[0].message.content for r in replies if r.choices[0].message.content != "NONE")
loop = asyncio.new_event_loop()
run = lambda query, context: loop.run_until_complete(calls(context))
""",
    "rlms": """
from rlm import RLM
rlm = RLM(backend="openai", backend_kwargs={{"model_name": "sim", "base_url": base_url, "api_key": "x"}},
          environment="local", max_iterations=30, max_concurrent_subcalls=128)
run = lambda query, context: getattr(rlm.completion(context, root_prompt=query), "response", None)
""",
}


_LIBC = None


def _same_memory(first: int, second: int) -> bool:
    """Do two processes share one address space (kcmp KCMP_VM; x86_64)? A child between vfork and
    exec does: its smaps_rollup shows the parent's memory, which summing would count twice."""
    global _LIBC
    if _LIBC is None:
        import ctypes

        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC.syscall(312, first, second, 1, 0, 0) == 0


def tree_memory_kb(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of `pid` and all its descendants, in kB (a process sharing the address space of
    one already counted, a vfork child before its exec, is counted once)."""
    pss = rss = 0
    pending, seen = [pid], []
    while pending:
        current = pending.pop()
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    pending += [int(c) for c in children.read().split()]
            if any(_same_memory(current, other) for other in seen):
                continue
            seen.append(current)
            with open(f"/proc/{current}/smaps_rollup") as rollup:
                for line in rollup:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return pss, rss


def drive(python: str, script: str, base_url: str, task: str, size: int | str, warm: int, repeats: int,
          sample: bool | None = None) -> dict:
    """Run one driver process; its result plus wall time and the process tree's peak memory
    (sampled when `sample`, by default for inputs over 10M characters)."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as handle:
        handle.write(script)
    peak = [0, 0]
    try:
        started = time.perf_counter()
        process = subprocess.Popen([python, handle.name, base_url, task, str(size), str(warm),
                                    str(repeats)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, "RLM_HOME": tempfile.mkdtemp(prefix="rlm-peer-")})
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.02):
                pss, rss = tree_memory_kb(process.pid)
                peak[0], peak[1] = max(peak[0], pss), max(peak[1], rss)

        sampler = threading.Thread(target=sample, daemon=True)
        if sample if sample is not None else int(size) > 10_000_000:
            sampler.start()
        out, err = process.communicate(timeout=900)
        wall = time.perf_counter() - started
        done.set()
    finally:
        os.unlink(handle.name)
    if process.returncode != 0:
        raise RuntimeError(err[-3000:])
    result = json.loads(out.strip().splitlines()[-1])
    return {**result, "wall": wall, "pss_mb": peak[0] / 1024, "rss_mb": peak[1] / 1024}


def ensure_venv(venv: Path) -> str:
    python = str(venv / "bin" / "python")
    if not Path(python).exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "rlms==0.1.3"],
                   capture_output=True, check=True)
    return python


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "rlm-peers" / "venv")
    parser.add_argument("parts", nargs="*", default=["needle", "cold", "memory"])
    args = parser.parse_args()
    from common import stdlib_text

    corpus = stdlib_text(2_000_000)
    pythons = {"recursive-llm": sys.executable, "rlms": ensure_venv(args.venv), "bare SDK": sys.executable}
    scripts = {name: textwrap.dedent(DRIVER.format(setup=SETUP[name].format(src=SRC), corpus=corpus, needle=NEEDLE))
               for name in pythons}
    # PEER_TREES="before=/path/to/src": rows for our package from other source trees too (before/after)
    extra = [tuple(item.split("=", 1)) for item in os.environ.get("PEER_TREES", "").split(",") if item]
    for label, src in extra:
        pythons[f"recursive-llm ({label})"] = sys.executable
        scripts[f"recursive-llm ({label})"] = textwrap.dedent(DRIVER.format(
            setup=SETUP["recursive-llm"].format(src=src), corpus=corpus, needle=NEEDLE))
    simulator = subprocess.Popen([sys.executable, __file__, "--serve", "0"], stdout=subprocess.PIPE, text=True,
                                 env={**os.environ, "PYTHONPATH": SRC})
    lean = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "lean_server.py"), "--latency", str(LATENCY),
                             "--responder", "peer_speed:respond"], stdout=subprocess.PIPE, text=True)
    base_url = simulator.stdout.readline().split()[-1]
    servers = {"the simulator": base_url, "the lean server": lean.stdout.readline().split()[-1]}
    names = list(pythons)
    peers = ["recursive-llm", *(n for n in names if n.startswith("recursive-llm (")), "rlms"]
    try:
        if "needle" in args.parts:
            for server, url in servers.items():
                warm: dict[str, list[float]] = {n: [] for n in names}
                for _ in range(REPEATS):  # rounds of fresh processes, interleaved, so noise hits all alike
                    for n in names:
                        result = drive(pythons[n], scripts[n], url, "needle", 2_000_000, 2, 2)
                        assert set(result["answers"]) == {"7341"}, (n, result["answers"])
                        warm[n] += result["times"]
                medians = {n: statistics.median(warm[n]) for n in names}
                print(f"\n| needle, warm process, against {server}: 3 root calls + {FANOUT} sub-calls over 2M "
                      f"characters, 100 ms each (median of {2 * REPEATS}) | seconds | / ideal (0.40 s) | / rlms |\n"
                      f"| --- | --- | --- | --- |")
                for n in names:
                    print(f"| {n} | {medians[n]:.3f} | {medians[n] / 0.4:.2f} | {medians[n] / medians['rlms']:.2f} |")
        if "cold" in args.parts:
            walls: dict[str, list[float]] = {n: [] for n in peers}
            for _ in range(REPEATS):  # interleaved, so noise hits both alike
                for n in peers:
                    result = drive(pythons[n], scripts[n], base_url, "needle", 2_000_000, 0, 1)
                    assert result["answers"] == ["7341"], (n, result)
                    walls[n].append(result["wall"])
            haystack = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
            with haystack:  # the same haystack as a file, for `rlm ask` (the CLI end to end, store on)
                haystack.write(corpus[:1_000_000] + NEEDLE + corpus[1_000_000:2_000_000])
            walls["rlm ask (CLI, store on)"] = []
            for _ in range(REPEATS):
                started = time.perf_counter()
                done = subprocess.run([sys.executable, "-m", "recursive_llm", "ask", "Find the secret code. TASK needle",
                                       "--model", "sim", "--base-url", base_url, "-c", haystack.name, "-q"],
                                      capture_output=True, text=True, env={**os.environ, "PYTHONPATH": SRC,
                                                                           "RLM_HOME": tempfile.mkdtemp()})
                walls["rlm ask (CLI, store on)"].append(time.perf_counter() - started)
                assert done.returncode == 0 and "7341" in done.stdout, done.stderr[-2000:]
            os.unlink(haystack.name)
            print(f"\n| needle as a whole one-question process, imports included (median of {REPEATS}) | seconds "
                  f"| / rlms |\n| --- | --- | --- |")
            for n in walls:
                median = statistics.median(walls[n])
                print(f"| {n} | {median:.2f} | {median / statistics.median(walls['rlms']):.2f} |")
        if "memory" in args.parts:
            peaks: dict[str, list[dict]] = {n: [] for n in peers}
            for _ in range(3):
                for n in peers:
                    result = drive(pythons[n], scripts[n], base_url, "plain", 40_000_000, 0, 1)
                    assert result["answers"] == ["40000000"], (n, result["answers"])
                    peaks[n].append(result)
            names = peers
            print("\n| 10M tokens (40M characters) as a `str`, 2 root iterations (median of 3) | peak PSS of the "
                  "process tree | peak RSS summed over the tree | PSS / rlms |\n| --- | --- | --- | --- |")
            rlms_pss = statistics.median(r["pss_mb"] for r in peaks["rlms"])
            for n in names:
                pss = statistics.median(r["pss_mb"] for r in peaks[n])
                rss = statistics.median(r["rss_mb"] for r in peaks[n])
                print(f"| {n} | {pss:.0f} MB | {rss:.0f} MB | {pss / rlms_pss:.2f} |")
    finally:
        for process in (simulator, lean):
            process.terminate()
            process.wait()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        simulate(int(sys.argv[2]))
    else:
        main()
