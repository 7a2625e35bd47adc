"""``AioRayFuture``: the handle to one call running on a supervisor.

A future is filled in by the runtime's I/O thread. Awaiting it parks only the
awaiting task: the I/O thread wakes it through the caller's own loop (asyncio's
``call_soon_threadsafe`` or trio's token), so there is no polling and no blocked
loop. Sync code can block on ``result()``.

The future knows its supervisor only through :class:`Home`, declared here; the
pool's record of a supervisor is one. The runtime fills a future in through the
functions at the end of this module (``settle``, ``fail``, ``move``, ...), never
by writing its fields.
"""

from __future__ import annotations

import collections
import math
import pickle
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterable
from typing import Any, Generic, Protocol, TypeVar

import anyio

from .._common import wire
from ..errors import CancelledError, SerializationError
from .wakeups import loop_scheduler

T = TypeVar("T")

_PENDING = -1
_STATE_NAMES = {
    _PENDING: "pending",
    wire.OK: "finished",
    wire.HELD: "held",
    wire.ERROR: "failed",
    wire.CANCELLED: "cancelled",
}
_UNSET: Any = object()

#: Called with ``(home, call id)`` when a finished future is dropped, so the
#: supervisor may forget the outcome it keeps for dependents.
Release = Callable[["Home", int], None]


class Home(Protocol):
    """What a future needs from the supervisor its call was sent to."""

    #: The supervisor's index in its group (shown in ``repr`` and ``supervisor``).
    index: int
    #: Whether the supervisor is alive (a dead one cannot answer for outcomes).
    alive: bool

    def cancel_call(self, future: AioRayFuture[Any]) -> None:
        """Ask the supervisor to cancel this future's call."""

    def send_now(self) -> None:
        """Send calls still queued at the caller now (someone is about to block)."""

    def check_can_block(self) -> None:
        """Raise if blocking the current thread would stop results from arriving."""

    def fetch(self, future: AioRayFuture[Any]) -> None:
        """Fetch the value this future's call left on the supervisor (any thread);
        the answer comes back through :func:`fetched`."""


