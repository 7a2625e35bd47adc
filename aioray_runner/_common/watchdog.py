"""The blocked-loop watchdog: a supervisor notices when its event loop stops turning.

One blocking call in an ``async def`` (``time.sleep``, ``requests.get``, a CPU-bound
loop) stalls every call on that supervisor. Nothing fails, so nothing would say
so: a flow just gets slow. The watchdog makes it visible.

Two parts, both cheap (a callback every ``threshold / 4`` seconds on the loop, a
thread that wakes as often; measured in ``docs/failures.md``):

* a heartbeat on the loop records when it last ran;
* a thread checks the heartbeat's age. While the loop is late it samples who
  holds the loop: the innermost Python frame of the loop's thread (where the
  code is) and the asyncio task running there, which the supervisor maps to its
  call. That can only be seen *during* the stall: once the loop turns again,
  the culprit is gone.

A loop that does not turn is not always held by a call. The whole process may
not have run (a machine with more busy processes than cores, a SIGSTOP, a paused
VM): the frame that happened to be current then did nothing wrong. So the thread
also measures how the loop's thread spent the stall (:class:`Evidence`): on a
CPU, runnable but waiting for one (Linux's per-thread ``schedstat``), asleep in
a call (its state in ``/proc``), or stopped with the rest of the process (the
watchdog's own sleep overshot too, and not for want of a CPU). :func:`classify`
turns that into a cause:
only a stall spent in the user's code, in one call, names that call. Where
``/proc`` or per-thread CPU clocks are missing, the measurements that are
there are used (the watchdog's oversleep works everywhere).

Some stalls hold the GIL throughout, so no sample is ever taken: a garbage
collection (timed by a ``gc`` callback, and never blamed on a call) and a long
call in native code (a C extension, a huge regular expression). The latter is
told from a busy machine by how the watching thread slept meanwhile: held off
the GIL past its timeouts, not waiting for a CPU.

When the loop turns again the heartbeat measures the whole stall and hands a
:class:`Stall` to the supervisor, which sends it to the caller with its next
outcomes; the caller warns about a blocking call, and mentions the other causes
at most once a minute at a lower level. A stall that never ends cannot be sent
back (replies leave through the loop): the thread logs it in the supervisor's
own log every few seconds, which Ray forwards to the driver's console.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import sysconfig
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from types import CodeType, FrameType
from typing import Any

# Frames of these files are the machinery between the loop and the stuck code,
# never the culprit a user wants to see.
_MACHINERY = (
    os.sep + "asyncio" + os.sep,
    os.sep + "threading.py",
    os.sep + "selectors.py",
    os.sep + "concurrent" + os.sep,
)

# The package's root (this module is in its _common/ folder).
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep

# Installed libraries, the standard library and this package (wherever it is
# imported from): code a user rarely means to fix.
_LIBRARY_PREFIXES = tuple(
    {
        path
        for name in ("stdlib", "platstdlib", "purelib", "platlib")
        if (path := sysconfig.get_paths().get(name))
    }
    | {_PACKAGE_DIR, "<frozen "}
)

# The demo's flow and tasks ship inside the package but stand for a user's code.
_USER_CODE_IN_PACKAGE = (os.path.join(_PACKAGE_DIR, "_tools", "demo.py"),)

_log = logging.getLogger("aioray_runner.supervisor")

#: Causes of a stall (:attr:`Stall.cause`). The user's code of one call ran on
#: the loop's thread, on a CPU (a CPU-bound loop):
BUSY = "busy"
#: The user's code of one call waited in a blocking call (``time.sleep``, a socket):
BLOCKING_CALL = "blocking call"
#: The user's code of one call held the loop; how is unknown on this platform:
BLOCKED = "blocked"
#: The process was not given a CPU (more busy processes than cores, a SIGSTOP):
UNSCHEDULED = "unscheduled"
#: The loop ran code that is not one call of the user's: this package's own
#: work, Prefect's engine, a library, or many calls' short steps at once.
ELSEWHERE = "elsewhere"
#: The causes that name a call: its code blocked the loop.
BLOCKING_CAUSES = frozenset({BUSY, BLOCKING_CALL, BLOCKED})
#: Where a stall was, when one native call held the GIL so that no sample was taken.
HELD_THE_GIL = (
    "one call in native code that held Python's GIL throughout (a C extension's long"
    " call, a huge regular expression: no sample could name it)"
)

#: Where a stall was, when Python's garbage collector ran on the loop's thread for
#: most of it (a full collection of a large heap holds the GIL throughout).
GARBAGE_COLLECTOR = "Python's garbage collector"

#: Seconds of CPU that one step of a call may take on the loop's thread before
#: it counts as blocking, however little CPU the process got: asyncio's debug
#: mode calls a step slow past the same (``slow_callback_duration``).
SLOW_STEP = 0.1


@dataclass(frozen=True)
class Evidence:
    """How the loop's thread spent (part of) a stall, as the watchdog measured it.

    Attributes:
        wall: Seconds the measurements cover.
        cpu: Seconds the loop's thread ran on a CPU meanwhile (``None``: no
            per-thread clock here).
        run_wait: Seconds it was runnable but waited for a CPU, as far as the
            kernel has counted (Linux ``schedstat`` counts a wait when it ends;
            ``None``: not available).
        stopped: Seconds the watchdog's own thread slept past its timeouts
            without waiting for a CPU (where that wait can be read): the whole
            process was not running (a SIGSTOP, a paused VM).
        samples: Times the loop's thread was sampled while the loop was late.
        states: Of those, samples where its scheduler state could be read.
        sleeping: Of those, samples where it was asleep in a call (``S``, ``D``)
            rather than running or runnable (``R``) or stopped.
        culprit: Samples stuck in the same call's own code as the latest sample
            that was in the user's code.
    """

    wall: float
    cpu: float | None
    run_wait: float | None
    stopped: float
    samples: int
    states: int = 0
    sleeping: int = 0
    culprit: int = 0


def classify(evidence: Evidence, threshold: float) -> str:
    """The cause of a stall: one of :data:`BLOCKING_CAUSES`, :data:`UNSCHEDULED`, :data:`ELSEWHERE`.

    The loop's thread's time splits into time on a CPU, time runnable but not
    run, and the rest: stopped with the whole process (as long as the
    watchdog's own thread was stopped too), or else asleep in a call or waiting
    for a CPU, in the proportion of the state samples. The code the loop ran is
    to blame for the CPU time and the sleep; the machine for the rest. A call is
    named only when its code had most of the stall (or would have stalled the
    loop past ``threshold`` on its own, or ran :data:`SLOW_STEP` on a CPU
    without yielding: on a loaded machine, a step that yields would have been
    done long before) and it is the same call of the user's in most samples: a
    frame seen once, among others, may just be where a busy loop happened to be.
    """
    wall = max(evidence.wall, 1e-9)
    cpu = min(max(evidence.cpu or 0.0, 0.0), wall)
    run_wait = min(max(evidence.run_wait or 0.0, 0.0), wall - cpu)
    off = wall - cpu - run_wait  # neither running nor counted as waiting to run
    stopped = min(max(evidence.stopped, 0.0), off)
    rest = off - stopped
    # A run-queue wait still in progress is not counted yet: the state samples
    # tell it from a sleep in a call. No per-thread CPU clock: "R" may be
    # running, so trust no state then.
    if evidence.states and evidence.cpu is not None:
        asleep = rest * evidence.sleeping / evidence.states
    else:
        asleep = rest
    own = cpu + asleep  # the loop's code held it: on a CPU, or waiting in a call
    if own < wall / 2 and own < threshold and cpu < SLOW_STEP:
        return UNSCHEDULED
    if evidence.culprit * 2 <= evidence.samples:
        return ELSEWHERE
    if evidence.cpu is None:
        return BLOCKED
    return BUSY if cpu >= asleep else BLOCKING_CALL


@dataclass(frozen=True)
class Stall:
    """One stall of a supervisor's event loop, as the watchdog saw it.

    Attributes:
        seconds: How long the loop did not turn.
        calls: ``(call id, label)`` of the call(s) holding the loop (empty unless
            ``cause`` is one of :data:`BLOCKING_CAUSES`, or when the watchdog
            could not map the code to a call).
        where: The innermost frame of the stuck code, ``"func (file:line)"``
            (empty unless ``cause`` is one of :data:`BLOCKING_CAUSES`).
        cause: What stalled the loop (see :func:`classify`).
    """

    seconds: float
    calls: tuple[tuple[int, str], ...]
    where: str
    cause: str = BUSY


_HOW = {
    BUSY: "running that code on a CPU",
    BLOCKING_CALL: "waiting there in a blocking call",
}


@dataclass(frozen=True)
class BlockedLoop:
    """A call's code blocked a supervisor's event loop: what the caller is told.

    Logged as a warning on the runtime's logger, and handed to
    ``Runtime(on_blocked_loop=...)`` (the Prefect runner puts it in the task
    run's logs). Only stalls spent in the user's own code are reported so; a
    supervisor that was not given a CPU, or whose loop was busy with work of no
    single call, is mentioned at most once a minute at INFO level instead.

    Attributes:
        supervisor: Which supervisor, with its pid and node.
        seconds: How long its loop did not turn; every call on it waited.
        calls: Labels of the call(s) whose code held the loop (``"fetch#12"``);
            empty when the watchdog could not tell.
        call_ids: Their call ids.
        where: Where the code was stuck: ``"func (file:line)"``, and the user's
            own frame that called into a library, when there is one.
        cause: :data:`BUSY` (on a CPU), :data:`BLOCKING_CALL` (asleep in a call)
            or :data:`BLOCKED` (this platform cannot tell which).
    """

    supervisor: str
    seconds: float
    calls: tuple[str, ...]
    call_ids: tuple[int, ...]
    where: str
    cause: str = BUSY

    def __str__(self) -> str:
        who = f" by {', '.join(self.calls)}" if self.calls else ""
        at = f" in {self.where}" if self.where else ""
        how = f" ({_HOW[self.cause]})" if self.cause in _HOW and at else ""
        return (
            f"{self.supervisor}: its event loop was blocked for {self.seconds:.2f} s"
            f"{who}{at}{how}; every call on that supervisor waited meanwhile. Blocking code"
            " (time.sleep, requests, CPU-bound work) in an `async def` stalls the loop: await"
            " an async equivalent, wrap it in `await asyncio.to_thread(...)` (under the trio"
            " backend, `await trio.to_thread.run_sync(...)`), or make the function a plain"
            " `def` (it then runs in a thread)."
        )


class _ThreadProbe:
    """Reads, from any thread, how one thread of this process has spent its time.

    Made on the thread to watch. Linux gives the most (``/proc/self/task``);
    elsewhere a per-thread CPU clock, if there is one, or nothing.
    """

    def __init__(self) -> None:
        task_dir = f"/proc/self/task/{threading.get_native_id()}"
        self._schedstat: str | None = task_dir + "/schedstat"
        self._stat: str | None = task_dir + "/stat"
        self._clock: int | None = None
        try:
            self._clock = time.pthread_getcpuclockid(threading.get_ident())
        except (AttributeError, OSError):  # not on this platform
            pass
        if not os.path.exists(task_dir):
            self._schedstat = self._stat = None

    def times(self) -> tuple[float | None, float | None]:
        """``(seconds on a CPU, seconds runnable but waiting)`` so far; ``None``: unknown.

        The CPU time is the thread's CPU clock, the one ``time.thread_time()``
        reads on the thread itself (the heartbeat does); schedstat's is used
        only where there is no such clock.
        """
        on_cpu: float | None = None
        waiting: float | None = None
        if self._schedstat is not None:
            try:
                with open(self._schedstat, "rb") as file:
                    ran_ns, waited_ns = file.read().split()[:2]
                on_cpu, waiting = int(ran_ns) / 1e9, int(waited_ns) / 1e9
            except (OSError, ValueError):  # no schedstat in this kernel, or the thread is gone
                self._schedstat = None
        if self._clock is not None:
            try:
                on_cpu = time.clock_gettime(self._clock)
            except OSError:  # the thread is gone
                self._clock = None
        return on_cpu, waiting

    def state(self) -> str:
        """The thread's scheduler state (``"R"``, ``"S"``, ``"D"``, ``"T"``...); ``""``: unknown."""
        if self._stat is None:
            return ""
        try:
            with open(self._stat, "rb") as file:
                # "pid (name) state ...": the name may hold spaces and parentheses.
                return file.read().rsplit(b")", 1)[1].split()[0].decode()
        except (OSError, IndexError, UnicodeDecodeError):
            self._stat = None
            return ""


class _Window:
    """What the watching thread measured since the loop last turned."""

    def __init__(self, tick: float, start: tuple[float, float | None, float | None]) -> None:
        self.tick = tick
        self.start = start  # (monotonic, cpu, run_wait) as the window starts
        self.stopped = 0.0
        self.samples = 0
        self.states = 0
        self.sleeping = 0
        self.keys: Counter[Hashable] = Counter()
        # The latest sample in the user's code: its key, calls and where.
        self.culprit: tuple[Hashable, tuple[tuple[int, str], ...], str] | None = None

    def evidence(self, now: float, cpu: float | None, run_wait: float | None) -> Evidence:
        start, cpu0, wait0 = self.start
        return Evidence(
            wall=now - start,
            cpu=None if cpu is None or cpu0 is None else cpu - cpu0,
            run_wait=None if run_wait is None or wait0 is None else run_wait - wait0,
            stopped=self.stopped,
            samples=self.samples,
            states=self.states,
            sleeping=self.sleeping,
            culprit=self.keys[self.culprit[0]] if self.culprit else 0,
        )


@dataclass(frozen=True)
class _Seen:
    tick: float
    cause: str
    calls: tuple[tuple[int, str], ...]
    where: str


class Watchdog:
    """Watches one event loop; see the module docstring.

    Made on the loop's own thread (that is the thread it watches). The loop
    calls :meth:`beat` every :attr:`interval` seconds: :func:`watch_asyncio_loop`
    arranges that on an asyncio loop, the trio host from a trio task.
    """

    def __init__(
        self,
        threshold: float,
        culprits: Callable[[Any], tuple[tuple[int, str], ...]],
        on_stall: Callable[[Stall], None],
        *,
        current_task: Callable[[], Any] = lambda: None,
        what: str = "event loop",
    ) -> None:
        self._threshold = threshold
        self.interval = threshold / 4
        self._culprits = culprits
        self._on_stall = on_stall
        self._current_task = current_task
        self._what = what
        self._loop_thread = threading.get_ident()
        self._probe = _ThreadProbe()
        self._last_tick = time.monotonic()
        self._tick_cpu = time.thread_time()  # the loop's thread's CPU time at the last beat
        self._woke_at = self._last_tick  # the watching thread's last wake-up
        # A stall no sample saw while this thread was on a CPU, ``(seconds, end)``:
        # the watching thread decides what held it (see beat), the next beat says it.
        self._unsampled: tuple[float, float] | None = None
        self._verdicts: deque[Stall] = deque()
        # The watching thread's recent wake-ups: ``(when, seconds it slept past its
        # timeout other than waiting for a CPU)``, held off the GIL or stopped.
        self._held_off: deque[tuple[float, float]] = deque(maxlen=16)
        # Garbage collections on the loop's thread: seconds in all, and since when
        # the one under way runs (see _on_gc).
        self._gc_seconds = 0.0
        self._gc_at_tick = 0.0
        self._gc_started = 0.0
        # How late each recent beat was (about the last minute): the loop's lag,
        # for `aioray-runner status` (see lag_quantiles).
        self._lags: deque[float] = deque(maxlen=max(16, int(60 / self.interval)))
        # Set by the thread while the loop is stuck past the threshold.
        self._seen: _Seen | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="aioray-watchdog", daemon=True)

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` was called (the loop stops beating then)."""
        return self._stopped.is_set()

    def lag_quantiles(self) -> dict[str, float] | None:
        """The loop's recent lag, ``{"p50": s, "p99": s, "max": s}`` over about the
        last minute of beats (how late each turned past its interval); ``None``
        before the first beats."""
        lags = sorted(self._lags)
        if not lags:
            return None
        at = lambda q: lags[min(len(lags) - 1, int(q * len(lags)))]  # noqa: E731
        return {"p50": at(0.5), "p99": at(0.99), "max": lags[-1]}

    def stuck_now(self) -> dict[str, Any] | None:
        """The stall under way, if the loop is late past the threshold now: how long
        so far, its cause, the calls and where, as the watching thread last saw
        them (readable from any thread: the loop itself cannot answer meanwhile)."""
        seen, tick = self._seen, self._last_tick
        late = time.monotonic() - tick - self.interval
        if seen is None or seen.tick != tick or late <= self._threshold:
            return None
        calls = [label for _, label in seen.calls]
        return {"seconds": round(late, 2), "cause": seen.cause, "calls": calls, "where": seen.where}

    def start(self) -> None:
        """Start the watching thread (the loop beats from now on)."""
        self._last_tick = time.monotonic()
        gc.callbacks.append(self._on_gc)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching."""
        self._stopped.set()
        try:
            gc.callbacks.remove(self._on_gc)
        except ValueError:  # never started, or stopped before
            pass

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        # A collection holds the GIL throughout, so no sample can see it; timed
        # here, it is told apart from a call's native code. Called for every
        # collection in the process: return at once on other threads.
        if threading.get_ident() != self._loop_thread:
            return
        if phase == "start":
            self._gc_started = time.monotonic()
        elif self._gc_started:
            self._gc_seconds += time.monotonic() - self._gc_started
            self._gc_started = 0.0

    # -- on the loop --------------------------------------------------------------

    def beat(self) -> None:
        """The heartbeat: the loop turned. Reports the stall that just ended, if any."""
        now = time.monotonic()
        cpu = time.thread_time()
        late = now - self._last_tick - self.interval
        seen, self._seen = self._seen, None
        ran, self._tick_cpu = cpu - self._tick_cpu, cpu  # set before the tick (see _watch)
        previous, self._last_tick = self._last_tick, now
        self._lags.append(max(0.0, late))
        collected, self._gc_at_tick = self._gc_seconds - self._gc_at_tick, self._gc_seconds
        while self._verdicts:  # decided by the watching thread since the last beat
            self._on_stall(self._verdicts.popleft())
        if late <= self._threshold:
            return
        if collected >= late / 2:
            # Python's garbage collector, not a call: no call's code to fix. (A
            # sample may have been taken as it ended, in its callbacks: not the call's.)
            self._on_stall(Stall(late, (), GARBAGE_COLLECTOR, ELSEWHERE))
        elif seen is not None and seen.tick == previous:
            self._on_stall(Stall(late, seen.calls, seen.where, seen.cause))
        elif (
            ran >= 0.9 * late
            and not previous + 2 * self.interval < self._woke_at < now - self.interval
        ):
            # No sample of this stall (the watching thread did not wake in the
            # middle of it, or woke only as it ended), while this thread was on
            # a CPU nearly all along. Either native code held the GIL throughout
            # (Python code lets it go every few milliseconds, and would have been
            # sampled), or the watching thread waited for a CPU meanwhile (a busy
            # machine). Only that thread can tell which, from how it slept: it
            # decides after its next wake-up (_judge_unsampled).
            self._unsampled = (late, now)
        elif now - self._woke_at > self._threshold and ran < late / 2:
            # The watching thread, which wakes every interval, did not run
            # either, and this thread was not on a CPU: the whole process was
            # stopped or starved. (When it resumes, this thread usually beats
            # before that one has the GIL to look.)
            self._on_stall(Stall(late, (), "", UNSCHEDULED))

    # -- on the watching thread ------------------------------------------------------

    def _watch(self) -> None:
        probe = self._probe
        mine = _ThreadProbe()  # this thread's own: did it wait for a CPU, or was it stopped?
        my_wait = mine.times()[1]
        before = (time.monotonic(), *probe.times())
        window = _Window(self._last_tick, before)
        logged_at = 0.0
        while True:
            asleep_since = time.monotonic()
            if self._stopped.wait(self.interval):
                return
            now = self._woke_at = time.monotonic()
            cpu, run_wait = probe.times()
            tick_cpu = self._tick_cpu  # read before the tick: never newer than it
            tick = self._last_tick
            if tick != window.tick:
                # The loop turned: measure from its beat (the CPU time its thread
                # read then), so a stall that begins before this sample is covered
                # whole and what the loop did before the beat is not; the
                # run-queue wait from the last sample before it (counted only
                # when a wait ends, it cannot be read at the beat).
                window = _Window(tick, (tick, tick_cpu, before[2]))
                logged_at = 0.0
            before = (now, cpu, run_wait)
            overslept = now - asleep_since - self.interval
            waited, my_wait = my_wait, mine.times()[1]
            if waited is not None and my_wait is not None:
                overslept -= my_wait - waited  # late for want of a CPU: not stopped
            window.stopped += max(0.0, overslept)
            self._held_off.append((now, max(0.0, overslept)))
            pending = self._unsampled  # read once: the loop's thread may replace it
            if pending is not None and pending[1] <= now:
                self._judge_unsampled(*pending)
            age = now - tick
            if age <= 1.5 * self.interval:
                continue  # on time
            self._sample(window)
            stuck_for = age - self.interval
            if stuck_for <= self._threshold:
                continue
            cause = classify(window.evidence(now, cpu, run_wait), self._threshold)
            calls: tuple[tuple[int, str], ...] = ()
            where = ""
            if cause in BLOCKING_CAUSES and window.culprit is not None:
                _, calls, where = window.culprit
            else:
                _log.debug("loop late by %.2f s: %s", stuck_for, cause)
            self._seen = _Seen(tick, cause, calls, where)
            # A stall that never ends never reaches the caller: say it here,
            # where Ray forwards it to the driver's console, every few seconds.
            if cause in BLOCKING_CAUSES and stuck_for - logged_at >= 5.0:
                logged_at = stuck_for
                _log.warning(
                    "this supervisor's %s has been blocked for %.0f s so far%s",
                    self._what,
                    stuck_for,
                    f" in {where}" if where else "",
                )

    def _judge_unsampled(self, seconds: float, end: float) -> None:
        """What held the loop in a stall no sample saw, its thread on a CPU (see beat).

        The watching thread's timeouts fell in the stall: if it then slept on
        past them, not waiting for a CPU, for most of the stall, it waited for
        the GIL, and one long native call on the loop's thread held it
        (garbage collections are told apart before this). Otherwise it was
        waiting for a CPU like the rest of a busy machine: nothing to blame.
        """
        if self._unsampled == (seconds, end):  # not replaced by a newer one meanwhile
            self._unsampled = None
        held = sum(
            overslept
            for woke_at, overslept in self._held_off
            if end - seconds <= woke_at <= end + 2 * self.interval
        )
        if held >= seconds / 2:
            self._verdicts.append(Stall(seconds, (), HELD_THE_GIL, BUSY))
        else:
            _log.debug("loop late by %.2f s with no sample: the machine was busy", seconds)

    def _sample(self, window: _Window) -> None:
        """One sample of the late loop's thread: its state, and whose code it runs."""
        window.samples += 1
        state = self._probe.state()
        if state:
            window.states += 1
            window.sleeping += state in ("S", "D")
        task = self._current_task()
        where, code = self._where()
        if code is None:
            return
        calls = self._culprits(task)
        key = (calls, code)
        window.keys[key] += 1
        window.culprit = (key, calls, where)

    def _where(self) -> tuple[str, CodeType | None]:
        """Where the loop's thread is, and the code object of the user's frame there.

        Innermost first: the first frame outside the loop machinery is where
        the code is (a C call such as time.sleep shows as its caller). If that
        is inside a library (or a module being imported), the nearest frame
        of the user's own code is the one to fix: name both. No frame of the
        user's: ``None``.
        """
        frame: FrameType | None = sys._current_frames().get(self._loop_thread)
        stuck = ""
        while frame is not None:
            code = frame.f_code
            filename = code.co_filename
            if not any(part in filename for part in _MACHINERY):
                here = f"{code.co_name} ({filename}:{frame.f_lineno})"
                # A module's top level runs as it is imported: when the supervisor
                # unpickles a function, the import is its doing, not a call's.
                if not _is_library(filename) and code.co_name != "<module>":
                    return (f"{stuck}, called from {here}" if stuck else here), code
                stuck = stuck or here
            frame = frame.f_back
        return stuck, None


def _is_library(filename: str) -> bool:
    return filename.startswith(_LIBRARY_PREFIXES) and filename not in _USER_CODE_IN_PACKAGE


def watch_asyncio_loop(
    loop: asyncio.AbstractEventLoop,
    threshold: float,
    culprits: Callable[[asyncio.Task[Any] | None], tuple[tuple[int, str], ...]],
    on_stall: Callable[[Stall], None],
) -> Watchdog:
    """Start a :class:`Watchdog` on the running asyncio ``loop`` (call it on that loop)."""
    watchdog = Watchdog(
        threshold, culprits, on_stall, current_task=lambda: asyncio.current_task(loop)
    )

    def beat() -> None:
        watchdog.beat()
        if not watchdog.stopped:
            loop.call_later(watchdog.interval, beat)

    watchdog.start()
    loop.call_later(watchdog.interval, beat)
    return watchdog
