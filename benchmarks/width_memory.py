"""Issue 31 (1): a new process starts its fan-out at the width the endpoint took before.

Run: python benchmarks/width_memory.py   (REPEATS=3 by default)

Each "process" is a real `python -c` process running one RLM run whose root (at the fake server)
sends one `llm_query_batched` of 101 prompts (the needle's fan-out). For each repeat, a fresh
RLM_HOME: a first process warms it (two batches against the uncapped server, where the width grows
to 101; one batch against the capped one), then a new process runs one batch and is measured: the
most requests in flight at the server, the batch's wall time (in round trips of the server's
latency: about one per wave), and requests refused (429). Side by side: the memory on (default) and
off (RLM_WIDTH_MEMORY_HOURS=0: every process starts at 16). Medians of REPEATS.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src")
sys.path.insert(0, SRC)
sys.path.insert(0, str(ROOT / "tests"))

from recursive_llm.testing import FakeLLMServer  # noqa: E402
from scripted_root import is_root  # noqa: E402

REPEATS = int(os.environ.get("REPEATS", "3"))
LATENCY = 0.3
PROMPTS = 101
BATCH = (f"import time\n_t = time.perf_counter()\nr = llm_query_batched([f'#{{i}}' for i in range({PROMPTS})])\n"
         "print(round(time.perf_counter() - _t, 3), sum(x.startswith('Error') for x in r))")
PROCESS = """import json, sys
from recursive_llm import RLM
from recursive_llm.record.events import read_trajectory
result = RLM(model='m', base_url=sys.argv[1], api_key='bench', max_concurrency=256, cache=False).completion(sys.argv[2], 'text')
cells = [e['stdout'].split() for e in read_trajectory(result.trajectory_path) if e['type'] == 'cell']
print(json.dumps(cells[-1]))
"""


def respond(messages: list[dict], model: str) -> str:
    if not is_root(messages):
        return "ok"
    if any(m["role"] == "assistant" for m in messages):
        return "FINAL(done)"
    return "```repl\n" + "\n".join([BATCH] * (2 if "twice" in str(messages[1]["content"]) else 1)) + "\n```"


def one_process(server: FakeLLMServer, env: dict, query: str) -> dict:
    server.max_in_flight = 0
    requests, rejected = server.request_count, server.rejected
    out = subprocess.run([sys.executable, "-c", PROCESS, server.base_url, query], env=env, check=True,
                         capture_output=True, text=True, timeout=300).stdout
    wall, failed = json.loads(out.strip().splitlines()[-1])[-2:]  # the last batch of the cell
    sent = server.request_count - requests - 2  # the root's two calls are not the batch's
    return {"in_flight": server.max_in_flight, "round_trips": float(wall) / LATENCY, "failed": int(failed),
            "refused": (server.rejected - rejected) / max(1, sent)}


def scenario(cap: int | None, memory: bool) -> dict:
    rows = []
    for _ in range(REPEATS):
        env = {**os.environ, "PYTHONPATH": SRC, "RLM_HOME": tempfile.mkdtemp(prefix="rlm-width-"),
               "RLM_WIDTH_MEMORY_HOURS": "24" if memory else "0"}
        with FakeLLMServer(responder=respond, latency=LATENCY, max_concurrency=cap, retry_after="0") as server:
            one_process(server, env, "twice" if cap is None else "once")  # the endpoint's width is learned
            rows.append(one_process(server, env, "once"))  # a new process: measured
    return {name: statistics.median(row[name] for row in rows) for name in rows[0]}


def main() -> None:
    print(f"\n{PROMPTS} prompts, server latency {LATENCY} s; medians of {REPEATS} new processes (after a warm-up one)\n")
    print("| server | width memory | most in flight | batch wall (round trips) | refused (429) | failed sub-calls |")
    print("| --- | --- | --- | --- | --- | --- |")
    for cap in (None, 8):
        for memory in (False, True):
            row = scenario(cap, memory)
            print(f"| {'uncapped' if cap is None else f'429 beyond {cap}'} | {'on' if memory else 'off'} "
                  f"| {row['in_flight']:.0f} | {row['round_trips']:.1f} | {row['refused']:.1%} | {row['failed']:.0f} |")


if __name__ == "__main__":
    main()
