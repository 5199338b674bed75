"""The house's layout holds: docs/ARCHITECTURE.md's table names every module and names only modules
that exist, so a newcomer can find each concern by grep."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "recursive_llm"


def _table_paths() -> set[str]:
    """Every path the concern table's module column names (`engine/run.py`, `training/`, ...)."""
    named: set[str] = set()
    for line in (ROOT / "docs" / "ARCHITECTURE.md").read_text().splitlines():
        if not line.startswith("| ") or line.startswith("| ---"):
            continue
        module_cell = line.rstrip(" |").rsplit("|", 1)[-1]
        for quoted in re.findall(r"`([^`]+)`", module_cell):
            named.update(re.findall(r"[\w/]+\.py\b|[\w/]+/(?=\s|$)", quoted))
    return named


def _modules() -> list[str]:
    return sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                  if path.name not in ("__init__.py", "__main__.py") and "__pycache__" not in path.parts)


def test_every_path_the_architecture_table_names_exists():
    absent = [path for path in _table_paths() if not (PACKAGE / path).exists() and not (ROOT / path).exists()]
    assert not absent, f"docs/ARCHITECTURE.md names modules that do not exist: {absent}"


def test_every_module_is_named_in_the_architecture_table():
    named = _table_paths()
    folders = [path for path in named if path.endswith("/")]
    unnamed = [module for module in _modules()
               if module not in named and not any(module.startswith(folder) for folder in folders)]
    assert not unnamed, f"modules missing from docs/ARCHITECTURE.md's table: {unnamed}"


def test_no_serving_module_imports_the_server():
    """serving/server.py holds the app and its routes; the pieces it uses (and `rlm mcp` shares: the
    path check, the limits, the typed request, the settings) live in modules of their own, so none of
    them imports server.py, not even inside a function (an import cycle, and MCP pulling in FastAPI)."""
    import ast

    importers = []
    for path in sorted((PACKAGE / "serving").glob("*.py")):
        if path.name == "server.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "") in ("server", "serving.server") \
                    or isinstance(node, ast.ImportFrom) and node.level and node.module is None \
                    and any(alias.name == "server" for alias in node.names):
                importers.append(path.name)
    assert not importers, f"serving modules that import serving/server.py: {importers}"
