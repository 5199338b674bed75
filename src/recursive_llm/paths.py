"""Where recursive_llm keeps its data: `RLM_HOME` if set, else the platform's user data dir.

The data directory holds every prompt, reply and input excerpt of every run, so it is private:
`RLM_HOME` and the directories made in it are 0700, the files written there 0600 (`private_dir`,
`open_private`), whatever the umask.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def rlm_home() -> Path:
    override = os.environ.get("RLM_HOME")
    if override:
        return Path(override).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("recursive-llm", appauthor=False))


def trajectories_dir() -> Path:
    return rlm_home() / "trajectories"


def indexes_dir() -> Path:
    """Search indexes, one file per input content hash (safe to delete: rebuilt on demand)."""
    return rlm_home() / "indexes"


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) as 0700. `RLM_HOME` itself and the directories inside it
    are tightened to 0700 when they are ours and wider; other existing directories are left alone."""
    path = Path(path)
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    home = rlm_home()
    for directory in (path, *path.parents):
        if directory == home or home in directory.parents:
            _tighten(directory, PRIVATE_DIR_MODE)
        if directory == home:
            break
    return path


def open_private(path: Path, mode: str = "a", encoding: str | None = "utf-8"):
    """Open a file for writing that only its owner can read (created 0600; an existing one is tightened)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    descriptor = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), PRIVATE_FILE_MODE)
    try:
        _tighten(path, PRIVATE_FILE_MODE, descriptor)
        return os.fdopen(descriptor, mode, encoding=encoding)
    except BaseException:
        os.close(descriptor)
        raise


def _tighten(path: Path, mode: int, descriptor: int | None = None) -> None:
    try:
        info = os.stat(descriptor if descriptor is not None else path)
        if info.st_uid == os.geteuid() and info.st_mode & 0o777 & ~mode:
            os.chmod(descriptor if descriptor is not None else path, info.st_mode & 0o777 & mode)
    except OSError:  # not ours to change, or a read-only file system: what is there stays
        pass
