"""Workers forked by the template (environments/prestart/template.py): each one is what a started worker is
(confined, its own uid, PID and mount namespaces and private /tmp with namespaces), siblings do not
see each other, and a template that dies takes its workers with it without breaking later runs.
The attack battery runs on forked workers as well (tests/test_attacks.py, origin "forked").
No time assertions."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import pytest

from recursive_llm import RLM
from recursive_llm.environments.prestart import pool as worker_pool
from recursive_llm.environments.prestart import template as worker_template
from recursive_llm.environments.host.sandbox import Limits, plan_isolation
from recursive_llm.environments.host.worker import WORKER_SCRIPT, WorkerEnvironment
from recursive_llm.testing import ScriptedModel

MODES = {mode: plan_isolation(mode) for mode in ("auto", "process")}
STATUS = ("import os\nstatus = open('/proc/self/status').read()\n"
          "fields = dict(l.split(':\\t', 1) for l in status.splitlines() if ':\\t' in l)\n"
          "print(os.getpid(), os.getuid(), fields['CapEff'].strip(), fields['Seccomp'].strip(), "
          "fields['NoNewPrivs'].strip())")


async def no_calls(*args):
    return []


def new_template(mode: str, limits: Limits = Limits()) -> worker_template.WorkerTemplate:
    return worker_template.WorkerTemplate(MODES[mode], limits, worker_template.python_argv_for_template(str(WORKER_SCRIPT)))


@pytest.mark.parametrize("mode", MODES)
def test_a_forked_worker_is_confined_like_a_started_one(mode):
    async def scenario():
        template = new_template(mode)
        await template.start()
        forked = WorkerEnvironment("forked input", no_calls, sandbox=mode, template=template)
        started = WorkerEnvironment("started input", no_calls, sandbox=mode)
        try:
            await forked.start()
            await started.start()
            assert template.forks == 1
            return ((await forked.execute(STATUS, 10)), (await started.execute(STATUS, 10)),
                    (await forked.execute("print(context)", 10)))
        finally:
            await forked.close()
            await started.close()
            await template.close()

    forked, started, context = asyncio.run(scenario())
    assert forked.error is None and started.error is None, (forked.stderr, started.stderr)
    pid, uid, caps, seccomp, no_new_privs = forked.stdout.split()
    assert (caps, seccomp, no_new_privs) == tuple(started.stdout.split()[2:]) == ("0000000000000000", "2", "1")
    assert context.stdout.strip() == "forked input"
    plan = MODES[mode]
    if plan.namespaces:
        assert pid == "1"  # the first process of a PID namespace of its own
    if plan.drop_uid:
        assert int(uid) >= 1_000_000_000 and uid != started.stdout.split()[1]


@pytest.mark.skipif(not MODES["auto"].namespaces, reason="needs bubblewrap namespaces")
def test_forked_siblings_have_private_size_limited_tmp():
    """Each forked worker mounts a fresh tmpfs of its own: a sibling's files are not there, and
    the size limit is per worker."""
    async def scenario():
        template = new_template("auto", Limits(private_dir_mb=8))
        await template.start()
        first = WorkerEnvironment("a", no_calls, sandbox="auto", template=template, limits=Limits(private_dir_mb=8))
        second = WorkerEnvironment("b", no_calls, sandbox="auto", template=template, limits=Limits(private_dir_mb=8))
        try:
            await first.start()
            await second.start()
            wrote = await first.execute("open('/tmp/mine', 'w').write('x')\nprint(sorted(__import__('os').listdir('/tmp')))", 10)
            sees = await second.execute("import os\nprint(os.path.exists('/tmp/mine'))", 10)
            full = await second.execute("open('/tmp/big', 'wb').write(b'x' * (16 * 1024 * 1024))", 10)
            return wrote, sees, full
        finally:
            await first.close()
            await second.close()
            await template.close()

    wrote, sees, full = asyncio.run(scenario())
    assert wrote.error is None and "mine" in wrote.stdout
    assert sees.stdout.strip() == "False"
    assert full.error is not None and "No space left" in full.error + full.stderr


@pytest.mark.parametrize("mode", MODES)
def test_a_template_that_dies_takes_its_workers_and_the_pool_starts_another(mode):
    async def scenario():
        pool = worker_pool.install(2, sandbox=mode)
        try:
            for _ in range(600):
                if pool.ready >= 2:
                    break
                await asyncio.sleep(0.05)
            assert pool.template is not None, pool.template_error
            first_template = pool.template
            spares = list(pool._spares._queue)
            os.killpg(first_template._process.pid, signal.SIGKILL)
            for _ in range(200):
                if not any(spare.alive for spare in spares) and not first_template.alive:
                    break
                await asyncio.sleep(0.05)
            orphans_dead = not any(spare.alive for spare in spares)
            root = ScriptedModel(["```repl\nprint(len(context))\n```", "FINAL(done)"])
            result = await RLM(model=root, sandbox=mode).acompletion("q", "after the template died")
            for _ in range(600):  # the pool refills from a new template
                if pool.ready >= 1:
                    break
                await asyncio.sleep(0.05)
            return orphans_dead, result, pool.template is not first_template and pool.template.alive
        finally:
            await pool.close()

    orphans_dead, result, restarted = asyncio.run(scenario())
    assert orphans_dead
    assert result.answer == "done" and result.stopped_reason == "final"
    assert restarted


@pytest.mark.parametrize("mode", MODES)
def test_a_killed_forked_worker_is_reported_as_killed_and_the_template_goes_on(mode, capfd):
    """SIGKILL on a forked worker: its run sees the worker died of signal 9 (with namespaces the
    keeper between template and worker dies of the same signal), the template (whose copy the
    keeper is) keeps forking, and nothing is printed on the template's stderr."""
    async def scenario():
        template = new_template(mode)
        await template.start()
        try:
            killed = WorkerEnvironment("killed", no_calls, sandbox=mode, template=template)
            await killed.start()
            try:
                os.kill(killed.pid, signal.SIGKILL)
                crashed = await killed.execute("print(context)", 10)
            finally:
                await killed.close()
            after = WorkerEnvironment("still works", no_calls, sandbox=mode, template=template)
            try:
                await after.start()
                still = await after.execute("print(context)", 10)
            finally:
                await after.close()
            return crashed, still, template.alive, template.forks
        finally:
            await template.close()

    crashed, still, alive, forks = asyncio.run(scenario())
    assert "WorkerCrash" in crashed.error and "exit code -9" in crashed.error, crashed.error
    assert still.stdout.strip() == "still works" and alive and forks >= 2  # (the crashed one is replaced too)
    stderr = capfd.readouterr().err
    assert "worker template" not in stderr and "Traceback" not in stderr, stderr


