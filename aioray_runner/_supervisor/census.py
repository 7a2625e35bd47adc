"""What a supervisor's calls are doing now, and what they did: for ``aioray-runner status``
and Ray metrics.

Counted as calls move through their phases (a few integer updates per call,
on the loop's thread), read by :meth:`Census.snapshot` (on another thread) and
by the metrics without stopping them. Only function names and labels are kept,
never arguments or results: the snapshot is shown to whoever can reach the cluster.
"""

from __future__ import annotations

import gc
import heapq
import resource
import time
from collections import Counter, deque
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from .._common.watchdog import Watchdog

T = TypeVar("T")

#: Phases of a call before and while it runs (keys of ``Census.phases``).
RUNNING = "running"
#: Waiting for its upstream futures or ObjectRefs.
WAITING_FOR_DEPENDENCIES = "dependencies"
#: Waiting for a permit (``max_concurrency``'s cap) or the start gate's round trip.
WAITING_TO_START = "start"
#: A sync call handed to the supervisor's thread pool (running there, or queued
#: for a thread); it counts as running too.
IN_THREAD_POOL = "threads"

#: How a call ended (``Census.ended``).
FINISHED = "finished"
FAILED = "failed"
CANCELLED = "cancelled"
#: Sent to another supervisor without starting here: it ends there, not counted here.
HANDED_BACK = "handed back"

#: How many of the oldest running calls a snapshot lists.
OLDEST_SHOWN = 5
#: Distinct function names counted apart per supervisor; more count as ``"other"``
#: (the metrics' ``function`` tag: bounded however many functions a program makes).
MAX_FUNCTIONS = 50
#: Run times kept between two readings of the metrics (the newest): the histogram
#: samples when calls end faster than that per interval; the counts stay exact.
MAX_DURATIONS = 2_000


class Holder(Protocol):
    """A part of the supervisor that holds calls in one phase, and counts them."""

    @property
    def waiting(self) -> int:
        """Calls it holds now."""
        ...


def function_of(label: str) -> str:
    """The function (or Prefect task) name of a call's label (``"fetch#12"`` -> ``"fetch"``)."""
    return label.rsplit("#", 1)[0]


class Census:
    """Counts of one supervisor's calls by phase, and totals since it started."""

    def __init__(self, holders: Mapping[str, Sequence[Holder]] | None = None) -> None:
        # Calls waiting for dependencies and to start, as the parts that hold them
        # count them (phase -> Dependencies, Permits, the StartGate): nothing per call here.
        self._holders = dict(holders or {})
        # Sync calls in the thread pool now (see in_thread_pool); they run too.
        self._in_thread_pool = 0
        # call id -> (when it began running, its label), while it runs.
        self._running: dict[int, tuple[float, str]] = {}
        self.started_total = 0
        self.ended_total: Counter[str] = Counter()  # by how
        # Since the metrics last took them (take_ended): calls ended, by (function,
        # how), exactly; and the newest run times, by function.
        self._ended: Counter[tuple[str, str]] = Counter()
        self._durations: deque[tuple[str, float]] = deque(maxlen=MAX_DURATIONS)
        self._functions: set[str] = set()
        #: The loop's watchdog, once it runs: its lag and its stall under way.
        self.watchdog: Watchdog | None = None
        self._started_at = time.time()

    async def in_thread_pool(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` (a sync call handed to the thread pool), counting it meanwhile."""
        self._in_thread_pool += 1
        try:
            return await awaitable
        finally:
            self._in_thread_pool -= 1

    def running(self, call_id: int, label: str) -> None:
        """The call's own code starts."""
        self._running[call_id] = (time.monotonic(), label)
        self.started_total += 1

    def ended(self, call_id: int, label: str, how: str) -> None:
        """The call ended: ``how`` is :data:`FINISHED`, :data:`FAILED`,
        :data:`CANCELLED` or :data:`HANDED_BACK`."""
        ran = self._running.pop(call_id, None)
        if how == HANDED_BACK:
            return
        self.ended_total[how] += 1
        function = self._function(function_of(label))
        self._ended[function, how] += 1
        if ran is not None:
            self._durations.append((function, time.monotonic() - ran[0]))

    def _function(self, name: str) -> str:
        if name in self._functions or len(self._functions) < MAX_FUNCTIONS:
            self._functions.add(name)
            return name
        return "other"

    def take_ended(self) -> tuple[Counter[tuple[str, str]], list[tuple[str, float]]]:
        """Calls ended since the last call, by (function, how), and run times (the newest)."""
        ended, self._ended = self._ended, Counter()
        durations = list(self._durations)
        self._durations.clear()
        return ended, durations

    def phases(self) -> dict[str, int]:
        """Calls in each phase now."""
        held = {phase: sum(h.waiting for h in of) for phase, of in self._holders.items()}
        return {
            RUNNING: len(self._running),
            WAITING_FOR_DEPENDENCIES: held.get(WAITING_FOR_DEPENDENCIES, 0),
            WAITING_TO_START: held.get(WAITING_TO_START, 0),
            IN_THREAD_POOL: self._in_thread_pool,
        }

    def snapshot(self) -> dict[str, Any]:
        """Plain data: counts, the oldest running calls with their age in seconds,
        the loop's lag and its stall under way, memory."""
        now = time.monotonic()
        # Copied at once (in C, under the GIL): status() runs on a thread of its own.
        oldest = heapq.nsmallest(OLDEST_SHOWN, list(self._running.values()))
        watchdog = self.watchdog
        phases = self.phases()
        return {
            "running": phases[RUNNING],
            "waiting_for_dependencies": phases[WAITING_FOR_DEPENDENCIES],
            "waiting_to_start": phases[WAITING_TO_START],
            "in_thread_pool": phases[IN_THREAD_POOL],
            "finished": self.ended_total[FINISHED],
            "failed": self.ended_total[FAILED],
            "cancelled": self.ended_total[CANCELLED],
            "oldest_running": [
                {"function": function_of(label), "label": label, "age_s": round(now - began, 3)}
                for began, label in oldest
            ],
            "up_s": round(time.time() - self._started_at, 1),
            "loop_lag_s": watchdog.lag_quantiles() if watchdog is not None else None,
            "blocked_now": watchdog.stuck_now() if watchdog is not None else None,
            "rss_bytes": proc_status().get("VmRSS", 0),
        }


def proc_status() -> dict[str, int]:
    """This process's resident memory now and at its peak, in bytes (``VmRSS``,
    ``VmHWM`` of ``/proc/self/status``; empty where there is none)."""
    values: dict[str, int] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return values


def process_memory(*, collect: bool = False) -> dict[str, int]:
    """This process's ``rss_bytes`` and ``peak_rss_bytes``; ``collect`` runs the
    garbage collector and trims the heap first, so RSS reflects live memory."""
    if collect:
        gc.collect()
        _trim_malloc()
    status = proc_status()
    peak = status.get("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"rss_bytes": status.get("VmRSS", 0), "peak_rss_bytes": peak}


def _trim_malloc() -> None:
    """Hand freed heap pages back to the OS (glibc)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
