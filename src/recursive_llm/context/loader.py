"""Loading inputs: text, data, files, directories and tables, with metadata for the root prompt.

The loaded value is what the REPL's `context` variable will be. Only `metadata` (type, sizes,
paths, table schemas, a short labelled preview) ever reaches a prompt, never the content.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ContextError
from .document import Document
from .formats import BINARY_SNIFF_BYTES, Unreadable, read_document
from .tables import TABLE_FORMATS, TableSource, inspect, table_name
from .textfile import TextFile, UnreadableText, scan

# Text files at least this large are not decoded in the host: the worker reads them itself.
LAZY_TEXT_BYTES = 8 * 1024 * 1024
# Inputs under this many characters get a short labelled preview in the root prompt's metadata.
PREVIEW_CHARS = 300

SKIPPED_DIRS = {"__pycache__", "node_modules", ".git", ".venv", "venv", ".tox", ".mypy_cache"}
_MAX_PATH_LIKE_CHARS = 4096
# Files that are tables and nothing else (CSV, TSV and JSONL are text too: documents *and* tables).
_BINARY_TABLES = {"parquet", "sqlite"}


@dataclass
class SkippedFile:
    path: str
    reason: str


@dataclass
class LoadedContext:
    value: Any
    kind: str  # "str" | "list" | "dict" | "documents" | "table"
    skipped: list[SkippedFile] = field(default_factory=list)
    source: str | None = None
    tables: list[TableSource] = field(default_factory=list)  # queryable with sql(...) in the REPL

    @functools.cached_property
    def metadata(self) -> dict[str, Any]:
        """Described once, when first asked (after loading has set its source and table names):
        for a large file it reads the file's head, for a list it measures every item."""
        return describe(self)


# -- public entry points ----------------------------------------------------------------------------
def load_context(source: Any, *, include: list[str] | None = None, exclude: list[str] | None = None,
                 encoding: str = "utf-8", max_file_bytes: int = 50_000_000,
                 gitignore: bool = True) -> LoadedContext:
    """Load `source` for a run.

    - `str`: text, always. A string is never read from disk, even when it happens to name a file:
      a one-line document, or text that arrived over a network, must not make the host read a
      path. Pass `pathlib.Path(...)` to load a file or directory (a one-line `str` that names an
      existing path still loads as text, with a warning that says so).
    - `pathlib.Path` to a file: text, Markdown and source code as text; `.html` as its visible
      text; `.pdf` as its text layer; `.json` parsed; `.jsonl` parsed into records (and queryable
      with `sql`); `.csv`, `.tsv`, `.parquet`, `.sqlite`/`.db` as a table for `sql(...)`.
    - `pathlib.Path` to a directory: a list of `Document`s (recursive; `include`/`exclude` globs;
      `.gitignore` files respected; binary, undecodable and files over `max_file_bytes` skipped
      and reported in `skipped`); tables in it are also queryable with `sql`.
    - a list of `Path`s: the files (directories expanded) as documents.
    - `list`, `dict` and other JSON-able data: used as they are.
    """
    if isinstance(source, LoadedContext):
        return source
    options = {"include": include, "exclude": exclude, "encoding": encoding, "max_file_bytes": max_file_bytes,
               "gitignore": gitignore}
    if isinstance(source, str) and _names_existing_path(source):
        import warnings

        warnings.warn("the context is a str that names an existing path; it is used as text, not read from "
                      "disk. Pass pathlib.Path(...) to load the file or directory.", UserWarning, stacklevel=4)
    if isinstance(source, Path):
        return _load_path(source, **options)
    if isinstance(source, (list, tuple)) and source and all(isinstance(item, Path) for item in source):
        return _load_paths(list(source), **options)
    return load_context_value(source)


def load_inputs(sources: list[Any], **options: Any) -> list[LoadedContext]:
    """Several inputs for one run (`context_0`, `context_1`, ...), with table names unique across them."""
    inputs = [load_context(source, **options) for source in sources]
    taken: set[str] = set()
    for loaded in inputs:
        for table in loaded.tables:
            if table.name in taken:
                table.name = table_name(table.name, taken)
            taken.add(table.name)
    return inputs


