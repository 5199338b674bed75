"""The README's first command as a new user runs it (issue 27, "the first ten minutes").

A new unprivileged user, with the distribution's python3 (Debian's /usr/bin/python3 is externally
managed: PEP 668), a fresh copy of the clone in a 0700 directory of their own, an empty home (so an
empty pip cache) and the PATH a login gives: `bash scripts/setup.sh && ./rlm ask ...` must exit 0
and print the answer. It installs everything from PyPI into the clone's .venv: minutes, so it runs
only as root (CI), where it can create the user; the time it took is printed (run with -s).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.fresh_install
CHECKOUT = Path(__file__).resolve().parents[1]
USER = "rlm-newcomer"
SYSTEM_PYTHON = "/usr/bin/python3"
LOGIN_PATH = "/usr/local/bin:/usr/bin:/bin"  # what a new user's login shell has (no pyenv: that is root's)
# What a clone does not have: this checkout's own environments, caches and setup's launcher.
NOT_IN_A_CLONE = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", ".pytest_cache", "*.egg-info", ".venv",
                                        "venv", "build", "dist", "node_modules", "rlm-home", "bench-results")


def readme_first_command() -> str:
    block = re.search(r"```bash\n(.*?)\n```", (CHECKOUT / "README.md").read_text(encoding="utf-8"), re.S)
    return block.group(1).splitlines()[0]


@pytest.fixture(scope="module")
def newcomer():
    """(uid, gid) of a new unprivileged user; skips where one cannot be made or has no system python3."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create and become a new unprivileged user (CI runs as root)")
    if not (shutil.which("useradd") and shutil.which("setpriv")):
        pytest.skip("needs useradd and setpriv (Debian: passwd, util-linux)")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"no distribution python3 at {SYSTEM_PYTHON}")
    if subprocess.run([SYSTEM_PYTHON, "-c", "import ensurepip, venv"], capture_output=True).returncode != 0:
        # what such a user has: Debian's python3 with its venv module (the admin's apt-get install)
        apt = "apt-get update -qq && apt-get install -y -qq python3-venv"
        if shutil.which("apt-get") is None or subprocess.run(apt, shell=True, capture_output=True).returncode:
            pytest.skip(f"{SYSTEM_PYTHON} has no venv module and python3-venv could not be installed")
    import pwd

    try:
        entry = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/bin/bash", USER],
                       check=True, capture_output=True)
        entry = pwd.getpwnam(USER)
    return entry.pw_uid, entry.pw_gid


def _own(path: Path, user: tuple[int, int]) -> None:
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            os.chown(name, *user, follow_symlinks=False)


@pytest.mark.timeout(2700)  # a cold install takes minutes; the source-build fallback up to ~20 more
def test_the_readme_first_command_works_for_a_new_user_with_the_system_python(newcomer, tmp_path):
    command = readme_first_command()
    assert command.startswith("bash scripts/setup.sh && ./rlm ask "), command
    parent = Path(tempfile.mkdtemp(prefix="rlm-newcomer-"))  # 0700: where a careful user clones
    try:
        home, clone = parent / "home", parent / "recursive-llm"
        home.mkdir()
        shutil.copytree(CHECKOUT, clone, ignore=NOT_IN_A_CLONE)
        (clone / "rlm").unlink(missing_ok=True)  # setup's launcher from this checkout's own setup
        _own(parent, newcomer)
        env = {"HOME": str(home), "PATH": LOGIN_PATH, "LANG": "C.UTF-8", "USER": USER, "LOGNAME": USER}
        started = time.monotonic()
        done = subprocess.run(["setpriv", f"--reuid={newcomer[0]}", f"--regid={newcomer[1]}", "--init-groups",
                               "bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=2600)
        took = time.monotonic() - started
        print(f"\nREADME first command as a new user, cold: {took / 60:.1f} min (exit {done.returncode})")
        assert done.returncode == 0, done.stderr[-4000:]
        assert "kestrel" in done.stdout.lower(), done.stdout + done.stderr[-3000:]
        assert (clone / ".venv" / "bin" / "python").exists()  # an environment of the project's own
        assert (home / ".local" / "bin" / "rlm").resolve() == (clone / ".venv" / "bin" / "rlm").resolve()
    finally:
        shutil.rmtree(parent, ignore_errors=True)
