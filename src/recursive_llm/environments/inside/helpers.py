"""Exploration helpers in the REPL: grep, chunk, count_tokens, search, semantic_search, sql.

They run where model code runs (the worker), except `search` and `semantic_search`, whose
indexes the host builds once per input content and keeps on disk; the worker asks for results
over its one channel. Nothing here is forced on the model: the system prompt describes them in
a short section and the model decides.
"""

from __future__ import annotations

import json
import re
from collections import namedtuple

from ...caps import GREP_LINE_CHARS
from ...context.document import Document, split_at_lines

TYPE_CHECKING = False  # not typing's (nor dataclasses): the worker imports this module at every start
if TYPE_CHECKING:
    from typing import Any, Callable



# -- grep -------------------------------------------------------------------------------------------
class GrepHit(namedtuple("GrepHit", "path line text before after", defaults=((), ()))):
    """One matching line: `.path` (None for a plain text), `.line` (from 1), `.text`, and the
    `context_lines` lines `.before` and `.after` it. Immutable."""

    __slots__ = ()

    def __repr__(self) -> str:
        where = f"{self.path}:{self.line}" if self.path else f"line {self.line}"
        lines = [f"  {where}-  {b}" for b in self.before] + [f"{where}:  {self.text}"]
        return "\n".join(lines + [f"  {where}+  {a}" for a in self.after])


class GrepResult(list):
    """The hits (at most `max_results`), plus `.total`: how many lines matched in all."""

    total: int = 0

    def __repr__(self) -> str:
        shown = "\n".join(repr(hit) for hit in self)
        more = f"\n... {self.total - len(self):,} more matching lines (raise max_results to see them)" \
            if self.total > len(self) else ""
        return f"{self.total:,} matching line(s)" + (f":\n{shown}" if shown else "") + more


def _clip(line: str) -> str:
    return line if len(line) <= GREP_LINE_CHARS else line[:GREP_LINE_CHARS] + f"... [{len(line):,} chars]"


def _finder(pattern: str, literal: bool | None, ignore_case: bool) -> Callable[[str, int], tuple[int, int] | None]:
    """A function (text, start) -> the span of the next match, or None."""
    plain = literal or (literal is None and re.escape(pattern) == pattern)
    if plain and not ignore_case:  # str.find is a memchr-speed scan: the common, fast case
        def find(text: str, start: int):
            at = text.find(pattern, start)
            return None if at < 0 else (at, at + len(pattern))
        return find
    # MULTILINE: ^ and $ match at every line, as grep users expect.
    compiled = re.compile(re.escape(pattern) if plain else pattern,
                          re.MULTILINE | (re.IGNORECASE if ignore_case else 0))

    def search(text: str, start: int):
        match = compiled.search(text, start)
        return None if match is None else match.span()
    return search


def _grep_text(text: str, path: str | None, find, context_lines: int, result: GrepResult, limit: int) -> None:
    position, line_number, counted_to = 0, 1, 0
    while position <= len(text):
        span = find(text, position)
        if span is None:
            return
        start = span[0]
        line_number += text.count("\n", counted_to, start)
        counted_to = start
        line_start = text.rfind("\n", 0, start) + 1
        line_end = text.find("\n", max(span[1], start))
        line_end = len(text) if line_end < 0 else line_end
        result.total += 1
        if len(result) < limit:
            before, after = (), ()
            if context_lines:
                head = text[max(0, line_start - 200 * context_lines - 1):max(0, line_start - 1)].split("\n")
                before = tuple(_clip(x) for x in head[-context_lines:]) if line_start else ()
                tail = text[line_end + 1:line_end + 1 + 200 * context_lines].split("\n")
                after = tuple(_clip(x) for x in tail[:context_lines]) if line_end < len(text) else ()
            result.append(GrepHit(path, line_number, _clip(text[line_start:line_end]), before, after))
        position = line_end + 1  # one hit per line, like grep


def _texts(source: Any) -> list[tuple[str | None, str]]:
    """(path, text) pairs to search or chunk: documents keep their path, data becomes JSON."""
    if isinstance(source, str):
        return [(getattr(source, "path", None) or None, source)]
    if isinstance(source, dict):
        return [(None, json.dumps(source, indent=1, default=str, ensure_ascii=False))]
    if isinstance(source, (list, tuple)):
        pairs = []
        for index, item in enumerate(source):
            path = getattr(item, "path", None) or f"[{index}]"
            pairs.append((path, item if isinstance(item, str) else json.dumps(item, default=str, ensure_ascii=False)))
        return pairs
    if hasattr(source, "sql"):
        raise TypeError("this input is a table: query it with sql(...) instead of grep/chunk")
    return [(None, str(source))]


