"""Loading every kind of input, and every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recursive_llm.context.document import Document
from recursive_llm.context.loader import format_metadata, load_context, load_context_value
from recursive_llm.errors import ContextError


def test_text():
    loaded = load_context("hello\nworld")
    assert loaded.value == "hello\nworld" and loaded.kind == "str"
    assert loaded.metadata["total_chars"] == 11 and loaded.metadata["num_lines"] == 2


def test_a_str_is_always_text_never_a_path(tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("file content")
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match=r"pathlib.Path"):
        assert load_context("notes.txt").value == "notes.txt"
    with pytest.warns(UserWarning):
        assert load_context(str(tmp_path)).value == str(tmp_path)  # a directory is not walked either
    assert load_context(Path("notes.txt")).value == "file content"
    assert load_context("notes.txt is a file name").value == "notes.txt is a file name"


def test_symlinks_out_of_a_loaded_directory_are_not_followed(tmp_path):
    (tmp_path / "secret.env").write_text("OPENAI_API_KEY=sk-secret-value")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "private.txt").write_text("private notes")
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "readme.txt").write_text("public text")
    (docs / "link").symlink_to(tmp_path / "secret.env")
    (docs / "sub" / "deeper").symlink_to("../../secret.env")
    (docs / "dirlink").symlink_to(tmp_path / "elsewhere")
    (docs / "inside").symlink_to(docs / "readme.txt")  # a link that stays inside is fine
    (docs / "dangling").symlink_to(tmp_path / "missing")
    loaded = load_context(docs)
    texts = {d.path: str(d) for d in loaded.value}
    assert texts == {"inside": "public text", "readme.txt": "public text"}
    assert all("secret" not in str(d) and "private" not in str(d) for d in loaded.value)
    skipped = {s.path: s.reason for s in loaded.skipped}
    assert set(skipped) == {"link", "sub/deeper", "dirlink", "dangling"}
    assert all("outside the directory" in reason for reason in skipped.values())


def test_model_supplied_strings_are_never_paths(tmp_path):
    (tmp_path / "secret.txt").write_text("top secret")
    assert load_context_value(str(tmp_path / "secret.txt")).value == str(tmp_path / "secret.txt")


def test_text_file_with_bom(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"\xef\xbb\xbfhello")
    loaded = load_context(path)
    assert loaded.value == "hello" and loaded.source == str(path)


def test_json_and_jsonl_files(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps({"a": [1, 2]}))
    assert load_context(tmp_path / "d.json").value == {"a": [1, 2]}
    (tmp_path / "r.jsonl").write_text('{"x": 1}\n\n{"x": 2}\n')
    assert load_context(tmp_path / "r.jsonl").value == [{"x": 1}, {"x": 2}]


def test_invalid_json_and_jsonl_name_the_place(tmp_path):
    (tmp_path / "bad.json").write_text('{"a": 1,,}')
    with pytest.raises(ContextError, match=r"not valid JSON \(line 1, column 9"):
        load_context(tmp_path / "bad.json")
    (tmp_path / "bad.jsonl").write_text('{"x": 1}\nnope\n')
    with pytest.raises(ContextError, match="line 2 is not valid JSON"):
        load_context(tmp_path / "bad.jsonl")


def make_tree(root: Path) -> None:
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "mod.py").write_text("def f(): pass\n")
    (root / "src" / "top.py").write_text("import os\n")
    (root / "README.md").write_text("# Title\n")
    (root / ".hidden").write_text("secret")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "x.pyc").write_bytes(b"\x00\x01")
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00")
    (root / "latin.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))


def test_directory_with_skip_report(tmp_path):
    make_tree(tmp_path)
    loaded = load_context(tmp_path)
    assert loaded.kind == "documents"
    assert [d.path for d in loaded.value] == ["README.md", "src/top.py", "src/pkg/mod.py"]
    assert all(isinstance(d, Document) for d in loaded.value)
    skipped = {s.path: s.reason for s in loaded.skipped}
    assert set(skipped) == {"image.png", "latin.txt"}
    assert "binary" in skipped["image.png"] and "utf-8" in skipped["latin.txt"] and "byte 3" in skipped["latin.txt"]
    meta = loaded.metadata
    assert meta["type"] == "list[Document]" and meta["skipped"] == 2 and meta["num_items"] == 3
    assert "2 file(s) were skipped" in format_metadata(meta)


def test_directory_include_exclude(tmp_path):
    make_tree(tmp_path)
    assert [d.path for d in load_context(tmp_path, include=["*.py"]).value] == ["src/top.py", "src/pkg/mod.py"]
    assert [d.path for d in load_context(tmp_path, include=["**/*.py"], exclude=["src/pkg/*"]).value] == ["src/top.py"]
    latin = load_context(tmp_path, include=["latin.txt"], encoding="latin-1").value
    assert latin == ["café crème"]


def test_single_bad_files_are_errors(tmp_path):
    (tmp_path / "blob.bin").write_bytes(b"abc\x00def")
    with pytest.raises(ContextError, match="looks binary"):
        load_context(tmp_path / "blob.bin")
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ContextError, match=r"not valid utf-8 \(byte 3.*--encoding"):
        load_context(tmp_path / "latin.txt")
    assert load_context(tmp_path / "latin.txt", encoding="latin-1").value == "café"
    with pytest.raises(ContextError, match="unknown encoding"):
        load_context(tmp_path / "latin.txt", encoding="no-such-codec")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "big.txt").write_text("x" * 100)
    (tmp_path / "dir" / "small.txt").write_text("x")
    loaded = load_context(tmp_path / "dir", max_file_bytes=10)
    assert [d.path for d in loaded.value] == ["small.txt"] and "over the 10-byte limit" in loaded.skipped[0].reason
    assert load_context(tmp_path / "dir" / "big.txt", max_file_bytes=10).value == "x" * 100  # named: no limit


@pytest.mark.parametrize("value", ["", "   \n", [], {}])
def test_empty_inputs(value):
    with pytest.raises(ContextError, match="empty"):
        load_context(value)


def test_empty_file_and_directories(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ContextError, match="empty"):
        load_context(tmp_path / "empty.txt")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ContextError, match="nothing to load"):
        load_context(tmp_path / "nothing")
    (tmp_path / "bins").mkdir()
    (tmp_path / "bins" / "a.bin").write_bytes(b"\x00")
    with pytest.raises(ContextError, match="a.bin: looks binary"):
        load_context(tmp_path / "bins")


def test_missing_path(tmp_path):
    with pytest.raises(ContextError, match="no such file or directory"):
        load_context(tmp_path / "missing")
    with pytest.raises(ContextError, match="no such file"):
        load_context([tmp_path / "missing.txt"])


def test_non_json_able_data():
    with pytest.raises(ContextError, match="object"):
        load_context({"a": object()})


def test_lists_dicts_and_paths(tmp_path):
    assert load_context(["a", "bb"]).metadata["item_lengths"] == [1, 2]
    meta = load_context({"k": [1, 2, 3], "n": 5}).metadata
    assert meta["type"] == "dict" and meta["keys"][0] == {"key": "k", "type": "list", "length": 3}
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b.txt").write_text("beta")
    loaded = load_context([tmp_path / "a.txt", tmp_path / "d"])
    assert [str(d) for d in loaded.value] == ["alpha", "beta"]
    assert loaded.value[1].path.endswith("d/b.txt")


def test_metadata_holds_only_a_short_labelled_preview_of_the_content():
    text = "The treasure is buried under the old oak tree. " * 100 + "The map is in the attic."
    for value in (text, [text, text], {"story": text}):
        described = format_metadata(load_context(value).metadata)
        assert "attic" not in described and len(described) < 2_000
        if "treasure" in described:
            assert "Preview of the first 300 characters" in described


def test_metadata_is_bounded_for_many_items():
    loaded = load_context([f"item {i}" for i in range(100_000)])
    description = format_metadata(loaded.metadata)
    assert len(description) < 1_000 and "100,000 items" in description
    assert loaded.metadata["item_lengths"]["max"] == len("item 99999")


def test_forty_megabyte_file(tmp_path):
    line = "line {:08d}: the quick brown fox jumps over the lazy dog\n"
    path = tmp_path / "big.txt"
    with open(path, "w") as handle:
        for i in range(700_000):
            handle.write(line.format(i))
    loaded = load_context(path)
    assert loaded.metadata["total_chars"] == len(loaded.value) == path.stat().st_size > 40_000_000
    assert loaded.value.read().endswith(line.format(699_999))


def test_large_files_are_not_decoded_in_the_host(tmp_path):
    from recursive_llm.context.loader import LAZY_TEXT_BYTES
    from recursive_llm.context.textfile import TextFile
    from recursive_llm.environments.protocol import read_context, write_context

    line = "ünïcode line with a few characters\n"
    path = tmp_path / "big.txt"
    path.write_text(line * (LAZY_TEXT_BYTES // len(line.encode()) + 10), encoding="utf-8")
    loaded = load_context(path)
    assert isinstance(loaded.value, TextFile)
    text = path.read_text(encoding="utf-8")
    assert loaded.metadata["total_chars"] == len(text) and loaded.metadata["num_lines"] == text.count("\n") + 1
    (tmp_path / "w").mkdir()
    assert read_context(write_context(loaded.value, tmp_path / "w")) == text
    latin = tmp_path / "latin.txt"
    latin.write_bytes(("caf\xe9\n" * (LAZY_TEXT_BYTES // 5 + 10)).encode("latin-1"))
    with pytest.raises(ContextError, match=r"not valid utf-8 \(byte 3\)"):
        load_context(latin)
    lazy = load_context(latin, encoding="latin-1").value
    (tmp_path / "w2").mkdir()
    assert read_context(write_context(lazy, tmp_path / "w2")).startswith("café\ncafé")
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"\x00" * LAZY_TEXT_BYTES)
    with pytest.raises(ContextError, match="looks binary"):
        load_context(blob)


def test_scan_hands_off_between_ascii_and_decoded_slices(tmp_path, monkeypatch):
    import codecs

    from recursive_llm.context import textfile

    monkeypatch.setattr(textfile, "SLICE_BYTES", 16)
    path = tmp_path / "mixed.txt"
    text = "\ufeff" + "plain ascii line\n" * 3 + "é split across slices ü\n" + "tail\n"
    path.write_bytes(text.encode("utf-8"))
    scanned = textfile.scan(path, "utf-8")
    assert scanned.chars == len(text) - 1 and scanned.lines == text.count("\n") + 1
    path.write_bytes(b"ascii only slice!" * 2 + b"then \xff bad")
    with pytest.raises(textfile.UnreadableText, match="byte 39"):
        textfile.scan(path, "utf-8")
    path.write_bytes(b"ends mid-character \xc3")
    with pytest.raises(textfile.UnreadableText, match="not valid utf-8"):
        textfile.scan(path, "utf-8")
    path.write_bytes(codecs.BOM_UTF8 + b"   \n  ")
    with pytest.raises(textfile.UnreadableText, match="no text"):
        textfile.scan(path, "utf-8")


def test_the_worker_reads_a_large_ascii_input_into_one_str(tmp_path):
    """protocol._read_ascii_text fills the str straight from the file (one copy at the worker's
    peak); a file with one byte above 127 goes through the decoder and reads the same."""
    from recursive_llm.environments import protocol

    text = "".join(f"line {i} of an ascii input\n" for i in range(60_000))
    assert len(text) > protocol._ASCII_READ_MIN
    path = protocol.write_context(text, tmp_path)
    read = protocol._read_ascii_text(path)
    assert read == text and hash(read) == hash(text) and read.isascii() and read.upper() == text.upper()
    assert protocol.read_context(path) == text
    mixed = text[:500_000] + "é" + text[500_000:]
    (tmp_path / "m").mkdir()
    path = protocol.write_context(mixed, tmp_path / "m")
    assert protocol._read_ascii_text(path) is None and protocol.read_context(path) == mixed
    (tmp_path / "s").mkdir()
    assert protocol.read_context(protocol.write_context("short", tmp_path / "s")) == "short"
