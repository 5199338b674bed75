"""`TextFile`: a large text input that the host never holds in memory.

The host checks the file once in slices (encoding, binary content, character and line counts for
the prompt's metadata) and hands the file itself to the worker: a hard link into the worker's input
directory where it can (no copy), and the worker maps an ASCII file as `context` without reading it
(environments/inside/mapped.py). A 400 MB input therefore costs the host a few megabytes instead of the
input's size twice. `identity` (device, inode) is the file that was checked: the handover refuses
a path that names another file by then (a swapped file or symlink).
"""

from __future__ import annotations

import codecs
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

SLICE_BYTES = 16 * 1024 * 1024
BINARY_SNIFF_BYTES = 8192


class UnreadableText(Exception):
    """The file is binary or not valid in its encoding."""


@dataclass(frozen=True)
class TextFile:
    path: Path
    encoding: str
    size_bytes: int
    chars: int
    lines: int
    ascii: bool = False  # UTF-8 and every byte below 128: the worker can map it as `context`
    identity: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the file that was scanned

    @property
    def is_utf8(self) -> bool:
        return _is_utf8(self.encoding)

    @property
    def reading_encoding(self) -> str:
        """The codec to open the file with: a UTF-8 byte-order mark is not part of the text."""
        return "utf-8-sig" if self.is_utf8 else self.encoding

    def read(self) -> str:
        """The whole text (for in-process use; the worker reads the file itself)."""
        with self._open() as handle:
            return handle.read()

    def head(self, chars: int) -> str:
        """The first `chars` characters (for a preview), without reading the rest."""
        with self._open(errors="replace") as handle:
            return handle.read(chars)

    def _open(self, errors: str = "strict") -> TextIO:
        """The file, which must still be the one that was scanned (not a file or symlink swapped in)."""
        handle = open(self.path, encoding=self.reading_encoding, errors=errors)
        refusal = replaced_since_loaded(self.path, os.fstat(handle.fileno()), self.identity)
        if refusal is not None:
            handle.close()
            from ..errors import ContextError

            raise ContextError(refusal)
        return handle

    def __len__(self) -> int:
        return self.chars


def replaced_since_loaded(path: str | Path, opened: os.stat_result, identity: tuple[int, int] | None) -> str | None:
    """Why the open file `opened` (at `path`) must not be read as the input: it is not the file
    that was loaded (`identity`, its device and inode; None or (0, 0) when not known), else None."""
    if identity is None or tuple(identity) == (0, 0) or (opened.st_dev, opened.st_ino) == tuple(identity):
        return None
    return f"{path} is not the file that was loaded (it was replaced since); load it again"


def _is_utf8(encoding: str) -> bool:
    return codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")


def scan(path: Path, encoding: str) -> TextFile:
    """Validate and measure `path` in slices. Raises UnreadableText or LookupError."""
    utf8 = _is_utf8(encoding)
    decoder = codecs.getincrementaldecoder("utf-8" if utf8 else encoding)("strict")
    chars = lines = offset = 0
    blank = ascii_only = True
    with open(path, "rb") as handle:
        info = os.fstat(handle.fileno())
        while data := handle.read(SLICE_BYTES):
            if offset == 0:
                if b"\x00" in data[:BINARY_SNIFF_BYTES]:
                    raise UnreadableText("looks binary (it contains NUL bytes); convert it to text first")
                if utf8 and data.startswith(codecs.BOM_UTF8):
                    chars -= 1  # the byte-order mark is not part of the text
            offset += len(data)
            if utf8 and data.isascii() and not decoder.getstate()[0]:
                # The common case, at memory speed: ASCII needs no decoding to be counted.
                chars += len(data)
                lines += data.count(b"\n")
                blank = blank and not data.strip()
                continue
            ascii_only = False
            text = _decode(decoder, data, offset - len(data), encoding)
            chars += len(text)
            lines += text.count("\n")
            blank = blank and not text.lstrip("\ufeff").strip()
        _decode(decoder, b"", offset, encoding, final=True)
    if blank:
        raise UnreadableText("has no text (the input is empty)")
    return TextFile(path=path, encoding=encoding, size_bytes=offset, chars=chars, lines=lines + 1,
                    ascii=utf8 and ascii_only, identity=(info.st_dev, info.st_ino))


def _decode(decoder: codecs.IncrementalDecoder, data: bytes, offset: int, encoding: str,
            final: bool = False) -> str:
    try:
        return decoder.decode(data, final=final)
    except UnicodeDecodeError as error:
        raise UnreadableText(f"is not valid {encoding} (byte {offset + error.start}); pass the right "
                             f"encoding (encoding=... / --encoding latin-1)") from None
