"""The host-worker wire format and the input file the worker loads. Stdlib only, and light: the
worker imports it at every start (no typing, dataclasses or pathlib; the host's own types are
imported where the host uses them).

Frames are a 4-byte big-endian length followed by that many bytes of UTF-8 JSON. The host treats
everything the worker sends as untrusted: sizes are bounded and messages are validated.
"""

from __future__ import annotations

import json
import os
import struct
from collections import namedtuple

from ..context.document import Document

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from ..context.textfile import TextFile

HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 256 * 1024 * 1024

# What the worker may send, and the fields each message must carry (with their types).
# "tool" calls ask the host for a helper it serves (search); `model` names the tool and the one
# prompt is its JSON arguments.
CALL_KINDS = ("llm", "rlm", "tool")
WORKER_MESSAGES: dict[str, dict[str, type | tuple[type, ...]]] = {
    "ready": {},
    "waiting": {},  # a pre-started worker, before its input (environments/prestart/pool.py)
    "call": {"id": int, "kind": str, "prompts": list},
    "result": {"id": int, "stdout": str, "stderr": str},
    "var": {"id": int, "ok": bool},
}


class ProtocolError(Exception):
    """The other side sent something that is not a valid frame or message."""


MAX_DEPTH = 64  # nesting of lists and objects in a message
MAX_INT_DIGITS = 19  # ids and counts fit in 64 bits; a 5,000-digit number is an attack


