"""One interface for every environment (issue 26): `environments.base.Environment` declares each
member a caller uses, with a type and a docstring; every implementation has each of them itself
(no `__getattr__` forwarding); callers use only those members and never `getattr` on an
environment; and the environments' modules import one another without a cycle."""

from __future__ import annotations

import ast
import asyncio
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import recursive_llm.environments as environments_package
from recursive_llm.environments.base import Environment, StartingInBackground
from recursive_llm.environments.host.sandbox import plan_isolation
from recursive_llm.environments.host.worker import WorkerEnvironment
from recursive_llm.environments.local import LocalEnvironment
from recursive_llm.environments.prestart.pool import PooledWorker, WorkerPool

PACKAGE = Path(environments_package.__file__).parent.parent  # src/recursive_llm
CALLERS = ["engine", "serving", "cli", "rlm.py", "session.py"]  # where environments are used
IMPLEMENTATIONS = {WorkerEnvironment, LocalEnvironment, PooledWorker, StartingInBackground}


async def no_calls(*args):
    return []


def _declared() -> tuple[set[str], set[str]]:
    """(the interface's attributes, its methods)."""
    return set(Environment.__annotations__), set(Environment.__abstractmethods__)


def _concrete_subclasses(cls: type) -> set[type]:
    for module in pkgutil.walk_packages(environments_package.__path__, "recursive_llm.environments."):
        if not module.name.endswith(("worker_main", "template_main")):  # scripts: they run on import
            importlib.import_module(module.name)
    found, todo = set(), [cls]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            if not inspect.isabstract(sub):
                found.add(sub)
    return found


def _parameters(function) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def test_every_member_is_declared_with_a_type_and_a_docstring():
    attributes, methods = _declared()
    assert {"name", "isolation"} <= attributes and {"start", "execute", "get_variable", "rebind", "close"} <= methods
    for method in methods:
        assert getattr(Environment, method).__doc__, f"Environment.{method} has no docstring"
    statements = ast.parse(inspect.getsource(Environment)).body[0].body
    for index, node in enumerate(statements):
        if isinstance(node, ast.AnnAssign):
            following = statements[index + 1]
            assert isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant), \
                f"Environment.{ast.unparse(node.target)} has no docstring"


def test_every_implementation_has_every_member_itself():
    assert _concrete_subclasses(Environment) == IMPLEMENTATIONS  # a new one is added here, and checked below
    attributes, methods = _declared()

    async def scenario():
        local = LocalEnvironment("x", no_calls)
        instances = [local, WorkerEnvironment("x", no_calls, sandbox="process"),
                     PooledWorker(WorkerPool(1, sandbox="process"), "x", no_calls, sandbox="process"),
                     StartingInBackground(LocalEnvironment("y", no_calls))]
        try:
            for environment in instances:
                cls = type(environment)
                assert not any("__getattr__" in vars(c) for c in cls.__mro__), f"{cls.__name__} forwards attributes"
                for attribute in attributes:
                    assert hasattr(environment, attribute), f"{cls.__name__} has no {attribute}"
                for method in methods:
                    declared, implemented = getattr(Environment, method), getattr(cls, method)
                    assert implemented is not declared
                    assert _parameters(implemented) == _parameters(declared), f"{cls.__name__}.{method}"
                    assert inspect.iscoroutinefunction(implemented) == inspect.iscoroutinefunction(declared)
            return [(e.name, e.isolation) for e in instances]
        finally:
            for environment in instances:
                await environment.close()

    described = asyncio.run(scenario())
    assert described[0] == ("local", None) and described[3] == ("local", None)
    assert described[1] == described[2] == ("worker", plan_isolation("process"))  # known before the start


def test_a_rebind_reaches_the_repl_through_a_background_start():
    """A session's next turn rebinds its environment; through `StartingInBackground` the sub-calls
    of later cells go to the new handler."""
    async def second(kind, prompts, model, context):
        return [{"ok": True, "text": f"second:{p}"} for p in prompts]

    async def scenario():
        environment = StartingInBackground(LocalEnvironment("x", no_calls))
        try:
            environment.rebind(second)
            return await environment.execute("print(llm_query('q'))", 10)
        finally:
            await environment.close()

    cell = asyncio.run(scenario())
    assert cell.error is None and cell.stdout == "second:q\n"


