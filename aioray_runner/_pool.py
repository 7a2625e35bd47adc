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
call before it starts it (see ``_supervisor``), so the caller knows which calls
may have started: those fail with :class:`SupervisorDiedError`. Every other one
never ran, and is sent to a live supervisor as it is: nothing that never started
is lost. The caller keeps each call's pickled parcel until it is announced.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import pickle
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, cast

import ray

from . import _wire
from ._bridge import end_of_turn_scheduler, one_wakeup_per_loop
from ._futures import AioRayFuture, Home, fail, held_outcome, home_of, mark_cancelled, move, settle
from ._iothread import IOThread, wait_ref
from ._placement import (
    DEFAULT_GROUP,
    GroupKey,
    actor_options,
    group_key,
    live_cpu_nodes,
    needs_nodes,
    redact_options,
    to_ray_strategy,
)
from ._raywatch import PROBE_EVERY_S, Probe
from ._settings import Settings
from ._supervisor import Supervisor
from ._watchdog import BLOCKING_CAUSES, UNSCHEDULED, BlockedLoop
from .errors import RayLostError, RuntimeNotRunningError, SupervisorDiedError, UpstreamError

# One supervisor-side poll returns at most this many outcomes, and one submit
# message carries at most this many calls: large enough to amortise a Ray call,
# small enough that the first results of a big batch come back early.
POLL_MAX = 5000
BATCH_MAX = 2000
RELEASE_EVERY_S = 0.2
# A call whose upstream's supervisor died is sent again; a few times at most, in
# case the upstream keeps moving (each move is a supervisor death).
MAX_SENDS = 5
# Seconds between two mentions of stalls no call caused, per cause (an overloaded machine).
STALL_MENTION_INTERVAL = 60.0
# Everything needed to send one call (again): the future, the function's digest
# and bytes, the pickled arguments, their dependencies and, parallel to those,
# the futures behind them (None for an ObjectRef).
Parcel = tuple[
    AioRayFuture[Any], bytes, bytes, bytes, list[_wire.Dep], "list[AioRayFuture[Any] | None]"
]


class _Extras:
    """What the caller tracks for a call beyond its parcel (few calls need it)."""

    __slots__ = ("attempt", "cancelled", "loss", "reruns", "sends")

    def __init__(self) -> None:
        self.reruns = 0  # runs allowed after a death while it may have been running
        self.attempt = 1  # which run the next send is
        self.loss = ""  # why the previous run was lost
        self.sends = 0  # times handed back (RESEND) and sent again
        self.cancelled = False  # cancel() was called: never send it again


