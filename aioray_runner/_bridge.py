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
    if library == "trio":
        import trio

        token = trio.lowlevel.current_trio_token()
        return _trio_scheduler(token)
    if library == "asyncio":
        loop = asyncio.get_running_loop()
        return _asyncio_scheduler(loop)
    return None


def end_of_turn_scheduler() -> tuple[object, Scheduler] | None:
    """``(loop key, schedule)``: run a callback once the current task yields.

    Submissions made before then travel in one batch. The key identifies the
    running loop (the asyncio loop, or the trio run's token), so a caller can
    tell whether it already scheduled a callback for this loop.
    """
    library = current_async_library()
    if library == "trio":
        import trio

        token = trio.lowlevel.current_trio_token()
        return token, _trio_scheduler(token)
    if library == "asyncio":
        loop = asyncio.get_running_loop()

        def schedule(fn: Callable[[], object]) -> None:
            loop.call_soon(fn)

        return loop, schedule
    return None


def _asyncio_scheduler(loop: asyncio.AbstractEventLoop) -> Scheduler:
    def schedule(fn: Callable[[], object]) -> None:
        try:
            loop.call_soon_threadsafe(fn)
        except RuntimeError:
            pass  # the loop is closed: nobody is left to wake

    return schedule


def _trio_scheduler(token: object) -> Scheduler:
    import trio

    def schedule(fn: Callable[[], object]) -> None:
        try:
            token.run_sync_soon(fn)  # type: ignore[attr-defined]
        except trio.RunFinishedError:
            pass  # the trio run is over: nobody is left to wake

    return schedule
