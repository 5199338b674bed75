"""Handing a large input to the worker without copying it (issue 31, third part).

A large ASCII `str` is written once into the worker's input directory and the worker maps that file
as `context`; a large text file is hard-linked there and mapped, never copied. The worker's view is
read-only (it cannot be made writable, writing into it faults), and a path that is no longer the
file that was loaded (a symlink put in its place) is refused. Real workers, in both sandbox modes,
started and forked from a template.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

import pytest

from recursive_llm import RLM
from recursive_llm.context.loader import load_context
from recursive_llm.environments import protocol
from recursive_llm.environments.inside.mapped import MappedText, map_ascii_text
from recursive_llm.errors import ContextError
from recursive_llm.testing import ScriptedModel

from real_workers import MODES, real_workers

LINE = "line {:07d} of an ascii input, long enough to be mapped\n"
TEXT = "".join(LINE.format(i) for i in range(40_000))  # 2.2 MB

# In the worker: how `context` is held, the mapping it reads, and an attempt to make it writable.
INSPECT = textwrap.dedent("""
    import ctypes, mmap, os, re
    maps = [line.split() for line in open('/proc/self/maps') if line.rstrip().endswith('.txt')]
    mapped = [m for m in maps if m[5].rsplit('/', 1)[-1].startswith('context_')]
    start = int(mapped[0][0].split('-')[0], 16)
    libc = ctypes.CDLL(None, use_errno=True)
    made_writable = libc.mprotect(ctypes.c_void_p(start), mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_WRITE)
    print(type(context).__name__, mapped[0][1], mapped[0][4], made_writable, ctypes.get_errno(),
          len(context), len(re.findall(r'line \\d+ of', context)), hash(context) == hash(context[:] + ''))
