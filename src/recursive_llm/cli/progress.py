"""Showing a run as it happens, on stderr: a live status line and `rlm batch`'s bar (--verbose prints
through `record/verbose.py`)."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from ..caps import STATUS_CHARS, STATUS_LINE_CHARS, shortened
from ..record.verbose import stderr_console as _console


def _first_code_line(reply: str) -> str | None:
    """The first line of the first code block of a reply, shortened: what is running now."""
    from ..engine.parsing import find_code_blocks

    blocks = find_code_blocks(reply)
    if not blocks:
        return None
    line = next((l.strip() for l in blocks[0].splitlines() if l.strip()), "")
    return shortened(line)


class LiveProgress:
    """A one-line live status (iteration, sub-calls in flight and done, all tokens and cost, time).

    Quiet when stderr is not a terminal, unless forced. Use as a context manager and pass the
    instance as `on_event`.
    """

    def __init__(self, *, force: bool = False, console=None) -> None:
        self.console = console or _console()
        self.enabled = force or sys.stderr.isatty()
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self.iteration = 0
        self.depth = 0
        self.in_flight = 0
        self.done = 0
        self.failed = 0
        self.tokens = 0
        self.cost = 0.0
        self.cached = 0
        self.activity = "starting"
        self._live = None

    def __enter__(self) -> "LiveProgress":
        if self.enabled:
            from rich.live import Live

            self._live = Live(self._render(), console=self.console, refresh_per_second=8, transient=True,
                              get_renderable=self._render)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def _render(self):
        from rich.text import Text

        elapsed = time.monotonic() - self._started
        return Text.from_markup(
            f"[cyan]iteration {self.iteration}[/cyan] (depth {self.depth}) · {self.activity} · "
            f"sub-calls [bold]{self.in_flight}[/bold] in flight, {self.done} done"
            + (f", [red]{self.failed} failed[/red]" if self.failed else "")
            + (f" · {self.cached} from the store" if self.cached else "")
            + f" · {self.tokens:,} tokens · ${self.cost:.4f} · {elapsed:.1f}s")

    def __call__(self, event: dict[str, Any]) -> None:
        with self._lock:
            kind = event["type"]
            if kind == "iteration":
                self.iteration, self.depth = event["iteration"], event.get("depth", 0)
                code = _first_code_line(event.get("reply") or "") if event.get("code_blocks") else None
                if code:
                    from rich.markup import escape

                    self.activity = f"running [bold]{escape(code)}[/bold]"
                else:
                    self.activity = "thinking"
            elif kind == "llm_start":
                if event.get("purpose") == "sub":
                    self.in_flight += 1
                else:
                    self.activity = "waiting for the root model"
            elif kind == "llm_call":
                if event.get("purpose") == "sub":
                    self.in_flight -= 0 if event.get("cached") else 1  # stored answers had no llm_start
                    self.done += 1
                if event.get("cached"):
                    self.cached += 1
                    return
                self.tokens += event.get("prompt_tokens", 0) + event.get("completion_tokens", 0)
                self.cost += event.get("cost_usd", 0.0) or 0.0
            elif kind == "llm_error" and event.get("purpose") == "sub":
                self.in_flight -= 1
                self.failed += 1
            elif kind == "cell":
                self.activity = "code ran"
            elif kind == "fallback":
                self.activity = "map-reduce fallback"
            elif kind == "compaction":
                self.activity = f"compacted {event['turns']} messages to stay in the window"


class RunTally:
    """An event listener that remembers what the CLI reports after (or instead of) the result: the
    root run's id as soon as it starts (for Ctrl-C), and how many calls were replayed from an
    earlier attempt, answered from the cache, or made live. It forwards every event to `then`."""

    def __init__(self, then=None) -> None:
        self.then = then
        self.run_id: str | None = None
        self.replayed = self.cached = self.live = 0

    def __call__(self, event: dict[str, Any]) -> None:
        if event["type"] == "run_start" and event.get("parent_run_id") is None and self.run_id is None:
            self.run_id = event["run_id"]
        elif event["type"] == "llm_call":
            source = event.get("cached")
            if source == "replay":
                self.replayed += 1
            elif source:
                self.cached += 1
            else:
                self.live += 1
        if self.then is not None:
            self.then(event)

    def calls(self) -> str:
        """`104 model calls`, or `80 replayed + 24 live model calls` (and cached ones, if any)."""
        parts = [f"{self.replayed} replayed"] if self.replayed else []
        parts += [f"{self.cached} cached"] if self.cached else []
        if not parts:
            return f"{self.live} model calls"
        return " + ".join(parts + [f"{self.live} live"]) + " model calls"


class BatchProgress:
    """`rlm batch` on stderr: a progress bar on a terminal, else one line per finished task. Pass
    the instance as `on_result`; `totals()` sums what the finished tasks did."""

    def __init__(self, total: int | None, *, force: bool = False) -> None:
        self.total = total  # None: unknown (the batch itself reports a bad tasks file)
        self.enabled = force or sys.stderr.isatty()
        self.rows: list[dict[str, Any]] = []
        self._progress = self._task = None
        self._lock = threading.Lock()

    def __enter__(self) -> "BatchProgress":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("batch"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                      TextColumn("{task.description}"), console=_console(), transient=True)
            self._progress.__enter__()
            self._task = self._progress.add_task("", total=self.total)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def __call__(self, row: dict[str, Any]) -> None:
        with self._lock:
            self.rows.append(row)
            note = f"{row['id']}: {row['stopped_reason']}" + (f" ({row['error']})" if row.get("error") else "")
            if self._progress is not None:
                self._progress.update(self._task, advance=1, description=note[:STATUS_CHARS])
            else:
                print(f"[{len(self.rows)}{'/' + str(self.total) if self.total else ''}] {note[:STATUS_LINE_CHARS]}",
                      file=sys.stderr, flush=True)

    def totals(self) -> str:
        if not self.rows:
            return ""
        reasons: dict[str, int] = {}
        for row in self.rows:
            reasons[row["stopped_reason"]] = reasons.get(row["stopped_reason"], 0) + 1
        cost = sum(row.get("cost_usd") or 0.0 for row in self.rows)
        return " (" + ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items())) + f"; ${cost:.4f})"
