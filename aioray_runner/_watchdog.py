"""The blocked-loop watchdog: a supervisor notices when its event loop stops turning.

One blocking call in an ``async def`` (``time.sleep``, ``requests.get``, a CPU-bound
loop) stalls every call on that supervisor. Nothing fails, so nothing would say
so: a flow just gets slow. The watchdog makes it visible.

Two parts, both cheap (a callback every ``threshold / 4`` seconds on the loop, a
thread that wakes as often; measured in ``docs/failures.md``):

* a heartbeat on the loop records when it last ran;
* a thread checks the heartbeat's age. Past the threshold, while the loop is
  still stuck, it reads who holds the loop: the innermost Python frame of the
  loop's thread (where the code is stuck) and the asyncio task running there,
  which the supervisor maps to its call. That can only be seen *during* the
  stall: once the loop turns again, the culprit is gone. Only stalls stuck in
  the user's own code are reported (a library call counts when the user's code
  made it): stalls inside libraries alone, this package or the interpreter
  (garbage collection, imports, a process short of CPU) are not the user's to
  fix.

When the loop turns again the heartbeat measures the whole stall and hands a
:class:`Stall` to the supervisor, which sends it to the caller with its next
outcomes. A stall that never ends cannot be sent back (replies leave through the
loop): the thread logs it in the supervisor's own log every few seconds, which
Ray forwards to the driver's console.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import sysconfig
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

# Frames of these files are the machinery between the loop and the stuck code,
# never the culprit a user wants to see.
_MACHINERY = (
    os.sep + "asyncio" + os.sep,
    os.sep + "threading.py",
    os.sep + "selectors.py",
    os.sep + "concurrent" + os.sep,
)

# Installed libraries, the standard library and this package (wherever it is
# imported from): code a user rarely means to fix.
_LIBRARY_PREFIXES = tuple(
    {
        path
        for name in ("stdlib", "platstdlib", "purelib", "platlib")
        if (path := sysconfig.get_paths().get(name))
    }
    | {os.path.dirname(os.path.abspath(__file__)) + os.sep, "<frozen "}
)

_log = logging.getLogger("aioray_runner.supervisor")


@dataclass(frozen=True)
class Stall:
    """One stall of a supervisor's event loop, as the watchdog saw it.

    Attributes:
        seconds: How long the loop did not turn.
        calls: ``(call id, label)`` of the call(s) holding the loop (empty when
            it was not a call: the supervisor's own work, or code the watchdog
            could not map).
        where: The innermost frame of the stuck code, ``"func (file:line)"``.
    """

    seconds: float
    calls: tuple[tuple[int, str], ...]
    where: str


@dataclass(frozen=True)
class BlockedLoop:
    """A supervisor's event loop was blocked: what the caller is told.

    Logged as a warning on the runtime's logger, and handed to
    ``Runtime(on_blocked_loop=...)`` (the Prefect runner puts it in the task
    run's logs).

    Attributes:
        supervisor: Which supervisor, with its pid and node.
        seconds: How long its loop did not turn; every call on it waited.
        calls: Labels of the call(s) whose code held the loop (``"fetch#12"``);
            empty when the watchdog could not tell.
        call_ids: Their call ids.
        where: Where the code was stuck: ``"func (file:line)"``, and the user's
            own frame that called into a library, when there is one.
    """

    supervisor: str
    seconds: float
    calls: tuple[str, ...]
    call_ids: tuple[int, ...]
    where: str

    def __str__(self) -> str:
        who = f" by {', '.join(self.calls)}" if self.calls else ""
        at = f" in {self.where}" if self.where else ""
        return (
            f"{self.supervisor}: its event loop was blocked for {self.seconds:.2f} s{who}{at};"
            " every call on that supervisor waited meanwhile. Blocking code (time.sleep,"
            " requests, CPU-bound work) in an `async def` stalls the loop: await an async"
            " equivalent, wrap it in `await asyncio.to_thread(...)` (under the trio backend,"
            " `await trio.to_thread.run_sync(...)`), or make the function a plain `def`"
            " (it then runs in a thread)."
        )


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
        self._last_tick = time.monotonic()
        # Filled by the thread while the loop is stuck: (tick it saw, culprits, where).
        self._seen: tuple[float, tuple[tuple[int, str], ...], str] | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="aioray-watchdog", daemon=True)

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` was called (the loop stops beating then)."""
        return self._stopped.is_set()

    def start(self) -> None:
        """Start the watching thread (the loop beats from now on)."""
        self._last_tick = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        """Stop watching."""
        self._stopped.set()

    # -- on the loop --------------------------------------------------------------

    def beat(self) -> None:
        """The heartbeat: the loop turned. Reports the stall that just ended, if any."""
        now = time.monotonic()
        late = now - self._last_tick - self.interval
        seen, self._seen = self._seen, None
        previous, self._last_tick = self._last_tick, now
        # Reported only when the thread saw who held the loop, and it was a call
        # or the user's code.
        if late > self._threshold and seen and seen[0] == previous and (seen[1] or seen[2]):
            self._on_stall(Stall(late, seen[1], seen[2]))

    # -- on the watching thread ------------------------------------------------------

    def _watch(self) -> None:
        logged_at = 0.0
        while not self._stopped.wait(self.interval):
            tick = self._last_tick
            stuck_for = time.monotonic() - tick - self.interval
            if stuck_for <= self._threshold:
                continue
            seen = self._seen
            if seen is None or seen[0] != tick:
                task = self._current_task()
                where, in_user_code = self._where()
                calls = self._culprits(task) if in_user_code else ()
                if not in_user_code:
                    # Not stuck in the user's own code (an import while a
                    # function is unpickled, a garbage collection, a process
                    # short of CPU, Prefect's engine): nothing a user can fix
                    # in their code, so not worth a warning.
                    _log.debug("loop blocked %.2f s in %s", stuck_for, where)
                    where = ""
                self._seen = seen = (tick, calls, where)
                logged_at = 0.0
            # A stall that never ends never reaches the caller: say it here,
            # where Ray forwards it to the driver's console, every few seconds.
            if (seen[1] or seen[2]) and stuck_for - logged_at >= 5.0:
                logged_at = stuck_for
                _log.warning(
                    "this supervisor's %s has been blocked for %.0f s so far%s",
                    self._what,
                    stuck_for,
                    f" in {seen[2]}" if seen[2] else "",
                )

    def _where(self) -> tuple[str, bool]:
        """Where the loop's thread is stuck, and whether that is the user's code.

        Innermost first: the first frame outside the loop machinery is where
        the code is stuck (a C call such as time.sleep shows as its caller). If
        that is inside a library, the nearest frame of the user's own code is
        the one to fix: name both.
        """
        frame: FrameType | None = sys._current_frames().get(self._loop_thread)
        stuck = ""
        while frame is not None:
            filename = frame.f_code.co_filename
            if not any(part in filename for part in _MACHINERY):
                here = f"{frame.f_code.co_name} ({filename}:{frame.f_lineno})"
                if not filename.startswith(_LIBRARY_PREFIXES):
                    return (f"{stuck}, called from {here}" if stuck else here), True
                stuck = stuck or here
            frame = frame.f_back
        return stuck, False


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