def _clean(value: Any) -> Any:
    """Strings with lone surrogates (which UTF-8 cannot carry) with those shown as escapes."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class FrameTooLarge(ProtocolError):
    """A message that does not fit in one frame; nothing was sent."""


def encode(message: dict[str, Any], limit: int | None = None, max_values: int | None = None) -> bytes:
    """One frame; FrameTooLarge over `limit` bytes (default MAX_FRAME_BYTES: the worker's own
    messages have the host's smaller bounds, HostBounds.max_message_bytes and max_message_values)."""
    limit = MAX_FRAME_BYTES if limit is None else limit
    text = json.dumps(message, ensure_ascii=False, default=str)
    try:
        body = text.encode("utf-8")
    except UnicodeEncodeError:  # print('\ud800') in a cell must not kill the worker
        body = json.dumps(_clean(message), ensure_ascii=False, default=str).encode("utf-8")
    if len(body) > limit:
        raise FrameTooLarge(f"message of {len(body):,} bytes exceeds the {limit:,}-byte limit")
    if max_values is not None and not within_values(body, max_values):
        raise FrameTooLarge(f"message of more than {max_values:,} JSON values (lists, dicts and their items)")
    return HEADER.pack(len(body)) + body


_MARKS = (b"[", b"{", b",", b":")  # a list or dict begins, an item follows, a value of a key follows
_STRING = None  # a JSON string in a frame's bytes, compiled on first use


def within_values(body: bytes, limit: int) -> bool:
    """Does the frame hold at most about `limit` JSON values (counted by the marks that begin or
    separate them, outside strings)? Decoded, a value costs 30 to 180 bytes: a frame of
    `[[],[],...]` would hold about 20 times its size. Checked before decoding, in C: the marks
    are counted, and only when there are more than `limit` are those inside strings (text, not
    values) found and taken off, one string at a time: for at most `limit // 4` strings (a frame
    with more is refused, rather than looked at string by string for seconds)."""
    global _STRING
    if len(body) <= limit:  # a value takes at least a byte
        return True
    total = sum(map(body.count, _MARKS))
    if total <= limit:
        return True
    most_strings = limit // 4
    if (body.count(b'"') - body.count(b'\\"')) // 2 > most_strings:
        return False
    if _STRING is None:
        import re

        _STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
    inside = strings = 0
    for match in _STRING.finditer(body):
        strings += 1
        if strings > most_strings:
            return False
        start, end = match.span()
        inside += sum(body.count(mark, start, end) for mark in _MARKS)
    return total - inside <= limit


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ProtocolError(f"a number of {len(text):,} digits")
    return int(text)


_SURROGATE = None


def _check_tree(message: Any) -> None:
    """Depth at most MAX_DEPTH; no lone surrogate in any string (JSON escapes can carry them)."""
    global _SURROGATE
    if _SURROGATE is None:
        import re

        _SURROGATE = re.compile("[\ud800-\udfff]")
    stack = [(message, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if not value.isascii() and _SURROGATE.search(value):  # isascii: a flag, no scan (2M chars: 5 ms)
                raise ProtocolError("a string with a lone surrogate")
        elif isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                raise ProtocolError(f"nested deeper than {MAX_DEPTH} levels")
            items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)


def decode_body(body: bytes) -> dict[str, Any]:
    """One frame's message. Anything malformed (not UTF-8 JSON, numbers of thousands of digits,
    nesting deep enough to exhaust the parser's recursion, lone surrogates) is a ProtocolError:
    the caller treats the sender as broken, never as a bug of its own."""
    try:
        message = json.loads(body.decode("utf-8"), parse_int=_bounded_int)
    except ProtocolError:
        raise
    except (ValueError, RecursionError, MemoryError) as error:  # UnicodeDecodeError, JSONDecodeError too
        raise ProtocolError(f"frame is not valid UTF-8 JSON: {type(error).__name__}: {str(error)[:200]}") from None
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise ProtocolError("frame is not a message object with an 'op'")
    _check_tree(message)
    return message


def validate_worker_message(message: dict[str, Any]) -> dict[str, Any]:
    fields = WORKER_MESSAGES.get(message["op"])
    if fields is None:
        raise ProtocolError(f"unknown message op {message['op']!r}")
    for name, kind in fields.items():
        if not isinstance(message.get(name), kind) or (kind is int and isinstance(message.get(name), bool)):
            raise ProtocolError(f"message {message['op']!r} has a missing or invalid field {name!r}")
    if message["op"] == "call":
        if message["kind"] not in CALL_KINDS or not all(isinstance(p, str) for p in message["prompts"]):
            raise ProtocolError(f"a 'call' needs a kind in {CALL_KINDS} and a list of string prompts")
        if message.get("model") is not None and not isinstance(message["model"], str):
            raise ProtocolError("a 'call' model must be a string or null")
    return message


_WRITE_SLICE = 1024 * 1024  # small enough to stay in the CPU's cache: 14 ms for 40 MB, where 8 MB took 58


# -- the input files ------------------------------------------------------------------------------
MANIFEST = "inputs.json"


class TableRef(namedtuple("TableRef", "name")):
    """Stands for a table input in the list of contexts; the REPL replaces it with a Table."""

    __slots__ = ()


def table_entry(table: Any, path: str) -> dict[str, Any]:
    """What the REPL needs to know about one table file (a context/tables.TableSource)."""
    return {"name": table.name, "path": path, "format": table.format, "info": table.info}


def write_inputs(inputs: list[Any], directory: Path, same_uid: bool = False) -> Path:
    """Write every input (a list of LoadedContext) for the worker and return the manifest's path.

    Texts and data become files of their own, marked `ascii` when the worker may map them as
    `context` (environments/inside/mapped.py); a large text file and table files are linked (or copied).
    `same_uid`: the worker runs as this process's uid, so a file only its owner reads is linked too.
    """
    contexts, tables = [], []
    for index, loaded in enumerate(inputs):
        if hasattr(loaded.value, "schemas"):  # a TableSource: the table itself is the context
            contexts.append({"table": loaded.value.name})
        else:
            path = write_context(loaded.value, directory, f"context_{index}", same_uid)
            contexts.append({"file": path.name, "ascii": _is_ascii_text(loaded.value)})
        for table in loaded.tables:
            (directory / "tables").mkdir(exist_ok=True)
            target = directory / "tables" / f"{table.name}{table.path.suffix.lower()}"
            _place_file(table.path, target, same_uid)
            tables.append(table_entry(table, str(target)))
    manifest = directory / MANIFEST
    manifest.write_text(json.dumps({"contexts": contexts, "tables": tables}, default=str), encoding="utf-8")
    return manifest


def _is_ascii_text(value: Any) -> bool:
    """Is `value` written as a text file of ASCII only (which the worker may map as it is)?"""
    from ..context.textfile import TextFile

    if isinstance(value, TextFile):
        return value.ascii
    return isinstance(value, str) and not isinstance(value, Document) and value.isascii()


def read_inputs(manifest: str | Path) -> tuple[list[Any], list[dict[str, Any]]]:
    with open(manifest, encoding="utf-8") as handle:
        payload = json.load(handle)
    directory = os.path.dirname(manifest)
    contexts = [TableRef(entry["table"]) if "table" in entry
                else read_context(os.path.join(directory, entry["file"]), entry.get("ascii") is True)
                for entry in payload["contexts"]]
    return contexts, payload["tables"]


class InputChanged(OSError):
    """A file input is no longer the file that was loaded (replaced, or its path now a symlink to another)."""


def _place_file(source: Path, target: Path, same_uid: bool = False, identity: tuple[int, int] | None = None) -> None:
    """`source` where the worker reads it: a hard link when possible (no copy, no space), else a
    kernel copy. Linked: what other users may read anyway, or (`same_uid`) a file of this uid's
    own, which a worker of the same uid could read anyway; a link keeps the file's owner and mode.
    The file is opened once and that open file is linked or copied (`identity`: it must be the
    one that was loaded; None or (0, 0) when not known), so no symlink or rename in between can put
    another file there."""
    import shutil

    from ..context.textfile import replaced_since_loaded

    with open(source, "rb") as reader:
        info = os.fstat(reader.fileno())
        if (refusal := replaced_since_loaded(source, info, identity)) is not None:
            raise InputChanged(refusal)
        if (info.st_mode & 0o004 or (same_uid and info.st_uid == os.geteuid())) and _link_same(source, target, info):
            return
        try:
            shutil.copyfile(f"/proc/self/fd/{reader.fileno()}", target)  # a kernel copy of the same file
        except OSError:  # no /proc
            with open(target, "wb") as writer:
                shutil.copyfileobj(reader, writer, _WRITE_SLICE)
    os.chmod(target, 0o644)


def _link_same(source: Path, target: Path, opened: os.stat_result) -> bool:
    """A hard link at `target` to the file `opened` is (its real path, then checked: a link that
    is not that very file, a symlink or one swapped in between, is removed again)."""
    try:
        os.link(os.path.realpath(source), target, follow_symlinks=False)
    except OSError:
        return False
    linked = os.lstat(target)
    if (linked.st_dev, linked.st_ino) == (opened.st_dev, opened.st_ino):
        return True
    os.unlink(target)
    return False


def write_context(value: Any, directory: Path, stem: str = "context", same_uid: bool = False) -> Path:
    """Write one input where the worker will read it: raw text for a str, JSON otherwise."""
    from ..context.textfile import TextFile

    if isinstance(value, TextFile):
        return _copy_text_file(value, directory / f"{stem}.txt", same_uid)
    if isinstance(value, str) and not isinstance(value, Document):
        path = directory / f"{stem}.txt"
        with open(path, "wb") as handle:  # in slices: encoding 400 MB at once would double host memory
            for start in range(0, len(value), _WRITE_SLICE):
                handle.write(value[start:start + _WRITE_SLICE].encode("utf-8"))
        return path
    if isinstance(value, list) and value and all(isinstance(item, Document) for item in value):
        payload: dict[str, Any] = {"documents": [[doc.path, str(doc)] for doc in value]}
    else:
        payload = {"value": value}
    path = directory / f"{stem}.json"
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, ensure_ascii=False)
    return path


def _copy_text_file(source: TextFile, path: Path, same_uid: bool = False) -> Path:
    """The worker's copy of a large file, as UTF-8, made without holding it in memory."""
    import codecs

    if source.is_utf8:  # a link or a kernel copy; a BOM is dropped on reading
        _place_file(source.path, path, same_uid, source.identity)
        return path
    decoder = codecs.getincrementaldecoder(source.encoding)()
    with open(source.path, "rb") as reader, open(path, "wb") as writer:
        while data := reader.read(_WRITE_SLICE):
            writer.write(decoder.decode(data).encode("utf-8"))
        writer.write(decoder.decode(b"", final=True).encode("utf-8"))
    return path


_MAP_MIN = 1024 * 1024  # below this, reading the file costs less than setting up a mapping


def read_context(path: str | Path, ascii: bool = False) -> Any:
    """One input as the worker's `context`. `ascii` (the host's word, from the manifest): a large
    file is mapped read-only and seen as a `str` with no copy (environments/inside/mapped.py)."""
    if os.fspath(path).endswith(".txt"):
        if ascii:
            from .inside.mapped import map_ascii_text

            text = map_ascii_text(os.fspath(path), _MAP_MIN)
            if text is not None:
                return text
        return _read_text(path)
    with open(path, encoding="utf-8") as handle:
        payload = json.load(handle)
    if "documents" in payload:
        return [Document(text, doc_path) for doc_path, text in payload["documents"]]
    return payload["value"]


def _read_text(path: str | Path) -> str:
    """A text file decoded once: ASCII straight into its `str`, anything else decoded from a
    read-only mapping of the file (no second copy of its bytes)."""
    import mmap

    text = _read_ascii_text(path)
    if text is not None:
        return text
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return ""
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapping:
            with memoryview(mapping) as view:
                return str(view, "utf-8-sig")


_ASCII_READ_MIN = 1024 * 1024


def _read_ascii_text(path: str | Path) -> str | None:
    """An ASCII file of at least 1 MB read straight into the `str` that holds it, or None.

    `read_text` holds the file's bytes and the decoded `str` at once: two copies of the input at
    the worker's peak (80 MB at 10M tokens). An ASCII `str` stores one byte per character, exactly
    the file's bytes, so the file is read into a new, not yet shared `str` (PyUnicode_New, the way
    CPython fills a string it creates) and checked to be ASCII slice by slice; anything else
    (another interpreter, a short read, one byte above 127) returns None and the caller decodes.
    """
    import sys

    size = os.stat(path).st_size
    if size < _ASCII_READ_MIN or sys.implementation.name != "cpython":
        return None
    try:
        import ctypes

        new = ctypes.pythonapi.PyUnicode_New
        new.restype, new.argtypes = ctypes.py_object, (ctypes.c_ssize_t, ctypes.c_uint32)
        offset = sys.getsizeof("") - 1  # a compact ASCII str: its characters follow the header
        probe = new(4, 127)
        ctypes.memmove(id(probe) + offset, b"rlm!", 4)
        if probe != "rlm!":
            return None
        text = new(size, 127)
        buffer = (ctypes.c_char * size).from_address(id(text) + offset)
        view = memoryview(buffer).cast("B")
        with open(path, "rb", buffering=0) as handle:
            filled = 0
            while filled < size and (count := handle.readinto(view[filled:])):
                filled += count
            if filled != size or handle.read(1):
                return None
        for start in range(0, size, _WRITE_SLICE):
            if not view[start:start + _WRITE_SLICE].tobytes().isascii():
                return None
        del view, buffer
        return text
    except (OSError, AttributeError, ValueError, TypeError):
        return None
