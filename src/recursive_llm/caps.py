"""Every cap on output text, and the two ways of cutting it (one place: callers only call these).

Two readers, two cuts. The model gets `truncate_output`: the head and the tail, with a note in the
middle telling it to print less. A person (progress, `--verbose`, `rlm logs show`, the viewer) gets
`clip`: the head, with how much more there is.

Stdlib only, nothing heavy at import: the worker process imports it (a cell's captured output, a
grep hit's line), and a worker's start must not load typing or dataclasses (test_sandbox_layers).
"""

from __future__ import annotations

# -- what the model sees ---------------------------------------------------------------------------
# A turn's code output is `LoopPolicy.max_output_chars` (config.py, a setting), shared by the
# reply's code blocks; each block gets at least this much.
MIN_BLOCK_CHARS = 200
# What a cell keeps of its stdout and stderr (for the trajectory): this many times what the model
# is shown, and at least CAPTURED_CHARS; past it the worker counts what it discards.
CAPTURED_PER_SHOWN = 50
CAPTURED_CHARS = 1_000_000
ANSWER_QUOTE_CHARS = 500      # an answer quoted back to the model (confirm it; the schema gave up)
SCHEMA_ERRORS_CHARS = 2_000   # an answer's validation errors, told to the model
FAILURE_QUOTE_CHARS = 300     # a failed sub-call's error text, quoted when an answer is refused
GREP_LINE_CHARS = 400         # a line of a `grep` hit in the REPL
WORKER_LOG_CHARS = 2_000      # the tail of a worker's stderr in the error when it does not start

# -- what a person reads ---------------------------------------------------------------------------
SHOWN_CHARS = 2_000           # a reply, code, a cell's output or an answer in --verbose and `logs show`
SHOWN_QUESTION_CHARS = 500    # the question in `logs show`
SHOWN_MEMORY_CHARS = 4_000    # the memory section in `logs show`
SHOWN_CALL_CHARS = 200        # a sub-call's prompt and its answer in `logs show`
STATUS_CHARS = 60             # a finished batch task on the progress bar; the code now running
STATUS_LINE_CHARS = 200       # a finished batch task as a line (stderr not a terminal)


def block_share(max_output_chars: int, blocks: int) -> int:
    """Each of a reply's `blocks` code blocks' share of the turn's output for the model."""
    return max(MIN_BLOCK_CHARS, max_output_chars // max(1, blocks))


def captured_chars(max_output_chars: int) -> int:
    """What a cell keeps of each of its streams when the model is shown `max_output_chars`."""
    return max(max_output_chars * CAPTURED_PER_SHOWN, CAPTURED_CHARS)


def truncate_output(text: str, limit: int) -> str:
    """Cut `text` to `limit` characters for the model, keeping head and tail, with a visible note of
    what was cut."""
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    tail = limit - head
    omitted = len(text) - head - tail
    return (f"{text[:head]}\n... [output truncated: {omitted:,} of {len(text):,} characters omitted; "
            f"print less, or slice/summarize in code] ...\n{text[-tail:] if tail else ''}")


def clip(text: str | None, limit: int = SHOWN_CHARS, before_note: str = "") -> str:
    """`text` cut to its first `limit` characters for a person to read (progress, `logs show`, the
    viewer), with a note of how much more there is. What the model sees is `truncate_output`."""
    text = text or ""
    return text if len(text) <= limit else f"{text[:limit]}{before_note}... [{len(text) - limit:,} more characters]"


def shortened(text: str, limit: int = STATUS_CHARS) -> str:
    """One line of status cut to `limit` characters with "..." (the code a run is running now)."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def tail(text: str, limit: int = WORKER_LOG_CHARS) -> str:
    """The last `limit` characters of a log."""
    return text[-limit:]
