"""An ASCII input file as `context` without a copy: a `str` whose characters are a read-only shared
mapping of the file (the page cache the host wrote, or the user's own file, hard-linked).

Stdlib only, imported by the worker (no typing, dataclasses or pathlib). CPython only: a `str`
subclass instance keeps its characters apart from its header, behind a pointer; `map_ascii_text`
makes one whose pointer is the mapping. Where this interpreter's `str` is not laid out as expected
(another implementation, a future CPython), it returns None and the caller reads the file as before.

What holds it safe:
- the characters are never written: CPython resizes or fills in place only an exact `str` of which
  it holds the only reference; this is a subclass, and `_KEPT` holds one more reference forever;
- it is never freed (its characters are not the allocator's): `_KEPT` and a reference taken
  through the C API outlive the interpreter (the worker leaves with `os._exit`);
- the mapping is read-only, of a file opened read-only (`O_NOFOLLOW`: a symlink is refused), so it
  can never be made writable (`mprotect` fails: the kernel knows the file was not opened for
  writing); writing into it faults;
- one zero byte follows the last character, as C code reading a `str`'s characters expects: the
  mapping sits in a reserved region one page longer than the file's pages, and the bytes past the
  end of a file's last page read as zero;
- the caller vouches that the file is ASCII (the host checked the `str` or scanned the file).
"""

from __future__ import annotations

import mmap
import os
import stat
import sys

MAP_FIXED = 0x10  # Linux, every architecture
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)


class MappedText(str):
    """`context` as a read-only mapping of its input file (a `str` in every other respect)."""

    __slots__ = ()


_KEPT: list = []  # every MappedText made, and the probe: never freed
_layout: tuple | None = None  # (pointer slots, length slots, hash slot) of a MappedText's header, or ()
_libc = None


def _words(text: str, count: int):
    import ctypes

    return (ctypes.c_ssize_t * count).from_address(id(text))


def _find_layout() -> tuple:
    """Where a MappedText's header keeps its characters' address, its length and its hash: found on
    a probe whose values are known, so no offset of any CPython version is written down here."""
    if sys.implementation.name != "cpython":
        return ()
    import ctypes

    as_utf8 = ctypes.pythonapi.PyUnicode_AsUTF8AndSize
    as_utf8.restype, as_utf8.argtypes = ctypes.c_void_p, (ctypes.py_object, ctypes.c_void_p)
    length = 0x5A5A5  # a value no other header field has
    probe = MappedText("r" * length)
    _KEPT.append(probe)
    address = as_utf8(probe, None)  # an ASCII str's UTF-8 is its characters
    count = MappedText.__basicsize__ // ctypes.sizeof(ctypes.c_ssize_t)
    words = list(_words(probe, count))
    pointers = tuple(i for i, word in enumerate(words) if word == address)
    lengths = tuple(i for i, word in enumerate(words) if word == length)
    hashes = tuple(i for i, word in enumerate(words) if word == -1)  # not hashed yet
    if not pointers or len(lengths) != 2 or len(hashes) != 1:
        return ()
    return pointers, lengths, hashes[0]


def _map(fd: int, size: int) -> int:
    """The file's first `size` bytes, read-only and shared, followed by at least one zero byte."""
    global _libc
    import ctypes

    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mmap.restype = ctypes.c_void_p
        _libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                               ctypes.c_long)
    reserved = (size // mmap.PAGESIZE + 1) * mmap.PAGESIZE
    failed = ctypes.c_void_p(-1).value
    base = _libc.mmap(None, reserved, mmap.PROT_READ, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
    if base in (None, failed):
        raise OSError(ctypes.get_errno(), "could not reserve address space for the input")
    mapped = _libc.mmap(base, size, mmap.PROT_READ, mmap.MAP_SHARED | MAP_FIXED, fd, 0)
    if mapped != base:
        raise OSError(ctypes.get_errno(), "could not map the input")
    return base


def map_ascii_text(path: str, min_bytes: int = 0) -> MappedText | None:
    """`path`, an ASCII file of at least `min_bytes` the caller vouches for, as a MappedText; None
    where this interpreter's `str` is not laid out as expected or the file is too small. A symlink
    or anything but a regular file is an OSError."""
    global _layout
    if _layout is None:
        try:
            _layout = _find_layout()
        except (AttributeError, OSError, TypeError, ValueError):
            _layout = ()
    if not _layout:
        return None
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path} is not a regular file")
        if info.st_size < max(min_bytes, 1):
            return None
        address = _map(fd, info.st_size)
    finally:
        os.close(fd)  # the mapping keeps the file; no descriptor is left to write or remap it
    return _as_text(address, info.st_size)


def _as_text(address: int, size: int) -> MappedText:
    import ctypes

    pointers, lengths, hash_slot = _layout
    text = MappedText("m")  # its own one character is left to the allocator, never freed
    words = _words(text, max((*pointers, *lengths, hash_slot)) + 1)
    for slot in pointers:
        words[slot] = address
    for slot in lengths:
        words[slot] = size
    words[hash_slot] = -1
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(text))
    _KEPT.append(text)
    head = ctypes.string_at(address, min(size, 64)).decode("ascii")
    if len(text) != size or text[:64] != head:
        raise OSError("the mapped input does not read back as written")
    return text
