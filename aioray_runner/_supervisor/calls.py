"""A call on a supervisor: its record, the permits that cap how many run at once,
and the hand-back of a call that cannot start here."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterable
from typing import Any


class CallRecord:
    """One call on this supervisor: its task while it runs, its outcome once done.

    Kept small: one per call, 10,000 at once in a burst. The outcome is a
    plain field, and a future is made only for a dependent that waits for it.
    """

    __slots__ = (
        "admitted",
        "call_id",
        "label",
        "outcome",
        "released",
        "started",
        "task",
        "waiters",
    )

    def __init__(self, call_id: int, label: str) -> None:
        self.call_id = call_id
        self.label = label
        #: ``(kind, pickled payload)`` once finished (see ``wire.Outcome``).
        self.outcome: tuple[int, bytes | None] | None = None
        self.waiters: list[asyncio.Future[tuple[int, bytes | None]]] | None = None
        self.task: asyncio.Task[None] | None = None
        self.started = False  # its task began running ``_run``
        self.admitted = False  # it holds a permit taken before its task started
        self.released = False

    async def wait(self) -> tuple[int, bytes | None]:
        """The outcome, once there is one."""
        if self.outcome is not None:
            return self.outcome
        waiter: asyncio.Future[tuple[int, bytes | None]] = (
            asyncio.get_running_loop().create_future()
        )
        if self.waiters is None:
            self.waiters = []
        self.waiters.append(waiter)
        return await waiter


class Permits:
    """``max_concurrency`` as a count of free permits to run, first come first served.

    Like ``asyncio.Semaphore``, plus a synchronous ``try_acquire`` so that
    ``submit`` can take a permit for a call it announces at once.
    """

    def __init__(self, free: int) -> None:
        self._free = free
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def waiting(self) -> int:
        """Calls waiting for a permit now."""
        return len(self._waiters)

    def try_acquire(self) -> bool:
        """Take a permit if one is free and nobody waits for one."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        return False

    async def acquire(self) -> None:
        """Take a permit, waiting for one in turn."""
        if self.try_acquire():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a permit just as it was cancelled: pass it on
            raise

    def release(self) -> None:
        """Give a permit back: to the next waiter, if any."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the permit goes straight to the next waiter
                return
        self._free += 1


class Resend(Exception):
    """This call cannot start here, but never started: the caller sends it again.

    Raised while resolving dependencies when the supervisor holding upstream
    number ``index`` died (``owner``: its actor id), or when the upstream was
    itself sent again (``owner`` None). The caller knows where that upstream's
    outcome lives now: in its own hands, on another supervisor, or lost.
    """

    def __init__(self, index: int, owner: str | None) -> None:
        super().__init__(index, owner)
        self.index = index
        self.owner = owner


def calls_holding(
    task: asyncio.Task[Any] | None, starting: CallRecord | None, records: Iterable[CallRecord]
) -> tuple[tuple[int, str], ...]:
    """The call whose code runs in ``task`` (the watchdog's thread, the loop stuck).

    ``starting``: the call whose first step runs now, as it starts (3.12+). Else
    a call's own task, or a task it awaits (Prefect runs each task run in a
    task of its own): follow what each running call waits on, a few hops.
    """
    if starting is not None:
        return ((starting.call_id, starting.label),)
    if task is None:
        return ()
    for record in list(records):
        waiting_on: Any = record.task
        for _ in range(4):
            if waiting_on is None:
                break
            if waiting_on is task:
                return ((record.call_id, record.label),)
            waiting_on = getattr(waiting_on, "_fut_waiter", None)
    return ()