def as_inputs(context: Any) -> list[LoadedContext]:
    """The inputs of an environment: a list of LoadedContext as given, or one raw value wrapped."""
    if isinstance(context, LoadedContext):
        return [context]
    if isinstance(context, list) and context and all(isinstance(item, LoadedContext) for item in context):
        return context
    return [LoadedContext(context, "raw")]


FILES_SHAPE = '{"files": ["notes.txt", "docs/"]}'
_OTHER_FILE_SHAPES = ({"path"}, {"paths"}, {"file"}, {"filename"})


def named_files(value: Any) -> list[str] | None:
    """The one shape that names files as an input, in every front end (`rlm batch`'s tasks, `rlm
    serve`'s `context` field): `{"files": [path, ...]}`. Returns the paths, or None when `value` is
    text or data. Another tool's shape (`{"path": ...}`, `{"paths": ...}`, `{"file": ...}`) is an
    error naming this one, never silently data."""
    if not isinstance(value, dict):
        return None
    keys = set(value)
    if keys in _OTHER_FILE_SHAPES:
        key = next(iter(keys))
        named = value[key] if isinstance(value[key], list) else [value[key]]
        example = json.dumps({"files": named}) if all(isinstance(n, str) for n in named) and named else FILES_SHAPE
        raise ContextError(f'{{"{key}": ...}} is not an input shape; name files as {example}')
    if keys != {"files"}:
        return None
    files = value["files"]
    if not (isinstance(files, list) and files and all(isinstance(f, str) and f.strip() for f in files)):
        raise ContextError(f'"files" must be a non-empty list of paths, e.g. {FILES_SHAPE}')
    return files


def load_context_value(value: Any) -> LoadedContext:
    """Load in-memory data as it is: a string is always text here, never a path.

    Used for inputs that come from model-written code (`rlm_query(..., context=...)`), which must
    never be able to make the host read a file.
    """
    if isinstance(value, LoadedContext):
        return value
    if isinstance(value, str):
        if not value.strip():
            raise ContextError("the input is empty: pass some text, data, a file or a directory as context")
        return LoadedContext(value, "str")
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, (list, dict)) and not value:
        raise ContextError(f"the input is an empty {type(value).__name__}: pass something to ask about")
    if isinstance(value, list) and value and all(isinstance(item, Document) for item in value):
        return LoadedContext(value, "documents")
    _check_json_able(value)
    kind = "dict" if isinstance(value, dict) else "list" if isinstance(value, list) else "str"
    if kind == "str":  # numbers, booleans: keep them as data, described by type
        kind = "list"
        value = [value]
    return LoadedContext(value, kind)


# -- files ------------------------------------------------------------------------------------------
def _names_existing_path(text: str) -> bool:
    if not text or "\n" in text or len(text) >= _MAX_PATH_LIKE_CHARS:
        return False
    try:
        return os.path.exists(text)
    except (OSError, ValueError):
        return False


def _check_json_able(value: Any) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as error:
        raise ContextError(f"the input cannot be passed to the REPL ({error}); use str, list, dict and "
                           f"other JSON-able values, or a pathlib.Path for files") from None


def _unknown_encoding(encoding: str) -> ContextError:
    return ContextError(f"unknown encoding {encoding!r}: use a Python codec name such as utf-8 or latin-1")


def _read(path: Path, encoding: str, max_file_bytes: int | None = None) -> str:
    try:
        return read_document(path, encoding, max_file_bytes)
    except LookupError:
        raise _unknown_encoding(encoding) from None


def _parse_json(path: Path, text: str) -> Any:
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ContextError(f"{path} is not valid JSON (line {error.lineno}, column {error.colno}: "
                               f"{error.msg}); fix it, or rename it to .txt to load it as text") from None
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ContextError(f"{path} line {number} is not valid JSON ({error.msg}); fix it, or "
                                   f"rename the file to .txt to load it as text") from None
    return records


def _table_of(path: Path, taken: set[str]) -> TableSource:
    """The file as a table (raises Unreadable); `taken` keeps SQL names unique within one input."""
    fmt = TABLE_FORMATS[path.suffix.lower()]
    if fmt not in _BINARY_TABLES:
        with open(path, "rb") as handle:
            if b"\x00" in handle.read(BINARY_SNIFF_BYTES):
                raise Unreadable("looks binary (it contains NUL bytes); it is not a text table")
    try:
        return inspect(TableSource(path.resolve(), fmt, table_name(path.stem, taken)))
    except ValueError as error:
        raise Unreadable(str(error)) from None


