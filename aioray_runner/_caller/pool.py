"""The caller's side of the supervisors: routing, batching and the I/O thread.

``submit`` runs on the caller's thread: it pickles the arguments (so a bad
argument fails there, by name), picks the least loaded supervisor and queues the
call. At the end of the caller's loop turn (asyncio ``call_soon``, trio
``run_sync_soon``; at once for sync callers) the queue is handed to the I/O
thread, which sends it to each supervisor as one actor call. 10,000 submissions
in one turn therefore cost a handful of Ray calls, and a lone submission is sent
as soon as its turn ends.

The I/O thread runs an asyncio loop of its own. For each supervisor it keeps one
``poll`` call outstanding; each answer carries every outcome finished since the
last, and sets the matching futures.

A failed ``poll`` (or message) means the supervisor died. A replacement is put in
its place, and its calls in flight split in two. A supervisor announces every
call before it starts it (its start gate, ``_supervisor/gate.py``), so the caller
knows which calls may have started: those fail with :class:`SupervisorDiedError`.
Every other one never ran, and is sent to a live supervisor as it is: nothing
that never started is lost. The call ledger (``ledger.py``) keeps that book,
with each call's pickled parcel until it is announced.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import pickle
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any, cast

import ray

from .._common import wire
from .._common.settings import Settings
from .._common.watchdog import BlockedLoop
from .._supervisor.actor import Supervisor
from ..errors import RayLostError, RuntimeNotRunningError, SupervisorDiedError, UpstreamError
from .futures import AioRayFuture, Home, fail, held_outcome, home_of, mark_cancelled, move, settle
from .iothread import IOThread, wait_ref
from .ledger import CallLedger
from .placement import (
    DEFAULT_GROUP,
    GroupKey,
    actor_options,
    group_key,
    live_cpu_nodes,
    needs_nodes,
    redact_options,
    to_ray_strategy,
)
from .raywatch import Probe, RayWatch
from .releases import Releases
from .reports import Reports
from .wakeups import end_of_turn_scheduler, one_wakeup_per_loop

# One supervisor-side poll returns at most this many outcomes, and one submit
# message carries at most this many calls: large enough to amortise a Ray call,
# small enough that the first results of a big batch come back early.
POLL_MAX = 5000
BATCH_MAX = 2000
# A call whose upstream's supervisor died is sent again; a few times at most, in
# case the upstream keeps moving (each move is a supervisor death).
MAX_SENDS = 5
# Everything needed to send one call (again): the future, the function's digest
# and bytes, the pickled arguments, their dependencies and, parallel to those,
# the futures behind them (None for an ObjectRef).
Parcel = tuple[
    AioRayFuture[Any], bytes, bytes, bytes, list[wire.Dep], "list[AioRayFuture[Any] | None]"
]


# The supervisor as a Ray actor class. Supervisor.status runs on an event loop of
# its own (a concurrency group: Ray refuses those in .options()), so that
# `aioray-runner status` is answered while the supervisor's own loop is stuck.
_SUPERVISOR = ray.remote(concurrency_groups={"status": 1})(Supervisor)  # type: ignore[call-overload]


class RemoteSupervisor:
    """One supervisor actor, as the caller sees it: its handle, calls and load.

    It is the :class:`futures.Home` of the futures of the calls sent to it. A
    replacement for a dead supervisor is a new ``RemoteSupervisor`` with the same
    ``index`` and the next ``generation``.
    """

    def __init__(self, pool: Pool, index: int, group: GroupKey, handle: Any, generation: int):
        self.pool = pool
        self.index = index
        self.group = group
        self.handle = handle
        self.generation = generation
        self.alive = True
        self.info: dict[str, Any] = {}
        # Ray has no public accessor for a handle's actor id; supervisors
        # report deaths of others by this id (see Pool._send_again).
        self.actor_id: str = handle._actor_id.hex()
        # The balancer reads load = assigned - finished. Callers' threads only
        # advance `assigned` (next() on a count is atomic), the I/O thread only
        # `finished`: no lock on the submit path, and no lost updates.
        self._assigned = itertools.count(1)
        self.assigned = 0
        self.finished = 0
        self.known_digests: set[bytes] = set()

    @property
    def load(self) -> int:
        """Calls assigned to this supervisor and not finished yet."""
        return self.assigned - self.finished

    def assign(self) -> None:
        self.assigned = next(self._assigned)

    def cancel_call(self, future: AioRayFuture[Any]) -> None:
        """Ask the supervisor to cancel the future's call."""
        self.pool.cancel(future)

    def send_now(self) -> None:
        """Send the calls queued at the caller now."""
        self.pool.send_now()

    def check_can_block(self) -> None:
        """Refuse a blocking wait on the I/O thread, which would stop every result."""
        if self.pool.io.is_current():
            raise RuntimeError(
                "a blocking wait on the runtime's I/O thread (in a done callback?) would"
                " stop every result from arriving: hand the work to your own thread or loop"
            )

    def describe(self) -> str:
        """``"supervisor N (pid P on IP)"``, for logs and errors."""
        where = self.info.get("node_ip", "?")
        pid = self.info.get("pid", "?")
        return f"supervisor {self.index} (pid {pid} on {where})"


