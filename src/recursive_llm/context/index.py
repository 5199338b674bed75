"""BM25 full-text search over an input's passages, with SQLite FTS5, cached on disk.

The host builds the index (trusted code, reading the user's input) the first time model code
calls `search(...)`, and keeps it in `$RLM_HOME/indexes/<content hash>.sqlite`: the same input in
a later run (or a child run, or another process) reuses it. Queries are plain words; we quote
every term, so model-written queries cannot use FTS5 syntax to fail or misbehave.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .document import split_at_lines
from .textfile import TextFile

PASSAGE_CHARS = 1_500  # about 375 tokens: small enough to be precise, large enough to read
INDEX_VERSION = 1  # bump when passages or the schema change: old cache files are then ignored
_BATCH = 5_000
_build_lock = threading.Lock()


def _split_passages(text: str, base_line: int = 1) -> Iterator[tuple[int, str]]:
    """(first line number, passage) pairs, cut at line breaks near PASSAGE_CHARS."""
    line = base_line
    for piece in split_at_lines(text, PASSAGE_CHARS):
        if piece.strip():
            yield line, piece
        line += piece.count("\n")


def _file_texts(source: TextFile, slice_chars: int = 8 * 1024 * 1024) -> Iterator[tuple[int, str]]:
    """A large file in slices that end at line breaks, with each slice's first line number."""
    line, carry = 1, ""
    with open(source.path, encoding=source.reading_encoding) as handle:
        while True:
            data = handle.read(slice_chars)
            if not data:
                break
            data = carry + data
            cut = data.rfind("\n") + 1 or len(data)
            data, carry = data[:cut], data[cut:]
            yield line, data
            line += data.count("\n")
    if carry:
        yield line, carry


def passages(inputs: list[Any]) -> Iterator[tuple[str, int, str]]:
    """(path, line, text) for every passage of every input (a list of LoadedContext values)."""
    for number, value in enumerate(inputs):
        label = f"context_{number}" if len(inputs) > 1 else ""
        if isinstance(value, TextFile):
            for first_line, text in _file_texts(value):
                for line, passage in _split_passages(text, first_line):
                    yield label, line, passage
        elif isinstance(value, str):
            for line, passage in _split_passages(value):
                yield label, line, passage
        elif isinstance(value, list):
            for index, item in enumerate(value):
                path = getattr(item, "path", "") or f"{label}[{index}]"
                text = item if isinstance(item, str) else json.dumps(item, default=str, ensure_ascii=False)
                for line, passage in _split_passages(text):
                    yield path, line, passage
        elif isinstance(value, dict):
            for key, item in value.items():
                text = item if isinstance(item, str) else json.dumps(item, default=str, ensure_ascii=False)
                for line, passage in _split_passages(text):
                    yield f"{label}[{key!r}]", line, passage


def content_hash(inputs: list[Any]) -> str:
    """A hash of exactly what the index holds (streamed, so a 400 MB file is not held in memory)."""
    digest = hashlib.blake2b(f"v{INDEX_VERSION}:{PASSAGE_CHARS}".encode(), digest_size=20)
    for path, line, text in passages(inputs):
        digest.update(f"\x00{path}\x00{line}\x00".encode())
        digest.update(text.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


class SearchIndex:
    """One FTS5 database; build with `for_inputs`, query with `search`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()

    @classmethod
    def for_inputs(cls, inputs: list[Any], cache_dir: Path) -> "SearchIndex":
        """The index of `inputs`, from the cache or built now (atomically: concurrent builders of
        the same content each write a temporary file, and the first rename wins)."""
        cache_dir.mkdir(parents=True, exist_ok=True)
        path = cache_dir / f"{content_hash(inputs)}.sqlite"
        if not path.exists():
            partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.part")
            try:
                _build(inputs, partial)
                os.replace(partial, path)
            finally:
                partial.unlink(missing_ok=True)
        return cls(path)

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            self._local.connection = connection
        return connection

    def search(self, query: str, k: int = 10) -> list[dict[str, Any]]:
        terms = re.findall(r"\w+", query.lower())
        if not terms:
            return []
        match = " OR ".join(f'"{term}"' for term in dict.fromkeys(terms))
        rows = self._connection().execute(
            "SELECT path, line, text, bm25(passages) AS rank FROM passages WHERE passages MATCH ? "
            "ORDER BY rank LIMIT ?", (match, max(1, min(int(k), 1000)))).fetchall()
        return [{"path": path, "line": line, "text": text, "score": round(-rank, 4)} for path, line, text, rank in rows]


def _build(inputs: list[Any], path: Path) -> None:
    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA journal_mode=OFF")
        connection.execute("PRAGMA synchronous=OFF")
        connection.execute("CREATE VIRTUAL TABLE passages USING fts5(path UNINDEXED, line UNINDEXED, text, "
                           "tokenize='porter unicode61')")
        batch: list[tuple[str, int, str]] = []
        for row in passages(inputs):
            batch.append(row)
            if len(batch) >= _BATCH:
                connection.executemany("INSERT INTO passages VALUES (?, ?, ?)", batch)
                batch.clear()
        if batch:
            connection.executemany("INSERT INTO passages VALUES (?, ?, ?)", batch)
        connection.execute("INSERT INTO passages(passages) VALUES ('optimize')")
        connection.commit()
    finally:
        connection.close()