def test_turned_off_the_pool_starts_fresh_interpreters(monkeypatch):
    monkeypatch.setenv("RLM_WORKER_TEMPLATE", "0")

    async def scenario():
        pool = worker_pool.install(1, sandbox="process")
        try:
            for _ in range(600):
                if pool.ready:
                    break
                await asyncio.sleep(0.05)
            root = ScriptedModel(["```repl\nprint(len(context))\n```", "FINAL(done)"])
            result = await RLM(model=root, sandbox="process").acompletion("q", "text")
            return pool.template, pool.taken, result
        finally:
            await pool.close()

    template, taken, result = asyncio.run(scenario())
    assert template is None and taken == 1 and result.answer == "done"


def test_a_malformed_request_is_refused_and_the_template_goes_on():
    async def scenario():
        template = new_template("process")
        await template.start()
        try:
            refused = asyncio.get_running_loop().create_future()
            template._replies[999] = refused
            template._control.sendmsg([json.dumps({"op": "fork", "id": 999}).encode()])  # no descriptors
            message, _ = await asyncio.wait_for(refused, 10)
            worker = WorkerEnvironment("still works", no_calls, sandbox="process", template=template)
            try:
                await worker.start()
                after = await worker.execute("print(context)", 10)
            finally:
                await worker.close()
            return message, after
        finally:
            await template.close()

    message, after = asyncio.run(scenario())
    assert message["op"] == "error" and "three descriptors" in message["error"]
    assert after.stdout.strip() == "still works"


