"""Where a sync task's runs go when the runner decides (``sync_tasks="auto"``, the default).

An I/O-bound sync task runs best in a thread of a supervisor, as in Prefect's
thread pool: hundreds wait side by side, and a run costs what it costs there.
A CPU-bound one needs cores, which the threads of one process share (Python's
GIL): it runs best as a Ray task of its own, a core each, as under
``RayTaskRunner``. Nothing in a task says which it is, so each supervisor learns
it, per task:

* **From the task's first run there (the probe).** It runs in a thread, and this
  module reads that thread's CPU clock every :data:`SAMPLE_S` from the moment
  the task's own function starts (Prefect's engine before it mostly waits for
  the API, and warms up on a first run: either would make any task look like
  one kind). Its CPU is compared with what the whole process got meanwhile (not
  with the clock: on a busy machine the process itself gets less than a core; but
  at least half the clock's time), shared by the sync runs in threads beside it.
  It is CPU-bound once it has kept the CPU for :data:`CPU_S`, for at least
  :data:`CPU_SHARE` of its share; I/O-bound once :data:`IO_AFTER_S` have passed
  below that share without it ever having been seen computing at it, or
  :data:`DECIDE_WITHIN_S` undecided, or when it ends having used less. Runs of
  the task that arrive meanwhile wait for the verdict (at most :data:`PRELUDE_S`
  for the probe to reach its code, then :data:`WAIT_S`; past either a run goes
  to a thread, and the verdict is still the probe's), then go where it says;
  later runs go there at once. A probe whose function never ran (a cached result, a
  run cancelled first) decides nothing: the next run is the probe.
* **From every later run in a thread**, judged at its end: a task that waits
  first and computes after (a download, then parsing) passes its probe as
  I/O-bound; a run that keeps the CPU for :data:`RUN_CPU_S` at that share sends
  the task's later runs to Ray tasks.

The verdict is kept per task for the supervisor's life. ``sync_tasks="threads"``
and ``"ray"``, and ``remote_options``, bypass all this.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any, Literal

__all__ = [
    "COMPUTING_S",
    "CPU_S",
    "CPU_SHARE",
    "DECIDE_WITHIN_S",
    "IO_AFTER_S",
    "PRELUDE_S",
    "RUN_CPU_S",
    "WAIT_S",
    "Probe",
    "TaskKinds",
    "run_was_cpu_bound",
]

Kind = Literal["thread", "ray"]

#: CPU seconds a probe must have used before it counts as CPU-bound: more than
#: Prefect's engine spends on a run (a few ms), and long enough that a core of
#: its own pays for a Ray task's start.
CPU_S = 0.1
#: The share of its available time a CPU-bound run keeps the CPU.
CPU_SHARE = 0.5
#: Wall seconds (of its function) after which a probe below that share is I/O-bound,
#: unless it was seen computing at that share for COMPUTING_S of CPU before.
IO_AFTER_S = 0.03
COMPUTING_S = 0.005
#: Wall seconds (of its function) after which an undecided probe counts as I/O-bound.
DECIDE_WITHIN_S = 1.0
#: The longest a run waits for its task's probe to reach the task's own code: its
#: engine's prelude is the run's own too, and on a slow API it takes seconds.
PRELUDE_S = 0.5
#: The longest a run waits for its task's probe to decide, once that code runs.
WAIT_S = 3.0
#: CPU seconds a later run in a thread must keep (at that share) to change the verdict.
RUN_CPU_S = 0.5
#: How often the probe's CPU clock is read.
SAMPLE_S = 0.01


def run_was_cpu_bound(cpu: float, wall: float, beside: int) -> bool:
    """A whole sync run in a thread, which used ``cpu`` of its ``wall`` seconds beside
    ``beside`` runs in threads (sharing one GIL, k CPU-bound runs get about 1/k of
    it each; an I/O-bound run almost none): was it CPU-bound (:data:`RUN_CPU_S`)?"""
    return _cpu_bound(cpu, wall, beside, RUN_CPU_S)


async def _within(event: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        return False
    return True


def _could_have_had(process_cpu: float, wall: float) -> float:
    """The CPU a run could have had: what its process got meanwhile, but at least half
    the time (a quiet process's few ms would make a little CPU look like a lot) and at
    most all of it (Python threads share one GIL; the rest is Ray's own threads)."""
    return min(max(process_cpu, wall / 2), wall)


def _cpu_bound(cpu: float, had: float, beside: int, at_least: float = CPU_S) -> bool:
    """``cpu`` seconds of a run's own, of ``had`` that it could have had (the process's
    CPU, or wall time), shared with ``beside`` runs: CPU-bound?"""
    return cpu >= at_least and cpu >= CPU_SHARE * had / max(1, beside)


class Probe:
    """One task's first run on this supervisor, watched until it shows its kind."""

    def __init__(self, kinds: TaskKinds, task_key: str) -> None:
        self._kinds = kinds
        self.task_key = task_key
        self._loop = asyncio.get_running_loop()
        #: Set once this probe is over: decided (``TaskKinds.kind_of`` says what), or dropped.
        self.over = asyncio.Event()
        #: Set once its task's own code runs, or it is over.
        self.in_code = asyncio.Event()
        #: Its run reached its thread (``started`` was called).
        self.ran = False
        self._hook: Callable[[FrameType, str, Any], None] | None = None
        # At its code's start: the thread's CPU, the clock, the process's CPU.
        self._started_at: tuple[float, float, float] | None = None

    def started(self, code: CodeType | None) -> None:
        """The probe's thread starts the run (called in that thread): watch it from
        the moment Prefect's engine calls the task's function (whose code is
        ``code``), not before."""
        self.ran = True
        if code is None:
            self._user_code_started()
            return

        def on_call(frame: FrameType, event: str, arg: Any) -> None:
            if event == "call" and frame.f_code is code:
                sys.setprofile(None)
                self._user_code_started()

        self._hook = on_call
        sys.setprofile(on_call)  # this thread's only, until the task's code starts

    def _user_code_started(self) -> None:
        self._started_at = started = (time.thread_time(), time.monotonic(), time.process_time())
        try:
            clock = time.pthread_getcpuclockid(threading.get_ident())
            cpu0 = time.clock_gettime(clock)
            self._loop.call_soon_threadsafe(self._watch, clock, cpu0, *started[1:])
        except (AttributeError, OSError, RuntimeError):
            pass  # no per-thread CPU clock here, or the loop is gone: its end decides

    def finished(self, beside: int) -> None:
        """The run ended (called in its thread), ``beside`` sync runs in threads at most
        while it ran: judged by what its function used, unless its watch decided."""
        if self._hook is not None and sys.getprofile() is self._hook:
            sys.setprofile(None)  # the task's code never ran (a cached result, say)
        if self._started_at is None:
            verdict: Kind | None = None  # nothing learned: the next run probes
        else:
            cpu0, wall0, process0 = self._started_at
            cpu = time.thread_time() - cpu0
            had = _could_have_had(time.process_time() - process0, time.monotonic() - wall0)
            verdict = "ray" if _cpu_bound(cpu, had, beside) else "thread"
        try:
            self._loop.call_soon_threadsafe(self._end, verdict)
        except RuntimeError:  # the loop is gone with its supervisor
            pass

    def _watch(self, clock: int, cpu0: float, wall0: float, process0: float) -> None:
        self.in_code.set()
        self._loop.create_task(self._sample(clock, cpu0, wall0, process0))

    async def _sample(self, clock: int, cpu0: float, wall0: float, process0: float) -> None:
        computing = False
        while not self.over.is_set():
            await asyncio.sleep(SAMPLE_S)
            if self.over.is_set():
                return
            try:
                cpu = time.clock_gettime(clock) - cpu0
            except OSError:  # the thread is gone: its end decides
                return
            wall = time.monotonic() - wall0
            had = _could_have_had(time.process_time() - process0, wall)
            beside = self._kinds.threads_busy()
            if _cpu_bound(cpu, had, beside):
                self._end("ray")
                return
            # Computing at its share so far (if not for CPU_S yet): a thread kept
            # from the GIL for a while (dozens of runs starting beside it) looks
            # like one that waits, so once seen computing it is given until
            # DECIDE_WITHIN_S to reach CPU_S.
            computing = computing or _cpu_bound(cpu, had, beside, COMPUTING_S)
            if (wall >= IO_AFTER_S and not computing) or wall >= DECIDE_WITHIN_S:
                self._end("thread")

    def _end(self, verdict: Kind | None) -> None:
        if not self.over.is_set():
            self._kinds.ended(self, verdict)


class TaskKinds:
    """Which sync tasks are CPU-bound, as this supervisor learned from their runs.

    ``threads_busy`` counts the sync runs in threads of this process right now.
    """

    def __init__(self, threads_busy: Callable[[], int]) -> None:
        self.threads_busy = threads_busy
        self._kinds: dict[str, Kind] = {}
        self._probes: dict[str, Probe] = {}

    async def place(self, task_key: str) -> tuple[Kind, Probe | None]:
        """Where a run of this task goes, and the probe to report to if it is the probe
        (which must then reach ``started``, or be dropped with :meth:`drop`)."""
        kind = self._kinds.get(task_key)
        if kind is not None:
            return kind, None
        probe = self._probes.get(task_key)
        if probe is None:
            probe = self._probes[task_key] = Probe(self, task_key)
            return "thread", probe
        # Past either wait this run goes to a thread; the verdict stays the probe's.
        if await _within(probe.in_code, PRELUDE_S):
            await _within(probe.over, WAIT_S)
        return self._kinds.get(task_key, "thread"), None

    def kind_of(self, task_key: str) -> Kind | None:
        """What this supervisor learned of the task (``None``: nothing yet)."""
        return self._kinds.get(task_key)

    def ended(self, probe: Probe, verdict: Kind | None) -> None:
        """A probe's verdict (``None``: it learned nothing; the next run probes)."""
        if self._probes.get(probe.task_key) is probe:
            del self._probes[probe.task_key]
        if verdict is not None:
            self._kinds.setdefault(probe.task_key, verdict)
        probe.over.set()
        probe.in_code.set()

    def drop(self, probe: Probe) -> None:
        """A probe whose run never reached its thread (cancelled, or already final)."""
        if not probe.ran:
            self.ended(probe, None)

    def judge_run(self, task_key: str, cpu: float, wall: float, beside: int) -> bool:
        """A later run of the task in a thread ended: True if it shows the task is
        CPU-bound after all (its later runs then go to Ray tasks)."""
        if self._kinds.get(task_key) == "thread" and run_was_cpu_bound(cpu, wall, beside):
            self._kinds[task_key] = "ray"
            return True
        return False
