"""Issue 31 (2): hedged stragglers (`hedge_after`). One batch of 101 sub-calls against a server whose
latency has a tail: 95% of requests take 0.1 s, 5% take 2 s (so almost every batch has a straggler).

Run: python benchmarks/hedging.py   (REPEATS=5 by default)

Side by side in one process: hedging off, and `hedge_after=3`. Each mode has its own endpoint (API
key), warmed by one batch first (so the width is 101 and a usual latency is known); then REPEATS
batches are measured: the batch's wall time (timed inside the cell) and the requests sent per
sub-call. Medians of REPEATS.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("RLM_HOME", tempfile.mkdtemp(prefix="rlm-bench-"))

from recursive_llm import RLM  # noqa: E402
from recursive_llm.events import read_trajectory  # noqa: E402
from recursive_llm.testing import FakeLLMServer  # noqa: E402
from scripted_root import root_then_sub  # noqa: E402

REPEATS = int(os.environ.get("REPEATS", "5"))
PROMPTS = 101
CODE = (f"import time\n_t = time.perf_counter()\nr = llm_query_batched([f'#{{i}}' for i in range({PROMPTS})])\n"
        "print(round(time.perf_counter() - _t, 3))")


def tail_latency(rng: random.Random):
    return lambda: 2.0 if rng.random() < 0.05 else 0.1


def batch(server: FakeLLMServer, key: str, hedge_after: float | None) -> tuple[float, int]:
    """(the batch's seconds, requests it sent)."""
    before = server.request_count
    result = RLM(model="m", base_url=server.base_url, api_key=key, hedge_after=hedge_after,
                 cache=False).completion("q", "text")
    cell = next(e for e in read_trajectory(result.trajectory_path) if e["type"] == "cell")
    return float(cell["stdout"].split()[-1]), server.request_count - before - 2  # less the root's two calls


def main() -> None:
    print(f"\n{PROMPTS} sub-calls, latency 0.1 s (95%) or 2 s (5%); medians of {REPEATS} batches after a warm-up\n")
    print("| hedging | batch wall (median) | each batch | requests per sub-call |\n| --- | --- | --- | --- |")
    for hedge_after in (None, 3.0):
        with FakeLLMServer(responder=root_then_sub(["```repl\n" + CODE + "\n```", "FINAL(done)"]),
                           latency=tail_latency(random.Random(7))) as server:
            key = f"hedge-{hedge_after}"
            batch(server, key, hedge_after)
            rows = [batch(server, key, hedge_after) for _ in range(REPEATS)]
        wall = statistics.median(r[0] for r in rows)
        sent = statistics.median(r[1] for r in rows) / PROMPTS
        each = ", ".join(f"{r[0]:.2f}" for r in sorted(rows))
        print(f"| {'off' if hedge_after is None else f'hedge_after={hedge_after:g}'} | {wall:.2f} s | {each} | {sent:.3f} |")


if __name__ == "__main__":
    main()
