"""Tables as inputs: CSV, TSV, Parquet and JSONL through DuckDB, SQLite databases through sqlite3.

A table is never loaded into a prompt or into Python objects: the REPL's `sql(...)` runs queries
on the file itself, so aggregations over millions of rows are code, not tokens. The host only
reads the schema, the row count and a few preview rows for the root prompt's metadata.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..extras import install_hint

TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl",
                 ".sqlite": "sqlite", ".sqlite3": "sqlite", ".db": "sqlite"}
PREVIEW_ROWS = 3
SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass
class TableSource:
    """One table file. `name` is what SQL calls it; a SQLite file holds several tables."""

    path: Path
    format: str
    name: str
    # Filled by inspect(): {"columns", "rows", "preview"}, or for SQLite {"tables": {name: {...}}}.
    info: dict[str, Any] = field(default_factory=dict)

    def schemas(self) -> dict[str, dict[str, Any]]:
        """SQL name -> columns, rows and preview, for every table this source holds."""
        return self.info["tables"] if self.format == "sqlite" else {self.name: self.info}


def table_name(stem: str, taken: set[str]) -> str:
    """A SQL identifier from a file name, unique among `taken`."""
    base = re.sub(r"\W+", "_", stem).strip("_").lower() or "data"
    if base[0].isdigit():
        base = "t_" + base
    name, number = base, 2
    while name in taken:
        name, number = f"{base}_{number}", number + 1
    taken.add(name)
    return name


def duckdb_source(path: str, fmt: str) -> str:
    """The DuckDB table function that reads `path` (used by the host and the worker alike)."""
    quoted = "'" + path.replace("'", "''") + "'"
    if fmt == "csv":
        return f"read_csv({quoted}, auto_detect=true)"
    if fmt == "tsv":
        return f"read_csv({quoted}, auto_detect=true, delim='\\t')"
    if fmt == "parquet":
        return f"read_parquet({quoted})"
    if fmt == "jsonl":
        return f"read_json({quoted}, format='newline_delimited', auto_detect=true)"
    raise ValueError(f"not a DuckDB format: {fmt}")


def inspect(source: TableSource) -> TableSource:
    """Fill `source.info` with columns, row count and preview rows. Raises ValueError if unreadable."""
    if source.format == "sqlite":
        source.info = _inspect_sqlite(source.path)
        return source
    try:
        import duckdb
    except ImportError:
        raise ValueError(f"is a table, and tables need DuckDB: {install_hint('tables')}") from None
    connection = duckdb.connect(":memory:")
    try:
        relation = f"SELECT * FROM {duckdb_source(str(source.path), source.format)}"
        described = connection.execute(f"DESCRIBE {relation}").fetchall()
        rows = connection.execute(f"SELECT count(*) FROM ({relation})").fetchone()[0]
        preview = connection.execute(f"{relation} LIMIT {PREVIEW_ROWS}").fetchall()
    except duckdb.Error as error:
        raise ValueError(f"is not a readable {source.format.upper()} table ({str(error).splitlines()[0]})") from None
    finally:
        connection.close()
    source.info = {"columns": [(c[0], c[1]) for c in described], "rows": rows,
                   "preview": [_short_row(r) for r in preview]}
    return source


def _inspect_sqlite(path: Path) -> dict[str, Any]:
    import sqlite3

    with open(path, "rb") as handle:
        if handle.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
            raise ValueError("is not a SQLite database (wrong header)")
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = [r[0] for r in connection.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        tables = {}
        for name in names:
            quoted = '"' + name.replace('"', '""') + '"'
            columns = [(c[1], c[2] or "ANY") for c in connection.execute(f"PRAGMA table_info({quoted})")]
            rows = connection.execute(f"SELECT count(*) FROM {quoted}").fetchone()[0]
            preview = connection.execute(f"SELECT * FROM {quoted} LIMIT {PREVIEW_ROWS}").fetchall()
            tables[name] = {"columns": columns, "rows": rows, "preview": [_short_row(r) for r in preview]}
    except sqlite3.Error as error:
        raise ValueError(f"is not a readable SQLite database ({error})") from None
    finally:
        connection.close()
    if not tables:
        raise ValueError("is a SQLite database without tables")
    return {"tables": tables}


def _short_row(row: tuple) -> list:
    """A preview row with long values cut, so that metadata stays small."""
    cells = []
    for value in row:
        if isinstance(value, (bytes, bytearray)):
            value = f"<{len(value)} bytes>"
        elif not isinstance(value, (int, float, bool, type(None))):
            value = str(value)
            value = value if len(value) <= 60 else value[:57] + "..."
        cells.append(value)
    return cells
