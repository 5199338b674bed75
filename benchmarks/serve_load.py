"""`rlm serve` under load: 50 concurrent requests through the official openai client.

Run: python benchmarks/serve_load.py
Each request is a two-turn RLM run (root reply with code -> 2 batched sub-calls -> final reply), so
the model server's own time per request is 3 round trips at LATENCY seconds each. The model server
is the fake OpenAI-compatible server (a thread in this process); `rlm serve` is a real subprocess.
Reported: throughput, and end-to-end latency p50/p99 minus the model time (our overhead: HTTP,
worker start, REPL, the store, retries), without faults and with 20% injected faults.
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


from recursive_llm.testing import FakeLLMServer  # noqa: E402
from common import percentile, serve_burst, start_serve  # noqa: E402
from scripted_root import root_then_sub  # noqa: E402

LATENCY = 0.2
REQUESTS = 50
TURNS = ["```repl\nnotes = llm_query_batched([context[:20], context[-20:]])\nprint(notes)\n```", "FINAL(done)"]
MODEL_TIME = 3 * LATENCY


def main() -> None:
    rows = []
    for label, rate in (("no faults", 0.0), ("20% injected faults", 0.2)):
        with FakeLLMServer(responder=root_then_sub(TURNS), latency=LATENCY, fault_rate=rate, retry_after="0.2",
                           fault_kinds=("429", "500", "503", "garbage", "drop"), seed=3) as backend:
            process, url = start_serve(backend.base_url, REQUESTS, src=str(Path(__file__).resolve().parents[1] / "src"))
            try:
                asyncio.run(serve_burst(url, REQUESTS, REQUESTS))  # warm-up (imports, first workers)
                wall, latencies, failed = asyncio.run(serve_burst(url, REQUESTS, REQUESTS))
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
            faults = len(backend.faults_injected)
        overhead = [x - MODEL_TIME for x in latencies]
        rows.append((label, REQUESTS / wall, statistics.median(latencies), percentile(latencies, 0.99),
                     statistics.median(overhead), percentile(overhead, 0.99), failed, faults))
    print(f"| {REQUESTS} concurrent requests, model latency {LATENCY * 1000:.0f} ms (3 round trips = "
          f"{MODEL_TIME:.1f} s per request) | throughput | latency p50 / p99 | overhead p50 / p99 | failed cleanly "
          f"| faults injected |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, throughput, p50, p99, o50, o99, failed, faults in rows:
        print(f"| {label} | {throughput:.1f} req/s | {p50:.2f} s / {p99:.2f} s | {o50:.2f} s / {o99:.2f} s "
              f"| {failed} | {faults} |")


if __name__ == "__main__":
    main()