def grep(pattern: str, source: Any, *, literal: bool | None = None, ignore_case: bool = False,
         context_lines: int = 0, max_results: int = 100) -> GrepResult:
    result = GrepResult()
    find = _finder(pattern, literal, ignore_case)
    for path, text in _texts(source):
        _grep_text(text, path, find, context_lines, result, max_results)
    return result


# -- chunk ------------------------------------------------------------------------------------------
def _group(units: list[str], size: int, overlap: int, measure: Callable[[str], int], joiner: str) -> list[str]:
    """Consecutive units joined until `size` (by `measure`), repeating `overlap` units."""
    chunks, current, current_size = [], [], 0
    for unit in units:
        unit_size = measure(unit)
        if current and current_size + unit_size > size:
            chunks.append(joiner.join(current))
            current = current[-overlap:] if overlap else []
            current_size = sum(measure(u) for u in current)
        current.append(unit)
        current_size += unit_size
    if current:
        chunks.append(joiner.join(current))
    return chunks


def chunk(source: Any, size: int | None = None, by: str = "chars", overlap: int = 0, encode_decode=None) -> list:
    """Split text (or each document) into chunks; chunks of a document are Documents with its path."""
    if by not in ("chars", "tokens", "lines", "paragraphs"):
        raise ValueError("by must be 'chars', 'tokens', 'lines' or 'paragraphs'")
    size = size or {"chars": 20_000, "tokens": 5_000, "lines": 200, "paragraphs": 20_000}[by]
    if size <= 0 or overlap < 0 or overlap >= size:
        raise ValueError("size must be positive and overlap between 0 and size - 1")
    chunks: list = []
    for path, text in _texts(source):
        if by == "chars":
            pieces = split_at_lines(text, size, overlap)
        elif by == "lines":
            lines = text.splitlines(keepends=True)
            pieces = ["".join(lines[i:i + size]) for i in range(0, len(lines), size - overlap)]
        elif by == "paragraphs":  # `size` in characters, whole paragraphs (`overlap` paragraphs repeat)
            paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
            pieces = _group(paragraphs, size, overlap, len, "\n\n")
        else:
            encoding = encode_decode()
            tokens = encoding.encode_ordinary(text)
            pieces = [encoding.decode(tokens[i:i + size]) for i in range(0, len(tokens), size - overlap)]
        if path is None:
            chunks.extend(pieces)
        else:
            chunks.extend(Document(piece, f"{path} [chunk {i + 1}/{len(pieces)}]") if len(pieces) > 1
                          else Document(piece, path) for i, piece in enumerate(pieces))
    return chunks


# -- search results (answered by the host) ----------------------------------------------------------
class SearchHit(Document):
    """A passage found by search(): a str with .path, .line and .score."""

    line: int
    score: float

    def __new__(cls, text: str, path: str, line: int, score: float) -> "SearchHit":
        hit = super().__new__(cls, text, path)
        hit.line, hit.score = line, score
        return hit

    def __repr__(self) -> str:
        where = f"{self.path}:{self.line}" if self.path else f"line {self.line}"
        preview = " ".join(self[:300].split())
        return f"[{where} score={self.score:.2f}] {preview}{'...' if len(self) > 300 else ''}"

    def __reduce__(self):
        return (SearchHit, (str(self), self.path, self.line, self.score))


# -- sql --------------------------------------------------------------------------------------------
class Rows(list):
    """Query results: a list of tuples with `.columns`; prints as a small table."""

    columns: list[str]
    truncated: bool = False

    def __repr__(self) -> str:
        head = [" | ".join(self.columns)]
        body = [" | ".join(_cell(v) for v in row) for row in self[:20]]
        more = [f"... {len(self) - 20:,} more rows"] if len(self) > 20 else []
        cut = ["(stopped at max_rows; aggregate in SQL or raise max_rows)"] if self.truncated else []
        return "\n".join(head + body + more + cut + [f"({len(self):,} rows)"])


