"""aioray-runner: run async Python on Ray.

The public surface is small:

* :class:`Runtime` starts supervisor actors and submits coroutines to them,
  configured by one :class:`Settings`;
* :class:`AioRayFuture` is what ``submit`` returns: awaitable from asyncio and trio;
* :class:`AioRayTaskRunner` and :func:`remote_options` are the Prefect 3 task
  runner, :func:`aresult` and :func:`aresults` await its tasks' results in typed
  code (imported lazily, so the core runtime does not need Prefect);
* :mod:`aioray_runner.errors` holds the exceptions.

The modules with a leading underscore are private: everything public is
assembled here (classes show as ``aioray_runner.X``), and ``docs/design.md``
says which module does what.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._futures import AioRayFuture
from ._runtime import Runtime, RuntimeOptions
from ._settings import Settings
from ._supervisor import Attempt, current_attempt
from ._watchdog import BlockedLoop
from ._wire import register_reducer
from .errors import (
    AioRayError,
    CancelledError,
    InvalidCallError,
    RayLostError,
    RemoteError,
    RuntimeNotRunningError,
    SerializationError,
    SupervisorDiedError,
    UpstreamError,
)

if TYPE_CHECKING:
    from .context import remote_options
    from .task_runners import AioRayTaskRunner, PrefectAioRayFuture, aresult, aresults

__version__ = "0.1.0"

__all__ = [
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
    "SupervisorDiedError",
    "UpstreamError",
    "aresult",
    "aresults",
    "current_attempt",
    "register_reducer",
    "remote_options",
]


def _fixup_module_metadata(namespace: dict[str, Any]) -> None:
    # As trio does: classes and functions defined in private modules say they
    # live here, so reprs, tracebacks and the docs show aioray_runner.Runtime.
    for name in __all__:
        obj = namespace.get(name)
        module = getattr(obj, "__module__", "")
        if obj is not None and module.startswith("aioray_runner._"):
            try:
                obj.__module__ = __name__
            except (AttributeError, TypeError):
                pass


_fixup_module_metadata(globals())

_PREFECT_NAMES = {
    "AioRayTaskRunner": "task_runners",
    "PrefectAioRayFuture": "task_runners",
    "aresult": "task_runners",
    "aresults": "task_runners",
    "remote_options": "context",
}


def __getattr__(name: str) -> Any:
    # The Prefect integration imports Prefect (slow, optional): load it on first use.
    module = _PREFECT_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'aioray_runner' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
