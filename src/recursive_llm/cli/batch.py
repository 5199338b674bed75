"""`rlm batch`: many RLM tasks from a JSONL file, on this machine or across a Ray cluster.

Each line of the tasks file is `{"id": ..., "query": ..., "context": <text or data> | {"files": [...]}}`
(`{"files": [...]}` is the shape `rlm serve` takes too; paths relative to the tasks file; optional
"model"). The old `{"path": ...}` is refused with that fix, never read as data. Results are appended to the results file as
each task finishes, one JSON line each, so a crashed or interrupted batch loses nothing: a rerun
skips every task that already has a finished result and runs the rest. Every run is also recorded
in the run store, as any run is.

Executors share one interface: `local` runs tasks concurrently in this process (each run still has
its own sandboxed worker process); `ray` sends each task to a Ray worker, on a local Ray (started
for the batch) or a cluster (`--address`).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ContextError
from ..extras import install_hint

FINISHED = ("final", "max_iterations", "budget", "timeout", "not_found")


@dataclass
class BatchOptions:
    """Option values for every task's RLM (the names of `options.py`: model, max_cost, timeout, ...);
    a task's own "model" replaces the model."""

    values: dict[str, Any] = field(default_factory=dict)


def read_tasks(path: Path) -> list[dict[str, Any]]:
    tasks, seen = [], set()
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                task = json.loads(line)
            except json.JSONDecodeError as error:
                raise ContextError(f"{path} line {number} is not valid JSON ({error.msg})") from None
            if not isinstance(task, dict) or not isinstance(task.get("query"), str) or "context" not in task:
                raise ContextError(f"{path} line {number}: each task needs a string \"query\" and a \"context\"")
            task.setdefault("id", str(number))
            task["id"] = str(task["id"])
            if task["id"] in seen:
                raise ContextError(f"{path} line {number}: the id {task['id']!r} is used twice")
            seen.add(task["id"])
            task["context"] = _files_resolved(task["context"], path, number)
            tasks.append(task)
    if not tasks:
        raise ContextError(f"{path} has no tasks")
    return tasks


def _files_resolved(context: Any, path: Path, number: int) -> Any:
    """`{"files": ["a.txt", "dir"]}` (`named_files`: the shape every front end takes) with each path
    made absolute (relative to the tasks file); other text or data as it is."""
    from ..context.loader import named_files

    try:
        files = named_files(context)
    except ContextError as error:
        raise ContextError(f'{path} line {number}: "context": {error}') from None
    if files is None:
        return context
    return {"files": [str((path.parent / name).resolve()) for name in files]}


def finished_ids(results: Path) -> set[str]:
    done = set()
    if results.exists():
        for line in results.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash: that task runs again
            if row.get("stopped_reason") in FINISHED:
                done.add(str(row["id"]))
    return done


async def run_task(task: dict[str, Any], options: BatchOptions) -> dict[str, Any]:
    """One task to one result row (errors become rows too: nothing is lost, and they rerun)."""
    from ..errors import RLMError
    from .options import make_rlm

    context = task["context"]
    files = [Path(name) for name in context["files"]] if isinstance(context, dict) and set(context) == {"files"} else None
    try:
        rlm = make_rlm(options.values, model=task.get("model") or options.values.get("model"))
        if files is not None:
            result = await rlm.acompletion(task["query"], files[0], contexts=files[1:])
        else:
            result = await rlm.acompletion(task["query"], context)
    except RLMError as error:
        return {"id": task["id"], "answer": None, "stopped_reason": "error", "error": str(error)}
    return {"id": task["id"], "answer": result.answer, "stopped_reason": result.stopped_reason,
            "run_id": result.run_id, "iterations": result.iterations, "usage": result.usage.total.to_dict(),
            "cost_usd": round(result.cost_usd, 8), "duration_s": round(result.duration_s, 3), "error": result.error}


async def run_local(tasks: list[dict[str, Any]], options: BatchOptions, workers: int,
                    emit: Callable[[dict[str, Any]], None]) -> None:
    """Run tasks concurrently in this process, `workers` at a time; `emit` each result as it finishes."""
    semaphore = asyncio.Semaphore(workers)

    async def one(task: dict[str, Any]) -> None:
        async with semaphore:
            emit(await run_task(task, options))

    await asyncio.gather(*(one(task) for task in tasks))


def _ray_task(task: dict[str, Any], options: BatchOptions) -> dict[str, Any]:
    return asyncio.run(run_task(task, options))


def run_ray(tasks: list[dict[str, Any]], options: BatchOptions, address: str | None, workers: int | None,
            emit: Callable[[dict[str, Any]], None]) -> None:
    """Each task on a Ray worker; a local Ray (loopback only) when no address is given."""
    try:
        import ray
    except ImportError:
        raise ContextError(f"the Ray executor needs Ray: {install_hint('ray')}") from None
    from ..engine.ray_fanout import ensure_ray

    started_here = ensure_ray(address, num_cpus=workers or os.cpu_count() or 2)
    remote = ray.remote(num_cpus=1, max_retries=1)(_ray_task)
    try:
        pending = [remote.remote(task, options) for task in tasks]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            emit(ray.get(done[0]))
    finally:
        if started_here:
            ray.shutdown()


def run_batch(tasks_file: Path, *, results_file: Path, executor: str, options: BatchOptions,
              address: str | None = None, workers: int | None = None,
              on_result: Callable[[dict[str, Any]], None] | None = None) -> dict[str, int]:
    tasks = read_tasks(tasks_file)
    done = finished_ids(results_file)
    todo = [task for task in tasks if task["id"] not in done]
    counts = {"tasks": len(tasks), "skipped": len(tasks) - len(todo), "ran": 0, "failed": 0}
    if not todo:
        return counts
    results_file.parent.mkdir(parents=True, exist_ok=True)
    cut = results_file.exists() and results_file.stat().st_size and not results_file.read_bytes().endswith(b"\n")
    with open(results_file, "a", encoding="utf-8") as handle:
        if cut:  # a crash left half a line: start on a fresh one so no new result is glued to it
            handle.write("\n")

        def emit(row: dict[str, Any]) -> None:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()  # written as it finishes: a crash keeps every finished task
            counts["ran"] += 1
            counts["failed"] += row["stopped_reason"] not in FINISHED
            if on_result:
                on_result(row)

        if executor == "ray":
            run_ray(todo, options, address, workers, emit)
        else:
            asyncio.run(run_local(todo, options, workers or 4, emit))
    compact_results(results_file, [task["id"] for task in tasks])
    return counts


def compact_results(results: Path, order: list[str]) -> None:
    """One line per task: a rerun appends new rows for the tasks it ran again; keep each task's
    latest row, in the tasks file's order (rows of ids no longer in it after those), atomically."""
    latest: dict[str, str] = {}
    for line in results.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if isinstance(row, dict) and "id" in row:
            latest[str(row["id"])] = line
    ranked = sorted(latest, key=lambda i: (order.index(i) if i in order else len(order), i))
    scratch = results.with_name(results.name + ".tmp")
    scratch.write_text("".join(latest[i] + "\n" for i in ranked), encoding="utf-8")
    os.replace(scratch, results)
