"""Issue 17: the CPU one worker costs (start + one cell + close), side by side for several trees.

Run: WORKER_TREES="before=/tmp/before/src,after=src" python benchmarks/worker_start.py [process|auto]
(default: both modes; "after=src" alone without WORKER_TREES). With FINAL=1 the cell also calls
`FINAL('ok')` first, as the cell that ends a run does. Each tree is measured in a fresh
`python` of its own, alternating, REPEATS times N workers; the medians per worker are printed:

- host: this process's user + system CPU (spawning, the channel, the directory);
- worker: the worker interpreter's own CPU up to its cell (it reports its getrusage);
- tree: CPU of the whole process tree read from /proc just before the close (bwrap and its
  sandboxed grandchild included, which RUSAGE_CHILDREN does not see in `auto` mode);
- children: RUSAGE_CHILDREN after the close (every waited-for descendant; `process` mode only).

ORIGINS="started,forked" (the default: both): "forked" workers come from a worker template
(environments/template.py), as `rlm serve`'s spares do; their tree is the template's own CPU and
that of the workers and keepers it reaped, over the N workers.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPEATS = int(os.environ.get("REPEATS", "5"))
N = int(os.environ.get("N", "20"))

MEASURE = r"""
import asyncio, json, os, resource, sys, time
from recursive_llm.environments.host.worker import WorkerEnvironment

TICK = os.sysconf("SC_CLK_TCK")
CELL = os.environ.get("CELL_PREFIX", "") + "import resource as _r; _u = _r.getrusage(_r.RUSAGE_SELF); print(_u.ru_utime + _u.ru_stime)"

def tree_cpu(pid):
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += sum(int(v) for v in fields[11:15]) / TICK
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in open(f"/proc/{p}/task/{task}/children").read().split()]
        except OSError:
            pass
    return total

async def no_calls(*a):
    return []

async def main(mode, n, origin):
    template = None
    if origin == "forked":
        from recursive_llm.environments.prestart import template as worker_template
        from recursive_llm.environments.host.sandbox import Limits, plan_isolation
        from recursive_llm.environments.host.worker import WORKER_SCRIPT
        template = worker_template.WorkerTemplate(plan_isolation(mode), Limits(),
                                                  worker_template.python_argv_for_template(str(WORKER_SCRIPT)))
        await template.start()
    e = WorkerEnvironment("x", no_calls, sandbox=mode, template=template); await e.start(); await e.close()
    worker = tree = 0.0
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN); s0 = resource.getrusage(resource.RUSAGE_SELF)
    before = tree_cpu(template._host_pid) if template else 0.0
    t0 = time.perf_counter()
    for _ in range(n):
        e = WorkerEnvironment("x", no_calls, sandbox=mode, template=template)
        await e.start()
        out = await e.execute(CELL, 10)
        worker += float(out.stdout.split()[0])
        if template is None:
            tree += tree_cpu(e._channel.process.pid)
        await e.close()
    wall = time.perf_counter() - t0
    if template is not None:
        await asyncio.sleep(0.2)  # the last exits are reaped
        tree = tree_cpu(template._host_pid) - before
        await template.close()
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN); s1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = lambda a, b: (b.ru_utime - a.ru_utime + b.ru_stime - a.ru_stime) / n * 1000
    print(json.dumps({"wall": wall / n * 1000, "host": cpu(s0, s1),
                      "host_sys": (s1.ru_stime - s0.ru_stime) / n * 1000, "worker": worker / n * 1000,
                      "tree": tree / n * 1000, "children": cpu(r0, r1)}))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
"""

COLUMNS = ("wall", "host", "host_sys", "worker", "tree", "children")


def measure(src: str, mode: str, origin: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": src, "CELL_PREFIX": "FINAL('ok')\n" if os.environ.get("FINAL") else ""}
    done = subprocess.run([sys.executable, "-c", MEASURE, mode, str(N), origin], env=env, cwd="/",
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    trees = [item.split("=", 1) for item in os.environ.get("WORKER_TREES", "after=src").split(",")]
    trees = [(name, str((ROOT / src).resolve())) for name, src in trees]
    origins = os.environ.get("ORIGINS", "started,forked").split(",")
    rows = [(f"{name}, {origin}" if len(trees) > 1 else origin, src, origin) for name, src in trees for origin in origins]
    modes = sys.argv[1:] or ["process", "auto"]
    for mode in modes:
        runs: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in rows}
        for _ in range(REPEATS):
            for label, src, origin in rows:
                runs[label].append(measure(src, mode, origin))
        print(f"\nsandbox={mode!r}, per worker (start + one cell + close), ms, median of {REPEATS} x {N}")
        print("| tree | " + " | ".join(COLUMNS) + " |")
        print("| --- |" + " --- |" * len(COLUMNS))
        for name, results in runs.items():
            medians = [statistics.median(r[c] for r in results) for c in COLUMNS]
            print(f"| {name} | " + " | ".join(f"{m:.1f}" for m in medians) + " |")


if __name__ == "__main__":
    main()
