"""Run events: appended to the run's JSONL trajectory as they happen, and passed to listeners.

The trajectory file is flushed after every event, so a crash loses nothing that happened before it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Listener = Callable[[dict[str, Any]], None]


class EventLog:
    """One per top-level run; child runs write into the same file, tagged with their depth."""

    def __init__(self, path: Path | None, listeners: list[Listener] | None = None) -> None:
        self.path = path
        self._listeners = list(listeners or [])
        self._lock = threading.Lock()
        self._file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")

    def emit(self, event_type: str, **fields: Any) -> dict[str, Any]:
        event = {"ts": round(time.time(), 6), "type": event_type, **fields}
        line = json.dumps(event, ensure_ascii=False, default=str)
        with self._lock:
            if self._file is not None:
                self._file.write(line + "\n")
                self._file.flush()
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # a broken progress display must never break a run
                pass
        return event

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def read_trajectory(path: str | Path) -> list[dict[str, Any]]:
    """All events of a trajectory file, in order."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
