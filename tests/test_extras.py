"""Install hints for optional features name packages that exist on PyPI, never the unpublished
distribution (anyone could publish a package under that name), and match pyproject.toml's extras."""

import re
import subprocess
import tomllib
from pathlib import Path

from recursive_llm.extras import DIST, PACKAGES, install_hint

ROOT = Path(__file__).resolve().parents[1]


def test_each_extra_names_the_packages_pyproject_lists():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == DIST
    extras = project["optional-dependencies"]
    for extra, packages in PACKAGES.items():
        listed = {re.split(r"[<>=!\[; ]", requirement, maxsplit=1)[0] for requirement in extras[extra]}
        assert set(packages.split()) == listed, extra


def test_no_hint_in_the_code_sends_users_to_the_unpublished_distribution():
    hints = subprocess.run(["grep", "-rnE", rf"pip install[^\n]*{DIST}", str(ROOT / "src")],
                           capture_output=True, text=True).stdout
    assert [line for line in hints.splitlines() if ".pyc" not in line] == []
    assert install_hint("tables") == "pip install duckdb (or, in a clone of recursive-llm: pip install -e '.[tables]')"

