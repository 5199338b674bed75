"""Run events: appended to the run's JSONL trajectory as they happen, and passed to listeners.

The trajectory file is flushed after every event, so a crash loses nothing that happened before it.
Recording never stops a run: when the file cannot be written (a full disk, a read-only data
directory) or a listener fails, the problem is reported once on stderr and kept in `problems`
(the run's result carries it as `store_error`), and the run goes on.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Listener = Callable[[dict[str, Any]], None]

# The schema every event follows: its type, and the fields it carries besides `ts`, `type`,
# `run_id` and `depth` (run events also carry `parent_run_id`). The store (store.Recorder), live
# progress (progress.py), the viewer and `logs show` read these names; `check_event` holds every
# emitted event to them (the tests run it on whole runs).
COMMON_FIELDS = frozenset({"ts", "type", "run_id", "depth", "parent_run_id"})
EVENT_FIELDS: dict[str, frozenset[str]] = {
    "run_start": frozenset({"query", "model", "sub_model", "environment", "isolation", "metadata", "more_inputs",
                            "limits", "parent_iteration", "memory"}),
    "iteration": frozenset({"iteration", "reply", "reasoning", "code_blocks", "final"}),
    "cell": frozenset({"iteration", "index", "code", "stdout", "stderr", "error", "final", "timed_out", "restarted",
                       "duration_s"}),
    "llm_start": frozenset({"call_id", "purpose", "iteration", "cell", "model", "attempt", "in_flight"}),
    "llm_call": frozenset({"call_id", "purpose", "iteration", "cell", "model", "attempt", "messages", "response",
                           "prompt_tokens", "completion_tokens", "cost_usd", "latency_s", "finish_reason", "cache_key",
                           "cached", "reasoning", "cached_prompt_tokens", "cache_write_tokens", "token_ids",
                           "logprobs"}),
    "llm_error": frozenset({"call_id", "purpose", "iteration", "cell", "model", "attempt", "latency_s", "error",
                            "retryable"}),
    "llm_refused": frozenset({"call_id", "purpose", "iteration", "cell", "model", "budget", "error"}),
    "llm_hedge": frozenset({"call_id", "purpose", "iteration", "cell", "model", "after_s"}),
    "tool_call": frozenset({"call_id", "name", "arguments", "result", "error", "duration_s", "iteration", "cell"}),
    "fallback": frozenset({"reason", "strategy", "chunk_chars"}),
    "compaction": frozenset({"iteration", "turns", "window", "tokens_before", "tokens_after", "history_kept"}),
    "compaction_failed": frozenset({"error"}),
    "final_ask_failed": frozenset({"error"}),
    "run_end": frozenset({"stopped_reason", "answer", "error", "iterations", "used_fallback", "duration_s", "budget",
                          "usage"}),
}


def check_event(event: dict[str, Any]) -> list[str]:
    """What in `event` the schema does not know (an unknown type or field); empty when it conforms."""
    allowed = EVENT_FIELDS.get(event.get("type", ""))
    if allowed is None:
        return [f"unknown event type {event.get('type')!r}"]
    return [f"{event['type']}: unknown field {name!r}" for name in event if name not in allowed and name not in COMMON_FIELDS]


def report_problem(message: str) -> None:
    """One line on stderr (never stdout, which may be a protocol channel or the answer)."""
    try:
        sys.stderr.write(f"rlm: warning: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class EventLog:
    """One per top-level run; child runs write into the same file, tagged with their depth."""

    def __init__(self, path: Path | None, listeners: list[Listener] | None = None) -> None:
        self.path = path
        self._listeners = list(listeners or [])
        self._lock = threading.Lock()
        self._file = None
        self.problems: list[str] = []  # what could not be recorded, one entry per cause
        self._failed_listeners: set[int] = set()
        if path is not None:
            from ..paths import open_private, private_dir

            try:
                private_dir(path.parent)
                self._file = open_private(path, "a")
            except OSError as error:
                self._problem(f"the trajectory {path} cannot be written ({error}); the run goes on without it")

    @property
    def error(self) -> str | None:
        return "; ".join(self.problems) if self.problems else None

    def _problem(self, message: str) -> None:
        self.problems.append(message)
        report_problem(message)

    def emit(self, event_type: str, **fields: Any) -> dict[str, Any]:
        event = {"ts": round(time.time(), 6), "type": event_type, **fields}
        line = json.dumps(event, ensure_ascii=False, default=str)
        with self._lock:
            if self._file is not None:
                try:
                    self._file.write(line + "\n")
                    self._file.flush()
                except (OSError, ValueError) as error:  # ENOSPC, EFBIG, EIO: stop writing, keep running
                    self._drop_file()
                    self._problem(f"the trajectory {self.path} could not be written ({error}); the rest of "
                                  f"this run is not in it")
        for listener in self._listeners:
            try:
                listener(event)
            except Exception as error:  # never breaks the run; said once per listener, not hidden
                if id(listener) not in self._failed_listeners:
                    self._failed_listeners.add(id(listener))
                    name = getattr(listener, "__qualname__", type(listener).__name__)
                    self._problem(f"an event listener ({name}) failed: {type(error).__name__}: {error}")
        return event

    def _drop_file(self) -> None:
        try:
            self._file.close()
        except (OSError, ValueError):
            pass
        self._file = None

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                try:
                    self._file.close()
                except (OSError, ValueError) as error:
                    self._problem(f"the trajectory {self.path} could not be written ({error})")
                self._file = None


def read_trajectory(path: str | Path) -> list[dict[str, Any]]:
    """All events of a trajectory file, in order."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
