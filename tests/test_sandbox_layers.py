"""The worker's own layers, one at a time: uids, private directories, leftovers of dead hosts, the
stderr cap, output of background threads, and a session's sub-call machinery (issue 15)."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from recursive_llm import RLM
from recursive_llm.environments.host import channel, sandbox, worker_dir
from recursive_llm.environments.local import LocalEnvironment
from recursive_llm.environments.host.worker import WorkerEnvironment
from recursive_llm.errors import EnvironmentFailure
from recursive_llm.record.events import read_trajectory
from recursive_llm.testing import ScriptedModel

MODES = ("auto", "process")


async def no_calls(*args):
    return []


async def echo(kind, prompts, model, context):
    return [{"ok": True, "text": "sub answer"} for _ in prompts]


def run(coroutine):
    return asyncio.run(coroutine)


def test_worker_uids_never_collide_among_live_workers():
    """A counter modulo 256 gave the 257th worker of a process the uid of the first, still alive."""
    uids: list[int] = []
    try:
        with pytest.raises(EnvironmentFailure, match="alive"):
            for _ in range(300):
                uids.append(sandbox.allocate_worker_uid())
        assert len(uids) == sandbox.WORKER_UID_SLOTS and len(set(uids)) == len(uids)
        sandbox.release_worker_uid(uids[7])
        again = sandbox.allocate_worker_uid()
        assert again == uids[7] and again not in uids[:7] + uids[8:]
    finally:
        for uid in uids:
            sandbox.release_worker_uid(uid)


@pytest.mark.parametrize("mode", MODES)
def test_worker_directories_are_private(mode):
    """No other user (and no other run's worker) may read a run's input: every directory 0700 or
    tighter, our copies of the input unreadable to others."""
    async def scenario():
        env = WorkerEnvironment("private input text", no_calls, sandbox=mode)
        await env.start()
        try:
            modes = {}
            for directory, _, files in os.walk(env.directory.path):
                modes[directory] = stat.S_IMODE(os.stat(directory).st_mode)
                for name in files:
                    modes[os.path.join(directory, name)] = stat.S_IMODE(os.stat(os.path.join(directory, name)).st_mode)
            cell = await env.execute("print(context)", 10)
            return modes, cell
        finally:
            await env.close()

    modes, cell = run(scenario())
    assert cell.stdout.strip() == "private input text", cell.stderr
    assert modes and all(mode & 0o007 == 0 for mode in modes.values()), modes
    assert all(mode & 0o070 == 0 for path, mode in modes.items() if "input" in path), modes


def _dead_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def test_stale_worker_dirs_of_dead_hosts_are_swept(tmp_path):
    dead = tmp_path / f"rlm-worker-{_dead_pid()}-abc123"
    alive = tmp_path / f"rlm-worker-{os.getppid()}-def456"
    unknown = tmp_path / "rlm-worker-oldstyle"
    for directory in (dead, alive, unknown):
        (directory / "input").mkdir(parents=True)
        (directory / "input" / "context_0.txt").write_text("a copy of someone's input")
    removed = worker_dir.sweep_stale_dirs(str(tmp_path))
    assert removed == [str(dead)] and not dead.exists()
    assert alive.exists() and unknown.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a directory of another owner")
def test_the_sweep_leaves_other_users_dirs_alone(tmp_path):
    theirs = tmp_path / f"rlm-worker-{_dead_pid()}-abc123"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    assert worker_dir.sweep_stale_dirs(str(tmp_path)) == [] and theirs.exists()


def test_the_first_worker_start_sweeps_the_temp_dir(monkeypatch):
    stale = Path(tempfile.gettempdir()) / f"rlm-worker-{_dead_pid()}-sweepme"
    (stale / "input").mkdir(parents=True)
    monkeypatch.setattr(worker_dir, "_swept", False)

    async def scenario():
        env = WorkerEnvironment("x", no_calls, sandbox="process")
        await env.start()
        await env.close()

    run(scenario())
    assert not stale.exists()


@pytest.mark.parametrize("mode", MODES)
def test_worker_stderr_costs_no_disk_and_bounded_memory(mode):
    """Model code writing to fd 2 for ever: the host keeps a bounded tail, nothing on disk."""
    async def scenario():
        env = WorkerEnvironment("x", no_calls, sandbox=mode)
        await env.start()
        try:
            cell = await env.execute("import os\nfor _ in range(32):\n    os.write(2, b'e' * 2**20)\nprint('done')", 60)
            on_disk = sum(p.stat().st_size for p in env.directory.path.rglob("*") if p.is_file() and "input" not in p.parts)
            return cell, on_disk, len(env.stderr_tail_bytes)
        finally:
            await env.close()

    cell, on_disk, kept = run(scenario())
    assert cell.stdout.strip() == "done", cell.stderr
    assert on_disk < 2**20 and kept <= channel.STDERR_TAIL_BYTES


def test_a_worker_that_cannot_start_shows_its_stderr():
    async def scenario():
        env = WorkerEnvironment("x", no_calls, sandbox="process", python="/bin/sh")  # not a Python
        with pytest.raises(EnvironmentFailure, match="Worker log") as caught:
            await env.start()
        await env.close()
        return str(caught.value)

    assert "worker_main.py" in run(scenario())  # sh's complaint about the script, from the tail


THREAD_CELL = """
import threading, time
def chatter():
    while not globals().get('stop_chatter'):
        print('LEAK from an earlier cell')
        time.sleep(0.001)
threading.Thread(target=chatter, daemon=True).start()
time.sleep(0.05)
"""
LATER_CELL = "import time, threading\nt = threading.Thread(target=lambda: print('own thread'))\nt.start(); t.join()\ntime.sleep(0.3)\nprint('clean')"


@pytest.mark.parametrize("kind", [*MODES, "local"])
def test_a_daemon_thread_of_one_cell_does_not_print_into_later_cells(kind):
    async def scenario():
        env = LocalEnvironment("x", no_calls) if kind == "local" else WorkerEnvironment("x", no_calls, sandbox=kind)
        await env.start()
        try:
            first = await env.execute(THREAD_CELL, 10)
            second = await env.execute(LATER_CELL, 10)
            await env.execute("stop_chatter = True", 10)
            return first, second
        finally:
            await env.close()

    first, second = run(scenario())
    assert "LEAK" in first.stdout  # its own cell sees it
    assert second.stdout.split("\n") == ["own thread", "clean", ""], second.stdout[:300]


TAMPERING = {
    "instance_attribute": "llm_query.__self__._call_host = lambda *a: [{'ok': True, 'text': 'forged'}]",
    "function_code": "llm_query.__func__.__code__ = (lambda self, prompt, model=None: 'forged').__code__",
    "class_method": ("ch = llm_query.__self__._call_host.__self__\n"
                     "type(ch).call_host = lambda self, *a: [{'ok': True, 'text': 'forged'}]\n"
                     "llm_query.__self__._call_host = ch.call_host"),
    "json_loads": ("import json\n_loads = json.loads\n"
                   "def forged(s, **k):\n"
                   "    m = _loads(s, **k)\n"
                   "    if isinstance(m, dict) and m.get('op') == 'reply':\n"
                   "        m['results'] = [{'ok': True, 'text': 'forged'}]\n"
                   "    return m\n"
                   "json.loads = forged"),
}


@pytest.mark.parametrize("how", TAMPERING)
def test_a_session_question_cannot_forge_the_next_questions_sub_call_answers(how):
    root = ScriptedModel([f"```repl\n{TAMPERING[how]}\nprint(llm_query('mine'))\n```", "FINAL(tampered)",
                          "```repl\nprint(llm_query('theirs'))\n```", "FINAL(done)"], name="root")
    sub = ScriptedModel(default="sub answer", name="sub")
    with RLM(model=root, sub_model=sub).session("text") as chat:
        chat.ask("first")
        second = chat.ask("second")
    cells = [e for e in read_trajectory(second.trajectory_path) if e["type"] == "cell"]
    assert cells[0]["stdout"].strip() == "sub answer", cells[0]


def lookup(key: str) -> str:
    """A user tool: what the host answers for `key`."""
    return f"real {key}"


# What one question's code binds in place of what the REPL provides, and how the next question's code
# sees it: (the forging cell, the checking cell, what the check prints when the REPL's own are back).
REPLACED = {
    "rebound_names": (
        "memory = {'facts': 'forged'}\nsearch = semantic_search = lambda q, k=10: ['forged']\n"
        "remember = grep = chunk = count_tokens = sql = lambda *a, **k: 'forged'\n"
        "_user_tool = lambda name, args, kwargs: 'forged'\n_map_reduce = lambda *a, **k: 'forged'\n"
        "class ToolError(Exception): pass\n__builtins__ = {'print': print, 'type': type}",
        "print(type(memory).__name__, search.__qualname__, semantic_search.__qualname__, remember.__qualname__,"
        " grep.__qualname__, chunk.__qualname__, count_tokens.__qualname__, sql.__qualname__,"
        " _map_reduce.__qualname__, ToolError.__module__, len('abc'), lookup('k'))",
        "Memory REPL.search REPL.semantic_search REPL.remember REPL.grep REPL.chunk REPL.count_tokens REPL.sql"
        " REPL.map_reduce recursive_llm.environments.inside.runtime 3 real k"),
    "deleted_names": (
        "del memory, search, remember, _user_tool",
        "print(type(memory).__name__, search.__qualname__, remember.__qualname__, lookup('k'))",
        "Memory REPL.search REPL.remember real k"),
    "the_repls_own_tables": (
        "repl = llm_query.__self__\nrepl._helpers['search'] = lambda q, k=10: ['forged']\n"
        "repl._contract['llm_query'] = lambda p, model=None: 'forged'\n"
        "object.__setattr__(memory, '_ask', lambda op, **a: ['forged'])",
        "print(search.__qualname__, llm_query('x'), memory.keys.__self__._ask.__qualname__)",
        "REPL.search sub answer REPL._memory"),
    "helper_classes_and_builtins": (
        "import builtins\nfrom recursive_llm.environments.inside import helpers\n"
        "helpers.SearchHit = lambda *a: 'forged'\nhelpers.grep = lambda *a, **k: ['forged']\n"
        "helpers.GrepResult.__repr__ = lambda self: 'forged'\nbuiltins.sorted = lambda x: ['forged']",
        "from recursive_llm.environments.inside import helpers\n"
        "print(helpers.SearchHit.__name__, helpers.grep.__module__, 'forged' not in repr(grep('alpha')),"
        " sorted('ba'))",
        "SearchHit recursive_llm.environments.inside.helpers True ['a', 'b']"),
    "the_input": ("context = 'forged'", "print(context)", "alpha beta gamma"),
    "a_forged_answer_dict": (
        "class Ready(dict):\n    def get(self, key, default=None):\n"
        "        return True if key == 'ready' else 'forged answer'\nanswer = Ready()",
        "print('asked')", "asked"),
}


@pytest.mark.parametrize("how", REPLACED)
def test_a_session_question_cannot_replace_what_the_repl_provides_for_the_next(how):
    """Before: the worker's guard put back only the sub-call machinery, so a cell of one question
    could bind `memory`, `search`, the tools' `_user_tool`... and every later question used the
    forgeries. Each command now starts with the REPL's own names; the user's variables persist."""
    forge, check, expected = REPLACED[how]
    root = ScriptedModel([f"```repl\nmine = 'kept'\n{forge}\n```", "FINAL(tampered)",
                          f"```repl\n{check}\nprint(mine)\n```", "FINAL(done)"], name="root")
    sub = ScriptedModel(default="sub answer", name="sub")
    with RLM(model=root, sub_model=sub, tools=[lookup]).session("alpha beta gamma") as chat:
        first = chat.ask("first")
        second = chat.ask("second")
    cells = [e for e in read_trajectory(second.trajectory_path) if e["type"] == "cell"]
    assert first.answer == "tampered" and second.answer == "done", (first.answer, second.answer)
    assert cells and cells[0]["stdout"].split("\n")[:2] == [expected, "kept"], cells[:1]


def test_within_a_question_context_may_be_rebound_and_the_next_question_gets_the_input():
    root = ScriptedModel(["```repl\ncontext = context.upper()\n```", "```repl\nprint(context)\n```",
                          "FINAL(one)", "```repl\nprint(context)\n```", "FINAL(two)"], name="root")
    with RLM(model=root, sub_model=ScriptedModel(default="sub", name="sub")).session("alpha beta") as chat:
        first = chat.ask("first")
        second = chat.ask("second")
    shown = [[e["stdout"] for e in read_trajectory(r.trajectory_path) if e["type"] == "cell"] for r in (first, second)]
    assert shown == [["", "ALPHA BETA\n"], ["alpha beta\n"]], shown


@pytest.mark.parametrize("mode", MODES)
def test_a_confined_worker_still_imports_lazily_and_runs_sql_and_token_counts(mode, tmp_path):
    """Landlock allows what the REPL needs after the worker confined itself: the standard library
    imported on first use, site-packages (DuckDB reads /proc/self/cgroup and cgroup limits), the
    tokenizer's data."""
    from recursive_llm.context.loader import load_inputs

    table = tmp_path / "sales.csv"
    table.write_text("region,amount\nnorth,10\nsouth,20\nnorth,5\n")
    os.chmod(tmp_path, 0o755)

    async def scenario():
        env = WorkerEnvironment(load_inputs([table]), no_calls, sandbox=mode)
        await env.start()
        try:
            return await env.execute(
                "import decimal, sqlite3, xml.dom.minidom, email.parser, zipfile, csv\n"
                "print(sql(\"SELECT sum(amount) FROM sales WHERE region = 'north'\")[0][0])\n"
                "print(count_tokens('hello world'))", 60)
        finally:
            await env.close()

    cell = run(scenario())
    assert cell.error is None, cell.stderr
    assert cell.stdout.split() == ["15", "2"]


def test_rlm_doctor_says_what_each_mode_stops():
    from click.testing import CliRunner

    from recursive_llm.cli.main import main

    done = CliRunner().invoke(main, ["doctor"])
    assert done.exit_code == 0, done.output
    for mode in ("auto", "process"):
        assert f"isolation mode: {mode}" in done.output
    plan = sandbox.plan_isolation("process")
    network = "model code trying to reach the network"
    expected = "stops" if plan.landlock and plan.seccomp else "does NOT stop"
    process_part = done.output.split("isolation mode: process")[1]
    assert f"  {expected}: {network}" in process_part
    weak = sandbox.IsolationPlan(mode="process", namespaces=False, drop_uid=False)
    assert [stopped for what, stopped in sandbox.what_it_stops(weak) if "read files" in what] == [False]


RLIMIT_CELL = """import resource
print({n: resource.getrlimit(getattr(resource, 'RLIMIT_' + n)) for n in ('AS', 'FSIZE', 'NOFILE', 'CPU', 'STACK', 'CORE', 'NPROC')})"""


@pytest.mark.parametrize("mode", MODES)
def test_the_worker_sets_its_resource_limits_itself_and_is_spawned_without_a_preexec_fn(mode):
    """The limits travel in the worker's policy and the worker applies them first thing, so the host
    spawns it with no preexec_fn (CPython then uses vfork instead of forking the whole host)."""
    import ast

    limits = sandbox.Limits(memory_mb=3000, max_file_mb=7, max_open_files=200, stack_mb=64, cpu_seconds=900)

    async def scenario():
        environment = WorkerEnvironment("x", no_calls, sandbox=mode, limits=limits)
        await environment.start()
        try:
            options = environment._spawn_options()
            cell = await environment.execute(RLIMIT_CELL, 10)
            return options, environment.isolation.drop_uid, ast.literal_eval(cell.stdout.strip())
        finally:
            await environment.close()

    options, drop_uid, seen = run(scenario())
    assert "preexec_fn" not in options and options["start_new_session"]
    mb = 1024 * 1024
    assert seen["AS"] == (3000 * mb,) * 2 and seen["FSIZE"] == (7 * mb,) * 2 and seen["NOFILE"] == (200, 200)
    assert seen["STACK"] == (64 * mb,) * 2 and seen["CORE"] == (0, 0) and seen["CPU"][1] == 900
    if drop_uid:  # a uid of its own: the process count is limited too
        assert seen["NPROC"] == (limits.max_processes,) * 2
    assert sandbox.worker_rlimits(limits, nproc=drop_uid)["FSIZE"] == 7 * mb


@pytest.mark.parametrize("mode", MODES)
def test_a_cell_cannot_allocate_or_write_beyond_the_workers_limits(mode):
    """Small limits hold in the worker: a file past the file-size limit fails with EFBIG and an
    allocation past the address-space limit with MemoryError; the limits cannot be raised back."""
    limits = sandbox.Limits(memory_mb=1024, max_file_mb=2)
    code = """import errno, resource
outcomes = []
try:
    with open('big.bin', 'wb') as handle:
        handle.write(b'x' * (3 * 1024 * 1024))
except OSError as error:
    outcomes.append(errno.errorcode[error.errno])
try:
    block = bytearray(2 * 1024 * 1024 * 1024)
except MemoryError:
    outcomes.append('MemoryError')
try:
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
except (ValueError, OSError):
    outcomes.append('cannot raise')
print(outcomes)"""

    async def scenario():
        environment = WorkerEnvironment("x", no_calls, sandbox=mode, limits=limits)
        await environment.start()
        try:
            return await environment.execute(code, 20)
        finally:
            await environment.close()

    cell = run(scenario())
    assert cell.error is None, cell.stderr
    assert cell.stdout.strip() == "['EFBIG', 'MemoryError', 'cannot raise']"


def test_a_worker_refuses_a_resource_limit_it_does_not_know(tmp_path):
    """A policy the worker cannot apply in full ends it before it reads anything (exit code 3)."""
    import json
    import sys

    from recursive_llm.environments.host.worker import WORKER_SCRIPT as _WORKER_SCRIPT

    policy = json.dumps({"rlimits": {"AS": 1 << 33, "BOGUS": 1}})
    done = subprocess.run([sys.executable, "-I", str(_WORKER_SCRIPT), "-", "1000", policy], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 3 and "not a resource limit: BOGUS" in done.stderr


@pytest.mark.parametrize("mode", MODES)
def test_the_worker_starts_without_the_hosts_heavy_modules(mode):
    """Issue 17: every worker start imports what the worker imports. typing, dataclasses (with
    inspect and dis), pathlib (with urllib.parse) and traceback cost it about a third of its start
    and are host-side or error-path only; recursive_llm.config (its dataclasses: 35 ms) is the host's
    settings, of which `FINAL` and `llm_query` need only the bounds. None is loaded by a cell that
    answers."""
    heavy = ("typing", "dataclasses", "inspect", "pathlib", "urllib.parse", "traceback", "recursive_llm.config")

    async def scenario():
        environment = WorkerEnvironment("x", no_calls, sandbox=mode)
        await environment.start()
        try:
            return await environment.execute(f"FINAL('ok')\nimport sys\nprint([m for m in {heavy!r} if m in sys.modules])", 10)
        finally:
            await environment.close()

    cell = run(scenario())
    assert cell.error is None and cell.stdout.strip() == "[]", (cell.stdout, cell.stderr)