""")


async def _in_worker(mode: str, origin: str, context, *cells: str) -> list:
    async with real_workers(mode, origin, context) as ((worker,), _):
        return [await worker.execute(cell, 30) for cell in cells]


@pytest.mark.parametrize("origin", ("started", "forked"))
@pytest.mark.parametrize("mode", MODES)
def test_a_large_ascii_str_is_mapped_read_only_in_the_worker(mode, origin):
    """`context` is the mapping of the one file the host wrote (`r--s`: read-only, shared); it cannot
    be made writable (mprotect: EACCES, the file was opened read-only), and a write into it faults:
    the worker dies, is replaced, and reads the same input."""
    write = ("import ctypes\nmaps = [l for l in open('/proc/self/maps') if 'context_0' in l]\n"
             "ctypes.memmove(int(maps[0].split('-')[0], 16), b'X', 1)")
    inspect, written, after = asyncio.run(_in_worker(mode, origin, TEXT, INSPECT, write, "print(context[:12])"))
    assert inspect.error is None, inspect.stderr
    kind, permissions, _, refused, errno, length, lines, hashed = inspect.stdout.split()
    assert (kind, permissions, refused, errno) == ("MappedText", "r--s", "-1", "13")
    assert (int(length), int(lines), hashed) == (len(TEXT), 40_000, "True")
    assert written.restarted and "WorkerCrash" in (written.error or "")
    assert after.stdout.strip() == TEXT[:12] and after.error is None


@pytest.mark.parametrize("mode", MODES)
def test_a_large_text_file_is_linked_and_mapped_never_copied(mode, tmp_path):
    """The worker maps the user's file itself (the inode it maps is the file's: a hard link in its
    input directory), read-only: opening it for writing is refused, and the file is unchanged."""
    path = tmp_path / "big.txt"
    path.write_text(TEXT * 4, encoding="utf-8")  # 8.8 MB: at least LAZY_TEXT_BYTES, a TextFile
    path.chmod(0o644)
    loaded = load_context(path)
    assert loaded.value.ascii and loaded.value.identity == (path.stat().st_dev, path.stat().st_ino)
    open_for_writing = textwrap.dedent("""
        name = [l.split()[5] for l in open('/proc/self/maps') if 'context_0' in l][0]
        try:
            open(name, 'r+b').write(b'X')
            print('written')
        except OSError as error:
            print('refused', type(error).__name__)
    """)
    inspect, written = asyncio.run(_in_worker(mode, "started", [loaded], INSPECT, open_for_writing))
    assert inspect.error is None, inspect.stderr
    kind, permissions, inode, *_ = inspect.stdout.split()
    assert (kind, permissions, int(inode)) == ("MappedText", "r--s", path.stat().st_ino)
    assert written.stdout.startswith("refused"), written.stdout
    assert path.read_text(encoding="utf-8") == TEXT * 4 and path.stat().st_nlink == 1  # the link is gone


def test_a_symlink_put_in_place_of_a_loaded_file_is_refused(tmp_path):
    """The handover links or copies the file that was loaded, by the file it opened: a path that
    names another file by then (a symlink to a file outside anything the user gave) is refused,
    and the worker maps no symlink (O_NOFOLLOW)."""
    path = tmp_path / "big.txt"
    path.write_text(TEXT * 4, encoding="utf-8")
    loaded = load_context(path)
    secret = tmp_path / "elsewhere" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("not for the worker\n" * 100_000)
    path.unlink()
    path.symlink_to(secret)
    (tmp_path / "input").mkdir()
    with pytest.raises(protocol.InputChanged, match="not the file that was loaded"):
        protocol.write_inputs([loaded], tmp_path / "input")
    assert not (tmp_path / "input" / "context_0.txt").exists()
    with pytest.raises(OSError):
        map_ascii_text(str(path))
    with pytest.raises(OSError):
        protocol.read_context(path, ascii=True)
    root = ScriptedModel(["```repl\nprint(context[:40])\n```", "FINAL(read)"])
    with pytest.raises(ContextError, match="not the file that was loaded"):  # its preview is not read either
        RLM(model=root, store=None).completion("q", loaded)
    assert root.calls == []


def test_a_mapped_text_is_a_str_in_every_way_model_code_uses_it(tmp_path):
    import json
    import re

    path = tmp_path / "context_0.txt"
    path.write_text(TEXT, encoding="ascii")
    text = map_ascii_text(str(path))
    assert isinstance(text, str) and isinstance(text, MappedText)
    assert text == TEXT and hash(text) == hash(TEXT) and len(text) == len(TEXT)
    assert text[5:12] == TEXT[5:12] and text[-3:] == TEXT[-3:] and text.count("\n") == 40_000
    assert re.findall(r"line (0039999)", text) == ["0039999"] and text.split("\n", 1)[0] == TEXT.split("\n", 1)[0]
    assert json.loads(json.dumps(text)) == TEXT and text.encode() == TEXT.encode() and {text: 1}[TEXT] == 1
    assert text + "!" == TEXT + "!" and text.upper() == TEXT.upper()
    assert map_ascii_text(str(path), min_bytes=len(TEXT) + 1) is None  # small files are read instead


@pytest.mark.parametrize("size", (4096 * 300, 4096 * 300 + 17))
def test_writing_into_the_mapping_faults_and_a_zero_byte_follows_the_text(tmp_path, size):
    """A file that fills its last page exactly still has a zero byte after its last character (C
    code reading the characters relies on it), and the mapping cannot be written."""
    path = tmp_path / "context_0.txt"
    path.write_bytes(b"a" * size)
    code = textwrap.dedent(f"""
        import ctypes, sys
        sys.path.insert(0, {os.path.join(os.path.dirname(protocol.__file__), 'inside')!r})
        from mapped import map_ascii_text
        text = map_ascii_text({str(path)!r})
        as_utf8 = ctypes.pythonapi.PyUnicode_AsUTF8
        as_utf8.restype, as_utf8.argtypes = ctypes.c_void_p, (ctypes.py_object,)
        address = as_utf8(text)
        print(ctypes.string_at(address + {size}, 1) == b'\\0', len(ctypes.string_at(address)), flush=True)
        ctypes.memmove(address, b'X', 1)
        print('written', flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["True", str(size)], done.stderr
    assert done.returncode == -11 and path.read_bytes()[:1] == b"a"  # SIGSEGV: the write never happened
