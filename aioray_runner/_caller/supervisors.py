"""The caller's record of the supervisors: starting them, replacing the dead, picking one.

A :class:`RemoteSupervisor` is one supervisor actor as the caller sees it (its
handle, its load, where it runs); :class:`Supervisors` keeps them by group (the
Ray actor options they were started with) and is the one place that starts an
actor: the default group with the pool, another group on first use, a
replacement after a death, and a standby for a supervisor that died once (its
next death is taken over at once). A group whose supervisors keep failing as
they start is marked broken (:attr:`Supervisors.broken`) and takes no calls.
Groups and their supervisors change on the caller's threads (a new group) and
the I/O thread (a replacement); each change is one assignment under the lock, so
readers see a group whole.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import ray

from .._common.settings import Settings
from .._supervisor.actor import Supervisor
from .futures import AioRayFuture, home_of
from .iothread import IOThread
from .placement import (
    DEFAULT_GROUP,
    GroupKey,
    actor_options,
    default_supervisor_count,
    group_key,
    live_cpu_nodes,
    needs_nodes,
    redact_options,
    to_ray_strategy,
)

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

    def __init__(
        self,
        index: int,
        group: GroupKey,
        handle: Any,
        generation: int,
        *,
        io: IOThread,
        cancel: Callable[[AioRayFuture[Any]], None],
        send_now: Callable[[], None],
        fetch: Callable[[RemoteSupervisor, AioRayFuture[Any]], None],
    ):
        self.index = index
        self.group = group
        self.handle = handle
        self.generation = generation
        self.alive = True
        #: It ended on its own (killed, crashed, Ray lost), not stopped by the
        #: runtime: whatever it had not sent yet (Prefect's events, say) is lost.
        self.died = False
        self.info: dict[str, Any] = {}
        # Ray has no public accessor for a handle's actor id; supervisors
        # report deaths of others by this id (see Recovery.send_again).
        self.actor_id: str = handle._actor_id.hex()
        # The balancer reads load = assigned - finished. Callers' threads only
        # advance `assigned` (next() on a count is atomic), the I/O thread only
        # `finished`: no lock on the submit path, and no lost updates.
        self._assigned = itertools.count(1)
        self.assigned = 0
        self.finished = 0
        self.known_digests: set[bytes] = set()
        self._io = io
        self._cancel = cancel
        self._send_now = send_now
        self._fetch = fetch

    @property
    def load(self) -> int:
        """Calls assigned to this supervisor and not finished yet."""
        return self.assigned - self.finished

    def assign(self) -> None:
        """Count one more call sent here."""
        self.assigned = next(self._assigned)

    def cancel_call(self, future: AioRayFuture[Any]) -> None:
        """Ask the supervisor to cancel the future's call."""
        self._cancel(future)

    def send_now(self) -> None:
        """Send the calls queued at the caller now."""
        self._send_now()

    def fetch(self, future: AioRayFuture[Any]) -> None:
        """Fetch the value the future's call left here (see ``fetching.py``)."""
        self._fetch(self, future)

    def check_can_block(self) -> None:
        """Refuse a blocking wait on the I/O thread, which would stop every result."""
        if self._io.is_current():
            raise RuntimeError(
                "a blocking wait on the runtime's I/O thread (in a done callback?) would"
                " stop every result from arriving: hand the work to your own thread or loop"
            )

    def describe(self) -> str:
        """``"supervisor N (pid P on IP)"``, for logs and errors."""
        where = self.info.get("node_ip", "?")
        pid = self.info.get("pid", "?")
        return f"supervisor {self.index} (pid {pid} on {where})"


def supervisor_of(future: AioRayFuture[Any]) -> RemoteSupervisor:
    """The supervisor a future of this runtime was sent to (its home is always one)."""
    return cast(RemoteSupervisor, home_of(future))