class AioRayFuture(Generic[T]):
    """The eventual outcome of one call submitted with :meth:`Runtime.submit`.

    ``await future`` gives the call's return value or raises its exception, under
    asyncio and trio alike. Cancelling the *awaiting* task (a timeout, a trio
    cancel scope) only stops the wait; :meth:`cancel` stops the remote call.

    A future can be passed, nested anywhere, in the arguments of another
    submission: the supervisor waits for it and passes its value, without a
    round trip through the caller.
    """

    __slots__ = (
        "__weakref__",
        "_call_id",
        "_callbacks",
        "_error",
        "_event",
        "_fetch",
        "_held",
        "_home",
        "_label",
        "_lock",
        "_payload",
        "_release",
        "_state",
        "_upstream",
        "_value",
    )

    def __init__(
        self,
        home: Home,
        call_id: int,
        label: str,
        upstream: list[AioRayFuture[Any] | None] | None = None,
    ) -> None:
        self._home = home
        self._call_id = call_id
        self._label = label
        # Upstream futures stay alive until this call is done: their results must
        # stay on their supervisors until this call has read them.
        self._upstream = upstream or None
        self._lock = threading.Lock()
        self._state = _PENDING
        self._payload: bytes | None = None
        # A value left on the supervisor: its size and summary (see wire.HELD),
        # kept apart from the payload so that nothing reads one as the other.
        self._held: bytes | None = None
        self._value: Any = _UNSET
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[AioRayFuture[T]], object]] = []
        self._event: threading.Event | None = None
        # The fetch of a value left on the supervisor (wire.HELD), once asked for.
        self._fetch: _Fetch | None = None
        # Set once the call has reached a supervisor: dropping the future then
        # tells the supervisor it may forget the result.
        self._release: Release | None = None

    @classmethod
    def failed(cls, error: BaseException, label: str = "unsent") -> AioRayFuture[Any]:
        """A future that was never sent anywhere and has already failed with ``error``.

        For integrations that must hand back a future for a call they could not
        submit (the Prefect runner, for a parameter that cannot be pickled).
        Passed to another call, it fails that call with :class:`UpstreamError`.
        """
        future: AioRayFuture[Any] = cls(_NOWHERE, 0, label, None)
        _set_error(future, error)
        return future

    # -- read-only facts ---------------------------------------------------------

    @property
    def call_id(self) -> int:
        """This call's id, unique within its runtime."""
        return self._call_id

    @property
    def label(self) -> str:
        """``"<function name>#<call id>"``, as used in logs and error messages."""
        return self._label

    @property
    def supervisor(self) -> int:
        """The index of the supervisor this call was sent to."""
        return self._home.index

    def done(self) -> bool:
        """Whether the call has finished (returned, raised or was cancelled)."""
        return self._state != _PENDING

    def cancelled(self) -> bool:
        """Whether the call finished by being cancelled."""
        return self._state == wire.CANCELLED

    @property
    def held(self) -> bool:
        """Whether the call returned a value that is still on its supervisor.

        Values above the runtime's ``hold_results_above`` stay where they were
        made until something asks for them: ``await``, :meth:`result` (which
        then fetch it once) or a dependent call (which takes it from there).
        """
        return self._state == wire.HELD

    def summary(self) -> Any:
        """What the call's value says of itself, without fetching a value that stayed
        on its supervisor: ``value.__aioray_summary__()`` (computed where the value
        is), or ``None`` if its type has no such method. Raises like :meth:`result`
        if the call failed; does not wait (``RuntimeError`` if it has not finished).
        """
        blob = wire.held_summary(self._held)
        if blob:  # it stays the summary the value gave, fetched or not
            return pickle.loads(blob)
        if self._state == wire.HELD:
            return None
        value = self._outcome()
        summarize = getattr(type(value), "__aioray_summary__", None)
        return None if summarize is None else summarize(value)

    def __repr__(self) -> str:
        state = _STATE_NAMES[self._state]
        if self._state == wire.HELD:
            state = f"finished, its value ({wire.held_size(self._held):,} bytes) held"
        return f"<AioRayFuture {self._label} {state} on supervisor {self._home.index}>"

    def __reduce__(self) -> Any:
        raise TypeError(
            f"{self!r} cannot be pickled on its own: pass it as an argument to"
            " Runtime.submit (it is resolved inside the supervisor), or await it first."
        )

    # -- outcome -----------------------------------------------------------------

    def _outcome(self) -> T:
        state = self._state
        if state == wire.OK:
            if self._value is _UNSET:
                try:
                    self._value = pickle.loads(self._payload) if self._payload else None
                except Exception as exc:
                    raise SerializationError(
                        f"the result of {self._label} arrived but cannot be unpickled here:"
                        f" {wire.describe_error(exc)}. Is the module that defines it"
                        " importable in this process?"
                    ) from None  # the error's own text may quote the value
                self._payload = None
            return self._value  # type: ignore[no-any-return]
        if state == wire.ERROR:
            if self._error is None:
                assert self._payload is not None
                self._error = wire.loads_exception(self._payload, self._label)
                self._payload = None
            raise self._error
        if state == wire.CANCELLED:
            raise CancelledError(f"{self._label} was cancelled")
        if state == wire.HELD:
            raise RuntimeError(f"the value of {self._label} has not been fetched")
        raise RuntimeError(f"{self._label} has not finished")

    def result(self, timeout: float | None = None) -> T:
        """Block the calling thread until the call finishes; return or raise its outcome.

        For sync code. In async code ``await future`` instead: it does not block
        the loop. Raises :class:`TimeoutError` if ``timeout`` seconds pass first
        (the call keeps running). A value left on the supervisor (:attr:`held`)
        is fetched within the same ``timeout``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self.wait_sync(timeout):
            raise TimeoutError(f"{self._label} did not finish within {timeout} seconds")
        if self._state == wire.HELD:
            self._home.check_can_block()
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not _start_fetch(self).event.wait(left):
                raise TimeoutError(f"{self._label}'s value did not arrive within {timeout} s")
        return self._outcome()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The exception the call raised, or ``None`` if it returned (blocks like ``result``).

        A call whose value is still on its supervisor returned: ``None``, without
        fetching the value.
        """
        if not self.wait_sync(timeout):
            raise TimeoutError(f"{self._label} did not finish within {timeout} seconds")
        if self._state in (wire.OK, wire.HELD):
            return None
        try:
            self._outcome()
        except BaseException as exc:
            return exc
        return None

    def wait_sync(self, timeout: float | None = None) -> bool:
        """Block until the call finishes; return whether it did within ``timeout``."""
        if self._state != _PENDING:
            return True
        # If this thread runs an event loop, the call may still wait for the end
        # of its loop turn to be sent, and blocking here stops that turn: send now.
        self._home.check_can_block()
        self._home.send_now()
        with self._lock:
            if self._state != _PENDING:
                return True
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        return event.wait(timeout)

    async def wait(self) -> None:
        """Wait for the call to finish without raising its error (asyncio or trio)."""
        if self._state != _PENDING:
            return
        schedule = loop_scheduler()
        if schedule is None:
            raise RuntimeError("AioRayFuture.wait() must be awaited inside an event loop")
        event = anyio.Event()

        def wake(_: AioRayFuture[T]) -> None:
            schedule(event.set)

        self.add_done_callback(wake)
        try:
            await event.wait()
        finally:
            self.remove_done_callback(wake)

    async def _result_async(self) -> T:
        await self.wait()
        if self._state == wire.HELD:
            await _fetch_async(self)
        return self._outcome()

    def __await__(self) -> Generator[Any, None, T]:
        return self._result_async().__await__()

    # -- callbacks and cancellation --------------------------------------------------

    def add_done_callback(self, fn: Callable[[AioRayFuture[T]], object]) -> None:
        """Call ``fn(future)`` when the call finishes (at once if it already has).

        Callbacks run on the runtime's I/O thread: keep them short and
        thread-safe, and hand work to your own loop from there.
        """
        with self._lock:
            if self._state == _PENDING:
                self._callbacks.append(fn)
                pending = True
            else:
                pending = False
        if pending:
            # Callers often block next (Prefect's as_completed does): send now
            # rather than at the end of a loop turn that the block would delay.
            self._home.send_now()
        else:
            _run_callback(fn, self)

    def remove_done_callback(self, fn: Callable[[AioRayFuture[T]], object]) -> None:
        """Forget a callback added with :meth:`add_done_callback`."""
        with self._lock:
            try:
                self._callbacks.remove(fn)
            except ValueError:
                pass

    def cancel(self) -> bool:
        """Cancel the remote call. Returns ``False`` if it had already finished.

        The coroutine sees :class:`asyncio.CancelledError` (or ``trio.Cancelled``)
        inside the supervisor, so its ``finally`` blocks run; the future is marked
        cancelled once that is done. A plain function already running in the
        supervisor's thread pool cannot be interrupted and runs to the end.
        """
        if self._state != _PENDING:
            return False
        self._home.cancel_call(self)
        return True

    def __del__(self) -> None:
        release = self._release
        if release is not None:
            try:
                release(self._home, self._call_id)
            except Exception:
                pass  # interpreter shutdown: nothing to release to


