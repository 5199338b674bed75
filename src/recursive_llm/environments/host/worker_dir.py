"""A worker's directory on the host: who may read the input, and who owns what.

`<dir>` (0700, the host's) / `input` (read-only for the worker) / `work` (its cwd when there are
no namespaces; with namespaces it gets a private tmpfs instead). Every one is 0700: no other user,
and no other run's worker, may read the input. When the plan drops root, the worker's own uid is
allocated here and gets ownership of the input (read-only modes) instead of anyone getting wider
permissions.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..protocol import InputChanged, write_inputs
from .sandbox import IsolationPlan, allocate_worker_uid, release_worker_uid

DIR_PREFIX = "rlm-worker-"
_swept = False  # the temp dir is swept once per host process, at its first worker


def sweep_stale_dirs(directory: str | None = None) -> list[str]:
    """Remove worker directories that a dead host process left behind (kill -9, a lost stream).

    A directory is `rlm-worker-<host pid>-<random>`; it is removed only when it belongs to this
    user (lstat, not followed) and no process with that pid exists."""
    removed = []
    directory = directory or tempfile.gettempdir()
    try:
        entries = os.listdir(directory)
    except OSError:
        return removed
    for name in entries:
        match = re.fullmatch(re.escape(DIR_PREFIX) + r"(\d+)-\w+", name)
        if not match or int(match.group(1)) == os.getpid():
            continue
        path = os.path.join(directory, name)
        try:
            info = os.lstat(path)
            if info.st_uid != os.geteuid() or not os.path.isdir(path) or os.path.islink(path):
                continue
            os.kill(int(match.group(1)), 0)
            continue  # the host is alive
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        except OSError:  # PermissionError: a live process of another user
            continue
    return removed


class WorkerDirectory:
    """One worker's private directory, from `create` to `remove`."""

    def __init__(self, path: Path, isolation: IsolationPlan, uid: int | None) -> None:
        self.path = path
        self.uid = uid  # the worker's own uid while this directory lives, when the plan drops root
        self.input_file: Path | None = None  # the manifest the worker reads, once inputs are written
        self._namespaces = isolation.namespaces

    @classmethod
    async def create(cls, isolation: IsolationPlan, parent: Path | None = None) -> WorkerDirectory:
        """`parent`: the worker template's spool (template.py), else the temporary directory."""
        global _swept
        if not _swept:
            _swept = True
            await asyncio.to_thread(sweep_stale_dirs)
        path = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-", dir=parent))
        (path / "input").mkdir(mode=0o700)
        (path / "work").mkdir(mode=0o700)
        directory = cls(path, isolation, allocate_worker_uid() if isolation.drop_uid else None)
        if directory.uid is not None:
            directory._hand_over_to_worker_uid()
        return directory

    @property
    def input_dir(self) -> Path:
        return self.path / "input"

    @property
    def work_dir(self) -> Path:
        return self.path / "work"

    async def write_inputs(self, context: Any) -> Path:
        """Write the run's input for the worker (its only copy: the caller drops its own)."""
        from ...context.loader import as_inputs
        from ...errors import ContextError

        try:
            self.input_file = await asyncio.to_thread(write_inputs, as_inputs(context), self.input_dir,
                                                      self.uid is None)
        except InputChanged as error:
            raise ContextError(str(error)) from None
        if self.uid is not None:
            self._hand_over_to_worker_uid()
        else:
            self._owner_only_files()
        return self.input_file

    def remove(self) -> None:
        """Release the worker's uid and delete the directory (synchronous: a close that is being
        cancelled still calls it). Call it only once the worker is dead."""
        uid, self.uid = self.uid, None
        release_worker_uid(uid)
        shutil.rmtree(self.path, ignore_errors=True)

    def _owner_only_files(self) -> None:
        for directory, _, files in os.walk(self.input_dir):
            for name in files:
                path = os.path.join(directory, name)
                if os.stat(path).st_nlink == 1:  # ours, not a link to a user's (world-readable) file
                    os.chmod(path, 0o600)

    def _hand_over_to_worker_uid(self) -> None:
        """A hard link to a user's file keeps its owner and mode (only world-readable files are linked)."""
        assert self.uid is not None
        for directory, _, files in os.walk(self.input_dir):
            os.chown(directory, self.uid, self.uid)
            os.chmod(directory, 0o500)
            for name in files:
                path = os.path.join(directory, name)
                if os.stat(path).st_nlink == 1:  # ours
                    os.chown(path, self.uid, self.uid)
                    os.chmod(path, 0o400)
        if not self._namespaces:  # it reaches input/ and work/ through the host's dir
            os.chown(self.path, -1, self.uid)
            os.chmod(self.path, 0o710)
            os.chown(self.work_dir, self.uid, self.uid)
