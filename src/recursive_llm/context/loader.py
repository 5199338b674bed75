"""Loading inputs: text, data, files and directories, with metadata for the root prompt.

The loaded value is what the REPL's `context` variable will be. Only `metadata` (type, sizes,
paths) ever reaches a prompt, never the content.
"""

from __future__ import annotations

import fnmatch
import json
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ContextError
from .document import Document
from .textfile import TextFile, UnreadableText, scan

# Text files at least this large are not decoded in the host: the worker reads them itself.
LAZY_TEXT_BYTES = 8 * 1024 * 1024

SKIPPED_DIRS = {"__pycache__", "node_modules", ".git", ".venv", "venv", ".tox", ".mypy_cache"}
_BINARY_SNIFF_BYTES = 8192
_MAX_PATH_LIKE_CHARS = 4096


@dataclass
class SkippedFile:
    path: str
    reason: str


@dataclass
class LoadedContext:
    value: Any
    kind: str  # "str" | "list" | "dict" | "documents"
    skipped: list[SkippedFile] = field(default_factory=list)
    source: str | None = None

    @property
    def metadata(self) -> dict[str, Any]:
        return describe(self)


# -- public entry points ----------------------------------------------------------------------------
def load_context(source: Any, *, include: list[str] | None = None, exclude: list[str] | None = None,
                 encoding: str = "utf-8", max_file_bytes: int = 50_000_000) -> LoadedContext:
    """Load `source` for a run.

    - `str`: text. A single-line string (under 4,096 characters) that names an existing file or
      directory is loaded as that path instead.
    - `pathlib.Path`: a file (`.json`/`.jsonl` parsed, anything else text) or a directory (a list
      of `Document`s, recursive; `include`/`exclude` globs; binary, undecodable and files over
      `max_file_bytes` are skipped and reported in `skipped`; a file named explicitly has no limit).
    - a list of `Path`s: the files (directories expanded) as documents.
    - `list`, `dict` and other JSON-able data: used as they are.
    """
    if isinstance(source, LoadedContext):
        return source
    options = {"include": include, "exclude": exclude, "encoding": encoding, "max_file_bytes": max_file_bytes}
    if isinstance(source, str) and _names_existing_path(source):
        source = Path(source)
    if isinstance(source, Path):
        return _load_path(source, **options)
    if isinstance(source, (list, tuple)) and source and all(isinstance(item, Path) for item in source):
        return _load_paths(list(source), **options)
    return load_context_value(source)


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


class _Unreadable(Exception):
    """A file that cannot be used as text (binary, undecodable, too large)."""


def _read_text(path: Path, encoding: str, max_file_bytes: int | None = None) -> str:
    size = path.stat().st_size
    if max_file_bytes is not None and size > max_file_bytes:
        raise _Unreadable(f"{size:,} bytes is over the {max_file_bytes:,}-byte limit per file "
                          f"(raise max_file_bytes to load it)")
    data = path.read_bytes()
    if b"\x00" in data[:_BINARY_SNIFF_BYTES]:
        raise _Unreadable("looks binary (it contains NUL bytes); convert it to text first")
    if data.startswith(b"\xef\xbb\xbf") and encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
        data = data[3:]
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        raise _Unreadable(f"is not valid {encoding} (byte {error.start}: {data[error.start:error.start + 1]!r}); "
                          f"pass the right encoding (encoding=... / --encoding latin-1)") from None
    except LookupError:
        raise ContextError(f"unknown encoding {encoding!r}: use a Python codec name such as utf-8 or latin-1") from None


def _parse_structured(path: Path, text: str) -> Any:
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ContextError(f"{path} is not valid JSON (line {error.lineno}, column {error.colno}: "
                               f"{error.msg}); fix it, or rename it to .txt to load it as text") from None
    if suffix == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ContextError(f"{path} line {number} is not valid JSON ({error.msg}); fix it, or "
                                       f"rename the file to .txt to load it as text") from None
        return records
    return text


def _load_path(path: Path, **options: Any) -> LoadedContext:
    if not path.exists():
        raise ContextError(f"no such file or directory: {path} (check the path; relative paths start "
                           f"from {Path.cwd()})")
    if path.is_dir():
        documents, skipped = _load_directory(path, **options)
        if not documents:
            reasons = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:10]) or "it has no files"
            raise ContextError(f"nothing to load from directory {path}: {reasons}. Check --include/--exclude "
                               f"and --encoding")
        return LoadedContext(documents, "documents", skipped, str(path))
    if path.suffix.lower() not in (".json", ".jsonl") and path.stat().st_size >= LAZY_TEXT_BYTES:
        try:
            return LoadedContext(scan(path, options["encoding"]), "str", source=str(path))
        except UnreadableText as error:
            raise ContextError(f"{path} {error}") from None
        except LookupError:
            raise ContextError(f"unknown encoding {options['encoding']!r}: use a Python codec name such as "
                               f"utf-8 or latin-1") from None
    try:
        text = _read_text(path, options["encoding"])  # a file named explicitly has no size limit
    except _Unreadable as error:
        raise ContextError(f"{path} {error}") from None
    if not text.strip():
        raise ContextError(f"the input is empty: {path} has no text")
    value = _parse_structured(path, text)
    loaded = load_context_value(value) if not isinstance(value, str) else LoadedContext(value, "str")
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


