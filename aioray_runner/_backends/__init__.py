"""Backends: the async library coroutines are written for, one module per library.

Each backend is a module ``_backends/_<name>.py`` holding both of its halves,
loaded by name (the names, and the extra each needs, are
:data:`aioray_runner._common.settings.BACKENDS`):

* ``HOST``, the supervisor's half (:class:`Host`): a supervisor is a Ray async
  actor, so it always owns an asyncio loop, and a host runs coroutines on it.
  asyncio runs them on the actor's loop as they are; trio runs them in a
  ``trio.run`` on a thread of the supervisor's own.
* ``LOOP``, the caller's half (:class:`CallerLoop`): how the I/O thread wakes
  the caller's event loop, and how a submission waits for the end of its turn.

Both hosts have the same two methods: ``start(...)`` once, and ``adapt(fn)``
once per function, which returns the coroutine function the supervisor awaits
for each call. The per-call path is therefore the same for every backend: no
branch on the backend's name, no extra frame for asyncio.

A new backend is a new module here with a ``HOST`` class and a ``LOOP``
object, and one entry in ``BACKENDS`` (``_common/settings.py``).
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .._common.watchdog import Stall

AsyncFn = Callable[..., Awaitable[Any]]
#: Runs a callback soon on one event loop, from any thread.
Scheduler = Callable[[Callable[[], object]], None]


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


class CallerLoop(Protocol):
    """The caller's event loop of one library, as the runtime wakes it."""

    def threadsafe(self, hold: Callable[[object, Scheduler], Scheduler]) -> Scheduler:
        """Run a callback soon on the loop running now, from any thread.

        ``hold(key, send)`` wraps the sender so that wake-ups made while one
        batch is delivered are sent once per loop (``_caller/wakeups.py``).
        """

    def end_of_turn(
        self, hold: Callable[[object, Scheduler], Scheduler]
    ) -> tuple[object, Scheduler]:
        """``(loop key, schedule)``: run a callback once the current task yields."""


def _module(name: str) -> Any:
    return importlib.import_module(f"{__name__}._{name}")


def make_host(name: str) -> Host:
    """A new host for the backend called ``name`` (one of ``BACKEND_NAMES``)."""
    host: Host = _module(name).HOST()
    return host


def caller_loop(name: str) -> CallerLoop:
    """The caller's half of the backend called ``name``."""
    loop: CallerLoop = _module(name).LOOP
    return loop
