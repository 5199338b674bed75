"""What each provider endpoint took, remembered across processes (issue 31).

`scheduler.EndpointLimit` learns an endpoint's width within one process; without a memory every
`rlm ask` starts again at `START_LIMIT` and a batch of 101 goes out in three waves. Like TCP's
per-destination metrics, the width an endpoint took (and when it last refused) is kept in
`RLM_HOME/endpoints.json` (0600, written atomically): read once per endpoint when the process first
calls it (`scheduler.endpoint_limit`), written at a run's end (`Scheduler.remember_widths`, in a
thread, never on the event loop) only when a width changed meaningfully since this process last
wrote it (`changed`: by a tenth or at least one slot, a refusal, the end of slow start) or that
entry is due for a refresh (`REFRESH_S`, so an endpoint in use never ages out): `rlm serve`'s
requests do not each write a file. A memory older than `RLM_WIDTH_MEMORY_HOURS` (default 24; 0
turns the memory off) is ignored. An entry is keyed by a SHA-256 of the endpoint key (kind, base
URL, model, and a hash of the API key): the file holds neither keys nor URLs.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .scheduler import EndpointLimit

FILE_NAME = "endpoints.json"
DEFAULT_MAX_AGE_HOURS = 24.0
MAX_ENTRIES = 1_000  # the most recently used endpoints are kept
# An unchanged width is written again after this long (or a quarter of the memory's bound, if less).
REFRESH_S = 3600.0


@dataclass(frozen=True)
class Remembered:
    """One endpoint's width as a process left it: `limit`, whether it was still in slow start (never
    refused), when it was saved and when it last refused (Unix times; `refused_at` None: never)."""

    limit: float
    slow_start: bool
    saved_at: float
    refused_at: float | None = None


@dataclass(frozen=True)
class Width:
    """One endpoint's width at one moment: taken on the event loop, written from a thread."""

    key: str
    limit: float
    slow_start: bool
    refused_at: float | None


def widths(limits: list["EndpointLimit"]) -> list[Width]:
    """The widths of the endpoints that answered or refused (one never called teaches nothing)."""
    return [Width(limit.key, limit.limit, limit.slow_start, limit.refused_at)
            for limit in limits if limit.successes or limit.overloads]


def max_age_s() -> float:
    """How old a memory may be, in seconds (`RLM_WIDTH_MEMORY_HOURS`; 0 turns the memory off)."""
    raw = os.environ.get("RLM_WIDTH_MEMORY_HOURS", "")
    try:
        hours = float(raw) if raw.strip() else DEFAULT_MAX_AGE_HOURS
    except ValueError:
        raise ValueError(f"RLM_WIDTH_MEMORY_HOURS={raw!r} is not a number of hours; use e.g. 24, "
                         f"or 0 to start every process at the default width") from None
    return max(0.0, hours) * 3600.0


def entry_key(endpoint_key: str) -> str:
    return hashlib.sha256(endpoint_key.encode("utf-8")).hexdigest()[:32]


def memory_path() -> Path:
    from ..paths import rlm_home

    return rlm_home() / FILE_NAME


def _read_all(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: start as without a memory
    return data if isinstance(data, dict) else {}


def recall(endpoint_key: str, now: float | None = None) -> Remembered | None:
    """The width this endpoint took in an earlier process, if not older than `max_age_s()`."""
    age_limit = max_age_s()
    if age_limit <= 0:
        return None
    entry = _read_all(memory_path()).get(entry_key(endpoint_key))
    try:
        remembered = Remembered(float(entry["limit"]), bool(entry["slow_start"]), float(entry["saved_at"]),
                                None if entry.get("refused_at") is None else float(entry["refused_at"]))
    except (TypeError, KeyError, ValueError):
        return None
    now = time.time() if now is None else now
    if not 0 <= now - remembered.saved_at <= age_limit or remembered.limit < 1:
        return None
    return remembered


def save(limits: list["EndpointLimit"], now: float | None = None) -> None:
    """Write these endpoints' widths (merged with the other endpoints' entries, the expired dropped)."""
    save_widths(widths(limits), now)


# What this process last wrote, per (file, endpoint): the width and when (see `save_changed`).
_written: dict[tuple[str, str], tuple[Width, float]] = {}
_written_lock = threading.Lock()  # one writer at a time in the process: no lost merge between runs


def changed(width: Width, last: tuple[Width, float] | None, now: float, age_limit: float) -> bool:
    """Whether `width` is worth a write: never written, a refusal or the end of slow start since,
    a limit that moved by a tenth (at least one slot), or the last write due for a refresh."""
    if last is None:
        return True
    before, saved_at = last
    moved = abs(width.limit - before.limit) >= max(1.0, 0.1 * before.limit)
    return (moved or width.slow_start != before.slow_start or width.refused_at != before.refused_at
            or now - saved_at >= min(REFRESH_S, age_limit / 4))


def save_changed(widths_now: list[Width], now: float | None = None) -> bool:
    """`save_widths` when one of the widths `changed` since this process wrote it; True if it wrote.
    Blocking (a file read and write): called in a thread (`Scheduler.remember_widths`)."""
    age_limit = max_age_s()
    if age_limit <= 0 or not widths_now:
        return False
    now = time.time() if now is None else now
    with _written_lock:
        path = str(memory_path())
        if not any(changed(width, _written.get((path, width.key)), now, age_limit) for width in widths_now):
            return False
        save_widths(widths_now, now)
        for width in widths_now:
            _written[(path, width.key)] = (width, now)
    return True


def save_widths(used: list[Width], now: float | None = None) -> None:
    """Write these widths (merged with the other endpoints' entries, the expired dropped): 0600, atomic."""
    age_limit = max_age_s()
    if age_limit <= 0 or not used:
        return
    from ..paths import open_private, private_dir

    now = time.time() if now is None else now
    path = memory_path()
    private_dir(path.parent)
    entries = {key: entry for key, entry in _read_all(path).items()
               if isinstance(entry, dict) and isinstance(entry.get("saved_at"), (int, float))
               and now - entry["saved_at"] <= age_limit}
    for width in used:
        entries[entry_key(width.key)] = asdict(Remembered(round(width.limit, 2), width.slow_start, now,
                                                          width.refused_at))
    newest = dict(sorted(entries.items(), key=lambda item: item[1]["saved_at"])[-MAX_ENTRIES:])
    scratch = path.with_name(f".{FILE_NAME}.{os.getpid()}.{threading.get_ident()}.part")
    try:
        with open_private(scratch, "w") as file:
            json.dump(newest, file)
        os.replace(scratch, path)
    except BaseException:
        scratch.unlink(missing_ok=True)  # a full disk leaves no partial file behind
        raise
