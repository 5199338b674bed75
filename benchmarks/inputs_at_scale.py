"""Inputs at scale: load, worker-ready, grep, BM25 and SQL at 1M, 10M and 100M tokens.

Run: python benchmarks/inputs_at_scale.py [--sizes 1,10,100] [--rows 10000000]
Prints markdown tables for docs/INPUTS.md. The text is real: Python's standard library sources,
concatenated (and repeated to reach the size). Each size runs in a fresh process so that peak
memory figures are its own. Medians over several repetitions; one machine, one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import status_mb, stdlib_text  # noqa: E402

CHARS_PER_TOKEN = 4
RARE_LITERAL = "CodecRegistryError"  # a name the standard library mentions a few times
REGEX = r"deprecat\w+"  # case-insensitive


def memory_scan_gbps(text: str) -> float:
    """The physical reference: one memchr-speed pass over the same bytes (a byte that is absent)."""
    data = text.encode()
    times = []
    for _ in range(5):
        started = time.perf_counter()
        data.find(b"\x00")
        times.append(time.perf_counter() - started)
    return len(data) / statistics.median(times) / 1e9


CELL = f"""
import time, statistics, resource
def timed(fn, n):
    times = []
    for _ in range(n):
        t = time.perf_counter(); r = fn(); times.append(time.perf_counter() - t)
    return statistics.median(times), r
lit_s, lit = timed(lambda: grep({RARE_LITERAL!r}, max_results=10), 5)
rx_s, rx = timed(lambda: grep({REGEX!r}, ignore_case=True, max_results=10), 3)
hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]
print(lit_s, lit.total, rx_s, rx.total, int(hwm) / 1024)
"""


async def measure_size(path: Path) -> dict:
    from recursive_llm.context.index import SearchIndex
    from recursive_llm.context.loader import load_context
    from recursive_llm.environments.host.worker import WorkerEnvironment

    async def no_calls(*args):
        return []

    scratch = path.parent
    baseline = status_mb("VmRSS")
    started = time.perf_counter()
    loaded = load_context(path)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    env = WorkerEnvironment([loaded], no_calls)
    await env.start()
    ready_s = time.perf_counter() - started
    cell = await env.execute(CELL, 600)
    await env.close()
    assert cell.error is None, cell.stderr
    lit_s, lit_n, rx_s, rx_n, worker_mb = (float(x) for x in cell.stdout.split())
    started = time.perf_counter()
    index = SearchIndex.for_inputs([loaded.value], scratch / "indexes")
    build_s = time.perf_counter() - started
    queries = ["garbage collector reference cycles", "unicode decode error handler", "socket timeout retry",
               "abstract base class register", "thread lock acquire release", "regular expression compile flags",
               "http request header parse", "json encoder default", "subprocess pipe communicate", "datetime timezone"]
    query_times = []
    for _ in range(3):
        for query in queries:
            started = time.perf_counter()
            hits = index.search(query, 10)
            query_times.append(time.perf_counter() - started)
            assert hits
    return {"bytes": path.stat().st_size, "load_s": load_s, "ready_s": ready_s,
            "grep_literal_s": lit_s, "literal_hits": int(lit_n), "grep_regex_s": rx_s, "regex_hits": int(rx_n),
            "host_peak_mb": status_mb("VmHWM") - baseline, "worker_peak_mb": worker_mb,
            "index_build_s": build_s, "index_mb": index.path.stat().st_size / 1e6,
            "query_s": statistics.median(query_times)}


async def measure_table(rows: int) -> dict:
    import duckdb

    from recursive_llm.context.loader import load_context
    from recursive_llm.environments.host.worker import WorkerEnvironment

    async def no_calls(*args):
        return []

    scratch = Path(tempfile.mkdtemp(prefix="rlm-bench-table-"))
    path = scratch / "events.csv"
    duckdb.sql(f"COPY (SELECT range AS id, range % 1000 AS user_id, (range * 7919) % 100000 / 100.0 AS amount, "
               f"['click','view','buy','share'][range % 4 + 1] AS kind FROM range({rows})) TO '{path}' (HEADER)")
    started = time.perf_counter()
    loaded = load_context(path)
    load_s = time.perf_counter() - started
    env = WorkerEnvironment([loaded], no_calls)
    await env.start()
    code = ("import time\nt = time.perf_counter(); r = sql('SELECT kind, count(*), round(avg(amount), 2) FROM events "
            "GROUP BY kind ORDER BY kind'); first = time.perf_counter() - t\n"
            "t = time.perf_counter(); r2 = sql('SELECT user_id, sum(amount) s FROM events GROUP BY user_id "
            "ORDER BY s DESC LIMIT 5'); second = time.perf_counter() - t\nprint(first, second, len(r))")
    cell = await env.execute(code, 600)
    await env.close()
    assert cell.error is None, cell.stderr
    first_s, second_s, groups = cell.stdout.split()
    return {"rows": rows, "bytes": path.stat().st_size, "load_s": load_s, "first_query_s": float(first_s),
            "next_query_s": float(second_s)}


def in_subprocess(kind: str, value: int | str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--one", kind, str(value)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} {value} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1,10,100", help="millions of tokens")
    parser.add_argument("--rows", type=int, default=10_000_000)
    args = parser.parse_args()
    results = []
    for size in args.sizes.split(","):
        scratch = Path(tempfile.mkdtemp(prefix="rlm-bench-"))
        text = stdlib_text(int(size) * 1_000_000 * CHARS_PER_TOKEN)
        (scratch / "corpus.txt").write_text(text, encoding="utf-8")
        bandwidth = memory_scan_gbps(text)
        del text
        result = in_subprocess("text", str(scratch / "corpus.txt"))  # a fresh process: its own peak memory
        results.append({**result, "tokens_m": int(size), "scan_gbps": bandwidth})
    print("| tokens | bytes | load | worker ready | grep literal (hits) | grep -i regex (hits) | host peak RSS "
          "| worker peak RSS | BM25 build (index size) | BM25 query | memory scan reference |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        scan_s = r["bytes"] / (r["scan_gbps"] * 1e9)
        print(f"| {r['tokens_m']}M | {r['bytes'] / 1e6:.0f} MB | {r['load_s']:.2f} s | {r['ready_s']:.2f} s "
              f"| {r['grep_literal_s'] * 1000:.0f} ms ({r['literal_hits']}) | {r['grep_regex_s']:.2f} s ({r['regex_hits']:,}) "
              f"| +{r['host_peak_mb']:.0f} MB | {r['worker_peak_mb']:.0f} MB | {r['index_build_s']:.1f} s "
              f"({r['index_mb']:.0f} MB) | {r['query_s'] * 1000:.1f} ms | {r['scan_gbps']:.1f} GB/s: "
              f"{scan_s * 1000:.0f} ms per pass |")
    table = in_subprocess("table", args.rows)
    print()
    print("| table | CSV size | load (schema, row count) | first sql() (parses the CSV into DuckDB) | next sql() |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| {table['rows']:,} rows | {table['bytes'] / 1e6:.0f} MB | {table['load_s']:.2f} s "
          f"| {table['first_query_s']:.2f} s | {table['next_query_s'] * 1000:.0f} ms |")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--one":
        kind, value = sys.argv[2], sys.argv[3]
        result = asyncio.run(measure_size(Path(value)) if kind == "text" else measure_table(int(value)))
        print(json.dumps(result))
    else:
        main()
