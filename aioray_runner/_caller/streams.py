"""``Stream``: the values of a generator running on a supervisor, as they are made.

A stream is one call (``Runtime.stream``) whose values arrive in the same poll
replies as outcomes (``_supervisor/streams.py``), in order, before the call's
outcome. The I/O thread puts them in the stream's :class:`Inbox` and wakes the
consumer once per reply; the consumer unpickles each value as it takes it.

Backpressure: the consumer reports how many values it has taken, in all, every
quarter of the stream's limits (values or bytes), one message per supervisor and
loop turn of the I/O thread. The generator is held at its limits until it hears,
so at most the limits are made and not yet taken, wherever they are. Reporting
at a quarter keeps the generator busy while the report travels, and a stream at
either limit always reports (taking what it has crosses a quarter of it).

Ending: the stream ends with the call. Values delivered before an error (the
generator's own, a dead supervisor, Ray gone) are taken first, then the error
is raised. A consumer that stops early (``aclose``/``close``, ``async with``,
``break`` then dropping the stream, its task cancelled while it waits) cancels
the call, which closes the generator where it runs, so its ``finally`` blocks run.
"""

from __future__ import annotations

import collections
import functools
import pickle
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType
from typing import Any, Generic, TypeVar

import anyio

from .._common import wire
from ..errors import CancelledError, SerializationError
from .futures import AioRayFuture, when_done
from .wakeups import loop_scheduler

T = TypeVar("T")

#: Values a stream's generator may run ahead of its consumer, by default. Measured
#: (benchmarks/bench_streams.py --phases limits): one stream of small values moved
#: 2,000 values/s with a limit of 16, 11k with 100, 60k with 1,000, 168k with 10,000.
DEFAULT_MAX_BUFFERED = 10_000
#: Bytes (pickled) a stream's generator may run ahead of its consumer, by default:
#: what bounds the memory of a stream of big values (each stream has its own).
DEFAULT_MAX_BUFFERED_BYTES = 16 * 1024 * 1024
StreamLimits = wire.StreamLimits
DEFAULT_LIMITS: StreamLimits = (DEFAULT_MAX_BUFFERED, DEFAULT_MAX_BUFFERED_BYTES)
#: Seconds ``aclose``/``close`` wait for the generator's ``finally`` blocks.
CLOSE_WAIT_S = 10.0

#: Sends a consumer's progress: ``(future, values taken in all)``, any thread.
ReportTaken = Callable[[AioRayFuture[Any], int], None]


