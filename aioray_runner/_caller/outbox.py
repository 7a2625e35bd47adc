"""The outbox: calls submitted in this loop turn, handed to the I/O thread at its end.

``submit`` runs on the caller's thread and puts the call's parcel here. At the
end of the caller's loop turn (asyncio ``call_soon``, trio ``run_sync_soon``; at
once for sync callers) the outbox hands everything it holds to the I/O thread in
one go, so 10,000 submissions in one turn cost one handoff, and a lone
submission leaves as soon as its turn ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .._common import wire
from .futures import AioRayFuture
from .iothread import IOThread
from .wakeups import end_of_turn_scheduler

# Everything needed to send one call (again): the future, the function's digest
# and bytes, the pickled arguments, their dependencies and, parallel to those,
# the futures behind them (None for an ObjectRef), and a stream's limits (None
# for a plain call).
Parcel = tuple[
    AioRayFuture[Any],
    bytes,
    bytes,
    bytes,
    list[wire.Dep],
    "list[AioRayFuture[Any] | None]",
    "wire.StreamLimits | None",
]


class Outbox:
    """Parcels not yet handed to the I/O thread (any thread puts, the I/O thread sends).

    ``send`` runs on the I/O thread with every parcel put since it last ran;
    ``on_closed`` is called when a handoff finds the I/O loop closed.
    """

    def __init__(
        self,
        io: IOThread,
        send: Callable[[list[Parcel]], None],
        on_closed: Callable[[], None],
    ) -> None:
        self._io = io
        self._send = send
        self._on_closed = on_closed
        self._parcels: list[Parcel] = []
        self._lock = threading.Lock()
        # A `_send_all` is queued on the I/O loop (guarded by _lock).
        self._scheduled = False
        # Per thread: the loop whose end-of-turn handoff is already scheduled.
        self._turn = threading.local()

    def put(self, parcel: Parcel) -> None:
        """Queue a parcel; it leaves at the end of the caller's loop turn (sync: now)."""
        with self._lock:
            self._parcels.append(parcel)
        turn = end_of_turn_scheduler()
        if turn is None:
            self._handoff()  # a sync caller: no turn to wait for
        else:
            # One handoff per turn of *this* loop; other threads and loops
            # schedule their own, so a busy loop never holds their calls back.
            key, schedule = turn
            if getattr(self._turn, "key", None) is not key:
                self._turn.key = key
                schedule(self._end_of_turn)

    def send_now(self) -> None:
        """Hand queued calls to the I/O thread now, not at the end of the loop turn.

        For a caller about to block its own thread (``result()``, Prefect's
        ``as_completed``): the end of its loop turn would not come until the
        wait is over.
        """
        if self._parcels:
            self._handoff()

    def send_all(self) -> None:
        """Send everything queued (on the I/O thread)."""
        with self._lock:
            parcels, self._parcels = self._parcels, []
            self._scheduled = False
        self._send(parcels)

    def take_all(self) -> list[Parcel]:
        """Empty the outbox without sending (the runtime closed, Ray went away)."""
        with self._lock:
            parcels, self._parcels = self._parcels, []
        return parcels

    def _end_of_turn(self) -> None:
        self._turn.key = None
        self._handoff()

    def _handoff(self) -> None:
        with self._lock:
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._io.call_soon(self.send_all)
        except RuntimeError:  # the I/O loop is closed
            self._on_closed()