def _walk(root: Path):
    """Files under `root` in sorted order, skipping hidden and tool directories, without cycles."""
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        directory = stack.pop()
        stat = directory.stat()
        if (stat.st_dev, stat.st_ino) in seen:
            continue
        seen.add((stat.st_dev, stat.st_ino))
        entries = sorted(directory.iterdir(), key=lambda p: p.name)
        subdirs = []
        for entry in entries:
            if entry.name.startswith(".") or entry.name in SKIPPED_DIRS:
                continue
            if entry.is_dir():
                subdirs.append(entry)
            elif entry.is_file():
                yield entry
        stack.extend(reversed(subdirs))


def _load_directory(root: Path, *, include, exclude, encoding, max_file_bytes):
    documents: list[Document] = []
    skipped: list[SkippedFile] = []
    for path in _walk(root):
        relative = path.relative_to(root).as_posix()
        if include and not _matches(relative, include):
            continue
        if exclude and _matches(relative, exclude):
            continue
        try:
            text = _read_text(path, encoding, max_file_bytes)
        except _Unreadable as error:
            skipped.append(SkippedFile(relative, str(error)))
            continue
        except OSError as error:
            skipped.append(SkippedFile(relative, f"cannot be read ({error.strerror})"))
            continue
        documents.append(Document(text, relative))
    return documents, skipped


def _load_paths(paths: list[Path], **options: Any) -> LoadedContext:
    documents: list[Document] = []
    skipped: list[SkippedFile] = []
    for path in paths:
        if not path.exists():
            raise ContextError(f"no such file or directory: {path} (check the path)")
        if path.is_dir():
            docs, skips = _load_directory(path, **options)
            documents += [Document(str(d), f"{path.as_posix()}/{d.path}") for d in docs]
            skipped += [SkippedFile(f"{path.as_posix()}/{s.path}", s.reason) for s in skips]
            continue
        try:
            documents.append(Document(_read_text(path, options["encoding"]), path.as_posix()))
        except _Unreadable as error:
            raise ContextError(f"{path} {error}") from None
    if not documents:
        raise ContextError("nothing to load from the given paths: " +
                           ("; ".join(f"{s.path}: {s.reason}" for s in skipped[:10]) or "no files"))
    return LoadedContext(documents, "documents", skipped, ", ".join(p.as_posix() for p in paths[:5]))


# -- metadata ----------------------------------------------------------------------------------------
def _lengths(items: list[Any]) -> list[int]:
    return [len(item) if isinstance(item, str) else len(json.dumps(item, default=str)) for item in items]


def describe(loaded: LoadedContext) -> dict[str, Any]:
    """JSON-able facts about the input for the root prompt: types and sizes, never content."""
    value = loaded.value
    meta: dict[str, Any] = {"source": loaded.source, "skipped": len(loaded.skipped)}
    if isinstance(value, TextFile):
        meta.update(type="str", total_chars=value.chars, num_items=1, item_lengths=[value.chars],
                    num_lines=value.lines)
        return meta
    if isinstance(value, str):
        meta.update(type="str", total_chars=len(value), num_items=1, item_lengths=[len(value)])
        meta["num_lines"] = value.count("\n") + 1
        return meta
    if isinstance(value, dict):
        keys = list(value)
        meta.update(type="dict", num_items=len(keys), total_chars=len(json.dumps(value, default=str)))
        meta["keys"] = [{"key": str(k), "type": type(value[k]).__name__,
                         "length": len(value[k]) if hasattr(value[k], "__len__") else None} for k in keys[:50]]
        return meta
    lengths = _lengths(value)
    item_types = sorted({type(item).__name__ for item in value[:1000]})
    meta.update(type=f"list[{'Document' if loaded.kind == 'documents' else '|'.join(item_types)}]",
                num_items=len(value), total_chars=sum(lengths))
    if len(lengths) <= 100:
        meta["item_lengths"] = lengths
    else:
        meta["item_lengths"] = {"min": min(lengths), "max": max(lengths), "mean": round(sum(lengths) / len(lengths)),
                                "median": statistics.median(lengths), "first_20": lengths[:20]}
    if loaded.kind == "documents":
        meta["paths"] = [doc.path for doc in value[:100]]
        meta["more_paths"] = max(0, len(value) - 100)
    return meta


def format_metadata(meta: dict[str, Any]) -> str:
    """A short description of the input for the root prompt (bounded in size)."""
    kind = meta.get("type", "unknown")
    lines = []
    if kind == "str":
        lines.append(f"Your context is a str of {meta['total_chars']:,} characters ({meta.get('num_lines', 1):,} lines).")
    elif kind == "dict":
        lines.append(f"Your context is a dict with {meta['num_items']:,} keys ({meta['total_chars']:,} characters as JSON).")
        keys = ", ".join(f"{k['key']!r} ({k['type']}" + (f", length {k['length']:,})" if k["length"] is not None else ")")
                         for k in meta.get("keys", []))
        lines.append(f"Keys (first 50): {keys}")
    else:
        noun = "documents" if kind == "list[Document]" else "items"
        lines.append(f"Your context is a {kind} of {meta['num_items']:,} {noun} with {meta['total_chars']:,} total characters.")
        lengths = meta.get("item_lengths")
        if isinstance(lengths, list):
            lines.append(f"Lengths in characters: {lengths}")
        elif isinstance(lengths, dict):
            lines.append(f"Lengths in characters: min {lengths['min']:,}, median {lengths['median']:,}, "
                         f"mean {lengths['mean']:,}, max {lengths['max']:,}; first 20: {lengths['first_20']}")
        if meta.get("paths"):
            more = f" and {meta['more_paths']:,} more" if meta.get("more_paths") else ""
            lines.append(f"Document paths (each item has .path): {', '.join(meta['paths'])}{more}")
    if meta.get("skipped"):
        lines.append(f"{meta['skipped']} file(s) were skipped while loading (binary, undecodable or too large).")
    return "\n".join(lines)
