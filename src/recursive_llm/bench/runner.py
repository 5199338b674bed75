"""`rlm bench`: run task families x sizes x methods, then write results.jsonl, report.md and plots."""

from __future__ import annotations

import asyncio
import json
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..extras import install_hint
from .methods import METHODS, run_method
from .families import FAMILIES
from .tasks import parse_size


def run_bench(*, model: str, base_url: str | None, families: list[str], sizes: list[str], methods: list[str],
              seeds: int, window_tokens: int, out: Path, progress: bool = True) -> dict[str, Any]:
    unknown = [f for f in families if f not in FAMILIES] + [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown task families or methods: {unknown}; families: {sorted(FAMILIES)}, "
                         f"methods: {list(METHODS)}")
    size_tokens = [parse_size(s) for s in sizes]
    for family in families:  # a missing data package fails now, not after the other families ran
        getattr(FAMILIES[family], "prepare", lambda: None)()
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(f, n, seed, m) for f in families for n in size_tokens for seed in range(seeds) for m in methods]
    rows: list[dict[str, Any]] = []

    async def go(advance) -> None:
        task = None
        for family, size, seed, method in jobs:
            if task is None or task.task_id != f"{family}-{size}-{seed}":  # one task, every method
                task = FAMILIES[family](size, seed)
            outcome = await run_method(method, task, model=model, base_url=base_url, window_tokens=window_tokens)
            rows.append({"family": family, "size_tokens": size, "seed": seed, "method": method,
                         "score": task.score(outcome.answer), "expected": task.answer, **asdict(outcome)})
            advance(f"{family} {size:,} tokens · {method}")

    if progress:
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            job = bar.add_task("benchmark", total=len(jobs))
            asyncio.run(go(lambda label: bar.update(job, advance=1, description=label)))
    else:
        asyncio.run(go(lambda label: None))
    with open(out / "results.jsonl", "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    report = markdown_report(rows, model=model, window_tokens=window_tokens)
    (out / "report.md").write_text(report, encoding="utf-8")
    plots = write_plots(rows, out)
    return {"rows": rows, "report": out / "report.md", "plots": plots}


def _summaries(rows: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, float]]:
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["family"], row["method"], row["size_tokens"]), []).append(row)
    return {key: {"accuracy": statistics.mean(r["score"] for r in group),
                  "tokens": statistics.mean(r["prompt_tokens"] + r["completion_tokens"] for r in group),
                  "calls": statistics.mean(r["calls"] for r in group),
                  "cost_usd": statistics.mean(r["cost_usd"] for r in group),
                  "seconds": statistics.median(r["seconds"] for r in group)}
            for key, group in groups.items()}


def _size_label(tokens: int) -> str:
    return f"{tokens // 1_000_000}M" if tokens >= 1_000_000 and tokens % 1_000_000 == 0 else \
        f"{tokens // 1_000}K" if tokens % 1_000 == 0 else str(tokens)


def markdown_report(rows: list[dict[str, Any]], *, model: str, window_tokens: int) -> str:
    summary = _summaries(rows)
    families = sorted({r["family"] for r in rows})
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    sizes = sorted({r["size_tokens"] for r in rows})
    lines = ["# Benchmark report", "", f"Model: `{model}`; window for the baselines: {window_tokens:,} tokens; "
             f"{len(rows)} runs. Cells: mean score (accuracy or set F1), mean tokens, mean calls, median seconds.", ""]
    for family in families:
        lines += [f"## {family}", "", "| method | " + " | ".join(_size_label(s) for s in sizes) + " |",
                  "| --- |" + " --- |" * len(sizes)]
        for method in methods:
            cells = []
            for size in sizes:
                stats = summary.get((family, method, size))
                cells.append("" if stats is None else f"{stats['accuracy']:.2f} · {stats['tokens']:,.0f} tok · "
                                                      f"{stats['calls']:.0f} calls · {stats['seconds']:.1f} s"
                                                      + (f" · ${stats['cost_usd']:.4f}" if stats["cost_usd"] else ""))
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


PLOT_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
PLOT_DASHES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1)), (0, (1, 1)), (0, (3, 2, 1, 2, 1, 2)))
PLOT_DODGE = 0.06


def write_plots(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """accuracy-<family>.png, tokens-<family>.png and, when the model has a price, cost-<family>.png:
    one line per method against input size."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        raise RuntimeError(f"plots need matplotlib: {install_hint('bench')}") from None
    summary = _summaries(rows)
    written = []
    for family in sorted({r["family"] for r in rows}):
        metrics = [("accuracy", "score (accuracy / F1)"), ("tokens", "tokens per task")]
        if any(row["cost_usd"] for row in rows if row["family"] == family):
            metrics.append(("cost_usd", "cost per task (USD)"))
        for metric, label in metrics:
            figure, axes = plt.subplots(figsize=(6.4, 4.0), dpi=100)
            for index, method in enumerate(METHODS):
                points = sorted((size, stats[metric]) for (f, m, size), stats in summary.items()
                                if f == family and m == method)
                if points:
                    # methods that score the same would hide each other: each has its own marker and
                    # dash, and a small sideways offset (a few percent of the size, on the log axis)
                    shift = 1 + PLOT_DODGE * (index - (len(METHODS) - 1) / 2)
                    axes.plot([p[0] * shift for p in points], [p[1] for p in points], label=method,
                              marker=PLOT_MARKERS[index % len(PLOT_MARKERS)],
                              linestyle=PLOT_DASHES[index % len(PLOT_DASHES)], markersize=7)
            axes.set_xscale("log")
            sizes = sorted({size for (f, _, size) in summary if f == family})
            axes.set_xticks(sizes, [_size_label(size) for size in sizes])  # the sizes that were run
            axes.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            if metric != "accuracy":
                axes.set_yscale("log")
            else:
                axes.set_ylim(-0.05, 1.05)
            axes.set_xlabel("input size (tokens)")
            axes.set_ylabel(label)
            axes.set_title(f"{family}: {label} by input size")
            axes.grid(True, alpha=0.3)
            axes.legend(fontsize=8)
            figure.tight_layout()
            path = out / f"{metric.removesuffix('_usd')}-{family}.png"
            figure.savefig(path)
            plt.close(figure)
            written.append(path)
    return written
