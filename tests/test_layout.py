"""The house's layout holds: docs/ARCHITECTURE.md's table names every module and names only modules
that exist, so a newcomer can find each concern by grep."""

from __future__ import annotations

import ast
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


# --- no import cycles -------------------------------------------------------------------------------
#
# An edge A -> B is any import of B in A's source, at module level or inside a function, except inside
# `if TYPE_CHECKING:` (never executed). `from pkg import name` is an edge to `pkg.name` when that is a
# module, else to `pkg` (the name is defined in pkg's __init__). Importing a submodule also runs its
# package's __init__, but that is not counted as an edge to the package unless a name of the package
# itself is imported.

def _module_names() -> dict[str, Path]:
    names: dict[str, Path] = {}
    for path in PACKAGE.rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _executed_nodes(tree: ast.AST):
    """Every node of `tree` except those inside an `if TYPE_CHECKING:` body (its `else` is kept)."""
    pending = [tree]
    while pending:
        node = pending.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            pending.extend(node.orelse)
            continue
        pending.extend(ast.iter_child_nodes(node))


def _imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    edges: set[str] = set()
    for node in _executed_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                deepest = next((".".join(parts[:n]) for n in range(len(parts), 0, -1)
                                if ".".join(parts[:n]) in modules), None)
                if deepest:
                    edges.add(deepest)
        elif isinstance(node, ast.ImportFrom):
            base_parts = package[:len(package) - node.level + 1] if node.level else []
            base = ".".join(base_parts + (node.module.split(".") if node.module else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in modules:
                    edges.add(target)
                elif base in modules:
                    edges.add(base)
    edges.discard(module)
    return edges


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of recursive_llm it imports (see above for what counts)."""
    modules = _module_names()
    return {module: _imports_of(module, path, modules) for module, path in modules.items()}


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components of more than one module, iteratively (no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def _one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module, as a path (first module repeated last)."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(graph[node] & members):
            if child == start:
                return paths[node] + [start]
            if child not in paths:
                paths[child] = paths[node] + [child]
                queue.append(child)
    raise AssertionError(f"no cycle through {start}")


def test_the_import_graph_sees_what_it_should():
    graph = import_graph()
    assert "recursive_llm.engine.answers" in graph["recursive_llm.engine.run"]          # `from . import answers`
    assert "recursive_llm.engine.scheduler" in graph["recursive_llm.engine.run"]        # module level
    assert "recursive_llm.models.pricing" in graph["recursive_llm.engine.scheduler"]    # inside a function
    assert "recursive_llm.engine.scheduler" not in graph["recursive_llm.engine.call_ids"]  # only if TYPE_CHECKING
    assert "recursive_llm.environments.inside.map_reduce" in graph["recursive_llm.environments.inside.runtime"]
    assert "recursive_llm.environments.inside" not in graph["recursive_llm.environments.inside.runtime"]  # `from . import map_reduce`
    assert "recursive_llm.engine" not in graph["recursive_llm.engine.run"]              # a submodule, not the package
    cyclic = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _strongly_connected(cyclic) == [["a", "b", "c"]]
    assert _one_cycle(cyclic, ["a", "b", "c"]) == ["a", "b", "c", "a"]


def test_no_import_cycles():
    graph = import_graph()
    cycles = [" -> ".join(_one_cycle(graph, component)) + f"   (all of: {', '.join(component)})"
              for component in _strongly_connected(graph)]
    assert not cycles, "import cycles in src/recursive_llm:\n  " + "\n  ".join(cycles)


def test_output_caps_are_defined_only_in_caps_py():
    """One place for how much output is kept and shown: no other module defines a cutting function
    or a cap of its own (issue 26: output was capped in nine places)."""
    defined_elsewhere = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "caps.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name in ("truncate_output", "clip"):
                defined_elsewhere.append(f"{path.relative_to(PACKAGE)}: def {node.name}")
            if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id in ("CAPTURED_CHARS", "MAX_LINE_CHARS", "TEXT_LIMIT")
                    for t in node.targets):
                defined_elsewhere.append(f"{path.relative_to(PACKAGE)}: {ast.unparse(node)}")
    assert not defined_elsewhere, defined_elsewhere


FRONT_ENDS = ("cli", "serving")  # the `rlm` commands, `rlm serve` and `rlm mcp`
# These may import a front end: `python -m recursive_llm`, and `rlm bench`'s methods (make_rlm: an
# option means the same there as in `rlm ask`); bench's task families are the library's (training).
MAY_IMPORT_FRONT_ENDS = FRONT_ENDS + ("bench", "__main__")
WORKER_INTERNALS = ("environments.host", "environments.inside", "environments.prestart")


def _layer(module: str) -> str:
    return module.removeprefix("recursive_llm.")


def test_the_library_never_reaches_into_a_front_end_or_the_workers_internals():
    """Issue 26: the engine's face (rlm.py) took its --verbose printer from cli/progress.py, models/
    took a hint from cli/preflight.py, subcalls took `as_text` from the worker's runtime. The library
    imports no front end, and only environments/ itself (and front ends) reach inside it."""
    reaching = []
    for module, imported in import_graph().items():
        layer = _layer(module)
        if layer.split(".")[0] in MAY_IMPORT_FRONT_ENDS:
            continue
        for target in sorted(imported):
            target_layer = _layer(target)
            if target_layer.split(".")[0] in FRONT_ENDS:
                reaching.append(f"{layer} imports the front end {target_layer}")
            elif target_layer.startswith(WORKER_INTERNALS) and not layer.startswith("environments"):
                reaching.append(f"{layer} imports the worker's internals {target_layer}")
    assert not reaching, "\n".join(reaching)


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


def test_no_function_is_longer_than_63_lines():
    """Small functions everywhere: one that grows past 63 lines (its signature included) is split."""
    import ast

    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 63:
                long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})")
    assert not long, f"functions over 63 lines: {long}"
