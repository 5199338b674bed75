"""Issue 27's viewer habits in a real headless browser (Debian's chromium driven by playwright):
an error run's header counts the calls its timeline shows, "1 iteration" in the singular, the time
axis not clipped on the right, the map-reduce fallback's code in an entry of its own."""

from __future__ import annotations

import re
import shutil

import pytest

from recursive_llm import RLM
from recursive_llm.errors import ModelError
from recursive_llm.record.store import Store
from recursive_llm.testing import ScriptedModel
from recursive_llm.record.viewer import render_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (.ci/run installs Debian's)")


def error_run() -> str:
    """One iteration whose code fans out 5 sub-calls that all fail, then a provider error."""
    root = ScriptedModel(["```repl\nnotes = llm_query_batched(['a', 'b', 'c', 'd', 'e'])\n```",
                          ModelError("provider down")], name="root-model")
    sub = ScriptedModel(default=lambda m: (_ for _ in ()).throw(ModelError("sub down")), name="sub-model")
    result = RLM(model=root, sub_model=sub, max_retries=0).completion("q", "text")
    assert result.stopped_reason == "error"
    return result.run_id


def idle_then_fallback() -> str:
    """A reply of FINAL_VAR(result) that names nothing, then the map-reduce program."""
    root = ScriptedModel(default="FINAL_VAR(result)", name="root-model")
    sub = ScriptedModel(default=lambda m: "kestrel", name="sub-model")
    result = RLM(model=root, sub_model=sub, fallback_after=1).completion("Which server?", "the server is kestrel")
    assert result.used_fallback and result.answer == "kestrel"
    return result.run_id


def test_header_counts_plural_axis_and_the_fallback_entry(tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
    store = Store()
    pages = {}
    for name, run_id in (("error", error_run()), ("fallback", idle_then_fallback())):
        pages[name] = (run_id, tmp_path / f"{name}.html")
        pages[name][1].write_text(render_html(store.run_tree(run_id)), encoding="utf-8")
    problems: list[str] = []
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("pageerror", lambda error: problems.append(str(error)))
        run_id, path = pages["error"]
        page.goto(path.as_uri())
        header = page.locator("header").inner_text()
        bars = page.locator("#timeline .bar").count()
        assert bars == 7  # two root calls and five sub-calls; all but the first root call failed
        assert "· 7 model calls (6 failed, 0 from the store) ·" in header, header
        assert "· 2 iterations ·" in header
        box = page.locator("#timeline").bounding_box()
        labels = page.locator("#timeline .axis span")
        last = labels.nth(labels.count() - 1).bounding_box()
        assert last["x"] + last["width"] <= box["x"] + box["width"]  # the last time label is whole
        assert page.evaluate("document.getElementById('timeline').scrollWidth <= "
                             "document.getElementById('timeline').clientWidth + 12")

        run_id, path = pages["fallback"]
        page.goto(path.as_uri())
        assert "· 1 iteration ·" in page.locator("header").inner_text()
        page.locator(f"#it-{run_id}-1 > summary").click()
        first = page.locator(f"#it-{run_id}-1")
        first.locator("pre").first.wait_for(state="visible", timeout=10_000)
        assert "FINAL_VAR(result)" in first.inner_text() and "_map_reduce" not in first.inner_text()
        entry = page.locator(f"#it-{run_id}-0")
        assert "Map-reduce fallback" in entry.locator("summary").first.inner_text()
        entry.locator("summary").first.click()
        page.locator(f"#cell-{run_id}-0-0 > summary").click()
        page.locator(f"#cell-{run_id}-0-0 pre.code").wait_for(state="visible", timeout=10_000)
        assert re.search(r"_map_reduce\(", entry.inner_text())
        assert "1 sub-call(s)" in entry.inner_text()  # the program's sub-call under its own cell
        browser.close()
    assert problems == []