def check_limits(max_buffered: int, max_buffered_bytes: int) -> wire.StreamLimits:
    """The limits as they travel, or a clear error for a bad one."""
    for name, value in (("max_buffered", max_buffered), ("max_buffered_bytes", max_buffered_bytes)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be a whole number, got {type(value).__name__}")
        if value < 1:
            raise ValueError(f"{name} must be 1 or more, not {value}")
    return (max_buffered, max_buffered_bytes)


class Inbox:
    """A stream's values that arrived and are not taken yet (I/O thread puts,
    the consumer takes), and how far the consumer has got."""

    __slots__ = (
        "_ended",
        "_lock",
        "_values",
        "_wake",
        "bytes_taken",
        "reported",
        "reported_bytes",
        "taken",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: collections.deque[bytes] = collections.deque()
        self._wake: Callable[[], None] | None = None
        self._ended = False
        self.taken = 0
        self.bytes_taken = 0
        self.reported = 0
        self.reported_bytes = 0

    def put(self, payloads: list[bytes]) -> None:
        """Values arrived (I/O thread): keep them and wake the consumer."""
        with self._lock:
            self._values.extend(payloads)
            wake, self._wake = self._wake, None
        if wake is not None:
            wake()

    def end(self) -> None:
        """The stream's call ended (I/O thread, after its last values): wake the consumer."""
        with self._lock:
            self._ended = True
            wake, self._wake = self._wake, None
        if wake is not None:
            wake()

    def take(self) -> bytes | None:
        """The next value, or None if none has arrived."""
        with self._lock:
            if not self._values:
                return None
            payload = self._values.popleft()
        self.taken += 1
        self.bytes_taken += len(payload)
        return payload

    def wake_me(self, wake: Callable[[], None], label: str) -> bool:
        """Call ``wake`` when a value arrives or the stream ends; False (and no
        call) if either has happened already."""
        with self._lock:
            if self._values or self._ended:
                return False
            if self._wake is not None:
                raise RuntimeError(
                    f"{label} is already being iterated by another consumer: a stream"
                    " has one consumer (hand its values on with a memory object stream)"
                )
            self._wake = wake
            return True

    def forget_wake(self) -> None:
        """The consumer stopped waiting."""
        with self._lock:
            self._wake = None

    def __len__(self) -> int:
        return len(self._values)


class Inboxes:
    """Every open stream's inbox, by call id (the pool delivers into them)."""

    def __init__(self) -> None:
        self._by_id: dict[int, Inbox] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def open(self, call_id: int, inbox: Inbox) -> None:
        """A new stream's inbox (before its call is sent: no value can precede it)."""
        self._by_id[call_id] = inbox

    def close(self, call_id: int) -> None:
        """The stream ended or was dropped: later values have nowhere to go."""
        self._by_id.pop(call_id, None)

    def split(
        self, futures: list[AioRayFuture[Any]]
    ) -> tuple[list[AioRayFuture[Any]], list[AioRayFuture[Any]]]:
        """``(open streams' calls, other calls)`` among ``futures``."""
        by_id = self._by_id
        streams = [future for future in futures if future.call_id in by_id]
        return streams, [future for future in futures if future.call_id not in by_id]

    def deliver(self, streamed: list[tuple[int, list[bytes]]]) -> None:
        """Values from one poll reply (I/O thread)."""
        by_id = self._by_id
        for call_id, payloads in streamed:
            inbox = by_id.get(call_id)
            if inbox is not None:
                inbox.put(payloads)


class Stream(Generic[T]):
    """The values of a generator running on a supervisor (:meth:`Runtime.stream`).

    Iterate it with ``async for`` (asyncio or trio) or, from sync code, ``for``;
    each value arrives as the generator yields it. The generator runs ahead of
    the consumer by at most ``max_buffered`` values (and ``max_buffered_bytes``
    pickled bytes), then waits. An exception raised by the generator is raised
    here after the values yielded before it, with its remote traceback; a
    supervisor that dies mid-stream raises :class:`SupervisorDiedError`.

    Leaving early (``break``) does not by itself stop the generator while the
    stream is still referenced: use ``async with rt.stream(...) as values:`` (or
    ``with``), or call :meth:`aclose`/:meth:`close`. Dropping the stream closes
    it too. Closing cancels the generator where it runs, so its ``finally``
    blocks run. A stream can be iterated once, by one consumer at a time.
    """

    __slots__ = (
        "__weakref__",
        "_abandoned",
        "_closed",
        "_future",
        "_inbox",
        "_inboxes",
        "_limits",
        "_report",
    )

    def __init__(
        self,
        future: AioRayFuture[None],
        inbox: Inbox,
        inboxes: Inboxes,
        limits: wire.StreamLimits,
        report: ReportTaken,
    ) -> None:
        self._future = future
        self._inbox = inbox
        self._inboxes = inboxes
        self._limits = limits
        self._report = report
        self._closed = False
        self._abandoned = False  # closed because its consumer's wait was cancelled
        # Not a method of self: the future would keep the stream alive, and
        # dropping the stream is one way of closing it.
        when_done(future, functools.partial(_ended, inbox, inboxes))

    @property
    def future(self) -> AioRayFuture[None]:
        """The stream's call: done when the generator has ended (or failed)."""
        return self._future

    @property
    def label(self) -> str:
        """``"<function name>#<call id>"``, as in logs and errors."""
        return self._future.label

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("ended" if self._future.done() else "open")
        return f"<Stream {self.label} {state}, {len(self._inbox)} value(s) waiting>"

    def __reduce__(self) -> Any:
        raise TypeError(f"{self!r} cannot be pickled: iterate it where it was made.")

    # -- taking values -------------------------------------------------------------------

    def _next_ready(self) -> tuple[bool, Any]:
        """``(True, value)`` if a value is here; ``(False, None)`` if the caller must wait.

        Raises StopIteration-like ends as :class:`_End`.
        """
        if self._closed:
            if self._abandoned:
                raise CancelledError(
                    f"{self.label} was closed when the task waiting for its next value was"
                    " cancelled: its values after that are lost, not merely at an end"
                )
            raise _End
        payload = self._inbox.take()
        if payload is None:
            if not self._future.done():
                return False, None
            payload = self._inbox.take()  # one may have come with the ending
            if payload is None:
                self._closed = True
                self._future.result(0)  # raises the stream's error, if it failed
                raise _End
        self._maybe_report()
        try:
            return True, pickle.loads(payload)
        except Exception as exc:
            raise SerializationError(
                f"value {self._inbox.taken - 1} of {self.label} arrived but cannot be"
                f" unpickled here: {wire.describe_error(exc)}. Is the module that defines"
                " it importable in this process?"
            ) from None

    def _maybe_report(self) -> None:
        inbox = self._inbox
        max_values, max_bytes = self._limits
        if (
            inbox.taken - inbox.reported >= max(1, max_values // 4)
            or inbox.bytes_taken - inbox.reported_bytes >= max(1, max_bytes // 4)
        ) and not self._future.done():
            inbox.reported, inbox.reported_bytes = inbox.taken, inbox.bytes_taken
            self._report(self._future, inbox.taken)

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        """The next value (asyncio or trio); waits for it without blocking the loop."""
        while True:
            try:
                ready, value = self._next_ready()
            except _End:
                raise StopAsyncIteration from None
            if ready:
                return value  # type: ignore[no-any-return]
            schedule = loop_scheduler()
            if schedule is None:
                raise RuntimeError("a Stream must be iterated with async for inside an event loop")
            event = anyio.Event()
            if not self._inbox.wake_me(functools.partial(schedule, event.set), self.label):
                continue
            try:
                await event.wait()
            except BaseException:
                # The consumer's task was cancelled (or timed out) while waiting:
                # it is not coming back, so the generator must stop too, and a
                # later read must not take the stream for complete.
                self._inbox.forget_wake()
                self._abandoned = not self._closed
                self._cancel()
                raise

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        """The next value (sync code); blocks this thread until it arrives."""
        while True:
            try:
                ready, value = self._next_ready()
            except _End:
                raise StopIteration from None
            if ready:
                return value  # type: ignore[no-any-return]
            arrived = threading.Event()
            if not self._inbox.wake_me(arrived.set, self.label):
                continue
            # wait_sync(0) sends what is still queued, and refuses to block the
            # runtime's I/O thread (which delivers the values).
            if not self._future.wait_sync(0):
                try:
                    arrived.wait()
                except BaseException:  # Ctrl-C: this wait is over
                    self._inbox.forget_wake()
                    raise

    # -- closing -------------------------------------------------------------------------

    def _cancel(self) -> None:
        if not self._closed:
            self._closed = True
            self._inboxes.close(self._future.call_id)
            self._future.cancel()

    async def aclose(self) -> None:
        """Stop the generator and wait (at most :data:`CLOSE_WAIT_S`) until its
        ``finally`` blocks have run. Values not taken are dropped."""
        self._cancel()
        with anyio.move_on_after(CLOSE_WAIT_S):
            await self._future.wait()

    def close(self) -> None:
        """:meth:`aclose` for sync code."""
        self._cancel()
        self._future.wait_sync(CLOSE_WAIT_S)

    async def __aenter__(self) -> Stream[T]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __enter__(self) -> Stream[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not self._closed and not self._future.done():
                self._cancel()
        except Exception:
            pass  # interpreter shutdown: nothing left to cancel


def _ended(inbox: Inbox, inboxes: Inboxes, future: AioRayFuture[None]) -> None:
    # The stream's call is done (I/O thread, after the reply's values were put).
    inboxes.close(future.call_id)
    inbox.end()


class _End(Exception):
    """The stream has no more values (raised inside, turned into Stop(Async)Iteration)."""
