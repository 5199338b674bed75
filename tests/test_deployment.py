"""Deployment: the worker starts wherever the package and the interpreter are installed.

Issue 15: from a checkout in a 0700 directory (as `mktemp -d` makes, as /root is), every worker
failed: it ran under a uid of its own that could not reach the package or the interpreter. These
tests run the code from such a directory, as this user (root in CI) and as an unprivileged user
(created with useradd when we are root), in both sandbox modes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[1]
USER = "rlm-ci"
# The worker-facing tests, run again as the unprivileged user: the attack battery (both modes)
# and the worker's own layers.
# Every test file that starts workers and does not need a server or a browser: the attack battery
# and the layers in both modes, pre-started workers, process start/stop, host bounds, sessions, tools.
WORKER_TESTS = ["tests/test_attacks.py", "tests/test_sandbox_layers.py", "tests/test_worker_pool.py",
                "tests/test_worker_process.py", "tests/test_host_bounds.py", "tests/test_session.py",
                "tests/test_tools.py", "tests/test_runtime.py", "tests/test_worker_template.py",
                "tests/test_input_handover.py"]


def copy_checkout(target: Path) -> Path:
    """A fresh copy of this checkout's working tree (what a clone holds, without .git)."""
    shutil.copytree(CHECKOUT, target, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.pyc", ".pytest_cache",
                                                                     "*.egg-info", "node_modules", "build", "dist"))
    return target


@pytest.fixture(scope="module")
def private_checkout():
    parent = Path(tempfile.mkdtemp(prefix="rlm-deploy-"))  # 0700, like a CI clone's temp dir
    assert parent.stat().st_mode & 0o077 == 0
    yield copy_checkout(parent / "recursive-llm")
    shutil.rmtree(parent, ignore_errors=True)