def _cell(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Table:
    """A table input: `context` when the input is a CSV/TSV/Parquet/SQLite file. Query it with SQL."""

    def __init__(self, name: str, path: str, fmt: str, info: dict[str, Any], database: "SQLTables") -> None:
        self.name, self.path, self.format, self.info = name, path, fmt, info
        self._database = database

    @property
    def tables(self) -> dict[str, Any]:
        return self.info["tables"] if self.format == "sqlite" else {self.name: self.info}

    @property
    def columns(self) -> list[str]:
        first = next(iter(self.tables.values()))
        return [c[0] for c in first["columns"]]

    def __len__(self) -> int:
        return sum(t["rows"] for t in self.tables.values())

    def sql(self, query: str, max_rows: int = 10_000) -> Rows:
        return self._database.sql(query, db=self.name if self.format == "sqlite" else None, max_rows=max_rows)

    def head(self, n: int = 5) -> Rows:
        first = next(iter(self.tables))
        return self.sql(f'SELECT * FROM "{first}" LIMIT {int(n)}')

    def __repr__(self) -> str:
        parts = [f"{name} ({t['rows']:,} rows: {', '.join(c[0] for c in t['columns'][:12])})"
                 for name, t in self.tables.items()]
        return f"Table({'; '.join(parts)}) - query with sql('SELECT ... FROM {next(iter(self.tables))}')"


def _half_of_address_space_mb() -> int | None:
    import resource

    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    return None if soft == resource.RLIM_INFINITY else soft // (2 * 1024 * 1024)


class SQLTables:
    """The tables of all inputs: DuckDB for CSV/TSV/Parquet/JSONL, sqlite3 (read-only) for SQLite."""

    def __init__(self, tables: list[dict[str, Any]]) -> None:
        self._tables = tables
        self._duckdb = None
        self._sqlite: dict[str, Any] = {}

    def _duck(self):
        if self._duckdb is None:
            try:
                import duckdb
            except ImportError:
                from ...extras import install_hint

                raise RuntimeError("sql() needs DuckDB: " + install_hint("tables")) from None
            from ...context.tables import duckdb_source

            connection = duckdb.connect(":memory:")
            limit = _half_of_address_space_mb()
            if limit:  # DuckDB's default (80% of RAM) ignores the worker's limit; stay under it
                connection.execute(f"SET memory_limit='{limit}MB'")
            for table in self._tables:
                if table["format"] == "sqlite":
                    continue
                # Text formats are parsed once into DuckDB's columnar storage; Parquet already is one.
                kind = "VIEW" if table["format"] == "parquet" else "TABLE"
                connection.execute(f'CREATE {kind} "{table["name"]}" AS SELECT * FROM '
                                   f'{duckdb_source(table["path"], table["format"])}')
            self._duckdb = connection
        return self._duckdb

    def sql(self, query: str, db: str | None = None, max_rows: int = 10_000) -> Rows:
        sqlite_tables = [t for t in self._tables if t["format"] == "sqlite"]
        if db is None and sqlite_tables and len(sqlite_tables) == len(self._tables):
            db = sqlite_tables[0]["name"]
        if db is not None:
            match = [t for t in sqlite_tables if t["name"] == db]
            if not match:
                raise ValueError(f"no SQLite database named {db!r}; have: {[t['name'] for t in sqlite_tables]}")
            cursor = self._sqlite_connection(match[0]).execute(query)
            columns = [d[0] for d in cursor.description or []]
        else:
            if not any(t["format"] != "sqlite" for t in self._tables):
                raise ValueError("this input has no tables; sql() works on CSV, TSV, Parquet, JSONL and SQLite inputs")
            cursor = self._duck().execute(query)
            columns = [d[0] for d in cursor.description or []]
        rows = Rows(cursor.fetchmany(max_rows + 1) if columns else [])
        rows.columns = columns
        if len(rows) > max_rows:
            del rows[max_rows:]
            rows.truncated = True
        return rows

    def _sqlite_connection(self, table: dict[str, Any]):
        if table["name"] not in self._sqlite:
            import sqlite3

            self._sqlite[table["name"]] = sqlite3.connect(f"file:{table['path']}?mode=ro&immutable=1", uri=True,
                                                          check_same_thread=False)
        return self._sqlite[table["name"]]
