"""The HTML viewer in a real headless browser (Debian's chromium driven by playwright)."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from recursive_llm import RLM
from recursive_llm.record.store import Store
from recursive_llm.testing import ScriptedModel
from recursive_llm.record.viewer import render_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (.ci/run installs Debian's)")


def depth_two_run() -> str:
    """Root (depth 0) -> 2 children (depth 1) -> 1 grandchild each (depth 2); 200 sub-calls in all."""
    def respond(messages):
        task = messages[1]["content"] if len(messages) > 1 else ""
        started = any(m["role"] == "assistant" for m in messages)
        if "Query: grandchild" in task:
            return "FINAL_VAR(g)" if started else "```repl\ng = llm_query_batched([f'leaf {i}' for i in range(20)])[0]\n```"
        if "Query: child" in task:
            return "FINAL_VAR(c)" if started else (
                "```repl\nparts = llm_query_batched([f'child part {i}' for i in range(40)])\n"
                "c = rlm_query('grandchild task', context='grand text')\n```")
        return "FINAL_VAR(answer_text)" if started else (
            "```repl\nnotes = llm_query_batched([f'root note {i}' for i in range(80)])\n"
            "kids = rlm_query_batched(['child A', 'child B'])\nanswer_text = ' / '.join(kids)\nprint(kids)\n```")

    rlm = RLM(model=ScriptedModel(default=respond, name="root-model"),
              sub_model=ScriptedModel(default=lambda messages: "answer to " + messages[-1]["content"], name="sub-model"),
              max_depth=3)
    return rlm.completion("What do the parts say?", "the input text").run_id


def test_viewer_shows_every_level_without_console_errors(tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
    run_id = depth_two_run()
    tree = Store().run_tree(run_id)
    assert sum(1 for c in tree["calls"] if c["purpose"] == "sub") == 200
    assert sorted({r["depth"] for r in tree["runs"]}) == [0, 1, 2]
    page_file = tmp_path / "run.html"
    page_file.write_text(render_html(tree), encoding="utf-8")

    problems: list[str] = []
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("request", lambda request: problems.append(f"network: {request.url}")
                if not request.url.startswith("file:") else None)
        page.goto(page_file.as_uri())
        assert page.locator("header h1").inner_text() == "What do the parts say?"
        assert page.locator("#timeline .bar").count() == len(tree["calls"])  # every call, none cached

        def visible(locator) -> bool:
            locator.wait_for(state="visible", timeout=10_000)  # nodes are built when they first open
            return True

        def open_node(selector: str) -> None:
            node = page.locator(selector).first
            if node.get_attribute("open") is None:
                node.locator("> summary").click()

        open_node(f"#it-{run_id}-1")
        open_node(f"[id^='cell-{run_id}-1-']")
        assert visible(page.get_by_text("Sub-calls (80)"))
        children = [r["run_id"] for r in tree["runs"] if r["depth"] == 1]
        grandchildren = [r["run_id"] for r in tree["runs"] if r["depth"] == 2]
        for child in children:
            open_node(f"#run-{child}")
            open_node(f"#it-{child}-1")
            open_node(f"[id^='cell-{child}-1-']")
            assert visible(page.get_by_text("Sub-calls (40)").first)
        for grandchild in grandchildren:
            open_node(f"#run-{grandchild}")
            open_node(f"#it-{grandchild}-1")
            open_node(f"[id^='cell-{grandchild}-1-']")
            assert page.locator(f"#run-{grandchild} > summary").inner_text().count("depth 2") == 1
        assert visible(page.get_by_text("Sub-calls (20)").first)
        page.locator("[id^='call-'] > summary").first.click()
        assert visible(page.get_by_text("answer to root note 0").first)

        page.fill("#search", "leaf 19")
        page.wait_for_selector("#results div:nth-child(2)")
        page.locator("#results div:nth-child(2)").click()
        assert visible(page.get_by_text("answer to leaf 19").first)
        page.screenshot(path=str(tmp_path / "viewer.png"), full_page=False)
        browser.close()
    assert (tmp_path / "viewer.png").stat().st_size > 10_000
    assert problems == []
    if os.environ.get("RLM_KEEP_SCREENSHOT"):
        shutil.copy(tmp_path / "viewer.png", os.environ["RLM_KEEP_SCREENSHOT"])


def flagged_runs(folder) -> tuple[str, str]:
    """A run whose first FINAL_VAR names a missing variable (refused) and whose replies carry
    reasoning; and a run that the map-reduce fallback answered, later marked interrupted."""
    replies = iter(["<think>plan: ask about each part</think>\n```repl\n"
                    "notes = llm_query_batched(['part one', 'part two', 'part three'])\nprint(notes)\n```",
                    "```repl\nmore = llm_query('part four')\n```", "FINAL_VAR(no_such_name)", "FINAL(kestrel)"])
    rlm = RLM(model=ScriptedModel(default=lambda messages: next(replies), name="root-model"),
              sub_model=ScriptedModel(default=lambda messages: "answer to " + messages[-1]["content"][-10:],
                                      name="sub-model", delay=0.3))  # the cell waits for its sub-calls
    refused = rlm.completion("Which server?", "the staging server is kestrel").run_id
    idle = RLM(model=ScriptedModel(default=lambda messages: "I am not sure.", name="weak"),
               sub_model=ScriptedModel(default=lambda messages: "kestrel", name="weak-sub"), fallback_after=1)
    folder.mkdir()
    (folder / "notes.txt").write_text("the staging server is kestrel\n")
    (folder / "blob.bin").write_bytes(b"\x00\x01\x02" * 50)  # skipped: binary
    fallback = idle.completion("Which server?", folder)
    assert fallback.used_fallback
    return refused, fallback.run_id


def cancelled_run() -> str:
    """A run cancelled in its second turn (as Ctrl-C or a client that went away cancels it)."""
    import asyncio

    rlm = RLM(model=ScriptedModel(["```repl\nx = 1\n```", asyncio.CancelledError()], name="root-model"))
    with pytest.raises(asyncio.CancelledError):
        rlm.completion("q", "text")
    return Store().list_runs(limit=1)[0]["run_id"]


def test_viewer_flags_previews_numbers_and_search_marks(tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
    refused, fallback = flagged_runs(tmp_path / "docs")
    store = Store()
    pages = {}
    for run_id in (refused, fallback):
        pages[run_id] = tmp_path / f"{run_id}.html"
        pages[run_id].write_text(render_html(store.run_tree(run_id)), encoding="utf-8")
    problems: list[str] = []
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto(pages[refused].as_uri())
        second, third = page.locator(f"#it-{refused}-3 > summary"), page.locator(f"#it-{refused}-4 > summary")
        assert "final refused" in second.inner_text() and second.locator(".pill.final").count() == 0
        assert third.locator(".pill.final").inner_text() == "final"
        first_summary = page.locator(f"#it-{refused}-1 > summary").inner_text()
        iteration_time = float(re.search(r"([\d.]+)s \(model and cells\)", first_summary).group(1))
        page.locator(f"#it-{refused}-1 > summary").click()
        shown = page.locator(f"#it-{refused}-1 pre.reasoning")  # the reasoning, apart from the reply
        shown.wait_for(state="visible", timeout=10_000)
        assert shown.inner_text() == "plan: ask about each part"
        page.locator(f"#cell-{refused}-1-0 > summary").click()
        rows = page.locator(f"#cell-{refused}-1-0 [id^='call-'] > summary")
        rows.first.wait_for(state="visible", timeout=10_000)
        texts = [rows.nth(i).inner_text() for i in range(rows.count())]
        assert len(texts) == 3  # every sub-call under the cell that made it
        assert [rows.nth(i).locator(".label").inner_text() for i in range(3)] == ["#2", "#3", "#4"]  # run-local numbers (#1 is the root call)
        assert all("→ answer to " in t for t in texts)  # the response preview on the row
        page.locator(f"#it-{refused}-2 > summary").click()
        page.locator(f"#cell-{refused}-2-0 > summary").click()
        later = page.locator(f"#cell-{refused}-2-0 [id^='call-'] > summary")
        later.first.wait_for(state="visible", timeout=10_000)
        assert later.count() == 1 and "part four" in later.first.inner_text()  # iteration 2's own sub-call
        # the iteration's time includes its cell's wait for the sub-calls, not only the root call's
        assert iteration_time >= max(float(re.search(r"· ([\d.]+)s · ", t).group(1)) for t in texts) > 0
        page.fill("#search", "part two")
        page.wait_for_selector("#results div:nth-child(2)")
        page.locator("#results div:nth-child(2)").click()
        page.locator("mark.hit").first.wait_for(state="visible", timeout=10_000)
        assert page.locator("mark.hit").first.inner_text().lower() == "part two"

        page.goto(pages[fallback].as_uri())
        assert page.locator("header .pill.warn", has_text="map-reduce fallback").count() == 1
        assert page.locator("header .pill.warn", has_text="1 input file(s) skipped").count() == 1
        interrupted = cancelled_run()
        (tmp_path / "cancelled.html").write_text(render_html(store.run_tree(interrupted)), encoding="utf-8")
        page.goto((tmp_path / "cancelled.html").as_uri())
        assert page.locator("header .pill.warn").inner_text() == "interrupted"
        browser.close()
    assert problems == []
