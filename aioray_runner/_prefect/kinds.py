"""Where a sync task's runs go when the runner decides (``sync_tasks="auto"``, the default).

An I/O-bound sync task runs best in a thread of a supervisor, as in Prefect's
thread pool: hundreds wait side by side, and a run costs what it costs there.
A CPU-bound one needs cores, which the threads of one process share (Python's
GIL): it runs best as a Ray task of its own, a core each, as under
``RayTaskRunner``. Nothing in a task says which it is, so each supervisor learns
it, per task, from the task's first run there (the *probe*):

* the probe runs in a thread, and this module reads that thread's CPU clock
  every :data:`SAMPLE_S` from the moment the task's own function starts
  (Prefect's engine before it mostly waits for the API);
* it is **CPU-bound** once it has kept the CPU for :data:`CPU_S` for at least
  :data:`CPU_SHARE` of the time it could have had (its wall time divided by the
  sync runs in threads beside it, which share the GIL with it);
* it is **I/O-bound** once :data:`IO_AFTER_S` have passed with less than that
  share (of the whole time, if this process left the GIL room meanwhile), or
  when it ends having used less CPU; a probe that has not shown its
  kind after :data:`DECIDE_WITHIN_S` counts as I/O-bound (threads, as before).

Runs of the task that arrive while its probe decides wait for the decision (at
most :data:`DECIDE_WITHIN_S`), then go where it says; later runs go there at
once. The probe itself finishes in its thread. The decision is kept per task for
the supervisor's life (one flow run). ``sync_tasks="threads"`` and ``"ray"``, and
``remote_options``, bypass all this.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Literal

__all__ = ["CPU_S", "CPU_SHARE", "DECIDE_WITHIN_S", "IO_AFTER_S", "Probe", "TaskKinds"]

Kind = Literal["thread", "ray"]

#: CPU seconds a probe must have used before it counts as CPU-bound: more than
#: Prefect's engine spends on a run (a few ms), and long enough that a core of
#: its own pays for a Ray task's start.
CPU_S = 0.1
#: The share of its available time a CPU-bound probe keeps the CPU.
CPU_SHARE = 0.5
#: Wall seconds after which a probe below that share counts as I/O-bound.
IO_AFTER_S = 0.03
#: The longest a probe decides for (and the runs waiting for it wait).
DECIDE_WITHIN_S = 1.0
#: How often the probe's CPU clock is read.
SAMPLE_S = 0.01


class Probe:
    """One task's first run on this supervisor, watched until it shows its kind."""

    def __init__(self, kinds: TaskKinds, task_key: str) -> None:
        self._kinds = kinds
        self._task_key = task_key
        self._loop = asyncio.get_running_loop()
        #: Set once the kind is known (``TaskKinds.kind_of`` says which).
        self.decided = asyncio.Event()
        self._clock: int | None = None
        self._cpu0 = 0.0
        self._wall0 = 0.0
        self._process0 = 0.0
        self._started_at: tuple[float, float] | None = None  # the thread's, at its code's start

    def started(self, code: CodeType | None) -> None:
        """The probe's thread starts the run (called in that thread): watch it from
        the moment Prefect's engine calls the task's function (whose code is
        ``code``), not before. The engine's own work (requests to the API, the
        first run's warm-up) would make any task look I/O-bound or CPU-bound."""
        if code is None:
            self._user_code_started()
            return

        def on_call(frame: FrameType, event: str, arg: object) -> None:
            if event == "call" and frame.f_code is code:
                sys.setprofile(None)
                self._user_code_started()

        sys.setprofile(on_call)  # this thread's only, until the task's code starts

    def _user_code_started(self) -> None:
        self._started_at = (time.thread_time(), time.monotonic())  # for finished()
        try:
            clock = time.pthread_getcpuclockid(threading.get_ident())
            cpu0 = time.clock_gettime(clock)
        except (AttributeError, OSError):  # no per-thread CPU clock here: decide at its end
            return
        self._loop.call_soon_threadsafe(self._watch, clock, cpu0, time.monotonic())

    def finished(self, beside: int) -> None:
        """The run ended (called in its thread), ``beside`` sync runs in threads at most
        while it ran: judged by what its function used, if its watch did not decide."""
        sys.setprofile(None)  # the task's code never ran (a cached result, say)
        kind: Kind = "thread"
        if self._started_at is not None:
            cpu0, wall0 = self._started_at
            cpu, wall = time.thread_time() - cpu0, time.monotonic() - wall0
            kind = "ray" if _cpu_bound(cpu, wall, beside) else "thread"
        self._loop.call_soon_threadsafe(self._decide, kind)

    def _watch(self, clock: int, cpu0: float, wall0: float) -> None:
        self._clock, self._cpu0, self._wall0 = clock, cpu0, wall0
        self._process0 = time.process_time()
        self._loop.create_task(self._sample())

    async def _sample(self) -> None:
        assert self._clock is not None
        while not self.decided.is_set():
            await asyncio.sleep(SAMPLE_S)
            if self.decided.is_set():
                return
            try:
                cpu = time.clock_gettime(self._clock) - self._cpu0
            except OSError:  # the thread is gone: its end decides
                return
            wall = time.monotonic() - self._wall0
            beside = self._kinds.threads_busy()
            if _cpu_bound(cpu, wall, beside):
                self._decide("ray")
                return
            # Below the share: I/O-bound, if the GIL left it room (this process
            # used less than a core meanwhile), or below its share of a busy GIL.
            gil_free = time.process_time() - self._process0 < 0.8 * wall
            low = cpu < CPU_SHARE * wall / (1 if gil_free else max(1, beside))
            if (wall >= IO_AFTER_S and low) or wall >= DECIDE_WITHIN_S:
                self._decide("thread")

    def _decide(self, kind: Kind) -> None:
        if not self.decided.is_set():
            self._kinds.learned(self._task_key, kind)
            self.decided.set()


def _cpu_bound(cpu: float, wall: float, beside: int) -> bool:
    return cpu >= CPU_S and cpu >= CPU_SHARE * wall / max(1, beside)


class TaskKinds:
    """Which sync tasks are CPU-bound, as this supervisor learned from their runs.

    ``threads_busy`` counts the sync runs in threads of this process right now.
    """

    def __init__(self, threads_busy: Callable[[], int]) -> None:
        self.threads_busy = threads_busy
        self._kinds: dict[str, Kind] = {}
        self._probes: dict[str, Probe] = {}

    async def place(self, task_key: str) -> tuple[Kind, Probe | None]:
        """Where a run of this task goes, and the probe to report to if it is the probe."""
        kind = self._kinds.get(task_key)
        if kind is not None:
            return kind, None
        probe = self._probes.get(task_key)
        if probe is None:
            probe = self._probes[task_key] = Probe(self, task_key)
            return "thread", probe
        try:
            await asyncio.wait_for(probe.decided.wait(), DECIDE_WITHIN_S)
        except TimeoutError:
            # Undecided (its code has not started, say): threads, as before, and
            # the runs that come later do not wait for it again.
            probe._decide("thread")
        return self._kinds.get(task_key, "thread"), None

    def kind_of(self, task_key: str) -> Kind | None:
        """What this supervisor learned of the task (``None``: nothing yet)."""
        return self._kinds.get(task_key)

    def learned(self, task_key: str, kind: Kind) -> None:
        """The probe's verdict."""
        self._kinds[task_key] = kind
        self._probes.pop(task_key, None)
