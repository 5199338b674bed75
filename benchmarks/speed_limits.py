"""Issue 17: how close to the critical path of its model calls a run gets. Side by side in one run.

Run: python benchmarks/speed_limits.py [fanout|cpu|client_cpu|capped|serve|cold] ...   (fanout, capped, serve, cold by default)

- fanout: N sub-calls at 100 ms over HTTP at a fixed width, against the simulator and against the
  lean server (benchmarks/lean_server.py), each in its own process: the bare `openai.AsyncOpenAI`,
  bare asyncio (no HTTP library: the floor), ours with each transport (httpx, the default: httpx2;
  the SDK, on the same library).
- cpu: the fan-out against the lean server with no latency, bare asyncio and ours (httpx transport):
  the CPU per call (client and server together) that each wave of answers waits for.
- client_cpu: the client's own CPU (process time, user and system) per `OpenAIClient.complete`,
  2,000 calls 64 wide against the lean server with no latency, each source tree in a process of
  its own (CPU_TREES="before=/path/to/src,after=src"; this tree by default), beside the bare
  `openai.AsyncOpenAI`: less sensitive to the machine's load than a wall time.
- capped: the fake server answers 429 beyond 8 in flight; 400 sub-calls with the adaptive width:
  requests refused in the first 100 sub-calls and in the rest, and whether every sub-call succeeded.
- serve: `rlm serve --max-concurrent C` in front of a 100 ms model, 100 small requests C at a time
  (2 root calls and one cell each: ideal 0.20 s), with and without pre-started workers.
- cold: a whole one-question process (`python -c`, imports included) with each transport.
Medians of REPEATS; compare ratios within one run (the machine is noisy).
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = os.environ.get("RLM_BENCH_SRC") or str(ROOT / "src")  # another tree's package (ours_in_tree)
sys.path.insert(0, SRC)
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("RLM_HOME", tempfile.mkdtemp(prefix="rlm-bench-"))

from common import bare_asyncio, bare_openai, percentile, serve_burst, start_serve  # noqa: E402
from core_overhead import fan_out, server_process  # noqa: E402
from recursive_llm import RLM  # noqa: E402

assert RLM.__module__ and sys.modules["recursive_llm"].__file__.startswith(SRC), "the package from another tree"
from recursive_llm.record.events import read_trajectory  # noqa: E402
from recursive_llm.testing import FakeLLMServer, ScriptedModel  # noqa: E402

REPEATS = int(os.environ.get("REPEATS", "3"))
LATENCY = 0.1


def ours(base_url: str, prompts: int, width: int, transport: str | None) -> float:
    """core_overhead.fan_out through one OpenAI transport (None: the package's default)."""
    if transport is None:
        os.environ.pop("RLM_OPENAI_TRANSPORT", None)
    else:
        os.environ["RLM_OPENAI_TRANSPORT"] = transport
    return fan_out(base_url, prompts, width)


OURS_IN_TREE = """
import sys
sys.path.insert(0, sys.argv[1])
sys.path.insert(1, sys.argv[2])
from speed_limits import ours
url, prompts, width, transport = sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] or None
ours(url, width * 2, width, transport)
print(ours(url, prompts, width, transport))
"""


def ours_in_tree(src: str, url: str, prompts: int, width: int) -> float:
    """Ours with the package from another source tree, in a process of its own (after one warm-up
    run in it), through FANOUT_TRANSPORT (by default that tree's default transport)."""
    src = str(Path(src).resolve())  # the child checks that its package comes from this path
    done = subprocess.run([sys.executable, "-c", OURS_IN_TREE, src, str(ROOT / "benchmarks"), url, str(prompts),
                           str(width), os.environ.get("FANOUT_TRANSPORT", "")],
                          capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{ROOT / 'tests'}", "RLM_BENCH_SRC": src})
    return float(done.stdout.strip().splitlines()[-1])


def fanout(prompts: int = 1000, width: int = 64) -> None:
    """Against the full simulator and against the lean server (benchmarks/lean_server.py), whose own
    CPU per request is a few percent of the simulator's: what is left above the ideal there is the
    client's (ours or the bare SDK's) on this machine."""
    for lean in (False, True):
        fanout_against(prompts, width, lean)


OUR_TRANSPORTS = {"ours, httpx transport (the default)": "httpx", "ours, SDK transport": "sdk"}


# The clients with no framework around them, each `(base_url, prompts, width) -> seconds`.
BARE_CLIENTS = {"bare openai SDK": bare_openai,
                "bare asyncio, no HTTP library (the floor; benchmarks/common.py)": bare_asyncio}


def run_bare(clients: list[str], url: str, prompts: int, width: int, times: dict[str, list[float]]) -> None:
    """One timed run of each of `clients` (keys of BARE_CLIENTS), added to `times`."""
    for label in clients:
        times[label].append(asyncio.run(BARE_CLIENTS[label](url, prompts, width)))


def fanout_against(prompts: int, width: int, lean: bool) -> None:
    ideal = -(-prompts // width) * LATENCY
    # FANOUT_TREES="before=/path/to/src,after=src": ours from each tree instead, in one run (through
    # FANOUT_TRANSPORT, else each tree's default transport)
    trees = [tuple(item.split("=", 1)) for item in os.environ.get("FANOUT_TREES", "").split(",") if item]
    through = os.environ.get("FANOUT_TRANSPORT") or "its default"
    labels = [f"ours ({tree}), {through} transport" for tree, _ in trees] or list(OUR_TRANSPORTS)
    bare_labels = list(BARE_CLIENTS)
    times: dict[str, list[float]] = {label: [] for label in bare_labels + labels}
    with server_process(LATENCY, lean=lean) as url:
        if not trees:
            for transport in OUR_TRANSPORTS.values():  # warm-up: imports, and the endpoint's width grows
                ours(url, width * 2, width, transport)
        run_bare(bare_labels, url, width * 2, width, {label: [] for label in bare_labels})  # warm-up
        for _ in range(REPEATS):  # interleaved, so noise hits all alike
            run_bare(bare_labels, url, prompts, width, times)
            if trees:
                for label, (_, src) in zip(labels, trees):
                    times[label].append(ours_in_tree(src, url, prompts, width))
            else:
                for label, transport in OUR_TRANSPORTS.items():
                    times[label].append(ours(url, prompts, width, transport))
    os.environ.pop("RLM_OPENAI_TRANSPORT", None)
    bare = statistics.median(times["bare openai SDK"])
    server = "the lean server" if lean else "the simulator"
    print(f"\n| {prompts} sub-calls at 100 ms, width {width}, against {server} (median of {REPEATS}) | seconds "
          f"| / ideal ({ideal:.2f} s) | / bare SDK |\n| --- | --- | --- | --- |")
    for label, values in times.items():
        median = statistics.median(values)
        print(f"| {label} | {median:.3f} | {median / ideal:.2f} | {median / bare:.2f} |")


def cpu(prompts: int = 1000, width: int = 64) -> None:
    """The same fan-out against the lean server with no latency: the wall time is all the CPU the
    calls cost, client and server together (2 cores), so wall / prompts is the CPU per call that a
    wave of `width` answers waits for."""
    bare_labels = [label for label, client in BARE_CLIENTS.items() if client is not bare_openai]
    transports = {label: transport for label, transport in OUR_TRANSPORTS.items() if transport == "httpx"}
    times: dict[str, list[float]] = {label: [] for label in bare_labels + list(transports)}
    with server_process(0.0, lean=True) as url:
        for transport in transports.values():
            ours(url, width * 2, width, transport)
        run_bare(bare_labels, url, width * 2, width, {label: [] for label in bare_labels})  # warm-up
        for _ in range(REPEATS):
            run_bare(bare_labels, url, prompts, width, times)
            for label, transport in transports.items():
                times[label].append(ours(url, prompts, width, transport))
    os.environ.pop("RLM_OPENAI_TRANSPORT", None)
    print(f"\n| {prompts} sub-calls, no latency, width {width}, against the lean server (median of {REPEATS}) "
          f"| seconds | CPU per call | a wave of {width} waits |\n| --- | --- | --- | --- |")
    for label, values in times.items():
        median = statistics.median(values)
        print(f"| {label} | {median:.3f} | {median / prompts * 1000:.2f} ms | {median / prompts * width * 1000:.1f} ms |")


CLIENT_CPU = """
import asyncio, sys, time
sys.path.insert(0, sys.argv[1])
url, calls, width, bare = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "bare"

async def main() -> None:
    if bare:
        import openai
        client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0)
        call = lambda i: client.chat.completions.create(model="bench", messages=[{"role": "user", "content": str(i)}])
    else:
        from recursive_llm.models.openai_client import OpenAIClient
        client = OpenAIClient("bench", base_url=url)
        headers = {"X-RLM-Request-Id": "r", "X-RLM-Run-Id": "run", "X-RLM-Depth": "1", "X-RLM-Purpose": "sub"}
        call = lambda i: client.complete([{"role": "user", "content": str(i)}], headers=headers)
    gate = asyncio.Semaphore(width)

    async def one(i: int) -> None:
        async with gate:
            await call(i)
    await asyncio.gather(*(one(i) for i in range(width * 2)))  # warm-up: connections opened
    started = time.process_time()
    await asyncio.gather(*(one(i) for i in range(calls)))
    print((time.process_time() - started) / calls * 1000)
asyncio.run(main())
"""


def client_cpu(calls: int = 2000, width: int = 64) -> None:
    """Milliseconds of this process's CPU per call: ours from each tree (CPU_TREES) and the bare SDK,
    each run in a fresh process, interleaved, against one lean server with no latency."""
    trees = [tuple(item.split("=", 1)) for item in os.environ.get("CPU_TREES", "").split(",") if item]
    runs = {f"ours ({tree})": str(Path(src).resolve()) for tree, src in trees} or {"ours": SRC}
    runs["bare openai SDK"] = SRC
    times: dict[str, list[float]] = {label: [] for label in runs}
    with server_process(0.0, lean=True) as url:
        for _ in range(REPEATS):
            for label, src in runs.items():
                done = subprocess.run([sys.executable, "-c", CLIENT_CPU, src, url, str(calls), str(width),
                                       "bare" if label.startswith("bare") else "ours"],
                                      capture_output=True, text=True, check=True)
                times[label].append(float(done.stdout.strip().splitlines()[-1]))
    print(f"\n| client CPU per call, {calls} calls {width} wide, lean server, no latency (median of {REPEATS}) "
          f"| ms per call | each run |\n| --- | --- | --- |")
    for label, values in times.items():
        print(f"| {label} | {statistics.median(values):.3f} | {', '.join(f'{v:.3f}' for v in values)} |")


def capped(cap: int = 8, first: int = 100, rest: int = 300) -> None:
    code = lambda n: (f"r = llm_query_batched([str(i) for i in range({n})])\n"  # noqa: E731
                      f"print(sum(x.startswith('Error') for x in r))")
    with FakeLLMServer(latency=LATENCY, max_concurrency=cap, retry_after="0") as server:
        rows = []
        for n in (first, rest):
            before_requests, before_rejected = server.request_count, server.rejected
            root = ScriptedModel([f"```repl\n{code(n)}\n```", "FINAL(done)"])
            started = time.perf_counter()
            result = RLM(model=root, sub_model="capped", base_url=server.base_url).completion("q", "text")
            wall = time.perf_counter() - started
            cell = next(e for e in read_trajectory(result.trajectory_path) if e["type"] == "cell")
            requests, rejected = server.request_count - before_requests, server.rejected - before_rejected
            rows.append((n, requests, rejected, cell["stdout"].strip(), wall, -(-n // cap) * LATENCY))
    print(f"\n| server: 429 beyond {cap} in flight, Retry-After 0 | requests sent | refused (429) | failed sub-calls "
          f"| wall | ideal at width {cap} |\n| --- | --- | --- | --- | --- | --- |")
    for label, (n, requests, rejected, failed, wall, ideal) in zip(("first run (finds the limit)", "next run"), rows):
        print(f"| {label}: {n} sub-calls | {requests} | {rejected} ({rejected / requests:.1%}) | {failed} "
              f"| {wall:.2f} s | {ideal:.2f} s |")


def tree_memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of `pid` and all its descendants (MB): PSS shares a page among the processes that
    map it, so workers forked from one template count their shared pages once."""
    rss = pss = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/smaps_rollup") as rollup:
                fields = dict(line.split(":", 1) for line in rollup if ":" in line and not line.startswith("0"))
            rss += int(fields["Rss"].split()[0])
            pss += int(fields["Pss"].split()[0])
            with open(f"/proc/{current}/task/{current}/children") as children:
                todo += [int(c) for c in children.read().split()]
        except (OSError, KeyError, ValueError):
            pass
    return rss / 1024, pss / 1024


# How `rlm serve` gets its workers: started per request, pre-started fresh interpreters, or
# pre-started and forked from a template (environments/template.py, the default).
WORKER_SOURCES = {"started": {"RLM_WORKER_POOL": "0"},
                  "pre-started, fresh interpreters": {"RLM_WORKER_POOL": "1", "RLM_WORKER_TEMPLATE": "0"},
                  "pre-started, forked from a template": {"RLM_WORKER_POOL": "1", "RLM_WORKER_TEMPLATE": "1"}}


def serve(requests: int = 100, widths: tuple[int, ...] = (25, 50)) -> None:
    from scripted_root import root_then_sub

    turns = ["```repl\nprint(len(context))\n```", "FINAL(done)"]
    print(f"\n| rlm serve, {requests} requests (2 root calls + 1 cell each, 100 ms model: ideal 0.20 s), "
          f"median of {REPEATS} bursts | "
          f"requests/s | p50 | p99 | failed | serve + workers when idle: RSS / PSS |\n"
          f"| --- | --- | --- | --- | --- | --- |")
    # SERVE_TREES="before=/path/to/src,after=src": the same rows for other source trees, in one run
    trees = [tuple(item.split("=", 1)) for item in os.environ.get("SERVE_TREES", "").split(",") if item]
    trees = trees or [("", SRC)]
    # SERVE_WORKERS="started,template": only these rows (the first word of a WORKER_SOURCES key, or "fresh")
    chosen = os.environ.get("SERVE_WORKERS", "started,fresh,template").split(",")
    sources = [name for name in WORKER_SOURCES if any(word in name for word in chosen)]
    for concurrent, source, (tree, src) in [(c, p, t) for c in widths for p in sources for t in trees]:
        with FakeLLMServer(responder=root_then_sub(turns), latency=LATENCY) as backend:
            process, url = start_serve(backend.base_url, concurrent, src=src, env=WORKER_SOURCES[source])
            try:
                asyncio.run(serve_burst(url, concurrent, concurrent))  # warm-up: imports, the first workers
                time.sleep(1.0)  # the pool refills
                idle_rss, idle_pss = tree_memory_mb(process.pid)
                bursts = []  # REPEATS bursts on the same server: the one with the median wall time is shown
                for _ in range(REPEATS):
                    bursts.append(asyncio.run(serve_burst(url, requests, concurrent)))
                    time.sleep(0.5)  # the pool refills
                wall, latencies, failed = sorted(bursts, key=lambda burst: burst[0])[len(bursts) // 2]
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
        label = (f"{tree}: " if tree else "") + f"{concurrent} at a time, {source}"
        print(f"| {label} | {requests / wall:.1f} | {statistics.median(latencies):.2f} s "
              f"| {percentile(latencies, 0.99):.2f} s | {failed} | {idle_rss:.0f} / {idle_pss:.0f} MB |")


def cold() -> None:
    code = ("import time, sys\nt0 = time.perf_counter()\nfrom recursive_llm import RLM\n"
            "r = RLM(model='m', base_url=sys.argv[1]).completion('q', 'x' * 1000)\n"
            "assert r.answer == 'done', r\nprint(time.perf_counter() - t0)")
    from scripted_root import root_then_sub

    turns = ["```repl\nprint(len(context))\n```", "FINAL(done)"]
    times: dict[str, list[float]] = {"httpx": [], "sdk": []}
    with FakeLLMServer(responder=root_then_sub(turns), latency=LATENCY) as backend:
        for _ in range(REPEATS):
            for transport in times:
                env = {**os.environ, "PYTHONPATH": SRC, "RLM_OPENAI_TRANSPORT": transport}
                started = time.perf_counter()
                subprocess.run([sys.executable, "-c", code, backend.base_url], env=env, check=True,
                               capture_output=True)
                times[transport].append(time.perf_counter() - started)
    print(f"\n| one-question process (2 root calls at 100 ms, one cell; median of {REPEATS}) | wall, whole process |"
          f"\n| --- | --- |")
    for transport, values in times.items():
        print(f"| {transport} transport | {statistics.median(values):.2f} s |")


if __name__ == "__main__":
    chosen = sys.argv[1:] or ["fanout", "capped", "serve", "cold"]
    for name in chosen:
        {"fanout": fanout, "cpu": cpu, "client_cpu": client_cpu, "capped": capped, "serve": serve,
         "cold": cold}[name]()
