"""The package's layout rules, checked on its source (no Ray needed).

* Imports between the package's modules go one way: no circle, not even one
  hidden under ``if TYPE_CHECKING``.
* No module reads or writes another module's underscore names; each module
  keeps its privates, and rooms talk through public names (``docs/design.md``).
* The folders keep to their jobs (``docs/design.md``, "The house"): ``_common``
  imports only ``errors``; ``_backends`` only ``_common``; ``_supervisor`` never
  the caller's side; ``_prefect`` uses the runtime's public names (plus the few
  in ``PREFECT_MAY_IMPORT``); nothing imports ``_tools`` but the command line.
* The top folder holds at most eight modules; classes stay short.
* Public classes say they live in ``aioray_runner`` (as trio's do).
"""

from __future__ import annotations

import ast
import functools
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

# What the Prefect adapter imports from the rest of the package beyond the
# public names (aioray_runner.__all__ and aioray_runner.errors), and why.
PREFECT_MAY_IMPORT = {
    (
        "_common.settings",
        "DEFAULT_BLOCKED_LOOP_THRESHOLD",
    ): "the runner's defaults are the runtime's",
    ("_common.settings", "DEFAULT_MAX_CONCURRENCY"): "the runner's defaults are the runtime's",
    ("_common.settings", "DEFAULT_START_TIMEOUT"): "the runner's defaults are the runtime's",
    ("_common.settings", "DEFAULT_HOLD_RESULTS_ABOVE"): "the runner's defaults are the runtime's",
    ("_common.settings", "DEFAULT_THREADS"): "the runner's defaults are the runtime's",
    ("_common.settings", "SETTING_NAMES"): "the runner takes every setting the runtime takes",
    ("_caller.placement", "ACTOR_PLACEMENT_OPTIONS"): "remote_options sorts Ray's options by kind",
    ("_caller.supervisors", "supervisor_of"): "a final state is resent if its supervisor died",
    ("_caller.supervisors", "RemoteSupervisor"): "the type supervisor_of returns",
    ("_caller.futures", "wait_all"): "a subflow waits for its own calls as drain waits for all",
}

# Modules that may import the tools: the command line, and the public path of
# the demo (``from aioray_runner.demo import main``, examples/pipeline.py).
MAY_IMPORT_TOOLS = {"cli", "demo"}

MAX_CLASS_LINES = 300


@functools.cache
def modules() -> dict[str, ast.Module]:
    """Every module of the package by dotted name (``_caller.pool``; a package's
    ``__init__`` by the package's name, the top one as ``__init__``)."""
    found: dict[str, ast.Module] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts.pop()
        found[".".join(parts)] = ast.parse(path.read_text())
    return found


def _is_package(name: str) -> bool:
    return name == "__init__" or (PACKAGE.joinpath(*name.split(".")) / "__init__.py").exists()


def _exists(name: str) -> bool:
    path = PACKAGE.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _base(module: str, level: int) -> list[str]:
    """The package a relative import of ``level`` dots in ``module`` starts from."""
    parts = [] if module == "__init__" else module.split(".")
    if not _is_package(module):
        parts = parts[:-1]
    return parts[: len(parts) - (level - 1)] if level > 1 else parts