def _caller_trees() -> list[tuple[Path, ast.AST]]:
    paths = [p for name in CALLERS for p in ((PACKAGE / name).rglob("*.py") if (PACKAGE / name).is_dir()
                                             else [PACKAGE / name])]
    return [(path, ast.parse(path.read_text())) for path in paths]


ENVIRONMENT_NAMES = re.compile(r"^(self\._?)?env(ironment)?$")


def test_callers_use_only_the_interface_and_never_getattr():
    attributes, methods = _declared()
    misuses = []
    for path, tree in _caller_trees():
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("getattr", "hasattr", "setattr") and node.args
                    and ENVIRONMENT_NAMES.match(ast.unparse(node.args[0]))):
                misuses.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
            if (isinstance(node, ast.Attribute) and ENVIRONMENT_NAMES.match(ast.unparse(node.value))
                    and node.attr not in attributes | methods):
                misuses.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert not misuses, misuses


# -- the import graph ------------------------------------------------------------------------------
def _module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _imports(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """Every module `module` imports, in functions too, but not under `if TYPE_CHECKING:`; a module
    imports its parent packages (Python runs their `__init__` first)."""
    found = {module.rsplit(".", n)[0] for n in range(1, module.count(".") + 1)}
    todo = list(ast.iter_child_nodes(tree))
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            package = module if is_package else module.rsplit(".", 1)[0]
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            target = ".".join(filter(None, [base, node.module]))
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target)
    return {name for name in found if name in known and name != module}


def _import_cycles_through(prefix: str) -> list[list[str]]:
    modules = _module_names()
    graph = {name: _imports(ast.parse(path.read_text()), name, path.name == "__init__.py", set(modules))
             for name, path in modules.items()}
    cycles = []
    for start in (name for name in graph if name.startswith(prefix)):
        seen, todo = set(), [(start, [start])]
        while todo:
            name, trail = todo.pop()
            for imported in graph[name]:
                if imported == start:
                    cycles.append(trail)
                elif imported not in seen:
                    seen.add(imported)
                    todo.append((imported, trail + [imported]))
    return cycles


def test_the_environments_import_one_another_without_a_cycle():
    cycles = _import_cycles_through("recursive_llm.environments")
    assert not cycles, cycles[:3]


def test_the_worker_side_never_imports_the_host_side():
    host_side = ("recursive_llm.environments.host", "recursive_llm.environments.base",
                 "recursive_llm.environments.local", "recursive_llm.environments.factory",
                 "recursive_llm.environments.prestart.pool", "recursive_llm.environments.prestart.template",
                 "recursive_llm.config")
    modules = _module_names()
    reached = {name: _imports(ast.parse(path.read_text()), name, path.name == "__init__.py", set(modules))
               for name, path in modules.items() if name.startswith("recursive_llm.environments.inside")}
    wrong = {name: sorted(i for i in imported if any(i == h or i.startswith(h + ".") for h in host_side))
             for name, imported in reached.items()}
    assert not any(wrong.values()), wrong


def test_the_trajectory_records_each_environments_isolation():
    """`run_start` carries the environment's `isolation`, read through the interface: the plan's
    layers for a worker (started for the run, or a pre-started spare), none in-process."""
    from recursive_llm import RLM
    from recursive_llm.environments.prestart import pool as worker_pool
    from recursive_llm.record.events import read_trajectory
    from recursive_llm.testing import ScriptedModel
    from test_worker_pool import wait_ready

    async def isolation_of(**options) -> dict | None:
        root = ScriptedModel(["```repl\nprint(1)\n```", "FINAL(done)"])
        result = await RLM(model=root, **options).acompletion("q", "x")
        assert result.answer == "done", result.error
        return next(e for e in read_trajectory(result.trajectory_path) if e["type"] == "run_start")["isolation"]

    async def scenario():
        local, started = await isolation_of(environment="local"), await isolation_of(sandbox="process")
        pool = worker_pool.install(1, sandbox="process")
        try:
            await wait_ready(pool, 1)
            pooled = await isolation_of(sandbox="process")
            return local, started, pooled, pool.taken
        finally:
            await pool.close()

    local, started, pooled, taken = asyncio.run(scenario())
    plan = plan_isolation("process")
    assert local is None and taken == 1
    assert started == pooled == {"layers": plan.layers, "missing": plan.missing}
