"""Reading one file as text: plain text and source code, HTML (to text), PDF (its text layer).

Every reader raises `Unreadable` with a reason a user can act on; the loader turns that into a
skip (inside a directory) or a `ContextError` (a file named explicitly).
"""

from __future__ import annotations

import codecs
import re
from html.parser import HTMLParser
from pathlib import Path

from ..extras import install_hint

BINARY_SNIFF_BYTES = 8192
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
PDF_SUFFIXES = {".pdf"}


class Unreadable(Exception):
    """A file that cannot be used as text (binary, undecodable, too large, no text layer)."""


def read_document(path: Path, encoding: str = "utf-8", max_file_bytes: int | None = None) -> str:
    """The text of `path`, by its suffix: HTML without markup, PDF's text layer, anything else as is."""
    size = path.stat().st_size
    if max_file_bytes is not None and size > max_file_bytes:
        raise Unreadable(f"{size:,} bytes is over the {max_file_bytes:,}-byte limit per file "
                         f"(raise max_file_bytes to load it)")
    suffix = path.suffix.lower()
    if suffix in PDF_SUFFIXES:
        return pdf_to_text(path)
    text = decode_text(path.read_bytes(), encoding)
    return html_to_text(text) if suffix in HTML_SUFFIXES else text


def decode_text(data: bytes, encoding: str) -> str:
    if b"\x00" in data[:BINARY_SNIFF_BYTES]:
        raise Unreadable("looks binary (it contains NUL bytes); convert it to text first")
    try:
        utf8 = codecs.lookup(encoding).name == "utf-8"
    except LookupError:
        raise LookupError(encoding) from None
    if utf8 and data.startswith(codecs.BOM_UTF8):
        data = data[3:]
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        raise Unreadable(f"is not valid {encoding} (byte {error.start}: {data[error.start:error.start + 1]!r}); "
                         f"pass the right encoding (encoding=... / --encoding latin-1)") from None


# -- HTML ------------------------------------------------------------------------------------------
_BLOCK_TAGS = {"p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "header", "footer",
               "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "hr", "title", "dt", "dd"}
_HIDDEN_TAGS = {"script", "style", "noscript", "template", "svg", "head"}


class _TextExtractor(HTMLParser):
    """Visible text, with line breaks where blocks end; scripts and styles dropped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0
        self.title: list[str] = []
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        if tag in _HIDDEN_TAGS:
            self.hidden += 1
        if tag == "title":
            self._in_title = True
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")
        if tag in ("h1", "h2", "h3", "h4", "h5", "h6") and not self.hidden:
            self.parts.append("#" * int(tag[1]) + " ")

    def handle_endtag(self, tag):
        if tag in _HIDDEN_TAGS and self.hidden:
            self.hidden -= 1
        if tag == "title":
            self._in_title = False
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data):
        if self._in_title:
            self.title.append(data)
        elif not self.hidden:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    body = "".join(parser.parts)
    body = re.sub(r"[ \t\r\f\v]+", " ", body)
    body = re.sub(r" *\n *", "\n", body)
    body = re.sub(r"\n{3,}", "\n\n", body).strip()
    title = " ".join("".join(parser.title).split())
    return f"# {title}\n\n{body}" if title and not body.startswith(f"# {title}") else body


# -- PDF -------------------------------------------------------------------------------------------
def pdf_to_text(path: Path) -> str:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError:
        raise Unreadable(f"is a PDF, and reading PDFs needs pypdf: {install_hint('pdf')}") from None
    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted:
            raise Unreadable("is an encrypted PDF; decrypt it first")
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, OSError) as error:
        raise Unreadable(f"is not a readable PDF ({type(error).__name__}: {error})") from None
    if not any(page.strip() for page in pages):
        raise Unreadable("is a PDF without a text layer (scanned?); run OCR on it first")
    return "\n\n".join(f"[page {number}]\n{text.strip()}" for number, text in enumerate(pages, start=1))
