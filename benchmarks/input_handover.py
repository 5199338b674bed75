"""Issue 31, third part: handing a 10M-token input to the worker, against `rlms` 0.1.3, side by side.

Run: python benchmarks/input_handover.py [--venv DIR]   (REPEATS rounds, default 5; PEER_TREES as in
peer_speed.py: "before=/path/to/src" adds rows for another source tree of this package)

The grep-only task: a 40M-character ASCII input (Python's standard library sources, repeated, one
sentence in the middle), 2 root calls against the lean server at 0 ms latency (the run is the
framework's own time): the first cell runs one regular expression over the whole `context` and
prints the count, the second finishes. Each implementation runs the task twice untimed in its
process, then three times timed; REPEATS rounds of fresh processes, interleaved, so noise hits all
alike; medians. Two ways in:
- `str`: the driver holds the input as a `str` (read from the file before anything is timed) and
  passes it; the same for every implementation.
- file: ours is given the file (`pathlib.Path`); `rlms` takes only a `str`, so its timed run reads
  the file first (what handing it a file costs).
Memory: the peak, sampled every 20 ms from this process, of the whole process tree of the driver
(RSS summed over the processes, and PSS: shared pages counted once), over its whole life (the
warm-up and the timed runs included).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from peer_speed import FINISH, NEEDLE, REPEATS, SRC, drive, ensure_venv  # noqa: E402  (the same drivers' plumbing)

SIZE = 40_000_000
GREP = "import re\nresult = str(len(re.findall(r'secret code is \\d+', context)))\nprint(result)"


def respond(messages: list[dict], model: str) -> str:
    """The root policy (identical for both): grep, then finish."""
    turn = sum(m["role"] == "assistant" for m in messages)
    return f"```repl\n{GREP if turn == 0 else FINISH}\n```"


DRIVER = """
import json, sys, time
base_url, path, way, warm, repeats = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
{setup}
held = open(path, encoding="utf-8").read() if way == "str" else None
times, answers = [], []
for round in range(warm + repeats):
    t0 = time.perf_counter()
    answers.append(run("Count the codes.", held if way == "str" else path))
    if round >= warm:
        times.append(time.perf_counter() - t0)
print(json.dumps({{"times": times, "answers": answers}}))
"""
SETUP = {
    "recursive-llm": """
sys.path.insert(0, {src!r})
from pathlib import Path
from recursive_llm import RLM
rlm = RLM(model="sim", base_url=base_url, max_iterations=10, store=None)
run = lambda query, context: rlm.completion(query, context if isinstance(context, str) and way == "str"
                                            else Path(context)).answer
""",
    "rlms": """
from rlm import RLM
rlm = RLM(backend="openai", backend_kwargs={{"model_name": "sim", "base_url": base_url, "api_key": "x"}},
          environment="local", max_iterations=10)
def run(query, context):
    if way == "file":
        context = open(context, encoding="utf-8").read()
    return getattr(rlm.completion(context, root_prompt=query), "response", None)
""",
}


def main() -> None:
    from common import stdlib_text

    parser = argparse.ArgumentParser()
    parser.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "rlm-peers" / "venv")
    args = parser.parse_args()
    pythons = {"recursive-llm": sys.executable, "rlms": ensure_venv(args.venv)}
    scripts = {n: textwrap.dedent(DRIVER.format(setup=SETUP[n].format(src=SRC))) for n in pythons}
    for label, src in [tuple(i.split("=", 1)) for i in os.environ.get("PEER_TREES", "").split(",") if i]:
        pythons[f"recursive-llm ({label})"] = sys.executable
        setup = SETUP["recursive-llm"].format(src=src)
        scripts[f"recursive-llm ({label})"] = textwrap.dedent(DRIVER.format(setup=setup))
    corpus = stdlib_text(SIZE)
    haystack = Path(tempfile.mkdtemp(prefix="rlm-handover-")) / "haystack.txt"
    haystack.write_text(corpus[:SIZE // 2] + NEEDLE + corpus[SIZE // 2:SIZE - len(NEEDLE)], encoding="utf-8")
    os.chmod(haystack.parent, 0o755)
    os.chmod(haystack, 0o644)
    expected = str(corpus.count("secret code is 7341") + 1)
    del corpus
    lean = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "lean_server.py"), "--latency", "0",
                             "--responder", "input_handover:respond"], stdout=subprocess.PIPE, text=True)
    url = lean.stdout.readline().split()[-1]
    names = list(pythons)
    try:
        for way in ("str", "file"):
            results: dict[str, list[dict]] = {n: [] for n in names}
            for _ in range(REPEATS):
                for n in names:
                    result = drive(pythons[n], scripts[n], url, str(haystack), way, 2, 3, sample=True)
                    assert set(result["answers"]) == {expected}, (n, result["answers"], expected)
                    results[n].append(result)
            report(way, results)
    finally:
        lean.terminate()
        lean.wait()
        haystack.unlink()
        haystack.parent.rmdir()


def report(way: str, results: dict[str, list[dict]]) -> None:
    def median(n: str, key: str) -> float:
        if key == "times":
            return statistics.median(t for r in results[n] for t in r["times"])
        return statistics.median(r[key] for r in results[n])

    given = "a `str`" if way == "str" else "a file (`rlms`: read into a `str` in the timed run)"
    print(f"\n| grep-only, 40M characters as {given}, warm process (median of {3 * REPEATS}; memory: median "
          f"of {REPEATS} peaks) | seconds | / rlms | peak RSS of the tree | / rlms | peak PSS | / rlms |\n"
          "| --- | --- | --- | --- | --- | --- | --- |")
    base = {key: median("rlms", key) for key in ("times", "rss_mb", "pss_mb")}
    for n in results:
        t, rss, pss = median(n, "times"), median(n, "rss_mb"), median(n, "pss_mb")
        print(f"| {n} | {t:.3f} | {t / base['times']:.2f} | {rss:.0f} MB | {rss / base['rss_mb']:.2f} "
              f"| {pss:.0f} MB | {pss / base['pss_mb']:.2f} |")


if __name__ == "__main__":
    main()
