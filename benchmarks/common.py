"""Helpers shared by the benchmark scripts: real text to measure on, and this process's memory."""

from __future__ import annotations

import sysconfig
from pathlib import Path


def stdlib_text(size: int, ascii_only: bool = True) -> str:
    """`size` characters of Python's own standard library sources (real text that ships everywhere),
    repeated when needed. With `ascii_only`, only files without non-ASCII characters: one character
    beyond Latin-1 makes CPython store a whole string with 4 bytes per character."""
    parts, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if ascii_only and not text.isascii():
            continue
        parts.append(text)
        total += len(text)
        if total >= size:
            break
    corpus = "".join(parts)
    return (corpus * (size // len(corpus) + 1))[:size]


def status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process; unlike ru_maxrss, not inherited across exec."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


async def start_and_round_trip(make_environment, repeats: int, cells: int = 200) -> tuple[list[float], list[float]]:
    """Seconds to start an environment, and per trivial cell, over `repeats` fresh environments."""
    import time

    starts, trips = [], []
    for _ in range(repeats):
        environment = make_environment()
        started = time.perf_counter()
        await environment.start()
        starts.append(time.perf_counter() - started)
        for _ in range(cells):
            started = time.perf_counter()
            await environment.execute("x = 1", 10)
            trips.append(time.perf_counter() - started)
        await environment.close()
    return starts, trips