RUN = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import recursive_llm
    assert recursive_llm.__file__.startswith(sys.argv[1]), recursive_llm.__file__
    from recursive_llm import RLM
    from recursive_llm.testing import ScriptedModel
    code = "import recursive_llm, sys\\nprint(context, recursive_llm.__file__.startswith(sys.argv[0].rsplit('/recursive_llm/', 1)[0]))"
    root = ScriptedModel([f"```repl\\n{code}\\n```", "FINAL(done)"])
    result = RLM(model=root, sandbox=sys.argv[2]).completion("q", "the private input")
    print(result.answer, result.iterations)
    """)


@pytest.mark.parametrize("mode", ["auto", "process"])
def test_a_run_works_from_a_checkout_in_a_0700_directory(private_checkout, mode, tmp_path):
    env = {**os.environ, "RLM_HOME": str(tmp_path / "home"), "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-c", RUN, str(private_checkout / "src"), mode], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-2:] == ["done", "2"], done.stdout + done.stderr[-3000:]


# -- as an unprivileged user -------------------------------------------------------------------
def _as_user(user) -> list[str]:
    return ["setpriv", f"--reuid={user[0]}", f"--regid={user[1]}", "--init-groups"]


@pytest.fixture(scope="module")
def unprivileged_user():
    if os.geteuid() != 0:
        pytest.skip("needs root to create and become an unprivileged user (CI runs as root)")
    if not (shutil.which("useradd") and shutil.which("setpriv")):
        pytest.skip("needs useradd and setpriv (Debian: passwd, util-linux)")
    import pwd

    try:
        entry = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", USER], check=True, capture_output=True)
        entry = pwd.getpwnam(USER)
    return entry.pw_uid, entry.pw_gid


def _requirements() -> list[str]:
    import tomllib

    project = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["project"]
    dev = [r for r in project["optional-dependencies"]["dev"] if r.split(">")[0] in
           ("pytest", "pytest-asyncio", "pytest-timeout")]
    return [*project["dependencies"], *project["optional-dependencies"]["tables"], *dev]  # tables: sql() in the worker


@pytest.fixture(scope="module")
def user_python(unprivileged_user):
    """A Python the user can run: the system's, in a venv the user builds (kept between runs,
    keyed by the requirements) with this project's dependencies from PyPI."""
    system = shutil.which("python3", path="/usr/bin:/bin")
    if system is None:
        pytest.skip("no system python3 for the unprivileged user (ours lives under /root, 0700)")
    check = subprocess.run([system, "-c", "import sys, venv; print(sys.version_info >= (3, 10))"],
                           capture_output=True, text=True)
    if check.stdout.strip() != "True":
        pytest.skip(f"the system python3 ({system}) is older than 3.10 or lacks venv")
    requirements = _requirements()
    key = hashlib.sha256("\n".join([system, *requirements]).encode()).hexdigest()[:12]
    venv = Path(f"/var/tmp/rlm-ci-venv-{key}")
    for stale in Path("/var/tmp").glob("rlm-ci-venv-*"):  # built for other requirements
        if stale != venv:
            shutil.rmtree(stale, ignore_errors=True)
    python = venv / "bin" / "python"
    user = unprivileged_user
    env = {"PATH": "/usr/bin:/bin", "HOME": str(venv), "LANG": "C.UTF-8"}
    if not (python.exists() and subprocess.run([*_as_user(user), str(python), "-c", "import openai, pytest"],
                                               env=env, capture_output=True).returncode == 0):
        shutil.rmtree(venv, ignore_errors=True)
        venv.mkdir(mode=0o700)
        os.chown(venv, *user)
        for step in ([system, "-m", "venv", str(venv)],
                     [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements]):
            done = subprocess.run([*_as_user(user), *step], env=env, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                pytest.skip(f"could not build the unprivileged user's venv ({' '.join(step[:3])}): "
                            f"{done.stderr.strip()[-500:]}")
    return python


@pytest.mark.timeout(1800)  # the user's venv (the first time on a machine) and ~290 worker tests
def test_the_worker_tests_pass_as_an_unprivileged_user_from_a_0700_checkout(unprivileged_user, user_python):
    """The attack battery (namespaces, if bubblewrap works unprivileged here, and process mode)
    and the worker's layers, run by an unprivileged user from its own 0700 checkout."""
    user = unprivileged_user
    parent = Path(tempfile.mkdtemp(prefix="rlm-deploy-user-"))
    try:
        checkout = copy_checkout(parent / "recursive-llm")
        home = parent / "home"
        home.mkdir(mode=0o700)
        for path in [parent, *parent.rglob("*")]:
            os.lchown(path, *user)
        env = {"PATH": f"{user_python.parent}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
               "TMPDIR": str(parent / "tmp")}
        (parent / "tmp").mkdir(mode=0o700)
        os.chown(parent / "tmp", *user)
        done = subprocess.run([*_as_user(user), str(user_python), "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                               *WORKER_TESTS], cwd=checkout, env=env, capture_output=True, text=True, timeout=1800)
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    summary = done.stdout[-4000:]
    assert done.returncode == 0, summary + done.stderr[-2000:]
    assert " passed" in summary and " failed" not in summary


FORK_ONE = textwrap.dedent("""
    import asyncio
    from recursive_llm.environments.prestart import template as worker_template
    from recursive_llm.environments.host.sandbox import Limits, plan_isolation
    from recursive_llm.environments.host.worker import WORKER_SCRIPT, WorkerEnvironment

    async def no_calls(*args):
        return []

    async def main():
        plan = plan_isolation("auto")
        print("namespaces", plan.namespaces)
        template = worker_template.WorkerTemplate(plan, Limits(),
                                                  worker_template.python_argv_for_template(str(WORKER_SCRIPT)))
        await template.start()
        worker = WorkerEnvironment("the forked input", no_calls, sandbox="auto", template=template)
        try:
            await worker.start()
            done = await worker.execute("print(context)", 10)
            print("output", done.stdout.strip(), done.error)
        finally:
            await worker.close()
            await template.close()

    asyncio.run(main())
    """)


def test_an_unprivileged_template_forks_workers_from_a_venv_in_a_private_tmp_directory(unprivileged_user):
    """Issue 25: `rlm serve` as an unprivileged user, its venv in a 0700 directory under /tmp:
    every forked worker failed with `mount <server>/venv: Invalid argument` (the package's
    site-packages was bound on top of the venv's bind, and a worker in bubblewrap's nested user
    namespace may not bind a mount with locked child mounts). The venv is the system Python's,
    with this checkout's package copied into its site-packages, as `pip install` puts it."""
    system = shutil.which("python3", path="/usr/bin:/bin")
    if system is None:
        pytest.skip("no system python3 for the unprivileged user (ours lives under /root, 0700)")
    user = unprivileged_user
    parent = Path(tempfile.mkdtemp(prefix="rlm-deploy-venv-"))  # 0700, under the system's /tmp
    try:
        os.chown(parent, *user)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(parent), "LANG": "C.UTF-8"}
        made = subprocess.run([*_as_user(user), system, "-m", "venv", "--without-pip", str(parent / "venv")],
                              env=env, capture_output=True, text=True, timeout=120)
        if made.returncode != 0:
            pytest.skip(f"the system python3 cannot make a venv: {made.stderr.strip()[-300:]}")
        site = next((parent / "venv" / "lib").glob("python3*/site-packages"))
        shutil.copytree(CHECKOUT / "src" / "recursive_llm", site / "recursive_llm",
                        ignore=shutil.ignore_patterns("__pycache__"))
        (parent / "fork_one.py").write_text(FORK_ONE)
        for path in [parent, *parent.rglob("*")]:
            os.lchown(path, *user)
        done = subprocess.run([*_as_user(user), str(parent / "venv" / "bin" / "python"), str(parent / "fork_one.py")],
                              cwd=parent, env=env, capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    if "namespaces False" in done.stdout:
        pytest.skip("bubblewrap namespaces do not work for an unprivileged user here")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "output the forked input None" in done.stdout, done.stdout + done.stderr[-3000:]