class _Fetch:
    """One fetch of a held value, shared by everyone who asks for it."""

    __slots__ = ("event", "wakers")

    def __init__(self) -> None:
        self.event = threading.Event()  # set once the value (or its loss) is here
        self.wakers: list[Callable[[], None]] = []  # async waiters' loops


def _set_outcome(future: AioRayFuture[Any], kind: int, payload: bytes | None) -> bool:
    """Record the outcome (I/O thread). Returns False if already done."""
    with future._lock:
        if future._state != _PENDING:
            return False
        if kind == wire.HELD:
            future._held, payload = payload, None
        future._payload = payload  # before the state: readers take no lock
        future._state = kind
        future._upstream = None
        callbacks, future._callbacks = future._callbacks, []
        if future._event is not None:
            future._event.set()
    for callback in callbacks:
        _run_callback(callback, future)
    return True


def _set_error(future: AioRayFuture[Any], error: BaseException) -> bool:
    """Fail the call with an error raised on the caller's side."""
    with future._lock:
        if future._state != _PENDING:
            return False
        future._error = error
    return _set_outcome(future, wire.ERROR, None)


def _start_fetch(future: AioRayFuture[Any]) -> _Fetch:
    """The fetch of a future's held value, asked for once (any thread)."""
    with future._lock:
        fetch = future._fetch
        if fetch is not None:
            return fetch
        fetch = future._fetch = _Fetch()
        if future._state != wire.HELD:  # fetched meanwhile
            fetch.event.set()
            return fetch
    future._home.fetch(future)
    return fetch


