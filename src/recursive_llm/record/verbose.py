"""Printing a run's events as they happen (`RLM(verbose=True)`, `rlm ask --verbose`): model replies,
code and cell outputs on stderr. An event listener of the engine's own, so the library's face
(`rlm.py`) does not reach into a front end for it; `cli/progress.py` holds the CLI's live views."""

from __future__ import annotations

from typing import Any

from ..caps import clip


def stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=False)


class VerbosePrinter:
    """An event listener that prints model replies, code and cell outputs as they arrive."""

    def __init__(self, console=None) -> None:
        self.console = console or stderr_console()

    def __call__(self, event: dict[str, Any]) -> None:
        from rich.markup import escape
        from rich.syntax import Syntax

        kind, depth = event["type"], event.get("depth", 0)
        prefix = f"[dim]{'  ' * depth}d{depth}[/dim] "
        if kind == "run_start":
            self.console.print(f"{prefix}[bold]run {event['run_id']}[/bold] model={event['model']} "
                               f"sub_model={event['sub_model']}")
        elif kind == "iteration":
            self.console.rule(f"depth {depth} · iteration {event['iteration']}", style="cyan")
            self.console.print(escape(clip(event.get("reply"))))
        elif kind == "cell":
            self.console.print(Syntax(clip(event.get("code")), "python", theme="ansi_dark"))
            if event.get("stdout"):
                self.console.print(f"[green]{escape(clip(event['stdout']))}[/green]")
            if event.get("stderr"):
                self.console.print(f"[red]{escape(clip(event['stderr']))}[/red]")
        elif kind == "llm_error":
            self.console.print(f"{prefix}[yellow]{event['model']} attempt {event['attempt']} failed: "
                               f"{escape(str(event.get('error')))}[/yellow]")
        elif kind == "fallback":
            self.console.print(f"{prefix}[magenta]switching to the map-reduce fallback: {event['reason']}[/magenta]")
        elif kind == "compaction":
            self.console.print(f"{prefix}[magenta]compacted {event['turns']} messages into a summary "
                               f"({event['tokens_before']:,} -> {event['tokens_after']:,} tokens; window "
                               f"{event['window']:,}); the full turns are in `history`[/magenta]")
        elif kind == "run_end":
            self.console.print(f"{prefix}[bold]run {event['run_id']} ended: {event['stopped_reason']}[/bold]")
