"""Streams on a supervisor: a generator's values, sent as they are made, no faster
than the caller takes them.

A stream is a call whose function yields (``Runtime.stream``). Its pump (``run``)
takes the generator's values one by one, pickles each (so one bad value fails the
stream with an error naming it, not a poll reply), and puts it in the outgoing
list that the next ``poll`` reply carries: values ride the same replies as
outcomes, never a Ray call per value, and a stream's outcome (how it ended) is
queued only after its last value, so the caller sees every value first.

**Backpressure** is a credit: the caller says, now and then, how many values its
consumer has taken (``taken``). The pump takes the next value only while fewer
than ``limits[0]`` values, and fewer than ``limits[1]`` bytes, are made and not
yet taken, wherever they are (here, in a reply, in the caller's buffer). Only the
generator waits, never the loop, and it gives its ``max_concurrency`` permit back
while it waits (its consumer may be waiting for another call). The caller reports
often enough that a stream at its limit always hears back (``_caller/streams.py``).
One reply carries at most about :data:`REPLY_BYTES` of values; a stream's outcome
waits for the reply that carries its last values.

How the generator is driven depends on its kind: an async generator on the
supervisor's loop (under trio, each step runs on the trio thread through the
host, as a trio task of its own: a cancel scope, a lock or a context variable
set before a ``yield`` does not carry over it), a plain one in the supervisor's
thread pool, a step per value. Ending it early (the caller cancels the call)
closes it where it runs, so its ``finally`` blocks run before the stream ends; a
plain generator busy in ``next()`` is closed when that returns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import pickle
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import cloudpickle

from .._common import wire
from ..errors import SerializationError
from .calls import CallRecord, Permits

_END: Any = object()

#: Bytes of values one poll reply carries at most (beyond one stream's share):
#: many streams of big values must not make one reply of gigabytes.
REPLY_BYTES = 32 * 1024 * 1024


class StreamFlow:
    """One stream's count of values made and taken (see the module docstring)."""

    __slots__ = ("bytes_out", "made", "max_bytes", "max_values", "room", "sizes", "taken")

    def __init__(self, limits: wire.StreamLimits) -> None:
        self.max_values, self.max_bytes = limits
        self.made = 0
        self.taken = 0
        # Sizes of the values made and not yet taken, oldest first, and their sum.
        self.sizes: list[int] = []
        self.bytes_out = 0
        self.room = asyncio.Event()
        self.room.set()

    def has_room(self) -> bool:
        """Whether the generator may make one more value now."""
        return self.made - self.taken < self.max_values and self.bytes_out < self.max_bytes

    def made_one(self, size: int) -> None:
        """A value of ``size`` bytes was made."""
        self.made += 1
        self.sizes.append(size)
        self.bytes_out += size
        if not self.has_room():
            self.room.clear()

    def taken_up_to(self, count: int) -> None:
        """The consumer has taken ``count`` values in all."""
        newly = min(count, self.made) - self.taken
        if newly <= 0:
            return
        self.taken += newly
        self.bytes_out -= sum(self.sizes[:newly])
        del self.sizes[:newly]
        if self.has_room():
            self.room.set()


