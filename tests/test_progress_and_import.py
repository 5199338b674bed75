"""Live progress and --verbose output consume real run events; the package imports fast."""

from __future__ import annotations

import io
import subprocess
import sys

from rich.console import Console

from recursive_llm import RLM
from recursive_llm.cli.progress import LiveProgress
from recursive_llm.record.verbose import VerbosePrinter
from recursive_llm.testing import ScriptedModel


def run_with(listener) -> None:
    root = ScriptedModel(["```repl\nprint(llm_query_batched(['a', 'b']))\n```", "FINAL(done)"])
    sub = ScriptedModel(default="sub answer", name="sub")
    assert RLM(model=root, sub_model=sub, on_event=listener).completion("q", "text").answer == "done"


def test_live_progress_counts_calls_and_tokens():
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    progress = LiveProgress(force=True, console=console)
    with progress:
        run_with(progress)
    assert progress.iteration == 2 and progress.done == 2 and progress.in_flight == 0
    assert progress.tokens > 0
    assert "iteration" in progress._render().plain


def test_live_progress_is_quiet_without_a_terminal():
    assert LiveProgress(console=Console(file=io.StringIO())).enabled is sys.stderr.isatty()


def test_verbose_printer_shows_replies_code_and_output():
    buffer = io.StringIO()
    run_with(VerbosePrinter(Console(file=buffer, width=120)))
    text = buffer.getvalue()
    assert "iteration 1" in text and "llm_query_batched" in text and "FINAL(done)" in text
    assert "ended: final" in text


def test_import_is_light_and_fast():
    code = ("import sys, time; t = time.perf_counter(); import recursive_llm; "
            "print(time.perf_counter() - t); print(sorted(m for m in ('openai', 'anthropic', 'rich', 'httpx', "
            "'llama_cpp', 'cyllama') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[1] == "[]"  # no heavy dependency is imported by `import recursive_llm`
    assert float(out[0]) < 0.3


def test_live_progress_shows_the_running_code_and_stored_answers():
    progress = LiveProgress(force=True, console=Console(file=io.StringIO(), force_terminal=True, width=160))
    progress({"type": "iteration", "iteration": 3, "depth": 0, "code_blocks": 1,
              "reply": "Let me look.\n```repl\n\nhits = grep('needle')\nprint(hits)\n```"})
    assert "running hits = grep('needle')" in progress._render().plain
    progress({"type": "llm_call", "purpose": "sub", "cached": "cache", "prompt_tokens": 10, "completion_tokens": 5})
    assert progress.in_flight == 0 and progress.done == 1 and progress.tokens == 0
    assert "1 from the store" in progress._render().plain
