"""Benchmark tasks with exact ground truth, built deterministically from real text.

The haystack is Python's own standard library source (it ships wherever Python does), cut to the
requested size; the needles follow RULER's template ("The special magic number for X is N."),
with words taken from the haystack itself and numbers from a seeded generator. Same seed, same
task, on every machine.
"""

from __future__ import annotations

import random
import re
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

CHARS_PER_TOKEN = 4
NEEDLE = "The special magic number for {key} is {value}."
NEEDLE_PATTERN = re.compile(r"special magic number for (\w+) is (\d+)")


@dataclass
class Task:
    family: str
    size_tokens: int
    seed: int
    query: str
    context: str
    answer: str | list[str]
    score: Callable[[str | None], float] = field(repr=False)

    @property
    def task_id(self) -> str:
        return f"{self.family}-{self.size_tokens}-{self.seed}"


def parse_size(text: str) -> int:
    """'8k' -> 8000 tokens, '1m' -> 1000000, '64000' -> 64000."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", text)
    if not match:
        raise ValueError(f"not a size: {text!r} (use e.g. 8k, 64k, 1m, 10m)")
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * {"": 1, "k": 1_000, "m": 1_000_000}[unit])


@lru_cache(maxsize=1)
def _stdlib_corpus() -> str:
    parts = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.isascii():
            parts.append(text)
    return "".join(parts)


def haystack(size_tokens: int) -> str:
    corpus = _stdlib_corpus()
    size = size_tokens * CHARS_PER_TOKEN
    return (corpus * (size // len(corpus) + 1))[:size]


def _keys(rng: random.Random, count: int) -> list[str]:
    words = sorted(set(re.findall(r"\b[a-z]{6,12}\b", _stdlib_corpus()[:2_000_000])))
    return rng.sample(words, count)


def _plant(text: str, needles: list[str], rng: random.Random) -> str:
    """Insert each needle at a line break at a seeded position (the text keeps its size roughly)."""
    for needle in needles:
        at = text.rfind("\n", 0, rng.randrange(len(text) // 20, len(text)))
        at = max(at, 0)
        text = text[:at] + "\n# " + needle + text[at:]
    return text


def exact(expected: str) -> Callable[[str | None], float]:
    def score(answer: str | None) -> float:
        return 1.0 if answer is not None and re.search(rf"\b{re.escape(expected)}\b", answer) else 0.0
    return score


def f1(found: set, truth: set) -> float:
    """The harmonic mean of precision and recall of `found` against `truth` (0 if either is empty)."""
    if not found or not truth:
        return 0.0
    return 2 * len(found & truth) / (len(found) + len(truth))


def set_f1(expected: list[str]) -> Callable[[str | None], float]:
    def score(answer: str | None) -> float:
        return f1(set(re.findall(r"\d+", answer or "")), set(expected))
    return score


def niah(size_tokens: int, seed: int = 0) -> Task:
    """Single needle: one magic number hidden in the haystack."""
    rng = random.Random(f"niah-{size_tokens}-{seed}")
    key = _keys(rng, 1)[0]
    value = str(rng.randrange(1_000_000, 9_999_999))
    text = _plant(haystack(size_tokens), [NEEDLE.format(key=key, value=value)], rng)
    return Task("niah", size_tokens, seed, f"What is the special magic number for {key}? Answer with the number.",
                text, value, exact(value))


def niah_multi(size_tokens: int, seed: int = 0, needles: int = 4) -> Task:
    """Multi-needle: several magic numbers for the same key; all must be found (set F1)."""
    rng = random.Random(f"niah_multi-{size_tokens}-{seed}")
    key = _keys(rng, 1)[0]
    values = [str(rng.randrange(1_000_000, 9_999_999)) for _ in range(needles)]
    text = _plant(haystack(size_tokens), [NEEDLE.format(key=key, value=v) for v in values], rng)
    return Task("niah_multi", size_tokens, seed,
                f"List every special magic number for {key} mentioned in the text.", text, values, set_f1(values))


def numeric(expected: int) -> Callable[[str | None], float]:
    def score(answer: str | None) -> float:
        numbers = re.findall(r"\d+", answer or "")
        return 1.0 if numbers and int(numbers[0]) == expected else 0.0
    return score


def logs(size_tokens: int, seed: int = 0, anomalies: int = 7) -> Task:
    """Log analysis: a service log whose messages are real source lines; count the planted ERRORs
    with one error code (other ERRORs, with other codes, are decoys)."""
    rng = random.Random(f"logs-{size_tokens}-{seed}")
    lines = [line.strip() for line in _stdlib_corpus()[:3_000_000].splitlines() if len(line.strip()) > 20]
    modules = _keys(rng, 12)
    code = f"E{rng.randrange(100, 999)}"
    decoy = f"E{rng.randrange(1000, 9999)}"
    out, size, second, written = [], size_tokens * CHARS_PER_TOKEN, 0, 0
    while written < size:
        second += rng.randrange(1, 4)
        out.append(f"2026-01-01T{second // 3600 % 24:02}:{second // 60 % 60:02}:{second % 60:02} INFO "
                   f"{rng.choice(modules)}: {rng.choice(lines)}\n")
        written += len(out[-1])
    planted = sorted(rng.sample(range(len(out)), anomalies + 3))
    for position, index in enumerate(planted):
        kind = code if position < anomalies else decoy
        out[index] = out[index].replace(" INFO ", f" ERROR [{kind}] ", 1)
    return Task("logs", size_tokens, seed, f"How many ERROR events with code {code} are in the log? Answer with the "
                f"number.", "".join(out), str(anomalies), numeric(anomalies))


def codeqa(size_tokens: int, seed: int = 0) -> Task:
    """Code QA over real source: which file of the standard library defines a given function?"""
    rng = random.Random(f"codeqa-{size_tokens}-{seed}")
    root = Path(sysconfig.get_paths()["stdlib"])
    files, total = [], 0
    for path in sorted(root.rglob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if not text.isascii() or (files and total + len(text) > size_tokens * CHARS_PER_TOKEN):
            continue  # keep to the size: skip files that would overshoot it
        files.append((path.relative_to(root).as_posix(), text))
        total += len(text)
        if total >= 0.95 * size_tokens * CHARS_PER_TOKEN:
            break
    definitions: dict[str, list[str]] = {}
    for name, text in files:
        for function in re.findall(r"^def ([a-z]\w{7,})\(", text, re.MULTILINE):
            definitions.setdefault(function, []).append(name)
    unique = sorted(f for f, where in definitions.items() if len(where) == 1)
    function = rng.choice(unique)
    answer = definitions[function][0]
    context = "".join(f"### {name}\n{text}\n" for name, text in files)
    return Task("codeqa", size_tokens, seed, f"Which file defines the top-level function `{function}`? Answer with its "
                f"path.", context, answer, exact(answer))