class Streams:
    """The streams running on one supervisor, and their values not yet polled.

    ``wake`` is called when values are ready (the poll waits for it);
    ``threads`` runs plain generators; ``adapt`` is the host's (see ``_backends``).
    """

    def __init__(
        self,
        wake: Callable[[], None],
        threads: concurrent.futures.Executor,
        adapt: Callable[[Any], Any],
        permits: Permits,
    ) -> None:
        self._wake = wake
        self._threads = threads
        self._permits = permits
        self._flows: dict[int, StreamFlow] = {}
        self._outgoing: dict[int, list[bytes]] = {}
        # The step and the close of an async generator, adapted once to the backend
        # (the identity under asyncio; under trio they run on its thread).
        self._anext = adapt(_anext)
        self._aclose = adapt(_aclose)

    def __len__(self) -> int:
        return len(self._flows)

    @property
    def pending(self) -> bool:
        """Whether values wait for the next poll."""
        return bool(self._outgoing)

    def take(
        self, ready: list[wire.Outcome], max_items: int
    ) -> tuple[list[tuple[int, list[bytes]]], list[wire.Outcome]]:
        """What one poll reply carries: values (at most about :data:`REPLY_BYTES`,
        each stream's in order) and the outcomes that may go with them (at most
        ``max_items``, taken from ``ready``): not the outcome of a stream whose
        values are not all in this reply, which waits for the next."""
        batch = ready[:max_items]
        del ready[:max_items]
        if not self._outgoing:
            return [], batch
        streamed: list[tuple[int, list[bytes]]] = []
        size = 0
        for call_id, payloads in list(self._outgoing.items()):
            if streamed and size >= REPLY_BYTES:
                break  # the rest in the next reply
            streamed.append((call_id, payloads))
            size += sum(map(len, payloads))
            del self._outgoing[call_id]
        if self._outgoing:
            waiting = self._outgoing
            held = [outcome for outcome in batch if outcome[0] in waiting]
            if held:
                batch = [outcome for outcome in batch if outcome[0] not in waiting]
                ready[:0] = held
        return streamed, batch

    def taken(self, counts: dict[int, int]) -> None:
        """The caller's consumers have taken this many values of these streams, in all."""
        for call_id, count in counts.items():
            flow = self._flows.get(call_id)
            if flow is not None:
                flow.taken_up_to(count)

    async def run(
        self,
        record: CallRecord,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        """Run the stream to its end, sending each value (see the module docstring)."""
        call_id, label = record.call_id, record.label
        assert record.stream is not None
        flow = self._flows[call_id] = StreamFlow(record.stream)
        try:
            if wire.is_generator_function(fn)[1]:
                await self._pump_async(call_id, label, flow, fn(*args, **kwargs))
            else:
                await self._pump_sync(call_id, label, flow, fn, args, kwargs)
        finally:
            del self._flows[call_id]

    def _send(self, call_id: int, label: str, flow: StreamFlow, value: Any) -> None:
        payload = _pack(value, label, flow.made)
        flow.made_one(len(payload))
        queue = self._outgoing.get(call_id)
        if queue is None:
            queue = self._outgoing[call_id] = []
            self._wake()
        queue.append(payload)

    async def _wait_for_room(self, flow: StreamFlow) -> None:
        """Wait until the consumer has taken enough, holding no permit meanwhile: a
        stream waiting for its consumer must not keep other calls from running
        (the consumer may well be waiting for one of them)."""
        permits = self._permits
        permits.release()
        try:
            await flow.room.wait()
            await permits.acquire()  # back under max_concurrency, in turn
        except BaseException:
            # Cancelled (the stream is closing): hold one at once, not after a
            # wait for a free one; the call's end gives it back.
            permits.take_anyway()
            raise

    async def _pump_async(
        self, call_id: int, label: str, flow: StreamFlow, generator: AsyncIterator[Any]
    ) -> None:
        if not hasattr(generator, "__anext__"):
            raise TypeError(f"{label} did not return an async generator")
        step = self._anext
        try:
            while True:
                if not flow.has_room():
                    await self._wait_for_room(flow)
                value = await step(generator)
                if value is _END:
                    return
                self._send(call_id, label, flow, value)
        finally:
            # Cancelled while waiting for room, or a value that cannot be pickled:
            # the generator is suspended at a yield, and closing it runs its
            # finally blocks. (Cancelled inside a step, it has unwound already.)
            await asyncio.shield(self._aclose(generator))

    async def _pump_sync(
        self,
        call_id: int,
        label: str,
        flow: StreamFlow,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        context = contextvars.copy_context()
        threads = self._threads
        # Calling a generator function runs none of its code: no thread needed.
        generator: Iterator[Any] = context.run(fn, *args, **kwargs)
        if not hasattr(generator, "__next__"):
            raise TypeError(f"{label} did not return a generator")
        # The step running in a thread, if any: cancelling our wait for it does not
        # stop the thread, which must finish next() before the generator can close.
        step: concurrent.futures.Future[Any] | None = None
        try:
            while True:
                if not flow.has_room():
                    await self._wait_for_room(flow)
                step = threads.submit(context.run, _next, generator)
                value = await asyncio.wrap_future(step)
                step = None
                if value is _END:
                    return
                self._send(call_id, label, flow, value)
        finally:
            close = getattr(generator, "close", None)
            if close is not None:
                if step is None or step.done():
                    # Closing runs its finally blocks: the stream ends after them.
                    await asyncio.shield(asyncio.wrap_future(threads.submit(context.run, close)))
                else:
                    # Its thread is still in next(), which nothing can interrupt:
                    # close it when that returns (a running generator cannot be
                    # closed from another thread), without keeping the end waiting.
                    step.add_done_callback(lambda _: threads.submit(context.run, close))


def _next(generator: Iterator[Any]) -> Any:
    # next() with a default: StopIteration must not cross into a future.
    return next(generator, _END)


async def _anext(generator: Any) -> Any:
    try:
        return await generator.__anext__()
    except StopAsyncIteration:
        return _END


async def _aclose(generator: Any) -> None:
    aclose = getattr(generator, "aclose", None)
    if aclose is not None:
        await aclose()


def _pack(value: Any, label: str, index: int) -> bytes:
    """One value, pickled (plain pickle first, as for results)."""
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        pass
    try:
        blob: bytes = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise SerializationError(
            f"value {index} of {label} ({type(value).__name__}) cannot be pickled, so it"
            f" cannot be sent back: {wire.describe_error(exc)}. The stream ends here."
        ) from None
    return blob