def _load_path(path: Path, **options: Any) -> LoadedContext:
    if not path.exists():
        raise ContextError(f"no such file or directory: {path} (check the path; relative paths start "
                           f"from {Path.cwd()})")
    if path.is_dir():
        documents, skipped, tables = _load_directory(path, **options)
        if not documents and not tables:
            reasons = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:10]) or "it has no files"
            raise ContextError(f"nothing to load from directory {path}: {reasons}. Check --include/--exclude "
                               f"and --encoding")
        if not documents:  # only tables (Parquet, SQLite): the first is `context`, all are in sql()
            return LoadedContext(tables[0], "table", skipped, str(path), tables)
        return LoadedContext(documents, "documents", skipped, str(path), tables)
    suffix = path.suffix.lower()
    if TABLE_FORMATS.get(suffix) in ("csv", "tsv", "parquet", "sqlite"):
        try:
            table = _table_of(path, set())
        except Unreadable as error:
            raise ContextError(f"{path} {error}") from None
        return LoadedContext(table, "table", source=str(path), tables=[table])
    if suffix not in (".json", ".jsonl", ".pdf", ".html", ".htm") and path.stat().st_size >= LAZY_TEXT_BYTES:
        try:
            return LoadedContext(scan(path, options["encoding"]), "str", source=str(path))
        except UnreadableText as error:
            raise ContextError(f"{path} {error}") from None
        except LookupError:
            raise _unknown_encoding(options["encoding"]) from None
    try:
        text = _read(path, options["encoding"])  # a file named explicitly has no size limit
    except Unreadable as error:
        raise ContextError(f"{path} {error}") from None
    if not text.strip():
        raise ContextError(f"the input is empty: {path} has no text")
    if suffix in (".json", ".jsonl"):
        loaded = load_context_value(_parse_json(path, text))
        if suffix == ".jsonl":
            try:
                loaded.tables = [_table_of(path, set())]
            except Unreadable:
                pass  # records of mixed shapes: still a list, just not a table
    else:
        loaded = LoadedContext(text, "str")
    loaded.source = str(path)
    return loaded


def _matches(relative: str, patterns: list[str]) -> bool:
    name = relative.rsplit("/", 1)[-1]
    for pattern in patterns:
        if fnmatch.fnmatch(relative, pattern) or fnmatch.fnmatch(name, pattern):
            return True
        if pattern.startswith("**/") and fnmatch.fnmatch(relative, pattern[3:]):
            return True
    return False


def _gitignore_spec(directory: Path):
    """The patterns of `directory/.gitignore`, or None (pathspec implements git's rules)."""
    ignore_file = directory / ".gitignore"
    if not ignore_file.is_file():
        return None
    import pathspec

    try:
        lines = ignore_file.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    return pathspec.GitIgnoreSpec.from_lines(lines)


def _walk(root: Path, gitignore: bool = True):
    """`(path, problem)` for the files under `root` in sorted order, skipping hidden and tool
    directories, files that a `.gitignore` on the way excludes, and directory cycles.

    A symbolic link is followed only when its target lies inside `root`: one that leads out of it
    (`docs/link -> ../secret.env`) comes back with a problem instead, and is never read."""
    inside = root.resolve()
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[Path, list]] = [(root, [])]
    while stack:
        directory, specs = stack.pop()
        stat = directory.stat()
        if (stat.st_dev, stat.st_ino) in seen:
            continue
        seen.add((stat.st_dev, stat.st_ino))
        spec = _gitignore_spec(directory) if gitignore else None
        if spec is not None:
            specs = [*specs, (directory, spec)]
        subdirs = []
        for entry in sorted(directory.iterdir(), key=lambda p: p.name):
            if entry.name.startswith(".") or entry.name in SKIPPED_DIRS:
                continue
            is_dir = entry.is_dir()
            if any(s.match_file(entry.relative_to(base).as_posix() + ("/" if is_dir else "")) for base, s in specs):
                continue
            if entry.is_symlink() and not _is_within(entry, inside):
                yield entry, "a symbolic link to a place outside the directory (not followed)"
            elif is_dir:
                subdirs.append((entry, specs))
            elif entry.is_file():
                yield entry, None
        stack.extend(reversed(subdirs))


