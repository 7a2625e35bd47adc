"""The start gate: a call starts only once the caller knows it will.

Before a call's code runs, its id is announced in a ``poll`` reply, and the call
waits until the caller's *next* ``poll`` arrives: proof that the caller has read
the announcement. So if the supervisor dies, the caller knows exactly which calls
may have started (those announced) and can safely send every other one
elsewhere (``docs/failures.md``). The price is one round trip before a batch
starts, paid per batch, not per call.

Two ways through, both announced the same way:

* :meth:`StartGate.admit`: a call's task waits at the gate (a call that waited
  for its dependencies or a permit);
* :meth:`StartGate.start_when_open`: the common case made cheap, a call with
  nothing to wait for and a permit already held; no task is parked per call,
  the supervisor creates its task when the gate opens (:meth:`StartGate.open`
  hands them back).

It owns its state on the supervisor's event loop, and needs nothing else: the
tests in ``tests/unit/test_start_gate.py`` drive it without Ray.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

S = TypeVar("S")


class StartGate(Generic[S]):
    """Announces calls in one ``poll`` reply and lets them start at the next ``poll``.

    ``S`` is what the supervisor keeps for a call it starts itself when the gate
    opens; ``wake`` is called when there is something to announce (the
    supervisor's standing ``poll`` should answer).
    """

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        # Ids to announce in the next poll reply, the gate those calls wait at,
        # and the gate of the ids sent in the last reply (opened by the next poll).
        self._announce: list[int] = []
        self._gate: asyncio.Future[None] | None = None
        self._sent_gate: asyncio.Future[None] | None = None
        # Calls started by the supervisor itself when their gate opens.
        self._starts: list[S] = []
        self._sent_starts: list[S] = []
        self._admitting = 0  # calls in admit()

    @property
    def waiting(self) -> int:
        """Calls waiting to start: in :meth:`admit`, or announced from
        :meth:`start_when_open` and not handed back yet."""
        return self._admitting + len(self._starts) + len(self._sent_starts)

    @property
    def has_news(self) -> bool:
        """Whether calls wait to be announced."""
        return bool(self._announce)

    async def admit(self, call_id: int) -> None:
        """Announce the call and wait until the caller has read the announcement."""
        gate = self._gate
        if gate is None:
            gate = self._gate = asyncio.get_running_loop().create_future()
        self._announce.append(call_id)
        self._wake()
        # Shielded: the gate is shared by every call of the batch, and
        # cancelling one call must not cancel the others' gate.
        self._admitting += 1
        try:
            await asyncio.shield(gate)
        finally:
            self._admitting -= 1

    def start_when_open(self, call_id: int, start: S) -> None:
        """Announce the call; :meth:`open` hands ``start`` back once it may start.

        The caller of this method wakes the poll itself (once per batch).
        """
        self._announce.append(call_id)
        self._starts.append(start)

    def open(self) -> list[S]:
        """A ``poll`` arrived: the calls announced in the previous reply may start.

        Releases the calls waiting in :meth:`admit` and returns the starts of
        :meth:`start_when_open` that were announced in that reply.
        """
        sent_gate = self._sent_gate
        if sent_gate is not None:
            if not sent_gate.done():
                sent_gate.set_result(None)
            self._sent_gate = None
        starts, self._sent_starts = self._sent_starts, []
        return starts

    def announce(self) -> list[int]:
        """The ids for the ``poll`` reply being sent; their gate opens at the next poll."""
        announced, self._announce = self._announce, []
        self._sent_gate, self._gate = self._gate, None
        self._sent_starts, self._starts = self._starts, []
        return announced
