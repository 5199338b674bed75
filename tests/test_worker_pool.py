"""Pre-started workers (environments/prestart/pool.py): each run gets a fresh worker that never ran another
request's code, confined after it received its input, in every sandbox mode. No time assertions."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from recursive_llm import RLM
from recursive_llm.environments.factory import make_environment
from recursive_llm.environments.prestart import pool as worker_pool
from recursive_llm.environments.prestart.pool import PooledWorker, WorkerPool
from recursive_llm.config import WorkerPolicy
from recursive_llm.record.events import read_trajectory
from recursive_llm.testing import ScriptedModel

MODES = ("auto", "process")
PROBE = ("import os, tempfile\nmark = os.path.join(tempfile.gettempdir(), 'ran-here')\n"
         "fresh = 'marker' not in globals() and not os.path.exists(mark)\nmarker = open(mark, 'w').write('x')\n"
         "status = open('/proc/self/status').read()\n"
         "fields = dict(l.split(':\\t', 1) for l in status.splitlines() if ':\\t' in l)\n"
         "print(os.getpid(), fresh, len(context), context[:8], fields['Seccomp'].strip(), fields['NoNewPrivs'].strip())")


async def wait_ready(pool: WorkerPool, count: int) -> None:
    for _ in range(600):
        if pool.ready >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the pool did not start {count} workers (failed: {pool.failed})")


def probe_output(result) -> list[str]:
    cell = next(e for e in read_trajectory(result.trajectory_path) if e["type"] == "cell")
    assert cell["error"] is None, cell["stderr"]
    return cell["stdout"].split()


@pytest.mark.parametrize("mode", MODES)
def test_each_run_gets_its_own_fresh_confined_worker(mode):
    async def scenario():
        pool = worker_pool.install(2, sandbox=mode)
        try:
            await wait_ready(pool, 2)
            spare_pids = {spare.pid for spare in list(pool._spares._queue)}
            outputs = []
            for text in ("first input", "second input, longer", "third"):
                root = ScriptedModel([f"```repl\n{PROBE}\n```", "FINAL(done)"])
                result = await RLM(model=root, sandbox=mode).acompletion("q", text)
                assert result.answer == "done"
                outputs.append((text, probe_output(result)))
            return pool, spare_pids, outputs
        finally:
            await pool.close()

    pool, spare_pids, outputs = asyncio.run(scenario())
    pids = [int(out[0]) for _, out in outputs]
    assert all(out[1] == "True" for _, out in outputs)  # no earlier run's variables or files: never shared
    if mode == "process":  # (in a PID namespace every worker sees itself as pid 2)
        assert len(set(pids)) == 3 and set(pids[:2]) == spare_pids
    for text, out in outputs:
        assert out[2] == str(len(text)) and out[3] == text[:8].split()[0]
        assert out[-2:] == ["2", "1"]  # seccomp filter on, no_new_privs: confined before model code
    assert pool.taken >= 2
    for pid in spare_pids:  # the workers were closed with their runs
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.parametrize("mode", MODES)
def test_a_loaded_worker_cannot_read_a_waiting_spares_directory(mode):
    async def scenario():
        pool = worker_pool.install(2, sandbox=mode)
        try:
            await wait_ready(pool, 2)
            other = list(pool._spares._queue)[1]
            secret_dir = other.directory.input_dir
            (secret_dir / "planted.txt").write_text("another request's input")
            code = (f"import os\ntry:\n    print(open({str(secret_dir / 'planted.txt')!r}).read())\n"
                    f"except OSError as error:\n    print('refused', type(error).__name__)")
            root = ScriptedModel([f"```repl\n{code}\n```", "FINAL(done)"])
            result = await RLM(model=root, sandbox=mode).acompletion("q", "mine")
            return probe_output(result)
        finally:
            await pool.close()

    out = asyncio.run(scenario())
    assert out[0] == "refused", out


def test_an_empty_pool_or_a_dead_spare_falls_back_to_a_fresh_worker():
    async def scenario():
        pool = worker_pool.install(1)
        try:
            await wait_ready(pool, 1)
            spare = list(pool._spares._queue)[0]
            os.killpg(spare.pid, signal.SIGKILL)  # dies while waiting
            for _ in range(1000):
                if not spare.alive:
                    break
                await asyncio.sleep(0.01)
            assert not spare.alive
            answers = []
            for text in ("a", "b"):
                root = ScriptedModel(["```repl\nprint(context)\n```", "FINAL(done)"])
                result = await RLM(model=root).acompletion("q", text)
                answers.append(probe_output(result))
            return pool, answers
        finally:
            await pool.close()

    pool, answers = asyncio.run(scenario())
    assert answers == [["a"], ["b"]]
    assert pool.failed >= 1 and pool.missed >= 1


def test_only_matching_runs_use_the_pool():
    async def scenario():
        pool = worker_pool.install(1, sandbox="process")
        try:
            same = make_environment(WorkerPolicy(sandbox="process"), [], None, max_output_chars=20_000)
            other = make_environment(WorkerPolicy(sandbox="process", memory_mb=1024), [], None, max_output_chars=20_000)
            local = make_environment(WorkerPolicy(environment="local"), [], None, max_output_chars=20_000)
            return type(same), type(other), type(local)
        finally:
            await pool.close()

    same, other, local = asyncio.run(scenario())
    assert same is PooledWorker and other is not PooledWorker and local is not PooledWorker
    assert worker_pool.current() is None  # no loop, no pool