class Supervisors:
    """The supervisors of one pool, by group; see the module docstring.

    ``on_started`` is called (on the caller's thread, or the I/O thread for a
    replacement) with each supervisor as its actor is created, so that the pool
    starts polling it.
    """

    def __init__(
        self,
        settings: Settings,
        pool_name: str,
        logger: logging.Logger,
        *,
        io: IOThread,
        cancel: Callable[[AioRayFuture[Any]], None],
        send_now: Callable[[], None],
        fetch: Callable[[RemoteSupervisor, AioRayFuture[Any]], None],
        on_started: Callable[[RemoteSupervisor], None],
    ) -> None:
        self.settings = settings
        self.pool_name = pool_name
        self.logger = logger
        self.groups: dict[GroupKey, list[RemoteSupervisor]] = {}
        self._options: dict[GroupKey, dict[str, Any]] = {}
        # Each group's number in supervisors' names; the default group is 0.
        self._numbers: dict[GroupKey, int] = {DEFAULT_GROUP: 0}
        # The live CPU nodes, read at the first pinned placement (see _new).
        self._nodes: list[str] = []
        # A started, idle next generation of each supervisor that died once, by
        # (group, index): its next death is replaced at once (see replace).
        self._standbys: dict[tuple[GroupKey, int], RemoteSupervisor] = {}
        #: Groups whose supervisors keep dying before they start, and why: they
        #: are not replaced any more (see Recovery), and take no calls.
        self.broken: dict[GroupKey, str] = {}
        self._stopped = False  # stop_all ran: a standby started after it is ended at once
        self._lock = threading.Lock()
        self._io = io
        self._cancel = cancel
        self._send_now = send_now
        self._fetch = fetch
        self._on_started = on_started

    def start_default(self, count: int | None) -> int:
        """Start the default group (``None``: one supervisor per live CPU node) and
        wait until every one answers; returns how many started."""
        count = count or default_supervisor_count(ray.nodes())
        self._wait_ready(self._create(DEFAULT_GROUP, count, {}))
        return count

    def group(self, options: dict[str, Any]) -> GroupKey:
        """The group of supervisors started with these extra actor options (made on first use).

        No options: the default group, started with the pool.
        """
        key = group_key(options)
        if key == DEFAULT_GROUP or key in self.groups:
            return key
        with self._lock:
            if key in self.groups:
                return key
            supervisors = self._create(key, 1, options)
        self.logger.info("Starting a supervisor with Ray actor options %s", redact_options(options))
        try:
            self._wait_ready(supervisors)
        except BaseException:
            # Forget the group, so the next use tries again and fails as clearly.
            with self._lock:
                self.groups.pop(key, None)
            for supervisor in supervisors:
                supervisor.alive = False
                ray.kill(supervisor.handle, no_restart=True)
            raise
        return key

    def live(self, group: GroupKey = DEFAULT_GROUP) -> list[RemoteSupervisor]:
        """The live supervisors of a group."""
        return [s for s in self.groups.get(group, []) if s.alive]

    def every(self) -> list[RemoteSupervisor]:
        """Every supervisor of every group, dead ones included."""
        return [supervisor for supervisors in self.groups.values() for supervisor in supervisors]

    def least_loaded(self, group: GroupKey) -> RemoteSupervisor | None:
        """The live supervisor of ``group`` with the fewest calls not finished, if any
        (none in a broken group: see :attr:`broken`)."""
        if group in self.broken:
            return None
        supervisors = self.live(group)
        return min(supervisors, key=lambda s: s.load) if supervisors else None

    def replace(self, dead: RemoteSupervisor) -> RemoteSupervisor:
        """Kill ``dead`` (if it still runs) and put a new supervisor in its place.

        A supervisor that died once may die again (a flaky node, a task that
        runs it out of memory, chaos): its replacement gets a standby, the
        generation after it, started now and idle until it is needed. Starting
        a supervisor takes seconds (Prefect's imports, in a Prefect flow), and
        every call that was running waits for it. Not for groups whose
        supervisors hold resources (a CPU, a GPU): a standby would hold them idle.
        """
        dead.alive = False
        dead.died = True
        _end(dead.handle)
        with self._lock:
            standby = self._standbys.pop((dead.group, dead.index), None)
        replacement = standby or self._new(dead.index, dead.group, dead.generation + 1)
        group = list(self.groups[dead.group])
        group[group.index(dead)] = replacement
        self.groups[dead.group] = group
        self._on_started(replacement)
        self._start_standby(replacement)
        return replacement

    def _start_standby(self, supervisor: RemoteSupervisor) -> None:
        options = (self.settings.actor_options, self._options.get(supervisor.group, {}))
        # A name of the user's own cannot be given to two actors at once.
        if _holds_resources(*options) or any("name" in given for given in options):
            return
        try:
            standby = self._new(supervisor.index, supervisor.group, supervisor.generation + 1)
        except Exception:  # a standby is a nicety: the calls in hand come first
            self.logger.debug("could not start a standby supervisor", exc_info=True)
            return
        with self._lock:
            # A death handled while the runtime closes (another thread) must
            # not leave a standby behind the close.
            stopped = self._stopped
            if not stopped:
                self._standbys[(supervisor.group, supervisor.index)] = standby
        if stopped:
            _end(standby.handle)

    def give_up(self, dead: RemoteSupervisor, reason: str) -> None:
        """Do not replace ``dead``: its group is broken (``reason`` says why)."""
        self.broken[dead.group] = reason  # first: a submit meanwhile must read why
        dead.alive = False
        dead.died = True
        with self._lock:
            standby = self._standbys.pop((dead.group, dead.index), None)
        for supervisor in (dead, standby):
            if supervisor is not None:
                _end(supervisor.handle)

    def stop_all(self, *, kill: bool) -> None:
        """Mark every supervisor dead; with ``kill``, end their actors too (without,
        they are gone already: Ray went away, and they died with it)."""
        with self._lock:
            standbys, self._standbys = list(self._standbys.values()), {}
            self._stopped = True
        for supervisor in [*self.every(), *standbys]:
            supervisor.died = supervisor.died or (supervisor.alive and not kill)
            supervisor.alive = False
            if kill:
                _end(supervisor.handle)

    def placement(self) -> str:
        """Where the live default supervisors run: ``"127.0.0.1 x2, 10.0.0.5 x1"``."""
        nodes = collections.Counter(s.info.get("node_ip", "?") for s in self.live())
        return ", ".join(f"{ip} x{n}" for ip, n in sorted(nodes.items()))

    def _create(self, key: GroupKey, count: int, options: dict[str, Any]) -> list[RemoteSupervisor]:
        self._options[key] = options
        # Kept if the group fails to start: a retry reuses its number.
        self._numbers.setdefault(key, len(self._numbers))
        supervisors = [self._new(i, key, 0) for i in range(count)]
        self.groups[key] = supervisors
        for supervisor in supervisors:
            self._on_started(supervisor)
        return supervisors

    def _new(self, index: int, group: GroupKey, generation: int) -> RemoteSupervisor:
        group_options = self._options.get(group, {})
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
            pool_name=self.pool_name,
            group=group,
            group_number=self._numbers[group],
        )
        options["scheduling_strategy"] = to_ray_strategy(options["scheduling_strategy"])
        handle = _SUPERVISOR.options(**options).remote(index, self.settings, self.pool_name)
        return RemoteSupervisor(
            index,
            group,
            handle,
            generation,
            io=self._io,
            cancel=self._cancel,
            send_now=self._send_now,
            fetch=self._fetch,
        )

    def _wait_ready(self, supervisors: Sequence[RemoteSupervisor]) -> None:
        refs = [supervisor.handle.info.remote() for supervisor in supervisors]
        timeout = self.settings.start_timeout
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        if len(ready) < len(refs):
            options = self._options.get(supervisors[0].group) or dict(self.settings.actor_options)
            raise RuntimeError(
                f"{len(refs) - len(ready)} of {len(refs)} supervisors did not start within"
                f" {timeout:.0f} s. Ray may be unable to place them with the"
                f" options {redact_options(options) or '(defaults)'}; resources available now:"
                f" {ray.available_resources()}. Lower `supervisors`, change the actor"
                " options, or raise `start_timeout`."
            )
        for supervisor, info in zip(supervisors, ray.get(refs)):
            supervisor.info = info


def _holds_resources(*options: Mapping[str, Any]) -> bool:
    """Whether supervisors started with these actor options hold resources (a CPU, ...)."""
    for given in options:
        if given.get("num_cpus") or given.get("num_gpus") or given.get("resources"):
            return True
        if given.get("memory") or given.get("accelerator_type"):
            return True
    return False


def _end(handle: Any) -> None:
    """End a supervisor's actor; one already gone (or a Ray going away) is no error."""
    try:
        ray.kill(handle, no_restart=True)
    except Exception:
        pass
