"""The call ledger: which calls may have started; after a death, which are lost and
which are sent on.

A supervisor announces each call before it starts it (its start gate,
``_supervisor/gate.py``), so the caller can keep, per supervisor, an exact book:

* **in flight**: sent there, no outcome yet;
* **unstarted**: in flight and never announced, with the parcel that sends it
  again: certainly never started;
* **rerunnable**: announced (may have started), but submitted with ``reruns``
  left, with its parcel.

When a supervisor dies (:meth:`CallLedger.died`) its calls split exactly: the
unstarted and the rerunnable are sent on (a rerun counts one run more, and
carries why the previous one was lost), every other call is lost. Calls that
never started do not count as runs. A call cancelled by the caller stays
cancelled (:meth:`CallLedger.take_cancelled`). A call handed back by a
supervisor because an upstream's supervisor died is sent again a few times at
most (:meth:`CallLedger.count_send`).

The ledger is owned by the I/O thread (only ``allow_reruns`` runs on a caller's
thread, before the call is queued). It stores futures and parcels without
looking into them: ``tests/unit/test_call_ledger.py`` drives it without Ray.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

F = TypeVar("F")  # what the caller holds for a call (its future)
P = TypeVar("P")  # what sends it again (its parcel)


class _Notes:
    """What the ledger keeps for a call beyond its books (few calls need it)."""

    __slots__ = ("attempt", "cancelled", "loss", "lost_at", "reruns", "sends")

    def __init__(self) -> None:
        self.reruns = 0  # runs allowed after a death while it may have been running
        self.attempt = 1  # which run the next send is
        self.loss = ""  # why the previous run was lost
        self.lost_at = 0.0  # when (time.time())
        self.sends = 0  # times handed back (resent) and sent again
        self.cancelled = False  # cancel() was called: never send it again


class _Book(Generic[F, P]):
    """One supervisor's page of the ledger."""

    __slots__ = ("in_flight", "rerunnable", "unstarted")

    def __init__(self) -> None:
        self.in_flight: dict[int, F] = {}
        self.unstarted: dict[int, P] = {}
        self.rerunnable: dict[int, P] = {}


@dataclass
class Death(Generic[F, P]):
    """How a dead supervisor's calls split (see :meth:`CallLedger.died`)."""

    #: Calls that may have started and may not run again: they fail.
    lost: list[F] = field(default_factory=list)
    #: Parcels to send to a live supervisor, by call id.
    resend: list[P] = field(default_factory=list)
    #: Of ``resend``: how many had never started, how many run again.
    never_started: int = 0
    rerun: int = 0