async def _fetch_async(future: AioRayFuture[Any]) -> None:
    """Wait for a held value to arrive, without blocking the loop (asyncio or trio)."""
    schedule = loop_scheduler()
    if schedule is None:
        raise RuntimeError("AioRayFuture must be awaited inside an event loop")
    event = anyio.Event()

    def wake() -> None:
        schedule(event.set)

    fetch = _start_fetch(future)
    with future._lock:
        if fetch.event.is_set():
            return
        fetch.wakers.append(wake)
    try:
        await event.wait()
    finally:
        with future._lock:
            if wake in fetch.wakers:  # cancelled while waiting
                fetch.wakers.remove(wake)


class _Nowhere:
    """The home of futures that were never sent (see :meth:`AioRayFuture.failed`)."""

    index = -1
    alive = False  # so a dependent gets the failure itself, not a lookup

    def cancel_call(self, future: AioRayFuture[Any]) -> None:
        pass

    def send_now(self) -> None:
        pass

    def check_can_block(self) -> None:
        pass

    def fetch(self, future: AioRayFuture[Any]) -> None:
        pass


_NOWHERE: Home = _Nowhere()


def _run_callback(fn: Callable[[AioRayFuture[Any]], object], future: AioRayFuture[Any]) -> None:
    try:
        fn(future)
    except Exception:
        import logging

        logging.getLogger("aioray_runner").exception(
            "done callback %r of %s raised", fn, future.label
        )


# -- the runtime's side: how the pool fills futures in ------------------------------------


def settle(future: AioRayFuture[Any], kind: int, payload: bytes | None, release: Release) -> None:
    """Record an outcome that arrived from the supervisor (I/O thread).

    ``release`` is called when the future is later dropped, so the supervisor may
    forget the outcome it keeps for dependents.
    """
    future._release = release
    _set_outcome(future, kind, payload)


def fetched(future: AioRayFuture[Any], kind: int, payload: bytes | None) -> None:
    """The held value arrived (``wire.OK``), or an error instead (``wire.ERROR``,
    its pickled exception): waiters of the fetch wake (I/O thread)."""
    with future._lock:
        if future._state != wire.HELD:
            return
        future._payload = payload  # before the state: readers take no lock
        future._state = kind
        fetch = future._fetch
        wakers: list[Callable[[], None]] = []
        if fetch is not None:  # set under the lock: a waiter adds itself under it
            fetch.event.set()
            wakers, fetch.wakers = fetch.wakers, []
    for wake in wakers:
        wake()


def lost(future: AioRayFuture[Any], error: BaseException) -> None:
    """The held value cannot be fetched (its supervisor died): waiters of the
    fetch get ``error`` instead (I/O thread)."""
    with future._lock:
        if future._state != wire.HELD:
            return
        future._error = error
    fetched(future, wire.ERROR, None)