def imported(module: str, tree: ast.Module) -> list[tuple[str, str | None, int]]:
    """``(target module, name or None, line)`` for each import of the package's own
    modules, at any level (TYPE_CHECKING too). ``from .x import y`` where ``y`` is
    a module counts as importing ``x.y``; a name of a package's ``__init__`` as
    importing that package."""
    found: list[tuple[str, str | None, int]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = _base(module, node.level)
            source = ".".join([*base, *([node.module] if node.module else [])])
        elif node.module and node.module.split(".")[0] == "aioray_runner":
            source = node.module.partition(".")[2]
        else:
            continue
        for alias in node.names:
            sub = f"{source}.{alias.name}" if source else alias.name
            if _exists(sub):
                found.append((sub, None, node.lineno))
            else:
                found.append((source or "__init__", alias.name, node.lineno))
    return found


@functools.cache
def graph() -> dict[str, set[str]]:
    trees = modules()
    return {
        name: {target for target, _, _ in imported(name, tree)} - {name}
        for name, tree in trees.items()
    }


def test_no_import_circle() -> None:
    edges = graph()
    # __init__ loads the public names lazily, by name (see its __getattr__), and
    # _backends loads a backend's module by name: those are not imports.
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(edges):
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
        for target, imported_name, line in imported(name, tree):
            if (
                imported_name
                and imported_name.startswith("_")
                and not imported_name.startswith("__")
            ):
                problems.append(f"{name}:{line} imports {imported_name} from {target}")
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            attr = node.attr
            if not attr.startswith("_") or attr.startswith("__") or attr in FOREIGN_PRIVATES:
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if attr in own[name]:
                continue  # the module's own private, on another instance of its class
            problems.append(f"{name}:{node.lineno} reaches into {ast.unparse(node)}")
    assert not problems, "\n".join(problems)


def test_no_function_shadows_a_name_its_module_imports() -> None:
    # A local named like an imported module hides it in the whole function: the
    # module's use raises UnboundLocalError at run time, and no linter sees it
    # (a local `settled` once hid the module `settled` in _prefect/remote.py).
    problems = []
    for module, tree in modules().items():
        imported_here = {
            (alias.asname or alias.name).split(".")[0]
            for node in tree.body
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            local = {a.arg for a in arguments} | {
                n.id
                for n in ast.walk(node)
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
            }
            problems += [f"{module}.{node.name}: {name}" for name in sorted(local & imported_here)]
    assert not problems, "\n".join(problems)


def _folder(module: str) -> str:
    return module.split(".")[0]


def _breaches(rule: str, allowed: set[str], folder: str) -> list[str]:
    edges = graph()
    return [
        f"{module} imports {target} ({rule})"
        for module, targets in sorted(edges.items())
        if _folder(module) == folder
        for target in sorted(targets)
        if _folder(target) != folder and _folder(target) not in allowed
    ]


def test_common_imports_only_errors() -> None:
    assert not _breaches("_common imports only errors", {"errors"}, "_common")


def test_backends_import_only_common() -> None:
    assert not _breaches("_backends imports only _common", {"_common", "errors"}, "_backends")


def test_supervisor_never_imports_the_callers_side() -> None:
    allowed = {"_common", "_backends", "errors"}
    assert not _breaches("the supervisor runs without the caller's side", allowed, "_supervisor")


def test_caller_does_not_import_prefect_or_tools() -> None:
    allowed = {"_common", "_backends", "_supervisor", "errors"}
    assert not _breaches("the runtime never imports Prefect", allowed, "_caller")


def test_prefect_uses_public_names_and_the_declared_ones() -> None:
    public = set(aioray_runner.__all__)
    problems = []
    for module, tree in modules().items():
        if _folder(module) != "_prefect":
            continue
        for target, name, line in imported(module, tree):
            if _folder(target) in ("_prefect", "errors"):
                continue
            if name is None:
                problems.append(f"{module}:{line} imports the module {target}")
            elif name not in public and (target, name) not in PREFECT_MAY_IMPORT:
                problems.append(f"{module}:{line} imports {name} from {target}")
    assert not problems, "\n".join(problems)


def test_nothing_imports_the_tools_but_the_command_line() -> None:
    problems = [
        f"{module} imports {target}"
        for module, targets in graph().items()
        if _folder(module) != "_tools" and module not in MAY_IMPORT_TOOLS
        for target in targets
        if _folder(target) == "_tools"
    ]
    assert not problems, "\n".join(problems)


def test_the_top_folder_holds_at_most_eight_modules() -> None:
    top = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(top) <= 8, top


def test_no_class_is_longer_than_300_lines() -> None:
    problems = []
    for module, tree in modules().items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            assert node.end_lineno is not None
            length = node.end_lineno - node.lineno + 1
            if length > MAX_CLASS_LINES:
                problems.append(f"{module}.{node.name}: {length} lines (at most {MAX_CLASS_LINES})")
    assert not problems, "\n".join(problems)


def test_public_names_say_they_live_in_the_package() -> None:
    for name in aioray_runner.__all__:
        prefect_names = ("AioRayTaskRunner", "PrefectAioRayFuture", "aresult", "aresults")
        if name in prefect_names:
            assert getattr(aioray_runner, name).__module__ == "aioray_runner.task_runners"
            continue
        if name == "remote_options":
            assert aioray_runner.remote_options.__module__ == "aioray_runner.context"
            continue
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
