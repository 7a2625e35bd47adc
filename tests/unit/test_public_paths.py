"""Every public import path that worked before the house moved (issue 18) still works.

The paths are those of ``aioray_runner.__all__``, ``aioray_runner.task_runners``,
``aioray_runner.context``, ``aioray_runner.errors``, the command line and the demo,
and every ``from aioray_runner... import`` written in README.md, docs/ and examples/.
No Ray is started (the Prefect paths import Prefect and Ray, which takes seconds).
"""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil
import re
from pathlib import Path

import pytest

import aioray_runner

ROOT = Path(__file__).resolve().parents[2]

# Written out, as they were before the move: the list only grows.
PATHS = {
    "aioray_runner": [
        "__version__",
        "AioRayError",
        "AioRayFuture",
        "AioRayTaskRunner",
        "Attempt",
        "BlockedLoop",
        "CancelledError",
        "InvalidCallError",
        "PrefectAioRayFuture",
        "RayLostError",
        "RemoteError",
        "Runtime",
        "RuntimeNotRunningError",
        "RuntimeOptions",
        "SerializationError",
        "Settings",
        "Stream",
        "SupervisorDiedError",
        "UpstreamError",
        "aresult",
        "aresults",
        "current_attempt",
        "register_reducer",
        "remote_options",
    ],
    "aioray_runner.task_runners": [
        "AioRayTaskRunner",
        "PrefectAioRayFuture",
        "aresult",
        "aresults",
    ],
    "aioray_runner.context": [
        "ACTOR_PLACEMENT_OPTIONS",
        "current_remote_options",
        "remote_options",
    ],
    "aioray_runner.errors": [
        "AioRayError",
        "CancelledError",
        "InvalidCallError",
        "RayLostError",
        "RemoteError",
        "RuntimeNotRunningError",
        "SerializationError",
        "SupervisorDiedError",
        "UpstreamError",
    ],
    "aioray_runner.cli": ["main"],
    "aioray_runner.demo": ["main"],
}


@pytest.mark.parametrize("module", sorted(PATHS))
def test_every_public_path_imports(module: str) -> None:
    loaded = importlib.import_module(module)
    for name in PATHS[module]:
        assert getattr(loaded, name) is not None, f"{module}.{name}"


def test_the_public_lists_are_the_ones_written_here() -> None:
    from aioray_runner import context, errors, task_runners

    assert sorted(aioray_runner.__all__) == sorted(PATHS["aioray_runner"][1:])
    assert sorted(task_runners.__all__) == sorted(PATHS["aioray_runner.task_runners"])
    assert sorted(context.__all__) == sorted(PATHS["aioray_runner.context"])
    assert sorted(errors.__all__) == sorted(PATHS["aioray_runner.errors"])


def test_the_documented_imports_work() -> None:
    pattern = re.compile(r"^\s*from (aioray_runner[\w.]*) import ([\w, ()\n]+?)(?:#.*)?$", re.M)
    files = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "examples").glob("*.py")]
    seen = 0
    for path in files:
        for module, names in pattern.findall(path.read_text()):
            loaded = importlib.import_module(module)
            for name in re.findall(r"\w+", names):
                assert hasattr(loaded, name), f"{path.name}: from {module} import {name}"
                seen += 1
    assert seen > 10


def test_the_package_entry_points_resolve() -> None:
    # pyproject.toml: prefect.collections loads "aioray_runner", the script
    # "aioray_runner.cli:main".
    text = (ROOT / "pyproject.toml").read_text()
    assert 'aioray-runner = "aioray_runner.cli:main"' in text
    assert 'aioray_runner = "aioray_runner"' in text
    assert callable(importlib.import_module("aioray_runner.cli").main)


def test_every_class_pickles_by_a_path_that_resolves() -> None:
    # Functions and classes cross to supervisors pickled by reference (their
    # __module__ and __qualname__): each must name a path that imports.
    names = [n for n in dir(aioray_runner) if not n.startswith("_")]
    objects = [getattr(aioray_runner, n) for n in names]
    for info in pkgutil.walk_packages(aioray_runner.__path__, "aioray_runner."):
        if ".bench" in info.name or info.name.endswith(("demo", "__main__")):
            continue  # the tools import matplotlib or run on import
        module = importlib.import_module(info.name)
        objects += [
            obj
            for _, obj in inspect.getmembers(module, inspect.isclass)
            if obj.__module__.startswith("aioray_runner")
        ]
    assert len(objects) > 40
    for obj in objects:
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        assert pickle.loads(pickle.dumps(obj)) is obj, obj