def _is_within(link: Path, root: Path) -> bool:
    try:
        target = link.resolve(strict=True)
    except (OSError, RuntimeError):  # dangling, a loop, unreadable
        return False
    return target == root or root in target.parents


def _load_directory(root: Path, *, include, exclude, encoding, max_file_bytes, gitignore=True):
    documents: list[Document] = []
    skipped: list[SkippedFile] = []
    tables: list[TableSource] = []
    taken: set[str] = set()
    for path, problem in _walk(root, gitignore):
        relative = path.relative_to(root).as_posix()
        if include and not _matches(relative, include):
            continue
        if exclude and _matches(relative, exclude):
            continue
        if problem is not None:
            skipped.append(SkippedFile(relative, problem))
            continue
        table_format = TABLE_FORMATS.get(path.suffix.lower())
        try:
            if table_format:
                try:
                    tables.append(_table_of(path, taken))
                except Unreadable as error:
                    if table_format in _BINARY_TABLES:
                        raise
                    skipped.append(SkippedFile(relative, f"not usable as a table ({error}); loaded as text"))
                if table_format in _BINARY_TABLES:
                    continue
            documents.append(Document(_read(path, encoding, max_file_bytes), relative))
        except Unreadable as error:
            skipped.append(SkippedFile(relative, str(error)))
        except OSError as error:
            skipped.append(SkippedFile(relative, f"cannot be read ({error.strerror})"))
    return documents, skipped, tables


def _load_paths(paths: list[Path], **options: Any) -> LoadedContext:
    documents: list[Document] = []
    skipped: list[SkippedFile] = []
    tables: list[TableSource] = []
    for path in paths:
        if not path.exists():
            raise ContextError(f"no such file or directory: {path} (check the path)")
        if path.is_dir():
            docs, skips, found = _load_directory(path, **options)
            documents += [Document(str(d), f"{path.as_posix()}/{d.path}") for d in docs]
            skipped += [SkippedFile(f"{path.as_posix()}/{s.path}", s.reason) for s in skips]
            tables += found
            continue
        try:
            documents.append(Document(_read(path, options["encoding"]), path.as_posix()))
        except Unreadable as error:
            raise ContextError(f"{path} {error}") from None
    if not documents:
        raise ContextError("nothing to load from the given paths: " +
                           ("; ".join(f"{s.path}: {s.reason}" for s in skipped[:10]) or "no files"))
    taken: set[str] = set()
    for table in tables:  # names were unique per directory; make them unique across all of them
        table.name = table_name(table.name, taken)
    return LoadedContext(documents, "documents", skipped, ", ".join(p.as_posix() for p in paths[:5]), tables)

# -- metadata ----------------------------------------------------------------------------------------
CHARS_PER_TOKEN = 4  # for the estimate in the metadata; count_tokens() in the REPL is exact


def _lengths(items: list[Any]) -> list[int]:
    return [len(item) if isinstance(item, str) else len(json.dumps(item, default=str)) for item in items]


def _preview(text: str) -> str:
    return text[:PREVIEW_CHARS] + ("..." if len(text) > PREVIEW_CHARS else "")


