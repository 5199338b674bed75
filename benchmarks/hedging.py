"""Issue 31 (2): hedged stragglers (`hedge_after`).

Run: python benchmarks/hedging.py [acceptance|small] ...   (both by default; REPEATS=5 by default)

- acceptance: the issue's measure. 1,000 sub-calls at 100 ms, 64 wide (`max_concurrency=64`), against
  the lean server (benchmarks/lean_server.py, in its own process) with no tail, and with a tail of 2%
  of requests 20x slower (2 s), with hedging off and with `hedge_after=3`. Each mode has its own
  server (so its own endpoint), warmed by one batch of 128 first; then REPEATS batches: the batch's
  wall time (timed inside the cell) and the extra requests (sub-call requests sent beyond 1,000,
  from the trajectory's `llm_start` events) and hedges (`result.usage`). Medians of REPEATS.
- small: one batch of 101 sub-calls against the simulator whose latency has a tail: 95% of
  requests take 0.1 s, 5% take 2 s (so almost every batch has a straggler); hedging off and
  `hedge_after=3`, each warmed by one batch first (so the width is 101 and a usual latency is known).
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("RLM_HOME", tempfile.mkdtemp(prefix="rlm-bench-"))

from recursive_llm import RLM  # noqa: E402
from recursive_llm.record.events import read_trajectory  # noqa: E402
from recursive_llm.testing import FakeLLMServer, ScriptedModel  # noqa: E402
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


def small() -> None:
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


SUBS, WIDTH, LATENCY = 1000, 64, 0.1
MODES = {"no tail": (None, None), "2% x20 tail, hedging off": ("0.02:2.0", None),
         "2% x20 tail, hedge_after=3": ("0.02:2.0", 3.0)}


@contextmanager
def lean_server(tail: str | None):
    """benchmarks/lean_server.py in its own process, with `tail` ("SHARE:SECONDS") if given."""
    command = [sys.executable, str(ROOT / "benchmarks" / "lean_server.py"), "--latency", str(LATENCY)]
    proc = subprocess.Popen(command + (["--tail", tail] if tail else []), stdout=subprocess.PIPE, text=True)
    try:
        yield proc.stdout.readline().split()[-1]
    finally:
        proc.terminate()
        proc.wait()


def fan_out(base_url: str, prompts: int, hedge_after: float | None) -> tuple[float, int, int]:
    """(the batch's seconds, extra sub-call requests beyond `prompts`, hedges) of one llm_query_batched."""
    code = (f"import time\nt0 = time.perf_counter()\nr = llm_query_batched([str(i) for i in range({prompts})])\n"
            f"assert len(r) == {prompts} and not any(x.startswith('Error') for x in r), r[:3]\n"
            f"print(time.perf_counter() - t0)")
    root = ScriptedModel([f"```repl\n{code}\n```", "FINAL(done)"])
    result = RLM(model=root, sub_model="bench", base_url=base_url, max_concurrency=WIDTH,
                 hedge_after=hedge_after).completion("q", "text")
    events = list(read_trajectory(result.trajectory_path))
    cell = next(e for e in events if e["type"] == "cell")
    sent = sum(1 for e in events if e["type"] == "llm_start" and e["purpose"] == "sub")
    return float(cell["stdout"].strip()), sent - prompts, result.usage.total.hedged


def acceptance() -> None:
    print(f"\n{SUBS} sub-calls at {LATENCY * 1000:.0f} ms, {WIDTH} wide, lean server; medians of {REPEATS}\n")
    print("| provider, hedging | batch wall (median) | x the batch without the tail | each batch "
          "| extra requests (median) | hedged (median) |\n| --- | --- | --- | --- | --- | --- |")
    rows: dict[str, list[tuple[float, int, int]]] = {label: [] for label in MODES}
    with ExitStack() as stack:
        urls = {label: stack.enter_context(lean_server(tail)) for label, (tail, _) in MODES.items()}
        for label, (_, hedge_after) in MODES.items():
            fan_out(urls[label], 2 * WIDTH, hedge_after)  # warm-up: imports, the endpoint's width and usual latency
        for _ in range(REPEATS):  # interleaved, so the machine's noise hits every mode alike
            for label, (_, hedge_after) in MODES.items():
                rows[label].append(fan_out(urls[label], SUBS, hedge_after))
    base = statistics.median(r[0] for r in rows["no tail"])
    for label, measured in rows.items():
        wall = statistics.median(r[0] for r in measured)
        extra, hedged = statistics.median(r[1] for r in measured), statistics.median(r[2] for r in measured)
        each = ", ".join(f"{r[0]:.2f}" for r in sorted(measured))
        print(f"| {label} | {wall:.2f} s | {wall / base:.2f} | {each} | {extra:g} ({extra / SUBS:.1%}) | {hedged:g} |")


def main() -> None:
    chosen = sys.argv[1:] or ["acceptance", "small"]
    for name in chosen:
        {"acceptance": acceptance, "small": small}[name]()


if __name__ == "__main__":
    main()
