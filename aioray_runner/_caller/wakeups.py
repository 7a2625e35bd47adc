"""Waking the caller's event loop from the runtime's I/O thread.

Results arrive on a background thread. Whoever awaits them lives on an asyncio
loop or a trio run (or on no loop at all). ``loop_scheduler()`` returns a
thread-safe "run this soon on the caller's loop" function for the loop that is
running now, the same job anyio's backends do for ``from_thread``: each
backend's caller half (``_backends/_<name>.py``) says how, loaded by name.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .._backends import CallerLoop, Scheduler, caller_loop


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
    return None if library is None else _loop_of(library).threadsafe(_held_or)


def end_of_turn_scheduler() -> tuple[object, Scheduler] | None:
    """``(loop key, schedule)``: run a callback once the current task yields.

    Submissions made before then travel in one batch. The key identifies the
    running loop (the asyncio loop, or the trio run's token), so a caller can
    tell whether it already scheduled a callback for this loop.
    """
    library = current_async_library()
    return None if library is None else _loop_of(library).end_of_turn(_held_or)


# The caller's half of each backend, by what current_async_library() says;
# loaded on first use (the trio half imports trio).
_LOOPS: dict[str, CallerLoop] = {}


def _loop_of(library: str) -> CallerLoop:
    loop = _LOOPS.get(library)
    if loop is None:
        loop = _LOOPS[library] = caller_loop(library)
    return loop
