"""The trio backend. Its supervisor half: one ``trio.run`` on a thread of its own.

Ray's async actors own an asyncio loop, which receives calls and sends results
back. trio-native code (``trio.sleep``, nurseries, cancel scopes) needs a trio
run. The first design ran trio as a *guest* on the actor's loop
(``trio.lowlevel.start_guest_run``); measured, it cost 2.5 to 3.2 times the
asyncio backend for 10,000 ``trio.sleep(0.1)`` (docs/measurements.md): every trio tick
that waits hops to a helper thread for I/O and back through
``call_soon_threadsafe``. A plain ``trio.run`` on a thread of its own runs the
same calls at plain trio's pace (docs/measurements.md), so that is the design:

* calls made in one turn of the actor's loop are started by one thread-safe
  ``run_sync_soon`` into trio (each call in its own cancel scope, in one
  long-lived nursery);
* calls that finish in one trio tick wake the actor's loop once, with one
  ``call_soon_threadsafe`` for the lot;
* cancelling the awaiting asyncio task cancels the call's trio scope, and the
  asyncio side waits for the trio side's ``finally`` blocks before it reports;
* the call's context variables (``current_attempt()``) are copied into its
  trio task;
* the trio thread has a blocked-loop watchdog of its own (the actor loop's
  watchdog does not see it), reporting like the actor loop's.

Its caller half (:class:`TrioLoop`, at the end) wakes a caller's trio run through
its token's ``run_sync_soon``.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from typing import Any

import trio

from .._common.watchdog import Stall, Watchdog
from . import Scheduler

# trio runs the first step of every task started in one tick before anything
# else: 10,000 at once would hold the thread (and its heartbeat) for a second.
_STARTS_PER_TICK = 500


class TrioHost:
    """The trio backend's supervisor half (see ``_backends``).

    Owns the trio thread and starts calls in it.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._lock = threading.Lock()
        self._to_start: list[Callable[[], Any]] = []
        self._finished: list[tuple[_Waiter, bool, BaseException | None, Any]] = []
        self._waiting: set[_Waiter] = set()  # calls not reported yet (actor's loop only)
        self._ended: str | None = None  # why the trio run is over, once it is

    async def start(self, stall_threshold: float, on_stall: Callable[[Stall], None]) -> None:
        """Start the trio thread and wait until its nursery is open.

        ``stall_threshold`` (0: off) and ``on_stall`` (called from the trio
        thread) set up the trio thread's watchdog.
        """
        loop = self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def tell(error: BaseException | None) -> None:
            if ready.done():
                return
            if error is None:
                ready.set_result(None)
            else:
                ready.set_exception(error)

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._token = trio.lowlevel.current_trio_token()
                if stall_threshold:
                    watchdog = Watchdog(stall_threshold, _no_calls, on_stall, what="trio thread")
                    nursery.start_soon(_heartbeat, watchdog)
                loop.call_soon_threadsafe(tell, None)
                await trio.sleep_forever()

        def ended(why: str) -> None:  # on the actor's loop
            tell(RuntimeError(why))
            self._end(why)

        def run() -> None:
            try:
                trio.run(main)
                why = "the trio run ended"
            except BaseException as exc:  # told to the loop, not lost in a thread
                why = f"the trio run ended: {exc!r}"
            try:
                loop.call_soon_threadsafe(ended, why)
            except RuntimeError:
                pass  # the actor's loop is closed: the process is going away

        threading.Thread(target=run, name="aioray-trio", daemon=True).start()
        await ready

    def adapt(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """A coroutine function that runs ``fn`` under trio (see :meth:`run`)."""

        async def run_in_trio(*args: Any, **kwargs: Any) -> Any:
            return await self.run(fn, args, kwargs)

        return run_in_trio

    # -- the trio thread -------------------------------------------------------------

    def _start_pending(self) -> None:
        assert self._nursery is not None and self._token is not None
        with self._lock:
            pending = self._to_start[:_STARTS_PER_TICK]
            del self._to_start[:_STARTS_PER_TICK]
            more = bool(self._to_start)
        for runner in pending:
            self._nursery.start_soon(runner)
        if more:  # the rest in later ticks: the trio thread keeps turning meanwhile
            self._token.run_sync_soon(self._start_pending)

    def _report(
        self, waiter: _Waiter, cancelled: bool, error: BaseException | None, value: Any
    ) -> None:
        with self._lock:
            first = not self._finished
            self._finished.append((waiter, cancelled, error, value))
        if first:  # one wake-up of the actor's loop per trio tick, not per call
            assert self._loop is not None
            try:
                self._loop.call_soon_threadsafe(self._deliver)
            except RuntimeError:
                pass  # the actor's loop is closed: the process is going away

    # -- the actor's loop ------------------------------------------------------------

    def _deliver(self) -> None:
        with self._lock:
            batch, self._finished = self._finished, []
        for waiter, cancelled, error, value in batch:
            waiter.reported = True
            self._waiting.discard(waiter)
            future = waiter.future
            if future.done():  # its caller was cancelled
                continue
            if cancelled:
                future.cancel()
            elif error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)

    def _end(self, why: str) -> None:
        """The trio run is over: calls still waiting fail, later calls fail at once."""
        self._ended = why
        with self._lock:
            self._to_start.clear()
        waiting, self._waiting = self._waiting, set()
        for waiter in waiting:
            waiter.reported = True
            if not waiter.future.done():
                waiter.future.set_exception(RuntimeError(why))

    async def run(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` under trio; asyncio cancellation cancels it."""
        assert self._token is not None and self._loop is not None
        if self._ended is not None:
            raise RuntimeError(self._ended)
        waiter = _Waiter(self._loop.create_future())
        scope = trio.CancelScope()
        context = contextvars.copy_context()

        async def runner() -> None:
            for variable, value in context.items():
                variable.set(value)
            result: Any = None
            error: BaseException | None = None
            # The scope inside the try: cancelled while a nursery in `fn` has
            # children, trio raises a group of Cancelled, which only the scope
            # itself takes apart (the call then ends cancelled, not failed).
            try:
                with scope:
                    result = await fn(*args, **kwargs)
            except trio.Cancelled:
                raise  # the trio run itself is being cancelled: let it unwind
            except BaseException as exc:
                error = exc
            self._report(waiter, scope.cancelled_caught, error, result)

        # Calls made in one turn of the actor's loop are started by one trio callback.
        with self._lock:
            self._to_start.append(runner)
            first = len(self._to_start) == 1
        self._waiting.add(waiter)
        if first:
            try:
                self._token.run_sync_soon(self._start_pending)
            except trio.RunFinishedError:
                self._end("the trio run ended")
                raise RuntimeError("the trio run ended") from None
        try:
            # Not shielded (a shield per call costs a third of the backend's
            # time): cancelling this task cancels `waiter.future` too, so the
            # trio side's report then goes to a new future, below.
            return await waiter.future
        except asyncio.CancelledError:
            if waiter.reported:
                raise
            # Cancel the trio side and wait for its finally blocks before
            # reporting (again if this task is cancelled again meanwhile).
            try:
                self._token.run_sync_soon(scope.cancel)
            except trio.RunFinishedError:
                pass  # _end reports it
            while not waiter.reported:
                waiter.future = self._loop.create_future()
                try:
                    await waiter.future
                except (asyncio.CancelledError, Exception):
                    pass
            raise


class _Waiter:
    """Where a call's outcome goes on the actor's loop (the future is replaced on cancel)."""

    __slots__ = ("future", "reported")

    def __init__(self, future: asyncio.Future[Any]) -> None:
        self.future = future
        self.reported = False


def _no_calls(task: Any) -> tuple[tuple[int, str], ...]:
    # trio's current task cannot be read from the watchdog's thread: a stall
    # names where the trio thread is stuck, not which call.
    return ()


async def _heartbeat(watchdog: Watchdog) -> None:
    watchdog.start()
    try:
        while True:
            await trio.sleep(watchdog.interval)
            watchdog.beat()
    finally:
        watchdog.stop()


class TrioLoop:
    """The caller's trio run going on now: its token's ``run_sync_soon`` for both."""

    @staticmethod
    def threadsafe(hold: Callable[[object, Scheduler], Scheduler]) -> Scheduler:
        """Wake the running trio run from any thread (nothing happens once it is over)."""
        token = trio.lowlevel.current_trio_token()

        def send(fn: Callable[[], object]) -> None:
            try:
                token.run_sync_soon(fn)
            except trio.RunFinishedError:
                pass  # the trio run is over: nobody is left to wake

        return hold(token, send)

    @staticmethod
    def end_of_turn(hold: Callable[[object, Scheduler], Scheduler]) -> tuple[object, Scheduler]:
        """The run's token and a thread-safe scheduler for it."""
        # run_sync_soon runs after the current task yields, like call_soon.
        return trio.lowlevel.current_trio_token(), TrioLoop.threadsafe(hold)


HOST = TrioHost
LOOP = TrioLoop()
