"""A call on a supervisor: its record, the table of records by id, the permits that
cap how many run at once, the hand-back of a call that cannot start here, and its
outcome packed for the caller."""

from __future__ import annotations

import asyncio
import collections
import pickle
from collections.abc import Iterable, Sequence
from typing import Any

from .._common import wire
from .._common.settings import Settings
from ..errors import RemoteError


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
        "stream",
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
        #: A stream's limits (``wire.StreamLimits``), None for a plain call.
        self.stream: tuple[int, int] | None = None

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


class CallTable:
    """This supervisor's calls by id, from arrival until the caller releases them.

    Also what arrives out of order: a dependent on this supervisor may ask for a
    call's outcome (``arrived``) before the call itself arrives, and a cancel
    may come before the call it cancels.
    """

    def __init__(self) -> None:
        self._records: dict[int, CallRecord] = {}
        self._arrivals: dict[int, asyncio.Future[CallRecord]] = {}
        self._cancel_early: set[int] = set()

    def __len__(self) -> int:
        return len(self._records)

    def records(self) -> Iterable[CallRecord]:
        """Every record held now (finished ones until released)."""
        return self._records.values()

    def get(self, call_id: int) -> CallRecord | None:
        """The call's record, if it has arrived and is still held."""
        return self._records.get(call_id)

    def arrive(self, call_id: int, label: str) -> tuple[CallRecord, bool]:
        """A call arrived: its new record, and whether a cancel came before it."""
        record = self._records[call_id] = CallRecord(call_id, label)
        arrival = self._arrivals.pop(call_id, None)
        if arrival is not None:
            arrival.set_result(record)
        if call_id in self._cancel_early:
            self._cancel_early.discard(call_id)
            return record, True
        return record, False

    async def arrived(self, call_id: int) -> CallRecord:
        """The call's record, once the call has arrived."""
        record = self._records.get(call_id)
        if record is not None:
            return record
        arrival = self._arrivals.get(call_id)
        if arrival is None:
            arrival = asyncio.get_running_loop().create_future()
            self._arrivals[call_id] = arrival
        return await asyncio.shield(arrival)

    def cancel_early(self, call_id: int) -> None:
        """A cancel for a call still on its way here: it ends as it arrives."""
        self._cancel_early.add(call_id)

    def release(self, call_ids: Sequence[int]) -> None:
        """The caller dropped these futures: forget each outcome once finished."""
        for call_id in call_ids:
            record = self._records.get(call_id)
            if record is None:
                continue
            if record.outcome is not None:
                del self._records[call_id]
            else:
                record.released = True

    def outcomes(self, call_ids: Sequence[int]) -> list[tuple[int, bytes | None]]:
        """The outcomes of these finished calls, in order, for the caller that left
        their values here; a call no longer held (never the case while its future
        lives) comes back as an error saying so."""
        found = []
        for call_id in call_ids:
            record = self._records.get(call_id)
            if record is not None and record.outcome is not None:
                found.append(record.outcome)
            else:
                error = RemoteError(
                    "LookupError", f"call {call_id}'s result is no longer held by its supervisor"
                )
                found.append((wire.ERROR, wire.dumps_exception(error)))
        return found

    def held_bytes(self) -> int:
        """Bytes of finished calls' outcomes held here, in all."""
        return sum(
            len(record.outcome[1] or b"")
            for record in self._records.values()
            if record.outcome is not None
        )

    def forget(self, call_id: int) -> None:
        """Drop a finished call's record now (released, or handed back)."""
        self._records.pop(call_id, None)


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

    def take_anyway(self) -> None:
        """Take a permit even if none is free, for a call that must hold one while it
        unwinds (the count goes below zero until it is given back)."""
        self._free -= 1

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


def for_the_caller(record: CallRecord, value: Any, settings: Settings) -> wire.Outcome:
    """A finished call as the next poll reply carries it: a value above
    ``settings.hold_results_above`` stays here (``wire.HELD``: its size and the
    summary it gives of itself travel), to be fetched only if someone asks for it
    (``Supervisor.results_of``)."""
    assert record.outcome is not None
    kind, payload = record.outcome
    hold = settings.hold_results_above
    if kind == wire.OK and hold is not None and payload is not None and len(payload) > hold:
        summary = wire.summary_of(value, record.label)
        # A value that gives summaries but gave none (or one as big as itself)
        # travels whole: its caller needs what the summary would have said.
        gave_none = not summary and hasattr(type(value), "__aioray_summary__")
        if not gave_none and len(summary) <= hold:
            return record.call_id, wire.HELD, wire.held_payload(len(payload), summary)
    return record.call_id, kind, payload


def pack_outcome(kind: int, value: Any, label: str) -> tuple[int, bytes | None]:
    """A finished call's outcome as ``(kind, pickled payload)`` for the caller.

    Never raises: an outcome that cannot be pickled becomes a
    :class:`RemoteError` saying so, for the call must be reported whatever it is.
    """
    try:
        if kind == wire.OK:
            return wire.dumps_value(value, label)
        if kind == wire.ERROR:
            return kind, wire.dumps_exception(value)
        if kind == wire.RESEND:
            return kind, pickle.dumps(wire.ResendReason(value.index, value.owner))
        return kind, None
    except BaseException as exc:
        error = RemoteError(
            type(value).__qualname__,
            f"the outcome of {label} could not be sent back: {type(exc).__name__}",
        )
        return wire.ERROR, wire.dumps_exception(error)