def when_done(future: AioRayFuture[Any], fn: Callable[[AioRayFuture[Any]], object]) -> None:
    """``add_done_callback`` for the runtime's own bookkeeping: nobody is about to
    block on the future, so queued calls are not sent early (that would break up
    the loop turn's batch)."""
    with future._lock:
        if future._state == _PENDING:
            future._callbacks.append(fn)
            return
    _run_callback(fn, future)


def fail(future: AioRayFuture[Any], error: BaseException) -> bool:
    """Fail a call with an error raised on the caller's side; False if already done."""
    return _set_error(future, error)


def mark_cancelled(future: AioRayFuture[Any]) -> None:
    """Mark a call cancelled before it was sent anywhere."""
    _set_outcome(future, wire.CANCELLED, None)


def home_of(future: AioRayFuture[Any]) -> Home:
    """The supervisor the call was sent to (or is about to be)."""
    return future._home


def move(future: AioRayFuture[Any], home: Home) -> None:
    """The call is sent to another supervisor (its first one died before it started)."""
    future._home = home


def held_outcome(future: AioRayFuture[Any]) -> tuple[int, bytes]:
    """For a finished future: ``(wire.OK, pickled value)``, ``(wire.ERROR, b"")``,
    or ``(wire.HELD, b"")`` for a value that stayed on its supervisor.

    Used to pass an outcome the caller holds to a dependent call once the
    supervisor that produced it has died.
    """
    if future._state != wire.OK:
        return (wire.HELD if future._state == wire.HELD else wire.ERROR), b""
    payload = future._payload
    if payload is None:  # already unpickled here: pickle it again
        import cloudpickle

        payload = cloudpickle.dumps(future._outcome(), protocol=5)
    return wire.OK, payload


async def as_completed(futures: Iterable[AioRayFuture[T]]) -> AsyncIterator[AioRayFuture[T]]:
    """Yield the futures as they finish (asyncio or trio); each one once."""
    unique = list(dict.fromkeys(futures))
    if not unique:
        return
    schedule = loop_scheduler()
    if schedule is None:
        raise RuntimeError("as_completed must be iterated inside an event loop")
    finished: collections.deque[AioRayFuture[T]] = collections.deque()
    wakeup = anyio.Event()
    lock = threading.Lock()

    def on_done(future: AioRayFuture[T]) -> None:
        nonlocal wakeup
        with lock:
            finished.append(future)
            event = wakeup
        schedule(event.set)

    for future in unique:
        future.add_done_callback(on_done)
    try:
        remaining = len(unique)
        while remaining:
            await wakeup.wait()
            with lock:
                batch = list(finished)
                finished.clear()
                wakeup = anyio.Event()
            for future in batch:
                remaining -= 1
                yield future
    finally:
        for future in unique:
            future.remove_done_callback(on_done)


def wait_all(
    futures: Iterable[AioRayFuture[Any]],
    *,
    cancel: bool,
    grace: float,
    close: Iterable[AioRayFuture[Any]] = (),
) -> None:
    """Block until every future is done; with ``cancel``, cancel them first and wait
    ``grace`` seconds in all (sync code). ``close``: futures cancelled whatever
    ``cancel`` says, and waited for within ``grace`` (open streams)."""
    futures, close = list(futures), list(close)
    for future in close + (futures if cancel else []):
        future.cancel()
    deadline = time.monotonic() + grace
    for future in close:
        future.wait_sync(max(0.0, deadline - time.monotonic()))
    for future in futures:
        future.wait_sync(max(0.0, deadline - time.monotonic()) if cancel else None)


async def await_all(
    futures: Iterable[AioRayFuture[Any]],
    *,
    cancel: bool,
    grace: float,
    close: Iterable[AioRayFuture[Any]] = (),
) -> None:
    """:func:`wait_all` without blocking the event loop (asyncio or trio)."""
    futures, close = list(futures), list(close)
    for future in close + (futures if cancel else []):
        future.cancel()
    with anyio.move_on_after(grace):
        for future in close:
            await future.wait()
    with anyio.move_on_after(grace if cancel else math.inf):
        for future in futures:
            await future.wait()
