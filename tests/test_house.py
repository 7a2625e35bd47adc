"""The package's layout rules, checked on its source (no Ray needed).

* Imports between the package's modules go one way: no circle, not even one
  hidden under ``if TYPE_CHECKING``.
* No module reads or writes another module's underscore names; each module
  keeps its privates, and rooms talk through public names (``docs/design.md``).
* Public classes say they live in ``aioray_runner`` (as trio's do).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import aioray_runner

PACKAGE = Path(aioray_runner.__file__).parent

# Underscore names of *other* libraries that the package reads on purpose.
FOREIGN_PRIVATES = {
    "_actor_id": "Ray's ActorHandle has no public accessor for its actor id",
    "_private": "ray._private: the node processes' pids and the GCS address",
    "_current_frames": "sys._current_frames: the watchdog reads the stuck loop's stack",
    "_final_state": "Prefect's PrefectWrappedFuture, the runner's future's base class",
    "_replace": "NamedTuple's public copy-with-changes method",
    "_stored_values": "Prefect's transactions keep txn.set values there, and copy no other way",
    "_token": "Prefect's transactions find their parent through their context-var token",
    "_last_event": "Prefect's task engine: the event a task run's RolledBack event follows",
}


def modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text()) for path in sorted(PACKAGE.glob("*.py"))}


def imports_of(tree: ast.Module) -> set[str]:
    """The package modules a module imports, at any level (TYPE_CHECKING too)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:  # from . import x, _y: x may be a module or a name of __init__
                for alias in node.names:
                    found.add(alias.name if (PACKAGE / f"{alias.name}.py").exists() else "__init__")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "aioray_runner":
                found.add(parts[1] if len(parts) > 1 else "__init__")
    return found


def test_no_import_circle() -> None:
    graph = {name: imports_of(tree) - {name} for name, tree in modules().items()}
    # __init__ loads the Prefect modules lazily, by name (see its __getattr__),
    # so those edges are not imports; everything else it imports counts.
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def private_names(tree: ast.Module) -> set[str]:
    """Underscore names a module defines: its functions, classes, globals, attributes."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)  # __slots__ entries
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def test_no_module_touches_another_modules_private_names() -> None:
    trees = modules()
    own = {name: private_names(tree) for name, tree in trees.items()}
    problems = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                problems += [
                    f"{name}.py:{node.lineno} imports {alias.name} from .{node.module or ''}"
                    for alias in node.names
                    if alias.name.startswith("_")
                    and not alias.name.startswith("__")
                    and not (PACKAGE / f"{alias.name}.py").exists()  # a private module is fine
                ]
            if not isinstance(node, ast.Attribute):
                continue
            attr = node.attr
            if not attr.startswith("_") or attr.startswith("__") or attr in FOREIGN_PRIVATES:
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if attr in own[name]:
                continue  # the module's own private, on another instance of its class
            problems.append(f"{name}.py:{node.lineno} reaches into {ast.unparse(node)}")
    assert not problems, "\n".join(problems)


def test_public_names_say_they_live_in_the_package() -> None:
    for name in aioray_runner.__all__:
        prefect_names = ("AioRayTaskRunner", "PrefectAioRayFuture", "aresult", "aresults")
        if name in (*prefect_names, "remote_options"):
            continue  # they live in aioray_runner.task_runners / .context, public modules
        obj = getattr(aioray_runner, name)
        if isinstance(obj, type) or callable(obj):
            assert obj.__module__ in ("aioray_runner", "aioray_runner.errors"), (
                name,
                obj.__module__,
            )


def test_importing_the_package_imports_neither_ray_nor_prefect() -> None:
    # Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, at import: the CLI must be
    # able to set it first, and `aioray-runner --help` should not wait seconds for Ray.
    code = (
        "import sys, aioray_runner, aioray_runner.cli, aioray_runner.errors\n"
        "print(sorted(m for m in ('ray', 'prefect') if m in sys.modules))\n"
        "print(sorted(aioray_runner.__all__) == sorted(aioray_runner._HOMES))\n"
        "print(all(getattr(aioray_runner, n) is not None for n in aioray_runner.__all__))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:3] == ["[]", "True", "True"], run.stdout
