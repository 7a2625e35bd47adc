"""The pool: the caller's side of one runtime's supervisors, as a coordinator.

``submit`` runs on the caller's thread: it pickles the arguments (so a bad
argument fails there, by name), picks the least loaded supervisor and puts the
call in the outbox (``outbox.py``), which hands each loop turn's calls to the
I/O thread (``iothread.py``) at once. There the sender (``sending.py``) sends
them to each supervisor as one actor call, recording them in the call ledger
(``ledger.py``). For each supervisor the pool keeps one ``poll`` call
outstanding; each answer carries every outcome finished since the last, and
sets the matching futures. A failed ``poll`` or message means the supervisor
died: the recovery (``recovery.py``) replaces it and sends on every call that
never started. The supervisors themselves, by group, are ``supervisors.py``'s.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, cast

from .._common import wire
from .._common.settings import Settings
from .._common.watchdog import BlockedLoop
from ..errors import RayLostError, RuntimeNotRunningError, SupervisorDiedError
from .fetching import Fetcher
from .futures import AioRayFuture, Home, fail, settle
from .iothread import IOThread, wait_ref
from .ledger import CallLedger
from .outbox import Outbox, Parcel
from .placement import DEFAULT_GROUP, GroupKey
from .raywatch import Probe, RayWatch
from .recovery import Recovery
from .releases import Releases
from .reports import Reports
from .sending import Sender
from .streams import Inbox, Inboxes
from .supervisors import RemoteSupervisor, Supervisors
from .wakeups import one_wakeup_per_loop

# One supervisor-side poll returns at most this many outcomes: large enough to
# amortise a Ray call, small enough that the first results of a big batch come
# back early.
POLL_MAX = 5000


class Pool:
    """The supervisors of one runtime and the calls sent to them (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        logger: logging.Logger,
        on_blocked_loop: Callable[[BlockedLoop], object] | None = None,
        on_log: Callable[[logging.LogRecord], object] | None = None,
        ray_probe: Probe | None = None,
    ) -> None:
        self.settings = settings
        self.logger = logger
        self.ray_lost: str | None = None  # why Ray went away, once it has
        self.name = "-".join(filter(None, (settings.name, uuid.uuid4().hex[:8])))
        self.io = IOThread(f"aioray-io-{self.name}")
        self.supervisors = Supervisors(
            settings,
            self.name,
            logger,
            io=self.io,
            cancel=self.cancel,
            send_now=self.send_now,
            fetch=lambda supervisor, future: self.fetcher.fetch(supervisor, future),
            on_started=lambda supervisor: self.io.call_soon(self._start_poll, supervisor),
        )
        # Which calls may have started on which supervisor (I/O thread).
        self.ledger: CallLedger[AioRayFuture[Any], Parcel] = CallLedger()
        self.outbox = Outbox(self.io, self._send, self._closed_before_sending)
        self.sender = Sender(
            self.supervisors,
            self.ledger,
            self.io,
            logger,
            on_death=lambda supervisor, exc: self.recovery.on_death(supervisor, exc),
            closed=lambda: self._closed,
        )
        self.recovery = Recovery(
            self.supervisors, self.ledger, self.sender, self.io, logger, closed=lambda: self._closed
        )
        # What supervisors report beside outcomes: logs and stalls (reports.py).
        self.reports = Reports(logger, on_blocked_loop, on_log)
        # Values left on the supervisors, fetched when asked for (fetching.py).
        self.fetcher = Fetcher(self.io, logger, on_death=self.recovery.on_death)
        # Outcomes the caller no longer needs, released in groups (releases.py).
        self.releases: Releases[RemoteSupervisor] = Releases(self.io, self.sender.release)
        # Asks whether Ray is still there, once a second (raywatch.py).
        self.ray_watch = RayWatch(self.io, ray_probe, self.on_ray_lost, logger, self._stopped)
        self._functions = wire.FunctionCache()
        # Streams' values not yet taken, by call id (streams.py).
        self.inboxes = Inboxes()
        self._ids = itertools.count(1)
        self._closed = False
        self._started = False

    # -- lifecycle (caller's thread) -------------------------------------------------

    def start(self) -> None:
        """Start the I/O thread and the default supervisors; wait until they answer."""
        started = time.monotonic()
        self.io.start()
        self._started = True
        count = self.supervisors.start_default(self.settings.supervisors)
        self.releases.start(lambda: self._closed)
        self.ray_watch.start()
        self.logger.info(
            "Started %d supervisor(s) in %.1f s (backend=%s, max_concurrency=%d each) on %s",
            count,
            time.monotonic() - started,
            self.settings.backend,
            self.settings.max_concurrency,
            self.supervisors.placement(),
        )

    def close(self) -> None:
        """Stop polling, kill the supervisors and stop the I/O thread."""
        if self._closed:
            return
        self._closed = True
        if self._started:
            self.io.call_soon(self.outbox.send_all)
            self.io.call_soon(self.releases.flush)
            self.io.stop(lambda: self._fail_in_flight("the runtime closed while it was running"))
        # With Ray gone there is nobody left to ask, and asking would wait for Ray.
        self.supervisors.stop_all(kill=not self.ray_lost)
        # Nothing may stay pending: whatever was not sent or not answered fails.
        self._closed_before_sending()
        self._fail_in_flight("the runtime closed while it was running")
        self.fetcher.close()

    def _closed_before_sending(self) -> None:
        self.ledger.forget_all_notes()
        for future, *_ in self.outbox.take_all():
            fail(
                future,
                RuntimeNotRunningError(
                    f"{future.label}: the runtime closed before the call was sent"
                ),
            )

    def _fail_in_flight(self, reason: str) -> None:
        for future in self.ledger.clear():
            fail(future, RuntimeNotRunningError(f"{future.label}: {reason}"))

    # -- submitting (caller's thread) ----------------------------------------------------

    def submit(
        self,
        fn: Callable[..., Any],
        args: Sequence[Any],
        kwargs: dict[str, Any],
        *,
        group: GroupKey = DEFAULT_GROUP,
        supervisor: RemoteSupervisor | None = None,
        label: str | None = None,
        reruns: int = 0,
        stream: tuple[wire.StreamLimits, Inbox] | None = None,
    ) -> AioRayFuture[Any]:
        """Queue one call; see the module docstring.

        ``reruns``: how many times the call is sent again if its supervisor dies
        after it may have started (it sees ``current_attempt()`` grow).
        ``stream``: the call is a stream, with its limits and the inbox its values
        go to (streams are never run again: no ``reruns``).
        """
        if isinstance(reruns, bool) or not isinstance(reruns, int):
            raise TypeError(
                f"reruns must be a whole number, got an object of type {type(reruns).__name__}"
            )
        if reruns < 0:
            raise ValueError(f"reruns must be 0 or more, not {reruns}")
        if self.ray_lost:
            raise RayLostError(
                f"Ray went away ({self.ray_lost}): this runtime cannot run more calls."
                " Close it and start a new one once Ray is back."
            )
        if self._closed or not self._started:
            raise RuntimeNotRunningError(
                "this runtime is not running: submit inside `async with Runtime() as rt:`"
                " (or `with Runtime() as rt:`), or call rt.start() first"
            )
        if stream is None:
            digest, fn_blob = self._functions.get(fn)
        else:
            digest, fn_blob = self._functions.get_stream(fn)
        call_id = next(self._ids)
        label = f"{label or wire.callable_name(fn)}#{call_id}"
        blob, deps, upstream = wire.dumps_arguments(label, args, kwargs, self.sender.lift)
        if supervisor is None:
            supervisor = self.supervisors.least_loaded(group)
            if supervisor is None:
                if broken := self.supervisors.broken.get(group):
                    raise SupervisorDiedError(f"cannot run {label}: {broken}.")
                raise RuntimeNotRunningError("no supervisor is running (the runtime is closing)")
        supervisor.assign()
        future: AioRayFuture[Any] = AioRayFuture(supervisor, call_id, label, upstream)
        if reruns and stream is None:
            self.ledger.allow_reruns(call_id, reruns)
        limits = None
        if stream is not None:
            limits, inbox = stream
            self.inboxes.open(call_id, inbox)  # before it is sent: no value comes first
        self.outbox.put((future, digest, fn_blob, blob, deps, upstream, limits))
        return future

    def broadcast(
        self,
        fn: Callable[..., Any],
        args: Sequence[Any],
        kwargs: dict[str, Any],
        *,
        every_group: bool,
    ) -> list[AioRayFuture[Any]]:
        """Submit one call to every live supervisor (of the default group, or of all)."""
        groups = list(self.supervisors.groups) if every_group else [DEFAULT_GROUP]
        return [
            self.submit(fn, args, kwargs, supervisor=supervisor)
            for group in groups
            for supervisor in self.supervisors.live(group)
        ]

    def group(self, options: dict[str, Any]) -> GroupKey:
        """The group of supervisors started with these extra actor options (made on first use)."""
        return self.supervisors.group(options)

    def send_now(self) -> None:
        """Hand queued calls to the I/O thread now (see :meth:`Outbox.send_now`)."""
        self.outbox.send_now()

    def cancel(self, future: AioRayFuture[Any]) -> None:
        """Ask the supervisor to cancel a call (it may still be on its way there)."""
        self.io.call_soon(self.sender.cancel, future)

    def outstanding(self) -> list[AioRayFuture[Any]]:
        """Every call not finished yet: sends what is queued, then lists what is in flight."""
        result: list[AioRayFuture[Any]] = []
        collected = threading.Event()

        def collect() -> None:
            self.outbox.send_all()
            result.extend(self.ledger.all_in_flight())
            collected.set()

        self.io.call_soon(collect)
        collected.wait()
        return result

    def flush_releases_soon(self) -> None:
        """Send the queued releases now instead of at the next timer tick."""
        self.io.call_soon(self.releases.flush)

    def release(self, home: Home, call_id: int) -> None:
        """A finished future was dropped (``__del__``, any thread): forget it remotely."""
        self.releases.add(cast(RemoteSupervisor, home), call_id)

    # -- the I/O thread ----------------------------------------------------------------------

    def _send(self, parcels: list[Parcel]) -> None:
        self.sender.dispatch(parcels)

    def _start_poll(self, supervisor: RemoteSupervisor) -> None:
        self.io.spawn(self._poll(supervisor))

    async def _poll(self, supervisor: RemoteSupervisor) -> None:
        while supervisor.alive:
            try:
                reply = await wait_ref(supervisor.handle.poll.remote(POLL_MAX))
            except Exception as exc:
                self.recovery.on_death(supervisor, exc)
                return
            try:
                with one_wakeup_per_loop():
                    self._deliver(supervisor, *reply)
            except Exception:  # a bug here must not stop this supervisor's results
                self.logger.exception("delivering outcomes from %s failed", supervisor.describe())
            # No local may keep the last future (or payload) alive while the next
            # poll waits: the future's release would wait with it.
            del reply

    def _deliver(
        self,
        supervisor: RemoteSupervisor,
        outcomes: list[wire.Outcome],
        announced: list[int],
        stalls: list[wire.StallReport],
        logs: list[dict[str, Any]],
        logs_dropped: int,
        streamed: list[tuple[int, list[bytes]]],
    ) -> None:
        if streamed:  # before the outcomes: a stream ends after its values
            self.inboxes.deliver(streamed)
        if logs or logs_dropped:
            self.reports.forward_logs(supervisor, logs, logs_dropped)
        ledger = self.ledger
        if announced:
            ledger.announced(supervisor, announced)
        for stall in stalls:
            self.reports.stall(supervisor, *stall)
        release = self.release
        settled = ledger.settled
        for call_id, kind, payload in outcomes:
            future, parcel = settled(supervisor, call_id, resend=kind == wire.RESEND)
            supervisor.finished += 1
            if future is None:
                self.releases.add(supervisor, call_id)
                continue
            if kind == wire.RESEND and parcel is not None:
                # No release: the supervisor dropped the record itself, and a
                # release could reach it after the call was sent there again.
                self.recovery.send_again(supervisor, parcel, payload)
                continue
            settle(future, kind, payload, release)

    def _stopped(self) -> bool:
        return self._closed or self.ray_lost is not None

    def on_ray_lost(self, reason: str) -> None:
        """Ray went away: fail every call at once (I/O thread); see ``raywatch.py``."""
        if self.ray_lost or self._closed:
            return
        self.ray_lost = reason
        self.supervisors.stop_all(kill=False)
        lost = self.ledger.clear()
        lost.extend(parcel[0] for parcel in self.outbox.take_all())
        self.logger.error(
            "Ray went away: %s. %d call(s) in flight failed with RayLostError. This"
            " runtime can run nothing more: close it, and start a new one once Ray is"
            " back.",
            reason,
            len(lost),
        )
        for future in lost:
            fail(
                future,
                RayLostError(
                    f"{future.label} was lost: Ray went away ({reason}). Resubmit it to a"
                    " new runtime if it is safe to run again."
                ),
            )
