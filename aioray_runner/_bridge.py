"""Waking the caller's event loop from the runtime's I/O thread.

Results arrive on a background thread. Whoever awaits them lives on an asyncio
loop or a trio run (or on no loop at all). ``loop_scheduler()`` returns a
thread-safe "run this soon on the caller's loop" function for the loop that is
running now, the same job anyio's backends do for ``from_thread``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Protocol

Scheduler = Callable[[Callable[[], object]], None]


def current_async_library() -> str | None:
    """Return ``"trio"``, ``"asyncio"`` or ``None`` for the code running now.

    trio is checked first: a trio guest run lives on top of an asyncio loop, and
    code inside it must be woken through trio.
    """
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            pass
        else:
            return "trio"
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return None
    return "asyncio"


def loop_scheduler() -> Scheduler | None:
    """A thread-safe way to run a callback on the current event loop, or ``None``."""
    library = current_async_library()
    return None if library is None else _LOOPS[library].threadsafe()


def end_of_turn_scheduler() -> tuple[object, Scheduler] | None:
    """``(loop key, schedule)``: run a callback once the current task yields.

    Submissions made before then travel in one batch. The key identifies the
    running loop (the asyncio loop, or the trio run's token), so a caller can
    tell whether it already scheduled a callback for this loop.
    """
    library = current_async_library()
    return None if library is None else _LOOPS[library].end_of_turn()


class _AsyncioLoop:
    """The asyncio loop running now: ``call_soon_threadsafe`` and ``call_soon``."""

    @staticmethod
    def threadsafe() -> Scheduler:
        loop = asyncio.get_running_loop()

        def schedule(fn: Callable[[], object]) -> None:
            try:
                loop.call_soon_threadsafe(fn)
            except RuntimeError:
                pass  # the loop is closed: nobody is left to wake

        return schedule

    @staticmethod
    def end_of_turn() -> tuple[object, Scheduler]:
        loop = asyncio.get_running_loop()

        def schedule(fn: Callable[[], object]) -> None:
            loop.call_soon(fn)

        return loop, schedule


class _TrioLoop:
    """The trio run going on now: its token's ``run_sync_soon`` for both."""

    @staticmethod
    def threadsafe() -> Scheduler:
        import trio

        token = trio.lowlevel.current_trio_token()

        def schedule(fn: Callable[[], object]) -> None:
            try:
                token.run_sync_soon(fn)
            except trio.RunFinishedError:
                pass  # the trio run is over: nobody is left to wake

        return schedule

    @staticmethod
    def end_of_turn() -> tuple[object, Scheduler]:
        import trio

        # run_sync_soon runs after the current task yields, like call_soon.
        return trio.lowlevel.current_trio_token(), _TrioLoop.threadsafe()


class _CallerLoop(Protocol):
    def threadsafe(self) -> Scheduler: ...
    def end_of_turn(self) -> tuple[object, Scheduler]: ...


# The one table of caller-side loops, by what current_async_library() says.
_LOOPS: dict[str, _CallerLoop] = {"asyncio": _AsyncioLoop(), "trio": _TrioLoop()}
