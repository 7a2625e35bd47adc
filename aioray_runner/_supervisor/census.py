"""What a supervisor's calls are doing now, and what they did: for ``aioray-runner status``.

Counted as calls move through their phases (a few integer updates per call,
on the loop's thread), read by :meth:`Census.snapshot` without stopping them.
Only function names and labels are kept, never arguments or results: the
snapshot is shown to whoever can reach the cluster.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Awaitable
from typing import Any, TypeVar

from .._common.watchdog import Watchdog

T = TypeVar("T")

#: Phases a call waits in before it runs (keys of ``Census.waiting``).
WAITING_FOR_DEPENDENCIES = "dependencies"
WAITING_FOR_PERMIT = "permit"  # max_concurrency's cap, or the start gate's round trip
#: Not waiting: a sync call running in the supervisor's thread pool.
IN_A_THREAD = "threads"

#: How many of the oldest running calls a snapshot lists.
OLDEST_SHOWN = 5


def function_of(label: str) -> str:
    """The function (or Prefect task) name of a call's label (``"fetch#12"`` -> ``"fetch"``)."""
    return label.rsplit("#", 1)[0]


class Census:
    """Counts of one supervisor's calls by phase, and totals since it started."""

    def __init__(self) -> None:
        # Calls in each phase now (see wait).
        self.waiting = {WAITING_FOR_DEPENDENCIES: 0, WAITING_FOR_PERMIT: 0, IN_A_THREAD: 0}
        # call id -> (when it began running, its label), while it runs.
        self._running: dict[int, tuple[float, str]] = {}
        self.started_total = 0
        self.finished = 0
        self.failed = 0
        self.cancelled = 0
        # Calls ended since the metrics last took them: (function, how, seconds run
        # or None if it never ran). Bounded: with no metrics reader the oldest go.
        self.ended_since: deque[tuple[str, str, float | None]] = deque(maxlen=50_000)
        #: The loop's watchdog, once it runs: its lag and its stall under way.
        self.watchdog: Watchdog | None = None
        self._started_at = time.time()

    @property
    def running_now(self) -> int:
        """Calls whose own code runs now."""
        return len(self._running)

    async def wait(self, phase: str, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable``, counting the call as waiting in ``phase`` meanwhile."""
        self.waiting[phase] += 1
        try:
            return await awaitable
        finally:
            self.waiting[phase] -= 1

    def running(self, call_id: int, label: str) -> None:
        """The call's own code starts."""
        self._running[call_id] = (time.monotonic(), label)
        self.started_total += 1

    def ended(self, call_id: int, label: str, how: str) -> None:
        """The call ended (``how``: ``"finished"``, ``"failed"``, ``"cancelled"``, or
        ``"handed back"``, sent to another supervisor without starting here)."""
        ran = self._running.pop(call_id, None)
        if how != "handed back":  # it ends on another supervisor
            seconds = time.monotonic() - ran[0] if ran is not None else None
            self.ended_since.append((function_of(label), how, seconds))
        if how == "finished":
            self.finished += 1
        elif how == "cancelled":
            self.cancelled += 1
        elif how == "failed":
            self.failed += 1

    def snapshot(self, starting: int) -> dict[str, Any]:
        """Plain data: counts (``starting``: more calls waiting at the start gate),
        the oldest running calls with their age in seconds, the loop's lag, memory."""
        now = time.monotonic()
        # Copied at once (in C, under the GIL): status() runs on a thread of its own.
        oldest = heapq.nsmallest(OLDEST_SHOWN, list(self._running.values()))
        watchdog = self.watchdog
        return {
            "running": len(self._running),
            "waiting_for_dependencies": self.waiting[WAITING_FOR_DEPENDENCIES],
            "waiting_for_permit": self.waiting[WAITING_FOR_PERMIT] + starting,
            "finished": self.finished,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "threads_busy": self.waiting[IN_A_THREAD],
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
