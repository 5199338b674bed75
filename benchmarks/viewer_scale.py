"""How the HTML viewer behaves with a big run: 2,000 sub-calls in one cell, in headless Chromium.

Run: python benchmarks/viewer_scale.py   (needs Debian's chromium and the playwright package)
Prints the file size, the time to load and render the page, to open the cell that holds all the
sub-calls, and to search the run; medians of 5 page loads.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("RLM_HOME", tempfile.mkdtemp(prefix="rlm-viewer-bench-"))

from recursive_llm import RLM  # noqa: E402
from recursive_llm.record.store import Store  # noqa: E402
from recursive_llm.testing import ScriptedModel  # noqa: E402
from recursive_llm.record.viewer import render_html  # noqa: E402

SUB_CALLS = 2_000


def main() -> None:
    from playwright.sync_api import sync_playwright

    code = f"```repl\nnotes = llm_query_batched([f'summarize part {{i}} of the report' for i in range({SUB_CALLS})])\n```"
    root = ScriptedModel([code, "FINAL(done)"], name="root")
    sub = ScriptedModel(default=lambda m: "a summary of " + m[-1]["content"] + " with some detail " * 10, name="sub")
    run_id = RLM(model=root, sub_model=sub, max_concurrency=64).completion("Summarize", "text").run_id
    started = time.perf_counter()
    page_html = render_html(Store().run_tree(run_id))
    render_s = time.perf_counter() - started
    path = Path(tempfile.mkdtemp()) / "run.html"
    path.write_text(page_html, encoding="utf-8")
    loads, opens, searches = [], [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        for _ in range(5):
            page = browser.new_page()
            started = time.perf_counter()
            page.goto(path.as_uri())
            page.wait_for_selector("#timeline .bar")
            loads.append(time.perf_counter() - started)
            page.locator(f"#it-{run_id}-1 > summary").click()
            started = time.perf_counter()
            page.locator(f"[id^='cell-{run_id}-1-'] > summary").click()
            page.get_by_text(f"Sub-calls ({SUB_CALLS})").wait_for()
            page.locator("[id^='call-']").nth(SUB_CALLS - 1).wait_for(state="attached")
            opens.append(time.perf_counter() - started)
            started = time.perf_counter()
            page.fill("#search", "part 1999 of")
            page.get_by_text("1 match(es)").wait_for()
            searches.append(time.perf_counter() - started)
            page.close()
        browser.close()
    print("| viewer with 2,000 sub-calls (median of 5, headless Chromium) | result |\n| --- | --- |")
    print(f"| HTML file (built in {render_s:.2f} s) | {len(page_html) / 1e6:.1f} MB |")
    print(f"| page load until the timeline is drawn | {statistics.median(loads) * 1000:.0f} ms |")
    print(f"| open the cell that holds all 2,000 sub-calls | {statistics.median(opens) * 1000:.0f} ms |")
    print(f"| search the run (includes the 150 ms typing debounce) | {statistics.median(searches) * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
