"""Backends: the async library a supervisor runs coroutines with, picked once by name.

A supervisor is a Ray async actor, so it always owns an asyncio loop. A backend
is a *host* for coroutines on that loop:

* ``asyncio``: the coroutine runs on the actor's loop as it is;
* ``trio``: the coroutine runs in a ``trio.run`` on a thread of the
  supervisor's own, and its outcome comes back to that loop (``_trio_host``).

Both hosts have the same two methods (:class:`Host`): ``start(...)`` once, and
``adapt(fn)`` once per function, which returns the coroutine function the
supervisor awaits for each call. The per-call path is therefore the same for
every backend: no branch on the backend's name, no extra frame for asyncio.

A new backend is a new host class and one line in ``_HOSTS``.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ._watchdog import Stall

AsyncFn = Callable[..., Awaitable[Any]]


class Host(Protocol):
    """Runs coroutine functions on a supervisor's loop, for one backend."""

    async def start(self, stall_threshold: float, on_stall: Callable[[Stall], None]) -> None:
        """Prepare the backend (once, on the actor's loop, before the first call).

        A host that runs code away from the actor's loop (which has a watchdog
        of its own) watches it with ``stall_threshold`` (0: off) and reports
        stalls to ``on_stall``, which may be called from any thread.
        """

    def adapt(self, fn: AsyncFn) -> AsyncFn:
        """The coroutine function to await instead of ``fn`` (called once per function)."""


class AsyncioHost:
    """The asyncio backend: coroutines run on the actor's own loop, untouched."""

    async def start(self, stall_threshold: float, on_stall: Callable[[Stall], None]) -> None:
        """Nothing to start: the actor's loop is asyncio's, and already watched."""

    def adapt(self, fn: AsyncFn) -> AsyncFn:
        """``fn`` itself."""
        return fn


# name -> (module, class, the extra that installs what it needs). Imported on
# first use: the trio host imports trio, which most users do not have.
_HOSTS: dict[str, tuple[str, str, str | None]] = {
    "asyncio": (__name__, "AsyncioHost", None),
    "trio": ("aioray_runner._trio_host", "TrioHost", "trio"),
}
#: The valid backend names, in the order error messages list them.
BACKEND_NAMES: tuple[str, ...] = tuple(_HOSTS)


def check_backend_installed(name: str) -> None:
    """Raise :class:`ImportError` naming the extra to install if ``name`` cannot run here."""
    _, _, extra = _HOSTS[name]
    if extra is None:
        return
    try:
        importlib.import_module(extra)
    except ImportError as exc:
        raise ImportError(
            f"backend={name!r} needs {extra}: python -m pip install '.[{extra}]'"
            " in a clone of aioray-runner"
        ) from exc


def make_host(name: str) -> Host:
    """A new host for the backend called ``name`` (one of :data:`BACKEND_NAMES`)."""
    module, cls, _ = _HOSTS[name]
    host: Host = getattr(importlib.import_module(module), cls)()
    return host