class Pool:
    """Supervisors of one runtime, grouped by their Ray actor options."""

    def __init__(
        self,
        settings: Settings,
        *,
        count: int,
        logger: logging.Logger,
        on_blocked_loop: Callable[[BlockedLoop], object] | None = None,
        on_log: Callable[[logging.LogRecord], object] | None = None,
        ray_probe: Probe | None = None,
    ) -> None:
        self.settings = settings
        self.count = count
        self.logger = logger
        # What supervisors report beside outcomes: logs and stalls (reports.py).
        self.reports = Reports(logger, on_blocked_loop, on_log)
        self.ray_lost: str | None = None  # why Ray went away, once it has
        self.name = "-".join(filter(None, (settings.name, uuid.uuid4().hex[:8])))
        self.groups: dict[GroupKey, list[RemoteSupervisor]] = {}
        self._group_options: dict[GroupKey, dict[str, Any]] = {}
        # The live CPU nodes, read at the first pinned placement (see _new_supervisor).
        self._nodes: list[str] = []
        # Each group's number in supervisors' names; the default group is 0.
        self._group_numbers: dict[GroupKey, int] = {DEFAULT_GROUP: 0}
        self._functions = wire.FunctionCache()
        self._ids = itertools.count(1)
        self._pending: list[Parcel] = []
        # Which calls may have started on which supervisor (I/O thread).
        self.ledger: CallLedger[AioRayFuture[Any], Parcel] = CallLedger()
        self._pending_lock = threading.Lock()
        # A `_send_pending` is queued on the I/O loop (guarded by _pending_lock).
        self._io_scheduled = False
        # Per thread: the loop whose end-of-turn handoff is already scheduled.
        self._turn = threading.local()
        # Cancels asked for in this turn of the I/O loop, sent together at its end.
        self._cancels: dict[RemoteSupervisor, list[int]] = {}
        self.io = IOThread(f"aioray-io-{self.name}")
        # Outcomes the caller no longer needs, released in groups (releases.py).
        self.releases: Releases[RemoteSupervisor] = Releases(self.io, self._send_releases)
        # Asks whether Ray is still there, once a second (raywatch.py).
        self.ray_watch = RayWatch(self.io, ray_probe, self.on_ray_lost, logger, self._stopped)
        self._closed = False
        self._started = False

    # -- lifecycle (caller's thread) -------------------------------------------------

    def start(self) -> None:
        """Start the I/O thread and the default supervisors; wait until they answer."""
        self.io.start()
        supervisors = self._create_group(DEFAULT_GROUP, self.count, {})
        self._started = True
        self._wait_ready(supervisors)
        self.releases.start(lambda: self._closed)
        self.ray_watch.start()

    def _create_group(
        self, key: GroupKey, count: int, options: dict[str, Any]
    ) -> list[RemoteSupervisor]:
        self._group_options[key] = options
        # Kept if the group fails to start: a retry reuses its number.
        self._group_numbers.setdefault(key, len(self._group_numbers))
        supervisors = [self._new_supervisor(i, key, 0) for i in range(count)]
        self.groups[key] = supervisors
        for supervisor in supervisors:
            self.io.call_soon(self._start_poll, supervisor)
        return supervisors

    def _new_supervisor(self, index: int, group: GroupKey, generation: int) -> RemoteSupervisor:
        group_options = self._group_options.get(group, {})
        nodes: list[str] = []
        if needs_nodes(self.settings.actor_options, group_options, group):
            if generation > 0 or not self._nodes:
                # A replacement looks again: the cluster may have changed.
                self._nodes = live_cpu_nodes(ray.nodes())
            nodes = self._nodes
        options = actor_options(
            dict(self.settings.actor_options),
            group_options,
            index=index,
            generation=generation,
            nodes=nodes,
            pool_name=self.name,
            group=group,
            group_number=self._group_numbers[group],
        )
        options["scheduling_strategy"] = to_ray_strategy(options["scheduling_strategy"])
        handle = _SUPERVISOR.options(**options).remote(index, self.settings, self.name)
        return RemoteSupervisor(self, index, group, handle, generation)

    def _wait_ready(self, supervisors: Sequence[RemoteSupervisor]) -> None:
        refs = [supervisor.handle.info.remote() for supervisor in supervisors]
        timeout = self.settings.start_timeout
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        if len(ready) < len(refs):
            options = self._group_options.get(supervisors[0].group) or dict(
                self.settings.actor_options
            )
            raise RuntimeError(
                f"{len(refs) - len(ready)} of {len(refs)} supervisors did not start within"
                f" {timeout:.0f} s. Ray may be unable to place them with the"
                f" options {redact_options(options) or '(defaults)'}; resources available now:"
                f" {ray.available_resources()}. Lower `supervisors`, change the actor"
                " options, or raise `start_timeout`."
            )
        for supervisor, info in zip(supervisors, ray.get(refs)):
            supervisor.info = info

    def group(self, options: dict[str, Any]) -> GroupKey:
        """The group of supervisors started with these extra actor options (made on first use).

        No options: the default group, started with the pool.
        """
        key = group_key(options)
        if key == DEFAULT_GROUP:
            return key
        if key not in self.groups:
            with self._pending_lock:
                if key in self.groups:
                    return key
                supervisors = self._create_group(key, 1, options)
            self.logger.info(
                "Starting a supervisor with Ray actor options %s", redact_options(options)
            )
            try:
                self._wait_ready(supervisors)
            except BaseException:
                # Forget the group, so the next use tries again and fails as clearly.
                with self._pending_lock:
                    self.groups.pop(key, None)
                for supervisor in supervisors:
                    supervisor.alive = False
                    ray.kill(supervisor.handle, no_restart=True)
                raise
        return key

    def supervisors(self, group: GroupKey = DEFAULT_GROUP) -> list[RemoteSupervisor]:
        """The live supervisors of a group."""
        return [s for s in self.groups.get(group, []) if s.alive]

    def close(self) -> None:
        """Stop polling, kill the supervisors and stop the I/O thread."""
        if self._closed:
            return
        self._closed = True
        if self._started:
            self.io.call_soon(self._send_pending)
            self.io.call_soon(self.releases.flush)
            self.io.stop(lambda: self._fail_in_flight("the runtime closed while it was running"))
        for supervisors in self.groups.values():
            for supervisor in supervisors:
                supervisor.alive = False
                if self.ray_lost:
                    continue  # nobody left to ask, and asking would wait for Ray
                try:
                    ray.kill(supervisor.handle, no_restart=True)
                except Exception:
                    pass
        # Nothing may stay pending: whatever was not sent or not answered fails.
        self._fail_unsent("the runtime closed before the call was sent")
        self._fail_in_flight("the runtime closed while it was running")

    def _fail_unsent(self, reason: str) -> None:
        self.ledger.forget_all_notes()
        with self._pending_lock:
            pending, self._pending = self._pending, []
        for future, *_ in pending:
            fail(future, RuntimeNotRunningError(f"{future.label}: {reason}"))

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
    ) -> AioRayFuture[Any]:
        """Queue one call; see the module docstring.

        ``reruns``: how many times the call is sent again if its supervisor dies
        after it may have started (it sees ``current_attempt()`` grow).
        """
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
        digest, fn_blob = self._functions.get(fn)
        call_id = next(self._ids)
        label = f"{label or wire.callable_name(fn)}#{call_id}"
        blob, deps, upstream = wire.dumps_arguments(label, args, kwargs, self._lift)
        if supervisor is None:
            supervisor = self._pick(group)
        supervisor.assign()
        future: AioRayFuture[Any] = AioRayFuture(supervisor, call_id, label, upstream)
        if reruns:
            self.ledger.allow_reruns(call_id, reruns)
        with self._pending_lock:
            self._pending.append((future, digest, fn_blob, blob, deps, upstream))
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
        return future

    def _pick(self, group: GroupKey) -> RemoteSupervisor:
        supervisors = self.supervisors(group)
        if not supervisors:
            raise RuntimeNotRunningError("no supervisor is running (the runtime is closing)")
        return min(supervisors, key=lambda s: s.load)

    def _lift(self, obj: Any) -> wire.Lifted | None:
        if isinstance(obj, ray.ObjectRef):
            return wire.ref_dep(obj), None
        if not isinstance(obj, AioRayFuture):
            return None
        future: AioRayFuture[Any] = obj
        supervisor = home_of(future)
        if future.done() and not supervisor.alive:
            # The outcome is here and its supervisor cannot answer for it any more.
            succeeded, payload = held_outcome(future)
            if not succeeded:
                error = future.exception(0)
                message = f"{future.label} failed with {type(error).__name__}: {error}"
                return wire.failed_dep(message, future.label), future
            return wire.value_dep(payload, future.label), future
        return wire.call_dep(_supervisor_of(future).handle, future.call_id, future.label), future

    def send_now(self) -> None:
        """Hand queued calls to the I/O thread now, not at the end of the loop turn.

        For a caller about to block its own thread (``result()``, Prefect's
        ``as_completed``): the end of its loop turn would not come until the
        wait is over.
        """
        if self._pending:
            self._handoff()

    def _end_of_turn(self) -> None:
        self._turn.key = None
        self._handoff()

    def _handoff(self) -> None:
        with self._pending_lock:
            if self._io_scheduled:
                return
            self._io_scheduled = True
        try:
            self.io.call_soon(self._send_pending)
        except RuntimeError:  # the I/O loop is closed
            self._fail_unsent("the runtime closed before the call was sent")

    def cancel(self, future: AioRayFuture[Any]) -> None:
        """Ask the supervisor to cancel a call (it may still be on its way there)."""
        self.io.call_soon(self._send_cancel, future)

    def outstanding(self) -> list[AioRayFuture[Any]]:
        """Every call not finished yet: sends what is queued, then lists what is in flight."""
        result: list[AioRayFuture[Any]] = []
        collected = threading.Event()

        def collect() -> None:
            self._send_pending()
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

    def _send_pending(self) -> None:
        with self._pending_lock:
            pending, self._pending = self._pending, []
            self._io_scheduled = False
        self._dispatch(pending)

    def _dispatch(self, parcels: Sequence[Parcel], *, relift: bool = False) -> None:
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
            future, digest, fn_blob, blob, deps, upstream = parcel
            if ledger.take_cancelled(future.call_id):  # cancelled while it moved
                _supervisor_of(future).finished += 1  # it was counted there when assigned
                mark_cancelled(future)
                continue
            supervisor = _supervisor_of(future)
            if not supervisor.alive:
                rerouted = self._reroute(future)
                if rerouted is None:
                    ledger.forget(future.call_id)
                    fail(
                        future,
                        RuntimeNotRunningError(
                            f"{future.label}: the runtime closed before the call was sent"
                        ),
                    )
                    continue
                supervisor = rerouted
            if relift:
                deps = self._relift(deps, upstream)
                parcel = (future, digest, fn_blob, blob, deps, upstream)
            ledger.sent(supervisor, future.call_id, future, parcel)
            if digest not in supervisor.known_digests:
                supervisor.known_digests.add(digest)
                functions.setdefault(supervisor, {})[digest] = fn_blob
            again = ledger.rerun_of(future.call_id)
            rerun = None if again is None else wire.Rerun(*again)
            by_supervisor.setdefault(supervisor, []).append(
                (future.call_id, digest, blob, deps, future.label, rerun)
            )
        for supervisor, calls in by_supervisor.items():
            for start in range(0, len(calls), BATCH_MAX):
                chunk = calls[start : start + BATCH_MAX]
                fns = functions.pop(supervisor, {}) if start == 0 else {}
                ref = supervisor.handle.submit.remote(fns, chunk)
                self.io.spawn(
                    self._watch(supervisor, ref, [c[0] for c in chunk], "a batch of calls")
                )

    def _reroute(self, future: AioRayFuture[Any]) -> RemoteSupervisor | None:
        """Move a call that never started to the least loaded live supervisor."""
        supervisors = self.supervisors(_supervisor_of(future).group)
        if not supervisors or self._closed:
            return None
        supervisor = min(supervisors, key=lambda s: s.load)
        supervisor.assign()
        move(future, supervisor)
        return supervisor

    def _relift(
        self, deps: list[wire.Dep], upstream: list[AioRayFuture[Any] | None]
    ) -> list[wire.Dep]:
        fresh = list(deps)
        for index, future in enumerate(upstream):
            if future is not None:
                lifted = self._lift(future)
                assert lifted is not None
                fresh[index] = lifted[0]
        return fresh

    async def _watch(
        self,
        supervisor: RemoteSupervisor,
        ref: Any,
        call_ids: Sequence[int] = (),
        what: str = "a message",
    ) -> None:
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

    def _start_poll(self, supervisor: RemoteSupervisor) -> None:
        self.io.spawn(self._poll(supervisor))

    async def _poll(self, supervisor: RemoteSupervisor) -> None:
        while supervisor.alive:
            try:
                reply = await wait_ref(supervisor.handle.poll.remote(POLL_MAX))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._on_death(supervisor, exc)
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
    ) -> None:
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
                self._send_again(supervisor, parcel, payload)
                continue
            settle(future, kind, payload, release)

    def _send_again(
        self, supervisor: RemoteSupervisor, parcel: Parcel, payload: bytes | None
    ) -> None:
        """A call could not start on ``supervisor``: an upstream's supervisor died."""
        future = parcel[0]
        index, owner = pickle.loads(payload) if payload else wire.ResendReason(0, None)
        sends = self.ledger.count_send(future.call_id)
        upstream = parcel[5][index] if index < len(parcel[5]) else None
        if sends > MAX_SENDS:
            self.ledger.forget(future.call_id)
            where = upstream.label if upstream is not None else "an upstream call"
            fail(
                future,
                UpstreamError(
                    f"{future.label} cannot start: the supervisor holding {where} died"
                    f" {MAX_SENDS} times while it waited for it",
                    where,
                ),
            )
            return
        if supervisor.alive:
            supervisor.assign()  # it may go back to the same supervisor: count it again
        if owner is not None:
            # Ray told that supervisor the owner is dead; our own poll on it may
            # not have failed yet. Act on it now, so the upstream's outcome is
            # settled (held here, moved, or lost) before this call is lifted again.
            for dead in self._all_supervisors():
                if dead.actor_id == owner:
                    self._on_death(dead, RuntimeError(f"reported dead by {supervisor.describe()}"))
            self._dispatch([parcel], relift=True)
        else:
            # The upstream is itself being sent again; its news may reach us
            # through another supervisor's poll a moment later.
            self.io.call_later(0.05, lambda: self._dispatch([parcel], relift=True))

    def _all_supervisors(self) -> list[RemoteSupervisor]:
        return [supervisor for supervisors in self.groups.values() for supervisor in supervisors]

    def _on_death(self, supervisor: RemoteSupervisor, exc: BaseException) -> None:
        if not supervisor.alive or self._closed:
            return
        supervisor.alive = False
        try:
            ray.kill(supervisor.handle, no_restart=True)
        except Exception:
            pass
        # Put the replacement in place before failing any future: a caller woken
        # by the failure may submit again at once.
        replacement = self._new_supervisor(
            supervisor.index, supervisor.group, supervisor.generation + 1
        )
        group = self.groups[supervisor.group]
        group[group.index(supervisor)] = replacement
        self._start_poll(replacement)
        self.io.spawn(self._describe(replacement))

        # Calls announced (may have started) are lost, unless they may run
        # again; the rest never ran.
        cause = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        death = self.ledger.died(supervisor, f"{supervisor.describe()} died ({cause})")
        self.logger.warning(
            "%s died (%s). %d call(s) that had started on it failed; %d were sent to"
            " %s (%d that had not started, %d allowed to run again). Starting a replacement.",
            supervisor.describe(),
            cause,
            len(death.lost),
            len(death.resend),
            "other supervisors"
            if len(self.supervisors(supervisor.group)) > 1
            else "the replacement",
            death.never_started,
            death.rerun,
        )
        # Fail the lost calls first: a dependent sent again below then carries
        # its upstream's failure instead of waiting on the dead supervisor.
        for future in death.lost:
            fail(
                future,
                SupervisorDiedError(
                    f"{future.label} was lost: {supervisor.describe()} died while running it"
                    f" ({cause}). Later calls run on a replacement supervisor; resubmit"
                    " this one if it is safe to run again."
                ),
            )
        self._dispatch(death.resend, relift=True)

    async def _describe(self, supervisor: RemoteSupervisor) -> None:
        try:
            supervisor.info = await wait_ref(supervisor.handle.info.remote())
            self.logger.info("Replacement %s is ready", supervisor.describe())
        except Exception as exc:
            self._on_death(supervisor, exc)

    def _send_cancel(self, future: AioRayFuture[Any]) -> None:
        if future.done():
            return
        # Remembered, so a supervisor death cannot send the call on afterwards.
        self.ledger.cancel(future.call_id)
        supervisor = _supervisor_of(future)
        # Not sent yet: it will not be (see _dispatch), so nothing to tell.
        if supervisor.alive and self.ledger.holds(supervisor, future.call_id):
            # One message per supervisor per loop turn, not one per call: a runner
            # cancelling 3,000 task runs on Ctrl-C sent 3,000 actor calls, which
            # queued behind each other in Ray for tens of seconds.
            if not self._cancels:
                self.io.call_soon(self._send_cancels)
            self._cancels.setdefault(supervisor, []).append(future.call_id)

    def _send_cancels(self) -> None:
        cancels, self._cancels = self._cancels, {}
        for supervisor, call_ids in cancels.items():
            if supervisor.alive:
                self.io.spawn(self._watch(supervisor, supervisor.handle.cancel.remote(call_ids)))

    def _stopped(self) -> bool:
        return self._closed or self.ray_lost is not None

    def _send_releases(self, supervisor: RemoteSupervisor, call_ids: list[int]) -> None:
        self.io.spawn(self._watch(supervisor, supervisor.handle.release.remote(call_ids)))

    def on_ray_lost(self, reason: str) -> None:
        """Ray went away: fail every call at once (I/O thread); see ``raywatch.py``."""
        if self.ray_lost or self._closed:
            return
        self.ray_lost = reason
        for supervisor in self._all_supervisors():
            supervisor.alive = False
        lost = self.ledger.clear()
        with self._pending_lock:
            pending, self._pending = self._pending, []
        lost.extend(parcel[0] for parcel in pending)
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


def _supervisor_of(future: AioRayFuture[Any]) -> RemoteSupervisor:
    """The supervisor a future of this pool was sent to (its home is always one)."""
    return cast(RemoteSupervisor, home_of(future))