class CallLedger(Generic[F, P]):
    """The caller's book of calls per supervisor (see the module docstring).

    ``where`` is any hashable that names one supervisor (one generation of it:
    a replacement is a new ``where``).
    """

    def __init__(self) -> None:
        self._books: dict[Hashable, _Book[F, P]] = {}
        # Call id -> notes, for the few calls that need them; dropped when the
        # call's outcome is settled.
        self._notes: dict[int, _Notes] = {}

    def _book(self, where: Hashable) -> _Book[F, P]:
        book = self._books.get(where)
        if book is None:
            book = self._books[where] = _Book()
        return book

    def _notes_of(self, call_id: int) -> _Notes:
        notes = self._notes.get(call_id)
        if notes is None:
            notes = self._notes[call_id] = _Notes()
        return notes

    # -- what the caller asks for a call ----------------------------------------------

    def allow_reruns(self, call_id: int, reruns: int) -> None:
        """The call may run ``reruns`` more times after a death while it may be running."""
        if reruns:
            self._notes_of(call_id).reruns = reruns

    def cancel(self, call_id: int) -> None:
        """The caller cancelled the call: it is never sent again."""
        self._notes_of(call_id).cancelled = True

    def take_cancelled(self, call_id: int) -> bool:
        """Whether a call about to be sent (again) was cancelled; if so it is forgotten."""
        notes = self._notes.get(call_id) if self._notes else None
        if notes is None or not notes.cancelled:
            return False
        del self._notes[call_id]
        return True

    def rerun_of(self, call_id: int) -> tuple[int, str, float] | None:
        """``(attempt, previous loss, when: a time.time())`` for a call being run again,
        else ``None``."""
        notes = self._notes.get(call_id) if self._notes else None
        if notes is None or notes.attempt == 1:
            return None
        return notes.attempt, notes.loss, notes.lost_at

    def count_send(self, call_id: int) -> int:
        """The call was handed back to be sent again: how many times it has been."""
        notes = self._notes_of(call_id)
        notes.sends += 1
        return notes.sends

    def forget(self, call_id: int) -> None:
        """The call's outcome is settled elsewhere: drop its notes."""
        self._notes.pop(call_id, None)

    # -- a supervisor's book ------------------------------------------------------------

    def sent(self, where: Hashable, call_id: int, future: F, parcel: P) -> None:
        """The call was sent to ``where``: in flight, and not started."""
        book = self._book(where)
        book.in_flight[call_id] = future
        book.unstarted[call_id] = parcel

    def announced(self, where: Hashable, call_ids: Iterable[int]) -> None:
        """``where`` announced these calls: they may have started from now on."""
        book = self._books.get(where)
        if book is None:  # it died meanwhile: its calls are settled
            return
        unstarted, notes = book.unstarted, self._notes
        for call_id in call_ids:
            parcel = unstarted.pop(call_id, None)  # may have started: not sent again...
            if parcel is not None and notes and (note := notes.get(call_id)) and note.reruns:
                book.rerunnable[call_id] = parcel  # ...unless it may run again

    def settled(self, where: Hashable, call_id: int, *, resend: bool) -> tuple[F | None, P | None]:
        """An outcome of the call arrived from ``where``: its future and unsent parcel.

        ``resend``: the supervisor handed the call back (it never started); its
        notes stay, for the send that follows.
        """
        book = self._books.get(where)
        if book is None:  # it died meanwhile: its calls were settled then
            future = parcel = None
        else:
            future = book.in_flight.pop(call_id, None)
            parcel = book.unstarted.pop(call_id, None)
        if self._notes:
            if book is not None:
                book.rerunnable.pop(call_id, None)
            if not resend:
                self._notes.pop(call_id, None)
        return future, parcel

    def refused(self, where: Hashable, call_id: int) -> F | None:
        """``where`` refused the message that carried the call: it is over there."""
        book = self._books.get(where)
        if book is None:  # it died meanwhile: its calls were settled then
            return None
        future = book.in_flight.pop(call_id, None)
        book.unstarted.pop(call_id, None)
        book.rerunnable.pop(call_id, None)
        if future is not None:
            self._notes.pop(call_id, None)
        return future

    def in_flight(self, where: Hashable) -> list[F]:
        """The futures of the calls in flight on ``where``."""
        book = self._books.get(where)
        return list(book.in_flight.values()) if book else []

    def all_in_flight(self) -> list[F]:
        """The futures of every call in flight, on every supervisor."""
        return [future for book in self._books.values() for future in book.in_flight.values()]

    def holds(self, where: Hashable, call_id: int) -> bool:
        """Whether the call is in flight on ``where``."""
        book = self._books.get(where)
        return book is not None and call_id in book.in_flight

    def died(self, where: Hashable, loss: str) -> Death[F, P]:
        """``where`` died (``loss`` says how): split its calls, and close its book.

        Never announced: sent on. Announced with reruns left: sent on as the
        next run (one rerun fewer; ``rerun_of`` says which run, and ``loss``).
        Every other call in flight is lost (its notes are dropped).
        """
        book = self._books.pop(where, None)
        death: Death[F, P] = Death()
        if book is None:
            return death
        resend = dict(book.unstarted)
        now = time.time()
        for call_id, parcel in book.rerunnable.items():
            notes = self._notes_of(call_id)
            notes.reruns -= 1
            notes.attempt += 1
            notes.loss = loss
            notes.lost_at = now
            resend[call_id] = parcel
        for call_id, future in book.in_flight.items():
            if call_id not in resend:
                self._notes.pop(call_id, None)
                death.lost.append(future)
        death.resend = [resend[call_id] for call_id in sorted(resend)]
        death.never_started, death.rerun = len(book.unstarted), len(book.rerunnable)
        return death

    def clear(self) -> list[F]:
        """Close every book (the runtime closes, or Ray went away): what was in flight."""
        lost = [future for book in self._books.values() for future in book.in_flight.values()]
        self._books.clear()
        self._notes.clear()
        return lost

    def forget_all_notes(self) -> None:
        """Drop every call's notes (the calls not sent yet failed)."""
        self._notes.clear()
