"""`Document`: one input text that remembers where it came from.

A `Document` is a `str`, so model-written code written for `list[str]` (slicing, `len`, `in`,
regexes) keeps working, while `doc.path` tells which file it is. Stdlib only: the worker process
imports it too.
"""

from __future__ import annotations

import json

TYPE_CHECKING = False  # not typing's: the worker imports this module at every start
if TYPE_CHECKING:
    from typing import Any


class Document(str):
    """A text with its source path (relative to the directory it was loaded from)."""

    path: str

    def __new__(cls, text: str, path: str = "") -> "Document":
        doc = super().__new__(cls, text)
        doc.path = path
        return doc

    def __repr__(self) -> str:
        return f"Document(path={self.path!r}, chars={len(self)})"

    def __reduce__(self):  # keep the path through pickling
        return (Document, (str(self), self.path))


def split_at_lines(text: str, size: int, overlap: int = 0) -> list[str]:
    """Pieces of at most `size` characters, each cut at a line break when one is in its second half;
    consecutive pieces share `overlap` characters. Used for REPL chunks, map-reduce and search passages."""
    pieces, start = [], 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            newline = text.rfind("\n", start + size // 2, end)
            end = newline + 1 if newline > start else end
        pieces.append(text[start:end])
        if end >= len(text):
            break
        start = max(end - overlap, start + 1)
    return pieces


def as_text(value: Any) -> str:
    """The input as one text: documents get their path as a header, data becomes JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        parts = []
        for item in value:
            header = f"### {item.path}\n" if getattr(item, "path", "") else ""
            parts.append(header + (item if isinstance(item, str) else json.dumps(item, default=str)))
        return "\n\n".join(parts)
    return json.dumps(value, indent=1, default=str)
