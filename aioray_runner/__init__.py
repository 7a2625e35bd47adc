"""aioray-runner: run async Python on Ray.

The public surface is small:

* :class:`Runtime` starts supervisor actors and submits coroutines to them,
  configured by one :class:`Settings`;
* :class:`AioRayFuture` is what ``submit`` returns: awaitable from asyncio and trio;
* :class:`Stream` is what ``stream`` returns: a generator's values as they are made;
* :class:`AioRayTaskRunner` and :func:`remote_options` are the Prefect 3 task
  runner, :func:`aresult` and :func:`aresults` await its tasks' results in typed
  code (they need Prefect; the core runtime does not);
* :mod:`aioray_runner.errors` holds the exceptions.

The modules with a leading underscore are private: everything public is
assembled here (classes show as ``aioray_runner.X``), and ``docs/design.md``
says which module does what. Each name is imported when first used, so
``import aioray_runner`` imports neither Ray nor Prefect (a star import loads
every name, the Prefect ones too).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._caller.futures import AioRayFuture
    from ._caller.runtime import Runtime, RuntimeOptions
    from ._caller.streams import Stream
    from ._common.settings import Settings
    from ._common.watchdog import BlockedLoop
    from ._common.wire import register_reducer
    from ._supervisor.attempt import Attempt, current_attempt
    from .context import remote_options
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
    from .task_runners import AioRayTaskRunner, PrefectAioRayFuture, aresult, aresults

__version__ = "0.1.0"

# Where each public name lives. Nothing is imported until it is first used:
# importing Ray takes seconds, and Ray reads some of its settings (such as
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER, which keeps a local instance on 127.0.0.1)
# once, when it is imported, so `aioray-runner --help` and the CLI's own
# choices must come first. Prefect is optional and slow to import too.
_HOMES = {
    "AioRayError": "errors",
    "AioRayFuture": "_caller.futures",
    "AioRayTaskRunner": "task_runners",
    "Attempt": "_supervisor.attempt",
    "BlockedLoop": "_common.watchdog",
    "CancelledError": "errors",
    "InvalidCallError": "errors",
    "PrefectAioRayFuture": "task_runners",
    "RayLostError": "errors",
    "RemoteError": "errors",
    "Runtime": "_caller.runtime",
    "RuntimeNotRunningError": "errors",
    "RuntimeOptions": "_caller.runtime",
    "SerializationError": "errors",
    "Settings": "_common.settings",
    "Stream": "_caller.streams",
    "SupervisorDiedError": "errors",
    "UpstreamError": "errors",
    "aresult": "task_runners",
    "aresults": "task_runners",
    "current_attempt": "_supervisor.attempt",
    "register_reducer": "_common.wire",
    "remote_options": "context",
}

# Written out (not sorted(_HOMES)) so that type checkers see what is exported.
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
    "Stream",
    "SupervisorDiedError",
    "UpstreamError",
    "aresult",
    "aresults",
    "current_attempt",
    "register_reducer",
    "remote_options",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'aioray_runner' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(f".{home}", __name__)
    # Every public name of that module at once, so that objects reached through
    # it (a BlockedLoop handed to a callback, say) already show where they live.
    for other, other_home in _HOMES.items():
        if other_home != home:
            continue
        value = getattr(module, other)
        if home.startswith("_"):
            # As trio does: classes and functions defined in private modules say
            # they live here, so reprs, tracebacks and the docs show aioray_runner.Runtime.
            try:
                value.__module__ = __name__
            except (AttributeError, TypeError):
                pass
        globals()[other] = value
    return globals()[name]


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