def test_a_closed_template_leaves_no_process_and_no_spool():
    async def scenario():
        template = new_template("auto")
        await template.start()
        worker = WorkerEnvironment("x", no_calls, sandbox="auto", template=template)
        await worker.start()
        spool, pid = template.spool, template._process.pid
        await template.close()  # with a worker still running: it goes too
        for _ in range(100):
            if not worker.alive:
                break
            await asyncio.sleep(0.05)
        alive = worker.alive
        await worker.close()
        return spool, pid, alive

    spool, pid, worker_alive = asyncio.run(scenario())
    assert not worker_alive
    assert spool is None or not spool.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)



@pytest.mark.parametrize("mode", MODES)
def test_runs_that_find_no_spare_get_a_forked_worker(mode, monkeypatch):
    """More runs at once than spares: the ones that miss the pool are forked by its template too
    (no worker interpreter is started)."""
    from recursive_llm.environments.host import worker as worker_module

    started = []

    async def counting_start(*argv, **options):
        started.append(argv)
        return await real_start(*argv, **options)

    real_start = worker_module.start_process
    monkeypatch.setattr(worker_module, "start_process", counting_start)

    async def scenario():
        pool = worker_pool.install(1, sandbox=mode)
        try:
            for _ in range(600):
                if pool.ready:
                    break
                await asyncio.sleep(0.05)
            forks_before = pool.template.forks
            runs = [RLM(model=ScriptedModel(["```repl\nprint(context)\n```", f"FINAL(run {i})"]), sandbox=mode)
                    for i in range(3)]
            results = await asyncio.gather(*(rlm.acompletion("q", f"input {i}") for i, rlm in enumerate(runs)))
            return results, pool.missed, pool.template.forks - forks_before
        finally:
            await pool.close()

    results, missed, forks = asyncio.run(scenario())
    assert [r.answer for r in results] == ["run 0", "run 1", "run 2"]
    assert missed >= 1 and forks >= 3 and started == []  # every worker came from the template


@pytest.mark.parametrize("ending, code, says", [
    (lambda: None, 0, ""),
    (lambda: sys.exit(7), 7, ""),  # the worker's own exit, as when it refuses to run model code
    (lambda: 1 / 0, 3, "could not start the worker: division by zero"),
])
def test_a_forked_child_always_exits_and_never_returns_into_the_template(ending, code, says):
    """Whatever the worker code does at the end, the forked copy of the template exits with its code
    and never runs the template's loop (the line after `_become_worker` would say so)."""
    from recursive_llm.environments.prestart import template_main

    stdin_read, stdin_write = os.pipe()
    stdout_read, stdout_write = os.pipe()
    stderr_read, stderr_write = os.pipe()
    request = {"namespaces": False, "cwd": "/", "env": {}, "uid": None, "manifest": "", "max_captured_chars": 0,
               "policy": "{}"}
    child = os.fork()
    if child == 0:
        try:
            template_main._become_worker(request, [stdin_read, stdout_write, stderr_write],
                                         lambda *args: ending())
        finally:
            os.write(2, b"RETURNED INTO THE TEMPLATE")  # fd 2 is the stderr pipe by then
            os._exit(99)
    for fd in (stdin_read, stdout_write, stderr_write):
        os.close(fd)
    _, status = os.waitpid(child, 0)
    with os.fdopen(stderr_read) as stderr:
        said = stderr.read()
    os.close(stdin_write)
    os.close(stdout_read)
    assert os.waitstatus_to_exitcode(status) == code, said
    assert says in said and "RETURNED" not in said
