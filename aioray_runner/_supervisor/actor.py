"""The supervisor: an async Ray actor that runs many calls at once on its own loop.

Every call becomes one asyncio task on the actor's event loop. A call first
awaits its dependencies (futures of this runtime, ObjectRefs), then takes one of
``max_concurrency`` permits and runs. Waiting for dependencies does not hold one,
so a queue of dependents can never starve the upstream calls they wait for.

Finished calls are collected and handed to the caller in groups by ``poll``; the
outcome stays in memory until the caller says the future is gone (``release``),
because a later call may still name it as a dependency.

**A call starts only once the caller knows it will.** Before a call's code runs,
its id is announced in a ``poll`` reply, and the call waits until the caller's
*next* ``poll`` arrives: proof that the caller has read the announcement. So if
this process dies, the caller knows exactly which calls may have started (those
announced) and can safely send every other one elsewhere. The price is one
round trip before a batch starts, paid per batch, not per call. The gate is its
own object (``gate.py``), with unit tests that need no Ray.

The actor coordinates its parts, each in a module of this folder: the call
records and permits (``calls.py``), the start gate (``gate.py``), the function
table (``functions.py``), dependencies (``dependencies.py``), streams' values
(``streams.py``), the backend's host (``hosting.py``), log forwarding
(``logs.py``) and ``current_attempt`` (``attempt.py``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import importlib
import inspect
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import ray

from .._common import wire
from .._common.settings import Settings
from .._common.watchdog import Stall, Watchdog, watch_asyncio_loop
from .attempt import Attempt, set_attempt
from .calls import (
    CallRecord,
    CallTable,
    Permits,
    Resend,
    calls_holding,
    for_the_caller,
    pack_outcome,
)
from .census import (
    CANCELLED,
    FAILED,
    FINISHED,
    HANDED_BACK,
    RUNNING,
    WAITING_FOR_DEPENDENCIES,
    WAITING_TO_START,
    Census,
    Holder,
    process_memory,
)
from .dependencies import Dependencies
from .functions import FunctionTable
from .gate import StartGate
from .hosting import HostStart
from .logs import LogForwarder
from .metrics import Metrics
from .streams import Streams

Outcome = wire.Outcome

# An outcome's kind, as the census counts it (anything else failed).
_HOW_ENDED = {wire.OK: FINISHED, wire.CANCELLED: CANCELLED, wire.RESEND: HANDED_BACK}

#: ``asyncio.Task(..., eager_start=True)`` exists (Python 3.12 and newer).
_EAGER_TASKS = sys.version_info >= (3, 12)


class Supervisor:
    """Runs submitted calls on this actor's event loop (see the module docstring)."""

    def __init__(self, index: int, settings: Settings, runtime: str = "") -> None:
        # Imported here, while the caller waits for the supervisors to start,
        # so the first calls do not pay for it (Prefect takes seconds).
        for module in settings.preload:
            importlib.import_module(module)
        self._index = index
        self._settings = settings
        self._runtime = runtime  # the runtime's id, in its actor names and metrics
        self._host = HostStart(settings.backend)  # started before the first call
        self._functions = FunctionTable(index, self._host.adapt)  # by digest
        self._calls = CallTable()  # by id, from arrival until released
        self._ready: list[Outcome] = []
        self._stalls: list[wire.StallReport] = []
        self._watchdog: Watchdog | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # asyncio primitives bind to the running loop when first used (3.10+).
        self._ready_event = asyncio.Event()
        # The start gate (see the module docstring). Calls announced straight from
        # ``submit`` (no dependencies, a permit taken there) come back from it
        # when their gate opens, and their tasks are created then.
        self._gate: StartGate[tuple[CallRecord, bytes, bytes]] = StartGate(self._ready_event.set)
        self._permits = Permits(settings.max_concurrency)
        self._threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.threads, thread_name_prefix=f"aioray-supervisor-{index}"
        )
        self._metrics: Metrics | None = None  # Ray metrics, from the first info()
        self._polls = 0  # replies sent: each wakes the caller's loops once (bench_limits)
        self._starting: CallRecord | None = None  # the call whose first step runs now (3.12+)
        self._actor_id: Any = None
        # Awaits each call's dependencies (see dependencies.py).
        self._dependencies = Dependencies(self._calls.arrived, lambda: self._actor_id)
        # What the calls are doing, for `aioray-runner status` (census.py).
        waiting: list[Holder] = [self._permits, self._gate]  # a permit, or the gate's round trip
        self._census = Census(
            {WAITING_FOR_DEPENDENCIES: [self._dependencies], WAITING_TO_START: waiting}
        )
        self._logs = LogForwarder(settings.forward_logs, self._wake_from_any_thread)
        # Generators' values on their way to the caller (see streams.py).
        self._streams = Streams(
            self._ready_event.set, self._threads, self._host.adapt, self._permits
        )

    def _wake_from_any_thread(self) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._ready_event.set)

    # -- control -----------------------------------------------------------------

    async def info(self) -> dict[str, Any]:
        """Where this supervisor runs: pid, node and settings."""
        self._start_watchdog()
        self._metrics = self._metrics or Metrics.started(self._census, self._runtime, self._index)
        self._actor_id = ray.get_runtime_context().get_actor_id()
        return self._where()

    def _where(self) -> dict[str, Any]:
        return identity(self._index, self._settings, self._runtime, self._actor_id)

    def _start_watchdog(self) -> None:
        threshold = self._settings.blocked_loop_threshold
        if self._watchdog is None and threshold:
            self._watchdog = watch_asyncio_loop(
                asyncio.get_running_loop(),
                threshold,
                lambda task: calls_holding(task, self._starting, self._calls.records()),
                self._on_stall,
            )
            self._census.watchdog = self._watchdog

    def _on_stall(self, stall: Stall) -> None:
        self._stalls.append(wire.StallReport(stall.seconds, stall.calls, stall.where, stall.cause))
        self._ready_event.set()

    async def submit(self, functions: dict[bytes, bytes], calls: Sequence[wire.CallEntry]) -> int:
        """Accept a batch of calls (see ``wire.CallEntry``); ``functions`` are new ones.
        An entry's ``rerun`` is a :class:`wire.Rerun` for a call run again after its
        supervisor died."""
        self._loop = asyncio.get_running_loop()
        self._start_watchdog()
        self._logs.install()  # again: a library's logging set-up may have reset it
        if not self._host.ready:
            await self._host.start(self._settings.blocked_loop_threshold or 0.0, self._on_stall)
        for digest, blob in functions.items():
            self._functions.add(digest, blob)
        announced_here = False
        for call_id, digest, blob, deps, label, rerun, stream in calls:
            record, cancelled = self._calls.arrive(call_id, label)
            if cancelled:
                self._finish(record, wire.CANCELLED, None)
                continue
            record.stream = stream
            if rerun is not None:
                self._start(record, digest, blob, deps, admitted=False, rerun=rerun)
            elif not deps and self._permits.try_acquire():
                # The common case, made cheap: nothing to wait for and a permit
                # free (now held), so announce it now and create its task when
                # the gate opens (no task parked at the gate per call).
                self._gate.start_when_open(call_id, (record, digest, blob))
                announced_here = True
            else:
                self._start(record, digest, blob, deps, admitted=False)
        if announced_here:
            self._ready_event.set()
        return len(calls)

    def _start(
        self,
        record: CallRecord,
        digest: bytes,
        blob: bytes,
        deps: Sequence[Any],
        *,
        admitted: bool,
        rerun: wire.Rerun | None = None,
    ) -> None:
        context = None
        if rerun is not None:  # the task sees its attempt through current_attempt()
            context = contextvars.copy_context()
            attempt = Attempt(rerun.attempt, rerun.previous_loss, rerun.lost_at)
            context.run(set_attempt, attempt)
        record.admitted = admitted
        coro = self._run(record, digest, blob, deps, admitted)
        if _EAGER_TASKS:
            # Python 3.12+: the call's first step runs now, in its own task (so
            # asyncio.current_task() and anyio's cancel scopes are right), and a
            # coroutine that finishes at once never goes through the loop's queue.
            outer, self._starting = self._starting, record  # the watchdog's culprit meanwhile
            try:
                task = asyncio.Task(  # type: ignore[call-arg, unused-ignore]
                    coro, loop=asyncio.get_running_loop(), context=context, eager_start=True
                )
            finally:
                self._starting = outer
            if not task.done():  # done: _finish has reported it already
                record.task = task
        else:
            record.task = asyncio.get_running_loop().create_task(coro, context=context)

    async def poll(self, max_items: int = 5000) -> wire.PollReply:
        """Wait until there is news: finished calls (at most ``max_items``), calls about
        to start, streams' values, times this loop was blocked (``wire.PollReply``)."""
        # This poll proves the caller read the previous reply: the calls it
        # announced may start now.
        starts = self._gate.open()
        for record, digest, blob in starts:
            if record.outcome is not None:  # cancelled while it waited here
                self._permits.release()
            else:
                self._start(record, digest, blob, (), admitted=True)
        del starts
        self._loop = asyncio.get_running_loop()
        streams = self._streams
        while (
            not (self._ready or self._gate.has_news or self._stalls or self._logs.pending)
            and not streams.pending
        ):
            self._ready_event.clear()
            await self._ready_event.wait()
        streamed, batch = streams.take(self._ready, max_items)  # values before their ends
        announced = self._gate.announce()
        stalls, self._stalls = self._stalls, []
        logs, dropped = self._logs.take()
        self._polls += 1
        return wire.PollReply(batch, announced, stalls, logs, dropped, streamed)

    async def result_of(self, call_id: int) -> tuple[int, bytes | None]:
        """The pickled outcome of one call, for a dependent call on another supervisor."""
        record = await self._calls.arrived(call_id)
        return await record.wait()

    async def results_of(self, call_ids: Sequence[int]) -> list[tuple[int, bytes | None]]:
        """The outcomes the caller asks for: values it left here (``wire.HELD``)."""
        return self._calls.outcomes(call_ids)

    async def cancel(self, call_ids: Sequence[int]) -> None:
        """Cancel calls: their coroutines see the cancellation and unwind."""
        for call_id in call_ids:
            record = self._calls.get(call_id)
            if record is None:
                self._calls.cancel_early(call_id)  # still on its way here
            elif record.task is not None:
                record.task.cancel()  # reaches trio too: see TrioHost.run
                if not record.started:
                    # A task cancelled before its first step never runs
                    # ``_run``'s body, so nothing else would report its outcome.
                    if record.admitted:
                        self._permits.release()
                    self._finish(record, wire.CANCELLED, None)
            elif record.outcome is None:
                self._finish(record, wire.CANCELLED, None)  # waiting at its gate

    async def taken(self, counts: dict[int, int]) -> None:
        """The caller's consumers have taken this many values of these streams, in all."""
        self._streams.taken(counts)

    async def release(self, call_ids: Sequence[int]) -> None:
        """The caller dropped these futures: forget their outcomes once finished."""
        self._calls.release(call_ids)

    async def stats(self, collect: bool = False) -> dict[str, Any]:
        """Counters and memory of this supervisor (``collect`` runs the GC first)."""
        return {
            "index": self._index,
            "pid": os.getpid(),
            "running": self._census.phases()[RUNNING],
            "streams": len(self._streams),
            "calls_held": len(self._calls),
            "held_bytes": self._calls.held_bytes(),
            "unpolled": len(self._ready),
            "functions": len(self._functions),
            "started_total": self._census.started_total,
            "polls": self._polls,
            "cpu_s": time.process_time(),  # this process's, every thread's
            **process_memory(collect=collect),
        }

    @ray.method(concurrency_group="status")  # its own loop: it answers while this one is stuck
    async def status(self) -> dict[str, Any]:
        """What this supervisor is doing, as plain data (``aioray-runner status``): where
        it runs, its calls by phase, the oldest running, its loop's lag, its memory."""
        return {**self._where(), **self._census.snapshot()}

    # -- running calls -------------------------------------------------------------

    async def _run(
        self, record: CallRecord, digest: bytes, blob: bytes, deps: Sequence[Any], admitted: bool
    ) -> None:
        record.started = True
        kind: int
        value: Any
        try:
            try:
                fn = await self._functions.get(digest)
                values = await self._dependencies.resolve(deps, record.label) if deps else ()
                args, kwargs = wire.loads_arguments(blob, values)
                if not admitted:
                    await self._permits.acquire()
            except BaseException:
                if admitted:  # its permit was taken in submit
                    self._permits.release()
                raise
            try:
                if not admitted:
                    await self._gate.admit(record.call_id)
                self._census.running(record.call_id, record.label)  # until _finish
                if record.stream is None:
                    value = await self._invoke(digest, fn, args, kwargs)
                else:  # a stream: its values went out as it ran
                    value = None
                    await self._streams.run(record, fn, args, kwargs)
            finally:
                self._permits.release()
            kind = wire.OK
        except asyncio.CancelledError:
            kind, value = wire.CANCELLED, None
        except Resend as resend:
            kind, value = wire.RESEND, resend
        except BaseException as exc:
            kind, value = wire.ERROR, exc
        self._finish(record, kind, value)

    async def _invoke(
        self, digest: bytes, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        run = self._functions.awaitable(digest, fn)
        if run is not None:
            return await run(*args, **kwargs)
        # Plain functions go to the thread pool, so they cannot stall the loop.
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        result = await self._census.in_thread_pool(
            loop.run_in_executor(self._threads, functools.partial(context.run, fn, *args, **kwargs))
        )
        if inspect.isawaitable(result):
            result = await result
        return result

    def _finish(self, record: CallRecord, kind: int, value: Any) -> None:
        kind, payload = pack_outcome(kind, value, record.label)
        # Kept pickled, not as the live object: every dependent, here or on
        # another supervisor, gets its own copy, as the caller does.
        record.outcome = outcome = (kind, payload)
        if record.waiters is not None:
            for waiter in record.waiters:
                if not waiter.done():  # a dependent cancelled meanwhile
                    waiter.set_result(outcome)
            record.waiters = None
        record.task = None
        self._census.ended(record.call_id, record.label, _HOW_ENDED.get(kind, FAILED))
        self._ready.append(for_the_caller(record, value, self._settings))
        self._ready_event.set()
        if record.released or kind == wire.RESEND:
            # A call handed back is sent again under the same id, maybe to this
            # supervisor: its old record must not stand in for the new one.
            self._calls.forget(record.call_id)


def identity(index: int, settings: Settings, runtime: str, actor_id: str | None) -> dict[str, Any]:
    """Who and where a supervisor is, as its ``info`` and ``status`` report it."""
    context = ray.get_runtime_context()
    node_id = context.get_node_id() if hasattr(context, "get_node_id") else None
    return {
        "index": index,
        "pid": os.getpid(),
        "node_id": node_id,
        "node_ip": ray.util.get_node_ip_address(),
        "backend": settings.backend,
        "max_concurrency": settings.max_concurrency,
        "blocked_loop_threshold": settings.blocked_loop_threshold,
        "actor_id": actor_id,
        "name": settings.name,
        "runtime": runtime,
    }