def describe(loaded: LoadedContext) -> dict[str, Any]:
    """JSON-able facts about the input for the root prompt: types, sizes, schemas; of the content
    itself only a short preview."""
    value = loaded.value
    meta: dict[str, Any] = {"source": loaded.source, "skipped": len(loaded.skipped)}
    if loaded.tables:
        meta["tables"] = {name: {k: v for k, v in schema.items()}
                          for table in loaded.tables for name, schema in table.schemas().items()}
    if isinstance(value, TableSource):
        meta.update(type="table", format=value.format, num_items=sum(t["rows"] for t in value.schemas().values()),
                    total_chars=value.path.stat().st_size)
        return meta
    if isinstance(value, TextFile):
        meta.update(type="str", total_chars=value.chars, num_items=1, item_lengths=[value.chars],
                    num_lines=value.lines, preview=_preview(value.head(PREVIEW_CHARS + 1)))
    elif isinstance(value, str):
        meta.update(type="str", total_chars=len(value), num_items=1, item_lengths=[len(value)],
                    num_lines=value.count("\n") + 1, preview=_preview(value))
    elif isinstance(value, dict):
        keys = list(value)
        meta.update(type="dict", num_items=len(keys), total_chars=len(json.dumps(value, default=str)))
        meta["keys"] = [{"key": str(k), "type": type(value[k]).__name__,
                         "length": len(value[k]) if hasattr(value[k], "__len__") else None} for k in keys[:50]]
    else:
        lengths = _lengths(value)
        item_types = sorted({type(item).__name__ for item in value[:1000]})
        meta.update(type=f"list[{'Document' if loaded.kind == 'documents' else '|'.join(item_types)}]",
                    num_items=len(value), total_chars=sum(lengths))
        if len(lengths) <= 100:
            meta["item_lengths"] = lengths
        else:
            meta["item_lengths"] = {"min": min(lengths), "max": max(lengths),
                                    "mean": round(sum(lengths) / len(lengths)),
                                    "median": statistics.median(lengths), "first_20": lengths[:20]}
        if loaded.kind == "documents":
            meta["paths"] = [doc.path for doc in value[:100]]
            meta["more_paths"] = max(0, len(value) - 100)
        first = value[0]
        meta["preview"] = _preview(first if isinstance(first, str) else json.dumps(first, default=str))
    meta["estimated_tokens"] = meta["total_chars"] // CHARS_PER_TOKEN
    return meta


def format_metadata(meta: dict[str, Any], name: str = "context") -> str:
    """A short description of one input for the root prompt (bounded in size)."""
    kind = meta.get("type", "unknown")
    tokens = f"about {meta['estimated_tokens']:,} tokens" if "estimated_tokens" in meta else ""
    lines = []
    if kind == "table":
        lines.append(f"`{name}` is a {meta['format'].upper()} table handle ({meta['total_chars']:,} bytes on disk); "
                     f"query it with sql(...), not by printing it.")
    elif kind == "str":
        lines.append(f"`{name}` is a str of {meta['total_chars']:,} characters ({meta.get('num_lines', 1):,} lines, "
                     f"{tokens}).")
    elif kind == "dict":
        lines.append(f"`{name}` is a dict with {meta['num_items']:,} keys ({meta['total_chars']:,} characters as "
                     f"JSON, {tokens}).")
        keys = ", ".join(f"{k['key']!r} ({k['type']}" + (f", length {k['length']:,})" if k["length"] is not None else ")")
                         for k in meta.get("keys", []))
        lines.append(f"Keys (first 50): {keys}")
    else:
        noun = "documents" if kind == "list[Document]" else "items"
        lines.append(f"`{name}` is a {kind} of {meta['num_items']:,} {noun} with {meta['total_chars']:,} total "
                     f"characters ({tokens}).")
        lengths = meta.get("item_lengths")
        if isinstance(lengths, list):
            lines.append(f"Lengths in characters: {lengths}")
        elif isinstance(lengths, dict):
            lines.append(f"Lengths in characters: min {lengths['min']:,}, median {lengths['median']:,}, "
                         f"mean {lengths['mean']:,}, max {lengths['max']:,}; first 20: {lengths['first_20']}")
        if meta.get("paths"):
            more = f" and {meta['more_paths']:,} more" if meta.get("more_paths") else ""
            lines.append(f"Document paths (each item has .path): {', '.join(meta['paths'])}{more}")
    for table, schema in (meta.get("tables") or {}).items():
        columns = ", ".join(f"{column} {kind_}" for column, kind_ in schema["columns"][:40])
        more = f", ... ({len(schema['columns'])} columns)" if len(schema["columns"]) > 40 else ""
        lines.append(f"SQL table {table}: {schema['rows']:,} rows; columns: {columns}{more}")
        if schema.get("preview"):
            lines.append(f"  first rows (preview): {json.dumps(schema['preview'], default=str)[:PREVIEW_CHARS]}")
    if meta.get("preview"):
        lines.append(f"Preview of the first {PREVIEW_CHARS} characters (the rest is only in `{name}`): "
                     f"{json.dumps(meta['preview'])}")
    if meta.get("skipped"):
        lines.append(f"{meta['skipped']} file(s) were skipped while loading (binary, undecodable or too large).")
    return "\n".join(lines)
