"""The run store when things go wrong under $RLM_HOME (issue 15), as users meet it through `rlm ask`
and `rlm logs`: private permissions, a corrupt database, a full disk. The answer always comes back;
the store problem is said once, in the result and on stderr; reading fails with the file and the fix."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from recursive_llm.testing import FakeLLMServer
from scripted_root import root_then_sub

BATCH_TURNS = ["```repl\nnotes = llm_query_batched([f'part {i}' for i in range(6)])\nprint(len(notes))\n```",
               "```repl\nsummary = llm_query('combine: ' + ' | '.join(notes))\n```",
               "FINAL_VAR(summary)"]


def rlm_cli(*args: str, home: Path, umask: int = 0o022) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recursive_llm", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "RLM_HOME": str(home)},
                          preexec_fn=lambda: os.umask(umask))


def ask(server: FakeLLMServer, doc: Path, home: Path) -> subprocess.CompletedProcess:
    return rlm_cli("ask", "Summarize it", "--context", str(doc), "--model", "m", "--base-url", server.base_url,
                   "--quiet", "--json", home=home)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def doc(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text("a document about revenue\n" * 20)
    return path


def test_rlm_home_the_database_and_trajectories_are_private(tmp_path, doc):
    fresh = tmp_path / "fresh-home"
    old = tmp_path / "old-home"  # made by an older version, or by hand, with a loose umask
    (old / "trajectories").mkdir(parents=True)
    old.chmod(0o755)
    (old / "trajectories").chmod(0o777)
    (old / "rlm.db").touch(mode=0o644)
    (old / "rlm.db").chmod(0o644)
    with FakeLLMServer(responder=root_then_sub(BATCH_TURNS)) as server:
        for home in (fresh, old):
            done = ask(server, doc, home)
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["store_error"] is None
    for home in (fresh, old):
        assert mode(home) == 0o700 and mode(home / "trajectories") == 0o700
        assert mode(home / "rlm.db") == 0o600
        files = list((home / "trajectories").iterdir())
        assert files and all(mode(f) == 0o600 for f in files)
        assert all(mode(f) == 0o600 for f in home.glob("rlm.db-*"))


def test_a_corrupt_database_never_loses_the_answer_and_logs_says_how_to_fix_it(tmp_path, doc):
    home = tmp_path / "home"
    home.mkdir()
    (home / "rlm.db").write_bytes(b"this is not a database, it was overwritten " * 100)
    with FakeLLMServer(responder=root_then_sub(BATCH_TURNS)) as server:
        done = ask(server, doc, home)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["answer"].startswith("sub:combine:") and result["stopped_reason"] == "final"
    assert "rlm.db" in result["store_error"] and "mv " in result["store_error"]
    warnings = [line for line in done.stderr.splitlines() if "run store" in line]
    assert len(warnings) == 1 and "Traceback" not in done.stderr
    for command in (["logs"], ["logs", "--json"], ["logs", "show", "abc"]):
        listed = rlm_cli(*command, home=home)
        assert listed.returncode != 0
        assert str(home / "rlm.db") in listed.stderr and "mv " in listed.stderr, listed.stderr
        assert "Traceback" not in listed.stderr


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs as RLM_HOME (root only; skipped with the reason elsewhere)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> None:
    descriptor = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):
            try:
                while True:
                    os.write(descriptor, b"\0" * size)
            except OSError:
                continue
    finally:
        os.close(descriptor)


def test_a_full_disk_under_rlm_home_never_loses_the_answer(small_disk, doc):
    home = small_disk / "home"
    with FakeLLMServer(responder=root_then_sub(BATCH_TURNS)) as server:
        first = ask(server, doc, home)  # the store exists, with one run in it
        assert first.returncode == 0 and json.loads(first.stdout)["store_error"] is None
        fill(small_disk)
        before = len(server.requests)
        done = ask(server, doc, home)
        paid = len(server.requests) - before
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["answer"].startswith("sub:combine:") and paid == 10  # every paid call's answer came back
    assert "full" in result["store_error"].lower() or "no space" in result["store_error"].lower()
    assert "Traceback" not in done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("rlm: warning:")]
    assert 1 <= len(warnings) <= 2, done.stderr  # once per thing that failed (store, trajectory), not per event
    (small_disk / "filler").unlink()
    listed = rlm_cli("logs", "--json", home=home)  # what was recorded before is still readable
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout.splitlines()[-1])["run_id"] == json.loads(first.stdout)["run_id"]


def test_a_disk_that_fills_during_a_run_keeps_the_answer_and_says_so(small_disk, doc):
    """The tests above fail the store when it opens; here it opens fine and the disk fills at the
    run's first model call, so every later write (calls, iterations, the run's end) fails: the
    answer comes back, and the store says once that it could not be written (issue 32)."""
    home = small_disk / "home"
    respond = root_then_sub(BATCH_TURNS)

    def filling(messages: list[dict], model: str) -> str:
        if not (small_disk / "filler").exists():
            fill(small_disk)
        return respond(messages, model)

    with FakeLLMServer(responder=filling) as server:
        done = ask(server, doc, home)
        paid = len(server.requests)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["answer"].startswith("sub:combine:") and result["stopped_reason"] == "final" and paid == 10
    assert "could not be written" in result["store_error"], result["store_error"]
    warnings = [line for line in done.stderr.splitlines() if "run store" in line]
    assert len(warnings) == 1 and "could not be written" in warnings[0], done.stderr
    assert "Traceback" not in done.stderr


def test_a_read_only_rlm_home_never_loses_the_answer(small_disk, doc):
    home = small_disk / "home"
    with FakeLLMServer(responder=root_then_sub(BATCH_TURNS)) as server:
        first = ask(server, doc, home)
        assert first.returncode == 0, first.stderr
        remounted = subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], capture_output=True, text=True)
        if remounted.returncode != 0:
            pytest.skip(f"cannot remount read-only: {remounted.stderr.strip()}")
        done = ask(server, doc, home)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["answer"].startswith("sub:combine:")
    assert "read-only" in result["store_error"].lower() or "readonly" in result["store_error"].lower()
    assert "writable" in result["store_error"], result["store_error"]
    assert "Traceback" not in done.stderr
    listed = rlm_cli("logs", "--json", home=home)
    assert "Traceback" not in listed.stderr
    if listed.returncode != 0:  # SQLite could not open the WAL database read-only: it says which and how
        assert str(home / "rlm.db") in listed.stderr and "RLM_HOME" in listed.stderr
    else:
        assert json.loads(listed.stdout.splitlines()[0])["run_id"] == json.loads(first.stdout)["run_id"]
