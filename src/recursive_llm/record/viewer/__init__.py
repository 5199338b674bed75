"""Views of a recorded run: a self-contained HTML viewer, a text trajectory, chat-format examples.

All three start from `Store.run_tree(root_id)` and nest the flat records the same way:
run -> iterations (root replies) -> code cells -> the sub-calls and tool calls each cell made
(recorded with their iteration and cell; older runs' by time window) and the child runs started
while it ran -> child runs' own iterations, at any depth.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any

from ...caps import SHOWN_CALL_CHARS, SHOWN_CHARS, SHOWN_MEMORY_CHARS, SHOWN_QUESTION_CHARS, clip

_TEMPLATE = Path(__file__).with_name("template.html")


def nest(tree: dict[str, Any]) -> dict[str, Any]:
    """The run tree as nested, JSON-able data (what the HTML viewer renders)."""
    runs = {run["run_id"]: {**run, "iterations_list": []} for run in tree["runs"]}
    calls = [_call_view(call) for call in tree["calls"]]
    iterations: dict[tuple[str, int], dict] = {}
    reasoning = _reasoning(tree) if any(item.get("reasoning") is None for item in tree["iterations"]) else {}
    for item in tree["iterations"]:
        node = {"iteration": item["iteration"], "reply": item["reply"], "ts": item["ts"], "final": item["final"],
                "cells": [], "call": None,
                "reasoning": item.get("reasoning") or reasoning.get((item["run_id"], item["iteration"]))}
        iterations[(item["run_id"], item["iteration"])] = node
        runs[item["run_id"]]["iterations_list"].append(node)
    for cell in tree["cells"]:
        node = {"index": cell["idx"], "iteration": cell["iteration"], "code": cell["code"],
                "code_html": highlight(cell["code"] or ""),
                "stdout": cell["stdout"], "stderr": cell["stderr"], "error": cell["error"], "final": cell["final"],
                "timed_out": cell["timed_out"], "restarted": cell["restarted"], "duration_s": cell["duration_s"],
                "start": cell["ts"] - (cell["duration_s"] or 0.0), "end": cell["ts"], "calls": [], "children": []}
        parent = iterations.get((cell["run_id"], cell["iteration"]))
        if parent is None:  # a cell without its iteration record (e.g. the fallback's): its own entry
            parent = {"iteration": cell["iteration"], "reply": None, "ts": cell["ts"], "final": 0, "cells": [],
                      "call": None}
            iterations[(cell["run_id"], cell["iteration"])] = parent
            runs[cell["run_id"]]["iterations_list"].append(parent)
        parent["cells"].append(node)
    calls.sort(key=lambda c: (c["start"] or 0.0, str(c["id"])))  # as they started: listed and numbered so
    for run_id, run in runs.items():
        run["iterations_list"].sort(key=lambda i: i["ts"])
        cells = sorted((c for it in run["iterations_list"] for c in it["cells"]), key=lambda c: c["end"])
        root_calls = [c for c in calls if c["run_id"] == run_id and c["purpose"] in ("root", "final")
                      and c["status"] == "ok"]
        for it, call in zip(run["iterations_list"], root_calls):
            it["call"] = call["id"]
        by_index = {(c["iteration"], c["index"]): c for it in run["iterations_list"] for c in it["cells"]
                    if "iteration" in c}
        for call in calls:
            if call["run_id"] == run_id and call["purpose"] in ("sub", "tool"):
                exact = by_index.get((call["iteration"], call["cell"]))
                if exact is not None:  # recorded with the cell that made it
                    exact["calls"].append(call["id"])
                else:  # runs recorded before calls carried their cell: by time
                    _place(cells, call["start"], "calls", call["id"])
        for child in runs.values():
            if child["parent_run_id"] == run_id:
                _place(cells, child["started_at"], "children", child["run_id"])
        _iteration_flags(run, {c["id"]: c for c in calls})
    for number, call in enumerate(calls, start=1):
        call["n"] = number  # run-local: #1..#N in the order they started, not the database row
    return {"root_id": tree["root_id"], "generated_at": time.time(), "runs": runs,
            "calls": {c["id"]: c for c in calls}, "totals": _totals(tree["calls"])}


def _reasoning(tree: dict[str, Any]) -> dict[tuple[str, int], str]:
    """The `reasoning` of each iteration (a <think> block, a provider's reasoning field) for runs
    recorded before the store kept it: read from their JSONL trajectories when still there."""
    found: dict[tuple[str, int], str] = {}
    paths = {run.get("trajectory_path") for run in tree["runs"] if run.get("trajectory_path")}
    for path in paths:
        try:
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    if '"reasoning"' not in line:
                        continue
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    if event.get("type") == "iteration" and event.get("reasoning"):
                        found[(event.get("run_id"), event.get("iteration"))] = event["reasoning"]
        except OSError:
            continue
    return found


def _place(cells: list[dict], moment: float | None, field: str, value: Any) -> None:
    """Attach `value` to the cell that was running at `moment`. A run's cells run one after another
    and each is recorded when it ends, so that is the first cell (by end time) that ended after
    `moment` (a cell's own duration counts compute only, not the time it waited for sub-calls)."""
    if moment is None or not cells:
        return
    target = next((c for c in cells if c["end"] >= moment - 0.001), cells[-1])
    target[field].append(value)


def _iteration_flags(run: dict[str, Any], calls: dict[Any, dict]) -> None:
    """Each iteration's honest time (its root call and its cells, waiting included) and whether its
    FINAL was the run's accepted answer (a FINAL_VAR of a missing name, an answer that failed its
    schema or was made of error texts, is not)."""
    previous_end = run.get("started_at")
    last = run["iterations_list"][-1] if run["iterations_list"] else None
    for it in run["iterations_list"]:
        call = calls.get(it["call"]) if it["call"] is not None else None
        start = call["start"] if call and call.get("start") else previous_end
        end = max([it["ts"] or 0.0] + [c["end"] or 0.0 for c in it["cells"]])
        it["duration_s"] = max(end - start, 0.0) if start else None
        previous_end = end
        said_final = bool(it["final"]) or any(c["final"] is not None for c in it["cells"])
        it["final_state"] = None if not said_final else (
            "accepted" if it is last and run["status"] == "final" else "refused")


def _call_view(call: dict[str, Any]) -> dict[str, Any]:
    messages = call.get("messages") or []
    prompt = messages[-1]["content"] if messages else ""
    return {"id": call["id"], "run_id": call["run_id"], "depth": call["depth"], "purpose": call["purpose"],
            "model": call["model"], "status": call["status"], "prompt": prompt, "messages": len(messages),
            "response": call["response"], "error": call["error"], "prompt_tokens": call["prompt_tokens"] or 0,
            "completion_tokens": call["completion_tokens"] or 0, "cost_usd": call["cost_usd"] or 0.0,
            "latency_s": call["latency_s"] or 0.0, "start": call["started_at"], "end": call["ended_at"],
            "cached": call["cached"], "attempt": call["attempt"], "iteration": call.get("iteration"),
            "cell": call.get("cell")}


def _totals(calls: list[dict[str, Any]]) -> dict[str, Any]:
    by_model: dict[str, dict] = {}
    by_depth: dict[str, dict] = {}
    for call in calls:
        if call["status"] != "ok":
            continue
        for table, key in ((by_model, call["model"] or "?"), (by_depth, str(call["depth"]))):
            row = table.setdefault(key, {"calls": 0, "cached": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                         "cost_usd": 0.0})
            if call["cached"]:
                row["cached"] += 1
                continue
            row["calls"] += 1
            row["prompt_tokens"] += call["prompt_tokens"] or 0
            row["completion_tokens"] += call["completion_tokens"] or 0
            row["cost_usd"] += call["cost_usd"] or 0.0
    return {"by_model": by_model, "by_depth": by_depth}


def highlight(code: str) -> str:
    """Python code as HTML with syntax classes (pygments, which rich already depends on)."""
    try:
        from pygments import highlight as pygmentize
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer
    except ImportError:  # pragma: no cover - rich always brings pygments
        return html.escape(code)
    return pygmentize(code, PythonLexer(), HtmlFormatter(nowrap=True))


def _style() -> str:
    try:
        from pygments.formatters import HtmlFormatter

        return HtmlFormatter(style="friendly").get_style_defs(".code")
    except ImportError:  # pragma: no cover
        return ""


def render_html(tree: dict[str, Any]) -> str:
    """One self-contained HTML file: the data inline as JSON, the renderer inline as JavaScript."""
    data = json.dumps(nest(tree), ensure_ascii=False, default=str).replace("</", "<\\/")
    root = next(run for run in tree["runs"] if run["run_id"] == tree["root_id"])
    title = html.escape(f"RLM run {tree['root_id']}: {(root.get('query') or '')[:80]}")
    return (_TEMPLATE.read_text(encoding="utf-8").replace("/*PYGMENTS*/", _style())
            .replace("__TITLE__", title).replace("__DATA__", data))


# -- text ------------------------------------------------------------------------------------------
def _clip(text: str | None, full: bool, limit: int = SHOWN_CHARS) -> str:
    return (text or "") if full else clip(text, limit, before_note="\n")


def trajectory_text(tree: dict[str, Any], *, full: bool = False) -> str:
    view = nest(tree)
    lines: list[str] = []

    def run_lines(run_id: str, indent: str) -> None:
        run = view["runs"][run_id]
        flags = (" · map-reduce fallback" if run.get("used_fallback") else "") + (
            f" · resumed from {run['resumed_from']}" if run.get("resumed_from") else "") + (
            f" · {run['metadata']['skipped']} input file(s) skipped"
            if isinstance(run.get("metadata"), dict) and run["metadata"].get("skipped") else "")
        lines.append(f"{indent}== run {run_id} (depth {run['depth']}) · {run['model']} · {run['status']} · "
                     f"{run['iterations'] or 0} iteration{'' if run['iterations'] == 1 else 's'} · "
                     f"{run['duration_s'] or 0:.1f}s{flags}")
        lines.append(f"{indent}question: {_clip(run['query'], full, SHOWN_QUESTION_CHARS)}")
        if run.get("memory"):
            lines.extend(f"{indent}memory | {line}" for line in _clip(run["memory"], full, SHOWN_MEMORY_CHARS).splitlines())
        for it in run["iterations_list"]:
            call = view["calls"].get(it["call"]) if it["call"] else None
            usage = f" · {call['prompt_tokens'] + call['completion_tokens']:,} tokens" if call else ""
            usage += f" · {it['duration_s']:.2f}s (model and cells)" if it.get("duration_s") is not None else ""
            usage += {"accepted": " · final", "refused": " · FINAL refused"}.get(it.get("final_state"), "")
            title = "map-reduce fallback (the built-in program)" if it["iteration"] == 0 else f"iteration {it['iteration']}"
            lines.append(f"{indent}-- {title}{usage}")
            if it["reply"]:
                lines.extend(indent + "   " + line for line in _clip(it["reply"], full).splitlines())
            for cell in it["cells"]:
                lines.append(f"{indent}   [cell {cell['index']}] {cell['duration_s'] or 0:.2f}s"
                             + (f" · {cell['error']}" if cell["error"] else ""))
                output = (cell["stdout"] or "") + (cell["stderr"] or "")
                lines.extend(indent + "   > " + line for line in _clip(output, full).splitlines())
                for call_id in cell["calls"]:
                    sub = view["calls"][call_id]
                    lines.append(f"{indent}   #{sub['n']} sub-call {sub['model']} ({sub['status']}"
                                 + (f", {sub['cached']}" if sub["cached"] else "") + "): "
                                 + _clip(sub["prompt"], full, SHOWN_CALL_CHARS).replace("\n", " ") + " -> "
                                 + _clip(sub["response"] or sub["error"], full, SHOWN_CALL_CHARS).replace("\n", " "))
                for child in cell["children"]:
                    run_lines(child, indent + "      ")
        if run["answer"] is not None:
            lines.append(f"{indent}answer: {_clip(run['answer'], full)}")
        if run["error"]:
            lines.append(f"{indent}error: {run['error']}")

    run_lines(view["root_id"], "")
    return "\n".join(lines)


# -- a memory workspace ----------------------------------------------------------------------------
def workspace_html(workspace: str, entries: list[dict[str, Any]]) -> str:
    """One self-contained page: what a memory workspace holds and where each entry came from
    (`entries`: `memory.Workspace.info` of each; values are not shown, `rlm memory show` has them)."""
    def cell(value: Any) -> str:
        return f"<td>{html.escape(str(value if value is not None else ''))}</td>"

    rows = []
    for e in entries:
        changes = "; ".join(f"{kind} {len(paths)}: {', '.join(paths[:20])}" for kind, paths in e["changes"].items()
                            if paths)
        rows.append("<tr>" + "".join(cell(v) for v in (
            e["name"], e["type"], f"{e['size']:,}", e["note"], e["question"], e["run_id"], e["created"],
            len(e["documents"]), f"stale ({changes})" if e["stale"] else "current")) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("entry", "type", "chars", "note", "question", "run (rlm view RUN)",
                                             "made", "documents", "state"))
    title = html.escape(f"RLM memory workspace {workspace}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>"
            "body{font:14px system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}</style></head>"
            f"<body><h1>{title}</h1><p>{len(entries):,} entries</p><table><tr>{head}</tr>{''.join(rows)}</table>"
            "</body></html>")
