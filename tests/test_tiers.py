"""The fast tier (`python -m pytest -q -m "not slow"`): conftest.SLOW names real tests, and `-m` sees its marks."""

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

from conftest import SLOW

TESTS = Path(__file__).resolve().parent


def test_every_slow_entry_names_a_test_file_or_a_test_in_it():
    for entry, reason in SLOW.items():
        file, _, name = entry.partition("::")
        assert (TESTS / file).is_file(), f"SLOW names {file}, which is not in tests/: remove or rename the entry"
        assert reason.strip(), f"SLOW's entry {entry} gives no reason"
        if name:
            defined = {node.name for node in ast.walk(ast.parse((TESTS / file).read_text()))
                       if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
            assert name in defined, f"SLOW names {entry}, but {file} defines no {name}: rename or remove the entry"


def test_the_slow_marker_is_registered():
    pyproject = tomllib.loads((TESTS.parent / "pyproject.toml").read_text())
    assert any(m.startswith("slow:") for m in pyproject["tool"]["pytest"]["ini_options"]["markers"])


def test_not_slow_deselects_a_slow_test_and_keeps_the_others():
    entry = next(e for e in SLOW if "::" in e)
    file, _, name = entry.partition("::")
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "-m", "not slow", f"tests/{file}"], cwd=TESTS.parent, capture_output=True, text=True)
    collected = [line for line in done.stdout.splitlines() if "::" in line]
    assert collected, done.stdout + done.stderr  # the file's other tests stay in the fast tier
    assert not any(f"::{name}" in line for line in collected), collected
    assert "deselected" in done.stdout, done.stdout