class RemoteSupervisor:
    """One supervisor actor, as the caller sees it: its handle, calls and load.

    It is the :class:`_futures.Home` of the futures of the calls sent to it. A
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
        self.in_flight: dict[int, AioRayFuture[Any]] = {}
        # Sent here and not announced yet: safe to send elsewhere if this dies.
        self.unstarted: dict[int, Parcel] = {}
        # Announced, and allowed to run again elsewhere if this dies (reruns).
        self.rerunnable: dict[int, Parcel] = {}
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
        self.on_blocked_loop = on_blocked_loop
        self.on_log = on_log or _emit_here
        self.ray_probe = ray_probe
        self.ray_lost: str | None = None  # why Ray went away, once it has
        self.name = uuid.uuid4().hex[:8]
        self.groups: dict[GroupKey, list[RemoteSupervisor]] = {}
        self._group_options: dict[GroupKey, dict[str, Any]] = {}
        # The live CPU nodes, read at the first pinned placement (see _new_slot).
        self._nodes: list[str] = []
        # Each group's number in supervisors' names; the default group is 0.
        self._group_numbers: dict[GroupKey, int] = {DEFAULT_GROUP: 0}
        self._functions = _wire.FunctionCache()
        self._ids = itertools.count(1)
        self._pending: list[Parcel] = []
        # Call id -> what else is tracked for it, for the few calls that need
        # it; dropped by _forget when the call's outcome is settled.
        self._extras: dict[int, _Extras] = {}
        self._pending_lock = threading.Lock()
        # A `_send_pending` is queued on the I/O loop (guarded by _pending_lock).
        self._io_scheduled = False
        # Per thread: the loop whose end-of-turn handoff is already scheduled.
        self._turn = threading.local()
        self._releases: collections.deque[tuple[RemoteSupervisor, int]] = collections.deque()
        # Cancels asked for in this turn of the I/O loop, sent together at its end.
        self._cancels: dict[RemoteSupervisor, list[int]] = {}
        self.io = IOThread(f"aioray-io-{self.name}")
        self._closed = False
        self._started = False
        # When each cause of stalls no call caused was last mentioned.
        self._stall_mentioned_at: dict[str, float] = {}

    # -- lifecycle (caller's thread) -------------------------------------------------

    def start(self) -> None:
        """Start the I/O thread and the default supervisors; wait until they answer."""
        self.io.start()
        slots = self._create_group(DEFAULT_GROUP, self.count, {})
        self._started = True
        self._wait_ready(slots)
        self.io.call_soon(self._start_release_timer)
        self.io.call_soon(self._schedule_probe)

    def _create_group(
        self, key: GroupKey, count: int, options: dict[str, Any]
    ) -> list[RemoteSupervisor]:
        self._group_options[key] = options
        # Kept if the group fails to start: a retry reuses its number.
        self._group_numbers.setdefault(key, len(self._group_numbers))
        slots = [self._new_slot(i, key, 0) for i in range(count)]
        self.groups[key] = slots
        for slot in slots:
            self.io.call_soon(self._start_poll, slot)
        return slots

    def _new_slot(self, index: int, group: GroupKey, generation: int) -> RemoteSupervisor:
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
        handle = ray.remote(Supervisor).options(**options).remote(index, self.settings)
        return RemoteSupervisor(self, index, group, handle, generation)

    def _wait_ready(self, slots: Sequence[RemoteSupervisor]) -> None:
        refs = [slot.handle.info.remote() for slot in slots]
        timeout = self.settings.start_timeout
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        if len(ready) < len(refs):
            options = self._group_options.get(slots[0].group) or dict(self.settings.actor_options)
            raise RuntimeError(
                f"{len(refs) - len(ready)} of {len(refs)} supervisors did not start within"
                f" {timeout:.0f} s. Ray may be unable to place them with the"
                f" options {redact_options(options) or '(defaults)'}; resources available now:"
                f" {ray.available_resources()}. Lower `supervisors`, change the actor"
                " options, or raise `start_timeout`."
            )
        for slot, info in zip(slots, ray.get(refs)):
            slot.info = info

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
                slots = self._create_group(key, 1, options)
            self.logger.info(
                "Starting a supervisor with Ray actor options %s", redact_options(options)
            )
            try:
                self._wait_ready(slots)
            except BaseException:
                # Forget the group, so the next use tries again and fails as clearly.
                with self._pending_lock:
                    self.groups.pop(key, None)
                for slot in slots:
                    slot.alive = False
                    ray.kill(slot.handle, no_restart=True)
                raise
        return key

    def slots(self, group: GroupKey = DEFAULT_GROUP) -> list[RemoteSupervisor]:
        """The live supervisors of a group."""
        return [s for s in self.groups.get(group, []) if s.alive]

    def close(self) -> None:
        """Stop polling, kill the supervisors and stop the I/O thread."""
        if self._closed:
            return
        self._closed = True
        if self._started:
            self.io.call_soon(self._send_pending)
            self.io.call_soon(self._flush_releases)
            self.io.stop(lambda: self._fail_in_flight("the runtime closed while it was running"))
        for slots in self.groups.values():
            for slot in slots:
                slot.alive = False
                if self.ray_lost:
                    continue  # nobody left to ask, and asking would wait for Ray
                try:
                    ray.kill(slot.handle, no_restart=True)
                except Exception:
                    pass
        # Nothing may stay pending: whatever was not sent or not answered fails.
        self._fail_unsent("the runtime closed before the call was sent")
        self._fail_in_flight("the runtime closed while it was running")

    def _fail_unsent(self, reason: str) -> None:
        self._extras.clear()
        with self._pending_lock:
            pending, self._pending = self._pending, []
        for future, *_ in pending:
            fail(future, RuntimeNotRunningError(f"{future.label}: {reason}"))

    def _fail_in_flight(self, reason: str) -> None:
        self._extras.clear()
        for slots in self.groups.values():
            for slot in slots:
                lost = list(slot.in_flight.values())
                slot.in_flight.clear()
                slot.unstarted.clear()
                slot.rerunnable.clear()
                for future in lost:
                    fail(future, RuntimeNotRunningError(f"{future.label}: {reason}"))

    # -- submitting (caller's thread) ----------------------------------------------------

    def submit(
        self,
        fn: Callable[..., Any],
        args: Sequence[Any],
        kwargs: dict[str, Any],
        *,
        group: GroupKey = DEFAULT_GROUP,
        slot: RemoteSupervisor | None = None,
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
        label = f"{label or _wire.callable_name(fn)}#{call_id}"
        blob, deps, upstream = _wire.dumps_arguments(label, args, kwargs, self._lift)
        if slot is None:
            slot = self._pick(group)
        slot.assign()
        future: AioRayFuture[Any] = AioRayFuture(slot, call_id, label, upstream)
        if reruns:
            self._extras_of(call_id).reruns = reruns
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
        slots = self.slots(group)
        if not slots:
            raise RuntimeNotRunningError("no supervisor is running (the runtime is closing)")
        return min(slots, key=lambda s: s.load)

    def _lift(self, obj: Any) -> _wire.Lifted | None:
        if isinstance(obj, ray.ObjectRef):
            return _wire.ref_dep(obj), None
        if not isinstance(obj, AioRayFuture):
            return None
        future: AioRayFuture[Any] = obj
        slot = home_of(future)
        if future.done() and not slot.alive:
            # The outcome is here and its supervisor cannot answer for it any more.
            succeeded, payload = held_outcome(future)
            if not succeeded:
                error = future.exception(0)
                message = f"{future.label} failed with {type(error).__name__}: {error}"
                return _wire.failed_dep(message, future.label), future
            return _wire.value_dep(payload, future.label), future
        return _wire.call_dep(_supervisor_of(future).handle, future.call_id, future.label), future

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
            for slots in self.groups.values():
                for slot in slots:
                    result.extend(slot.in_flight.values())
            collected.set()

        self.io.call_soon(collect)
        collected.wait()
        return result

    def flush_releases_soon(self) -> None:
        """Send the queued releases now instead of at the next timer tick."""
        self.io.call_soon(self._flush_releases)

    def release(self, home: Home, call_id: int) -> None:
        """A finished future was dropped (``__del__``, any thread): forget it remotely."""
        self._releases.append((cast(RemoteSupervisor, home), call_id))

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
        by_slot: dict[RemoteSupervisor, list[tuple[Any, ...]]] = {}
        functions: dict[RemoteSupervisor, dict[bytes, bytes]] = {}
        extras = self._extras
        for parcel in parcels:
            future, digest, fn_blob, blob, deps, upstream = parcel
            extra = extras.get(future.call_id) if extras else None
            if extra is not None and extra.cancelled:  # cancelled while it moved
                _supervisor_of(future).finished += 1  # it was counted there when assigned
                self._forget(future.call_id)
                mark_cancelled(future)
                continue
            slot = _supervisor_of(future)
            if not slot.alive:
                rerouted = self._reroute(future)
                if rerouted is None:
                    self._forget(future.call_id)
                    fail(
                        future,
                        RuntimeNotRunningError(
                            f"{future.label}: the runtime closed before the call was sent"
                        ),
                    )
                    continue
                slot = rerouted
            if relift:
                deps = self._relift(deps, upstream)
                parcel = (future, digest, fn_blob, blob, deps, upstream)
            slot.in_flight[future.call_id] = future
            slot.unstarted[future.call_id] = parcel
            if digest not in slot.known_digests:
                slot.known_digests.add(digest)
                functions.setdefault(slot, {})[digest] = fn_blob
            rerun = _wire.Rerun(extra.attempt, extra.loss) if extra and extra.attempt > 1 else None
            by_slot.setdefault(slot, []).append(
                (future.call_id, digest, blob, deps, future.label, rerun)
            )
        for slot, calls in by_slot.items():
            for start in range(0, len(calls), BATCH_MAX):
                chunk = calls[start : start + BATCH_MAX]
                fns = functions.pop(slot, {}) if start == 0 else {}
                ref = slot.handle.submit.remote(fns, chunk)
                self.io.spawn(self._watch(slot, ref, [c[0] for c in chunk], "a batch of calls"))

    def _reroute(self, future: AioRayFuture[Any]) -> RemoteSupervisor | None:
        """Move a call that never started to the least loaded live supervisor."""
        slots = self.slots(_supervisor_of(future).group)
        if not slots or self._closed:
            return None
        slot = min(slots, key=lambda s: s.load)
        slot.assign()
        move(future, slot)
        return slot

    def _relift(
        self, deps: list[_wire.Dep], upstream: list[AioRayFuture[Any] | None]
    ) -> list[_wire.Dep]:
        fresh = list(deps)
        for index, future in enumerate(upstream):
            if future is not None:
                lifted = self._lift(future)
                assert lifted is not None
                fresh[index] = lifted[0]
        return fresh

    async def _watch(
        self,
        slot: RemoteSupervisor,
        ref: Any,
        call_ids: Sequence[int] = (),
        what: str = "a message",
    ) -> None:
        try:
            await wait_ref(ref)
        except asyncio.CancelledError:
            raise
        except ray.exceptions.RayActorError as exc:
            self._on_failure(slot, exc)
        except Exception as exc:
            # The supervisor is alive but refused this message: fail its calls only.
            self.logger.error("%s could not take %s: %s", slot.describe(), what, exc)
            for call_id in call_ids:
                future = slot.in_flight.pop(call_id, None)
                slot.unstarted.pop(call_id, None)
                slot.rerunnable.pop(call_id, None)
                if future is not None:
                    slot.finished += 1
                    self._forget(call_id)
                    fail(future, exc)

    def _start_poll(self, slot: RemoteSupervisor) -> None:
        self.io.spawn(self._poll(slot))

    async def _poll(self, slot: RemoteSupervisor) -> None:
        while slot.alive:
            try:
                reply = await wait_ref(slot.handle.poll.remote(POLL_MAX))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._on_failure(slot, exc)
                return
            try:
                with one_wakeup_per_loop():
                    self._deliver(slot, *reply)
            except Exception:  # a bug here must not stop this supervisor's results
                self.logger.exception("delivering outcomes from %s failed", slot.describe())
            # No local may keep the last future (or payload) alive while the next
            # poll waits: the future's release would wait with it.
            del reply

    def _deliver(
        self,
        slot: RemoteSupervisor,
        outcomes: list[_wire.Outcome],
        announced: list[int],
        stalls: list[_wire.StallReport],
        logs: list[dict[str, Any]],
        logs_dropped: int,
    ) -> None:
        if logs or logs_dropped:
            self._forward_logs(slot, logs, logs_dropped)
        unstarted = slot.unstarted
        extras = self._extras
        for call_id in announced:
            parcel = unstarted.pop(call_id, None)  # may have started: not sent again...
            if parcel is not None and extras and (extra := extras.get(call_id)) and extra.reruns:
                slot.rerunnable[call_id] = parcel  # ...unless it may run again
        for stall in stalls:
            self._report_stall(slot, *stall)
        release = self.release
        for call_id, kind, payload in outcomes:
            future = slot.in_flight.pop(call_id, None)
            parcel = unstarted.pop(call_id, None)
            if extras:
                slot.rerunnable.pop(call_id, None)
                if kind != _wire.RESEND:
                    extras.pop(call_id, None)
            slot.finished += 1
            if future is None:
                self._releases.append((slot, call_id))
                continue
            if kind == _wire.RESEND and parcel is not None:
                # No release: the supervisor dropped the record itself, and a
                # release could reach it after the call was sent there again.
                self._send_again(slot, parcel, payload)
                continue
            settle(future, kind, payload, release)

    def _forward_logs(
        self, slot: RemoteSupervisor, logs: list[dict[str, Any]], dropped: int
    ) -> None:
        """Re-emit records of the forwarded loggers here (see ``Settings.forward_logs``)."""
        for entry in logs:
            record = logging.makeLogRecord(entry)
            record.aioray_supervisor = slot.index
            try:
                self.on_log(record)
            except Exception:
                self.logger.exception("on_log callback %r raised", self.on_log)
                return
        if dropped:
            self.logger.warning(
                "%s dropped %d log record(s): they came faster than this process read them",
                slot.describe(),
                dropped,
            )

    def _send_again(self, slot: RemoteSupervisor, parcel: Parcel, payload: bytes | None) -> None:
        """A call could not start on ``slot``: an upstream's supervisor died."""
        future = parcel[0]
        index, owner = pickle.loads(payload) if payload else _wire.ResendReason(0, None)
        extra = self._extras_of(future.call_id)
        extra.sends += 1
        upstream = parcel[5][index] if index < len(parcel[5]) else None
        if extra.sends > MAX_SENDS:
            self._forget(future.call_id)
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
        if slot.alive:
            slot.assign()  # it may go back to the same supervisor: count it again
        if owner is not None:
            # Ray told that supervisor the owner is dead; our own poll on it may
            # not have failed yet. Act on it now, so the upstream's outcome is
            # settled (held here, moved, or lost) before this call is lifted again.
            for dead in self._all_slots():
                if dead.actor_id == owner:
                    self._on_failure(dead, RuntimeError(f"reported dead by {slot.describe()}"))
            self._dispatch([parcel], relift=True)
        else:
            # The upstream is itself being sent again; its news may reach us
            # through another supervisor's poll a moment later.
            self.io.call_later(0.05, lambda: self._dispatch([parcel], relift=True))

    def _extras_of(self, call_id: int) -> _Extras:
        extra = self._extras.get(call_id)
        if extra is None:
            extra = self._extras[call_id] = _Extras()
        return extra

    def _forget(self, call_id: int) -> None:
        """The call's outcome is settled: drop what was tracked for it."""
        self._extras.pop(call_id, None)

    def _all_slots(self) -> list[RemoteSupervisor]:
        return [slot for slots in self.groups.values() for slot in slots]

    def _report_stall(
        self,
        slot: RemoteSupervisor,
        seconds: float,
        calls: tuple[tuple[int, str], ...],
        where: str,
        cause: str,
    ) -> None:
        if cause not in BLOCKING_CAUSES:
            self._mention_stall(slot, seconds, cause)
            return
        blocked = BlockedLoop(
            supervisor=slot.describe(),
            seconds=seconds,
            calls=tuple(label for _, label in calls),
            call_ids=tuple(call_id for call_id, _ in calls),
            where=where,
            cause=cause,
        )
        if self.on_blocked_loop is None:
            self.logger.warning("%s", blocked)
            return
        try:
            self.on_blocked_loop(blocked)
        except Exception:
            self.logger.exception("on_blocked_loop callback %r raised", self.on_blocked_loop)
            self.logger.warning("%s", blocked)

    def _mention_stall(self, slot: RemoteSupervisor, seconds: float, cause: str) -> None:
        """A stall no call of the user's caused: said as what it was.

        Each cause (no CPU; work of no single call) once a minute at most. Not
        a warning, and not a :class:`BlockedLoop`: there is nothing to fix in
        the calls' code, and on a loaded machine it would come often.
        """
        now = time.monotonic()
        if now - self._stall_mentioned_at.get(cause, -STALL_MENTION_INTERVAL) < (
            STALL_MENTION_INTERVAL
        ):
            return
        self._stall_mentioned_at[cause] = now
        if cause == UNSCHEDULED:
            what = (
                f"{slot.describe()} got little or no CPU for {seconds:.1f} s: the machine is"
                " overloaded (or the process was paused); its calls waited meanwhile"
            )
        else:
            what = (
                f"{slot.describe()}'s event loop was busy for {seconds:.1f} s with work that is"
                " no single call's own code (this package's, Prefect's engine's, a library's,"
                " or many calls' short steps at once); its calls waited meanwhile"
            )
        self.logger.info("%s (said at most once a minute)", what)

    def _on_failure(self, slot: RemoteSupervisor, exc: BaseException) -> None:
        if not slot.alive or self._closed:
            return
        slot.alive = False
        try:
            ray.kill(slot.handle, no_restart=True)
        except Exception:
            pass
        # Put the replacement in place before failing any future: a caller woken
        # by the failure may submit again at once.
        replacement = self._new_slot(slot.index, slot.group, slot.generation + 1)
        group = self.groups[slot.group]
        group[group.index(slot)] = replacement
        self._start_poll(replacement)
        self.io.spawn(self._describe(replacement))

        # Calls announced (may have started) are lost, unless they may run
        # again; the rest never ran.
        cause = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        resend = dict(slot.unstarted)
        for call_id, parcel in slot.rerunnable.items():
            extra = self._extras_of(call_id)
            extra.reruns -= 1
            extra.attempt += 1
            extra.loss = f"{slot.describe()} died ({cause})"
            resend[call_id] = parcel
        lost = [f for call_id, f in slot.in_flight.items() if call_id not in resend]
        never_started, rerun = len(slot.unstarted), len(slot.rerunnable)
        slot.in_flight.clear()
        slot.unstarted.clear()
        slot.rerunnable.clear()
        self.logger.warning(
            "%s died (%s). %d call(s) that had started on it failed; %d were sent to"
            " %s (%d that had not started, %d allowed to run again). Starting a replacement.",
            slot.describe(),
            cause,
            len(lost),
            len(resend),
            "other supervisors" if len(self.slots(slot.group)) > 1 else "the replacement",
            never_started,
            rerun,
        )
        # Fail the lost calls first: a dependent sent again below then carries
        # its upstream's failure instead of waiting on the dead supervisor.
        for future in lost:
            self._forget(future.call_id)
            fail(
                future,
                SupervisorDiedError(
                    f"{future.label} was lost: {slot.describe()} died while running it"
                    f" ({cause}). Later calls run on a replacement supervisor; resubmit"
                    " this one if it is safe to run again."
                ),
            )
        self._dispatch([resend[call_id] for call_id in sorted(resend)], relift=True)

    async def _describe(self, slot: RemoteSupervisor) -> None:
        try:
            slot.info = await wait_ref(slot.handle.info.remote())
            self.logger.info("Replacement %s is ready", slot.describe())
        except Exception as exc:
            self._on_failure(slot, exc)

    def _send_cancel(self, future: AioRayFuture[Any]) -> None:
        if future.done():
            return
        # Remembered, so a supervisor death cannot send the call on afterwards.
        self._extras_of(future.call_id).cancelled = True
        slot = _supervisor_of(future)
        # Not sent yet: it will not be (see _dispatch), so nothing to tell.
        if slot.alive and future.call_id in slot.in_flight:
            # One message per supervisor per loop turn, not one per call: a runner
            # cancelling 3,000 task runs on Ctrl-C sent 3,000 actor calls, which
            # queued behind each other in Ray for tens of seconds.
            if not self._cancels:
                self.io.call_soon(self._send_cancels)
            self._cancels.setdefault(slot, []).append(future.call_id)

    def _send_cancels(self) -> None:
        cancels, self._cancels = self._cancels, {}
        for slot, call_ids in cancels.items():
            if slot.alive:
                self.io.spawn(self._watch(slot, slot.handle.cancel.remote(call_ids)))

    def _schedule_probe(self) -> None:
        if self.ray_probe is not None and not (self._closed or self.ray_lost):
            self.io.call_later(PROBE_EVERY_S, lambda: self.io.spawn(self._probe_ray()))

    async def _probe_ray(self) -> None:
        assert self.ray_probe is not None
        if self._closed:
            return
        # In a thread: a probe of a remote GCS may wait up to two seconds.
        try:
            reason = await self.io.loop.run_in_executor(None, self.ray_probe)
        except Exception:  # a probe that breaks must not stop the probing
            self.logger.debug("the Ray probe failed", exc_info=True)
            reason = None
        if reason is None:
            self._schedule_probe()
        else:
            self.on_ray_lost(reason)

    def on_ray_lost(self, reason: str) -> None:
        """Ray went away: fail every call at once (I/O thread); see ``_raywatch``."""
        if self.ray_lost or self._closed:
            return
        self.ray_lost = reason
        lost: list[AioRayFuture[Any]] = []
        for slot in self._all_slots():
            slot.alive = False
            lost.extend(slot.in_flight.values())
            slot.in_flight.clear()
            slot.unstarted.clear()
            slot.rerunnable.clear()
        with self._pending_lock:
            pending, self._pending = self._pending, []
        lost.extend(parcel[0] for parcel in pending)
        self._extras.clear()
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

    def _start_release_timer(self) -> None:
        self._flush_releases()
        if not self._closed:
            self.io.call_later(RELEASE_EVERY_S, self._start_release_timer)

    def _flush_releases(self) -> None:
        if not self._releases:
            return
        by_slot: dict[RemoteSupervisor, list[int]] = {}
        while self._releases:
            slot, call_id = self._releases.popleft()
            if slot.alive:
                by_slot.setdefault(slot, []).append(call_id)
        for slot, call_ids in by_slot.items():
            self.io.spawn(self._watch(slot, slot.handle.release.remote(call_ids)))


def _supervisor_of(future: AioRayFuture[Any]) -> RemoteSupervisor:
    """The supervisor a future of this pool was sent to (its home is always one)."""
    return cast(RemoteSupervisor, home_of(future))


def _emit_here(record: logging.LogRecord) -> None:
    """Hand a forwarded record to the logger of the same name in this process."""
    logging.getLogger(record.name).handle(record)
