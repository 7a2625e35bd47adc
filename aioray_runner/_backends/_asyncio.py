"""The asyncio backend: coroutines run on the supervisor actor's own loop, untouched;
callers' asyncio loops are woken with ``call_soon_threadsafe``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .._common.watchdog import Stall
from . import AsyncFn, Scheduler


class AsyncioHost:
    """The asyncio backend's supervisor half: the actor's loop runs the coroutines."""

    async def start(self, stall_threshold: float, on_stall: Callable[[Stall], None]) -> None:
        """Nothing to start: the actor's loop is asyncio's, and already watched."""

    def adapt(self, fn: AsyncFn) -> AsyncFn:
        """``fn`` itself."""
        return fn


class AsyncioLoop:
    """The asyncio loop running now: ``call_soon_threadsafe`` and ``call_soon``."""

    @staticmethod
    def threadsafe(hold: Callable[[object, Scheduler], Scheduler]) -> Scheduler:
        """Wake the running loop from any thread (nothing happens once it is closed)."""
        loop = asyncio.get_running_loop()

        def send(fn: Callable[[], object]) -> None:
            try:
                loop.call_soon_threadsafe(fn)
            except RuntimeError:
                pass  # the loop is closed: nobody is left to wake

        return hold(loop, send)

    @staticmethod
    def end_of_turn(hold: Callable[[object, Scheduler], Scheduler]) -> tuple[object, Scheduler]:
        """The running loop and its ``call_soon``."""
        loop = asyncio.get_running_loop()

        def schedule(fn: Callable[[], object]) -> None:
            loop.call_soon(fn)

        return loop, schedule


HOST = AsyncioHost
LOOP = AsyncioLoop()
