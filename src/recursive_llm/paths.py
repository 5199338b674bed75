"""Where recursive_llm keeps its data: `RLM_HOME` if set, else the platform's user data dir."""

from __future__ import annotations

import os
from pathlib import Path


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
