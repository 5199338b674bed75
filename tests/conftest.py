import os
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(autouse=True, scope="session")
def _subprocesses_use_this_checkout():
    """`python -m recursive_llm` in tests runs this checkout's code, whatever is installed."""
    os.environ["PYTHONPATH"] = SRC + os.pathsep + os.environ.get("PYTHONPATH", "")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test writes its trajectories under its own RLM_HOME and sees no real provider keys."""
    monkeypatch.setenv("RLM_HOME", str(tmp_path / "rlm-home"))
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "RLM_MODEL"):
        monkeypatch.delenv(name, raising=False)
