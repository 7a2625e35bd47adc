"""Waking the caller's event loop from the runtime's I/O thread.

Results arrive on a background thread. Whoever awaits them lives on an asyncio
loop or a trio run (or on no loop at all). ``loop_scheduler()`` returns a
thread-safe "run this soon on the caller's loop" function for the loop that is
running now, the same job anyio's backends do for ``from_thread``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


# While the I/O thread delivers one poll's outcomes, the wake-ups it makes are
# held here, by loop, and sent as one thread-safe call per loop at the end: a
# caller awaiting 5,000 results is woken once, not 5,000 times.
_held = threading.local()


@contextmanager
def one_wakeup_per_loop() -> Iterator[None]:
    """Inside, thread-safe schedules are gathered by loop and sent together on exit."""
    pending: dict[object, tuple[Scheduler, list[Callable[[], object]]]] = {}
    _held.pending = pending
    try:
        yield
    finally:
        _held.pending = None
        for send, callbacks in pending.values():
            if len(callbacks) == 1:
                send(callbacks[0])
            else:
                send(functools.partial(_run_all, callbacks))


def _run_all(callbacks: list[Callable[[], object]]) -> None:
    for callback in callbacks:
        try:
            callback()
        except Exception:  # one broken callback must not keep the others from running
            logging.getLogger("aioray_runner").exception("wake-up callback %r raised", callback)


def _held_or(key: object, send: Scheduler) -> Scheduler:
    """``send``, unless a batch is being delivered on this thread: then hold for it."""

    def schedule(fn: Callable[[], object]) -> None:
        pending = getattr(_held, "pending", None)
        if pending is None:
            send(fn)
            return
        entry = pending.get(key)
        if entry is None:
            pending[key] = (send, [fn])
        else:
            entry[1].append(fn)

    return schedule


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

        def send(fn: Callable[[], object]) -> None:
            try:
                loop.call_soon_threadsafe(fn)
            except RuntimeError:
                pass  # the loop is closed: nobody is left to wake

        return _held_or(loop, send)

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

        def send(fn: Callable[[], object]) -> None:
            try:
                token.run_sync_soon(fn)
            except trio.RunFinishedError:
                pass  # the trio run is over: nobody is left to wake

        return _held_or(token, send)

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
