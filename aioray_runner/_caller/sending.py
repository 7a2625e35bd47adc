"""What the caller sends to the supervisors: calls, cancels, releases and streams'
progress (I/O thread).

Calls go one message per supervisor and chunk of ``BATCH_MAX``, each recorded in
the call ledger as it leaves. A message the supervisor refuses fails its calls
only; a message that finds the supervisor dead hands it to the recovery
(``recovery.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import ray

from .._common import wire
from ..errors import RuntimeNotRunningError, SupervisorDiedError
from .fetching import lost_value_message
from .futures import AioRayFuture, fail, held_outcome, home_of, mark_cancelled, move
from .iothread import IOThread, wait_ref
from .ledger import CallLedger
from .outbox import Parcel
from .supervisors import RemoteSupervisor, Supervisors, supervisor_of

# One submit message carries at most this many calls: large enough to amortise
# a Ray call, small enough that the first results of a big batch come back early.
BATCH_MAX = 2000


class Sender:
    """Sends calls, cancels, releases and streams' progress to the supervisors (see the
    module docstring).

    ``on_death`` is told of a supervisor found dead by a message; ``closed``
    says whether the runtime has closed (then nothing is rerouted).
    """

    def __init__(
        self,
        supervisors: Supervisors,
        ledger: CallLedger[AioRayFuture[Any], Parcel],
        io: IOThread,
        logger: logging.Logger,
        *,
        on_death: Callable[[RemoteSupervisor, BaseException], None],
        closed: Callable[[], bool],
    ) -> None:
        self.supervisors = supervisors
        self.ledger = ledger
        self.io = io
        self.logger = logger
        self._on_death = on_death
        self._closed = closed
        # Cancels asked for in this turn of the I/O loop, sent together at its end.
        self._cancels: dict[RemoteSupervisor, list[int]] = {}
        # Streams' progress (values taken, in all, by call id), sent likewise.
        self._taken: dict[RemoteSupervisor, dict[int, int]] = {}

    def lift(self, obj: Any) -> wire.Lifted | None:
        """The dependency an argument stands for, if it is a future or an ObjectRef."""
        if isinstance(obj, ray.ObjectRef):
            return wire.ref_dep(obj), None
        if not isinstance(obj, AioRayFuture):
            return None
        future: AioRayFuture[Any] = obj
        supervisor = home_of(future)
        if future.done() and not supervisor.alive:
            # The outcome is here and its supervisor cannot answer for it any more.
            kind, payload = held_outcome(future)
            if kind == wire.HELD:
                message = lost_value_message(future.label, supervisor.index)
                return wire.failed_dep(message, future.label), future
            if kind != wire.OK:
                error = future.exception(0)
                message = f"{future.label} failed with {type(error).__name__}: {error}"
                return wire.failed_dep(message, future.label), future
            return wire.value_dep(payload, future.label), future
        return wire.call_dep(supervisor_of(future).handle, future.call_id, future.label), future

    def dispatch(self, parcels: Sequence[Parcel], *, relift: bool = False) -> None:
        """Send parcels to their supervisors, one message per supervisor and chunk.

        A parcel whose supervisor died meanwhile goes to the least loaded live
        one of its group. ``relift``: the parcels are being sent again, so each
        dependency is lifted afresh from its future (its outcome may now be held
        here, or on another supervisor, or be lost).
        """
        by_supervisor: dict[RemoteSupervisor, list[tuple[Any, ...]]] = {}
        functions: dict[RemoteSupervisor, dict[bytes, bytes]] = {}
        ledger = self.ledger
        for parcel in parcels:
            future, digest, fn_blob, blob, deps, upstream, limits = parcel
            if ledger.take_cancelled(future.call_id):  # cancelled while it moved
                supervisor_of(future).finished += 1  # it was counted there when assigned
                mark_cancelled(future)
                continue
            supervisor = supervisor_of(future)
            if not supervisor.alive:
                rerouted = self._reroute(future)
                if rerouted is None:
                    ledger.forget(future.call_id)
                    broken = self.supervisors.broken.get(supervisor.group)
                    fail(
                        future,
                        SupervisorDiedError(f"{future.label} cannot run: {broken}.")
                        if broken
                        else RuntimeNotRunningError(
                            f"{future.label}: the runtime closed before the call was sent"
                        ),
                    )
                    continue
                supervisor = rerouted
            if relift:
                deps = self._relift(deps, upstream)
                parcel = (future, digest, fn_blob, blob, deps, upstream, limits)
            ledger.sent(supervisor, future.call_id, future, parcel)
            if digest not in supervisor.known_digests:
                supervisor.known_digests.add(digest)
                functions.setdefault(supervisor, {})[digest] = fn_blob
            again = ledger.rerun_of(future.call_id)
            rerun = None if again is None else wire.Rerun(*again)
            by_supervisor.setdefault(supervisor, []).append(
                (future.call_id, digest, blob, deps, future.label, rerun, limits)
            )
        for supervisor, calls in by_supervisor.items():
            for start in range(0, len(calls), BATCH_MAX):
                chunk = calls[start : start + BATCH_MAX]
                fns = functions.pop(supervisor, {}) if start == 0 else {}
                ref = supervisor.handle.submit.remote(fns, chunk)
                self.io.spawn(
                    self.watch(supervisor, ref, [c[0] for c in chunk], "a batch of calls")
                )

    def cancel(self, future: AioRayFuture[Any]) -> None:
        """Ask the future's supervisor to cancel its call (I/O thread; batched per turn)."""
        if future.done():
            return
        # Remembered, so a supervisor death cannot send the call on afterwards.
        self.ledger.cancel(future.call_id)
        supervisor = supervisor_of(future)
        # Not sent yet: it will not be (see dispatch), so nothing to tell.
        if supervisor.alive and self.ledger.holds(supervisor, future.call_id):
            # One message per supervisor per loop turn, not one per call: a runner
            # cancelling 3,000 task runs on Ctrl-C sent 3,000 actor calls, which
            # queued behind each other in Ray for tens of seconds.
            if not self._cancels:
                self.io.call_soon(self._send_cancels)
            self._cancels.setdefault(supervisor, []).append(future.call_id)

    def taken(self, future: AioRayFuture[Any], count: int) -> None:
        """A stream's consumer has taken ``count`` values in all (I/O thread; batched
        per turn): its generator may run on (see ``_caller/streams.py``)."""
        supervisor = supervisor_of(future)
        if future.done() or not supervisor.alive:
            return
        if not self._taken:
            self.io.call_soon(self._send_taken)
        self._taken.setdefault(supervisor, {})[future.call_id] = count

    def _send_taken(self) -> None:
        taken, self._taken = self._taken, {}
        for supervisor, counts in taken.items():
            if supervisor.alive:
                self.io.spawn(self.watch(supervisor, supervisor.handle.taken.remote(counts)))

    def release(self, supervisor: RemoteSupervisor, call_ids: list[int]) -> None:
        """Tell a supervisor to forget these outcomes (their futures are gone)."""
        self.io.spawn(self.watch(supervisor, supervisor.handle.release.remote(call_ids)))

    async def watch(
        self,
        supervisor: RemoteSupervisor,
        ref: Any,
        call_ids: Sequence[int] = (),
        what: str = "a message",
    ) -> None:
        """Wait for a message's answer: a dead supervisor goes to ``on_death``."""
        try:
            await wait_ref(ref)
        except asyncio.CancelledError:
            raise
        except ray.exceptions.RayActorError as exc:
            self._on_death(supervisor, exc)
        except Exception as exc:
            # The supervisor is alive but refused this message: fail its calls only.
            self.logger.error("%s could not take %s: %s", supervisor.describe(), what, exc)
            for call_id in call_ids:
                future = self.ledger.refused(supervisor, call_id)
                if future is not None:
                    supervisor.finished += 1
                    fail(future, exc)

    def _send_cancels(self) -> None:
        cancels, self._cancels = self._cancels, {}
        for supervisor, call_ids in cancels.items():
            if supervisor.alive:
                self.io.spawn(self.watch(supervisor, supervisor.handle.cancel.remote(call_ids)))

    def _reroute(self, future: AioRayFuture[Any]) -> RemoteSupervisor | None:
        """Move a call that never started to the least loaded live supervisor."""
        if self._closed():
            return None
        supervisor = self.supervisors.least_loaded(supervisor_of(future).group)
        if supervisor is None:
            return None
        supervisor.assign()
        move(future, supervisor)
        return supervisor

    def _relift(
        self, deps: list[wire.Dep], upstream: list[AioRayFuture[Any] | None]
    ) -> list[wire.Dep]:
        fresh = list(deps)
        for index, future in enumerate(upstream):
            if future is not None:
                lifted = self.lift(future)
                assert lifted is not None
                fresh[index] = lifted[0]
        return fresh
