"""The supervisor: an async Ray actor that runs many calls at once on its own loop.

Every call becomes one asyncio task on the actor's event loop. A call first
awaits its dependencies (futures of this runtime, ObjectRefs), then takes one of
``max_concurrency`` slots and runs. Waiting for dependencies does not hold a slot,
so a queue of dependents can never starve the upstream calls they wait for.

Finished calls are collected and handed to the caller in groups by ``poll``; the
outcome stays in memory until the caller says the future is gone (``release``),
because a later call may still name it as a dependency.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import gc
import importlib
import inspect
import os
import pickle
import resource
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle

from . import _wire
from .errors import SerializationError, SupervisorDiedError, UpstreamError


class _Call:
    __slots__ = ("call_id", "label", "outcome", "released", "task")

    def __init__(self, call_id: int, label: str, outcome: asyncio.Future[tuple[int, Any]]) -> None:
        self.call_id = call_id
        self.label = label
        self.outcome = outcome
        self.task: asyncio.Task[None] | None = None
        self.released = False


class Supervisor:
    """Runs submitted calls on this actor's event loop (see the module docstring)."""

    def __init__(
        self,
        index: int,
        max_concurrency: int,
        backend: str = "asyncio",
        threads: int = 32,
        preload: Sequence[str] = (),
    ) -> None:
        # Imported here, while the caller waits for the supervisors to start,
        # so the first calls do not pay for it (Prefect takes seconds).
        for module in preload:
            importlib.import_module(module)
        self._index = index
        self._max_concurrency = max_concurrency
        self._backend = backend
        self._functions: dict[bytes, Callable[..., Any] | BaseException] = {}
        self._function_arrived: dict[bytes, asyncio.Event] = {}
        self._is_async: dict[bytes, bool] = {}
        self._calls: dict[int, _Call] = {}
        self._arrivals: dict[int, asyncio.Future[_Call]] = {}
        self._cancel_early: set[int] = set()
        self._ready: list[tuple[int, int, bytes | None]] = []
        # asyncio primitives bind to the running loop when first used (3.10+).
        self._ready_event = asyncio.Event()
        self._slots = asyncio.Semaphore(max_concurrency)
        self._threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix=f"aioray-supervisor-{index}"
        )
        self._trio: Any = None
        self._trio_start: asyncio.Future[None] | None = None
        self._running = 0
        self._started_total = 0
        self._actor_id: Any = None

    # -- control -----------------------------------------------------------------

    async def info(self) -> dict[str, Any]:
        """Where this supervisor runs: pid, node and settings."""
        import ray

        context = ray.get_runtime_context()
        self._actor_id = context.get_actor_id()
        node_id = context.get_node_id() if hasattr(context, "get_node_id") else None
        return {
            "index": self._index,
            "pid": os.getpid(),
            "node_id": node_id,
            "node_ip": ray.util.get_node_ip_address(),
            "backend": self._backend,
            "max_concurrency": self._max_concurrency,
            "actor_id": self._actor_id,
        }

    async def submit(self, functions: dict[bytes, bytes], calls: Sequence[tuple[Any, ...]]) -> int:
        """Accept a batch of calls: ``(call_id, digest, args, deps, label)`` each."""
        loop = asyncio.get_running_loop()
        if self._backend == "trio":
            await self._trio_started()
        for digest, blob in functions.items():
            self._add_function(digest, blob)
        for call_id, digest, blob, deps, label in calls:
            record = _Call(call_id, label, loop.create_future())
            self._calls[call_id] = record
            arrival = self._arrivals.pop(call_id, None)
            if arrival is not None:
                arrival.set_result(record)
            if call_id in self._cancel_early:
                self._cancel_early.discard(call_id)
                self._finish(record, _wire.CANCELLED, None)
                continue
            record.task = task = loop.create_task(self._run(record, digest, blob, deps))
            task.add_done_callback(functools.partial(self._on_task_done, record))
        return len(calls)

    def _on_task_done(self, record: _Call, task: asyncio.Task[None]) -> None:
        # A task cancelled before its first step never runs ``_run``'s body,
        # so nothing else would report its outcome.
        if not record.outcome.done():
            self._finish(record, _wire.CANCELLED, None)

    async def _trio_started(self) -> None:
        # Start the guest run once; a batch arriving meanwhile waits for the same start.
        if self._trio_start is None:
            from ._trio_host import TrioHost

            self._trio = TrioHost()
            self._trio_start = asyncio.ensure_future(self._trio.start())
        await asyncio.shield(self._trio_start)

    async def poll(self, max_items: int = 5000) -> list[tuple[int, int, bytes | None]]:
        """Wait until some calls have finished; return up to ``max_items`` outcomes."""
        while not self._ready:
            self._ready_event.clear()
            await self._ready_event.wait()
        batch = self._ready[:max_items]
        del self._ready[:max_items]
        return batch

    async def result_of(self, call_id: int) -> tuple[int, bytes | None]:
        """The pickled outcome of one call, for a dependent call on another supervisor."""
        record = await self._arrived(call_id)
        kind, payload = await asyncio.shield(record.outcome)
        return kind, payload

    async def cancel(self, call_ids: Sequence[int]) -> None:
        """Cancel calls: their coroutines see the cancellation and unwind."""
        for call_id in call_ids:
            record = self._calls.get(call_id)
            if record is None:
                self._cancel_early.add(call_id)  # still on its way here
            elif record.task is not None:
                record.task.cancel()  # reaches trio too: see TrioHost.run

    async def release(self, call_ids: Sequence[int]) -> None:
        """The caller dropped these futures: forget their outcomes once finished."""
        for call_id in call_ids:
            record = self._calls.get(call_id)
            if record is None:
                continue
            if record.outcome.done():
                del self._calls[call_id]
            else:
                record.released = True

    async def stats(self, collect: bool = False) -> dict[str, Any]:
        """Counters and memory of this supervisor (``collect`` runs the GC first)."""
        if collect:
            gc.collect()
            _trim_malloc()
        status = _proc_status()
        return {
            "index": self._index,
            "pid": os.getpid(),
            "running": self._running,
            "calls_held": len(self._calls),
            "unpolled": len(self._ready),
            "functions": len(self._functions),
            "started_total": self._started_total,
            "rss_bytes": status.get("VmRSS", 0),
            "peak_rss_bytes": status.get("VmHWM")
            or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }

    # -- running calls -------------------------------------------------------------

    def _add_function(self, digest: bytes, blob: bytes) -> None:
        if digest in self._functions:
            return
        try:
            fn: Callable[..., Any] | BaseException = cloudpickle.loads(blob)
        except Exception as exc:
            fn = SerializationError(
                f"a function could not be unpickled on supervisor {self._index}:"
                f" {_wire.describe_error(exc)}. Install the module that defines it on"
                " every Ray node, or ship it with runtime_env={'py_modules': [...]}"
            )
        self._functions[digest] = fn
        event = self._function_arrived.pop(digest, None)
        if event is not None:
            event.set()

    async def _function(self, digest: bytes) -> Callable[..., Any]:
        fn = self._functions.get(digest)
        if fn is None:
            # Sent in an earlier batch that this loop has not processed yet.
            event = self._function_arrived.setdefault(digest, asyncio.Event())
            await event.wait()
            fn = self._functions[digest]
        if isinstance(fn, BaseException):
            raise fn
        return fn

    async def _arrived(self, call_id: int) -> _Call:
        record = self._calls.get(call_id)
        if record is not None:
            return record
        arrival = self._arrivals.get(call_id)
        if arrival is None:
            arrival = asyncio.get_running_loop().create_future()
            self._arrivals[call_id] = arrival
        return await asyncio.shield(arrival)

    async def _run(self, record: _Call, digest: bytes, blob: bytes, deps: Sequence[Any]) -> None:
        kind: int
        value: Any
        try:
            fn = await self._function(digest)
            values = await self._resolve(deps, record.label) if deps else ()
            args, kwargs = _wire.loads_arguments(blob, values)
            async with self._slots:
                self._running += 1
                self._started_total += 1
                try:
                    value = await self._invoke(digest, fn, args, kwargs)
                finally:
                    self._running -= 1
            kind = _wire.OK
        except asyncio.CancelledError:
            kind, value = _wire.CANCELLED, None
        except BaseException as exc:
            kind, value = _wire.ERROR, exc
        self._finish(record, kind, value)

    async def _invoke(
        self, digest: bytes, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        is_async = self._is_async.get(digest)
        if is_async is None:
            is_async = self._is_async[digest] = _is_async_callable(fn)
        if is_async:
            if self._trio is not None:
                return await self._trio.run(fn, args, kwargs)
            return await fn(*args, **kwargs)
        # Plain functions go to the thread pool, so they cannot stall the loop.
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        result = await loop.run_in_executor(
            self._threads, functools.partial(context.run, fn, *args, **kwargs)
        )
        if inspect.isawaitable(result):
            result = await result
        return result

    def _finish(self, record: _Call, kind: int, value: Any) -> None:
        payload: bytes | None = None
        if kind == _wire.OK:
            kind, payload = _wire.dumps_value(value, record.label)
        elif kind == _wire.ERROR:
            payload = _wire.dumps_exception(value)
        # Kept pickled, not as the live object: every dependent, here or on
        # another supervisor, gets its own copy, as the caller does.
        record.outcome.set_result((kind, payload))
        record.task = None
        self._ready.append((record.call_id, kind, payload))
        self._ready_event.set()
        if record.released:
            self._calls.pop(record.call_id, None)

    async def _resolve(self, deps: Sequence[Any], label: str) -> list[Any]:
        if len(deps) == 1:
            return [await self._resolve_one(deps[0], label)]
        return list(await asyncio.gather(*(self._resolve_one(dep, label) for dep in deps)))

    async def _resolve_one(self, dep: Sequence[Any], label: str) -> Any:
        kind, handle, call_id, upstream = dep
        if kind == _wire.VALUE_DEP:
            return pickle.loads(handle)
        if kind == _wire.FAILED_DEP:
            raise UpstreamError(f"{label} cannot start: {handle}", upstream)
        if kind == _wire.REF_DEP:
            try:
                return await handle
            except Exception as exc:
                raise UpstreamError(
                    f"{label} cannot start: its argument {upstream} failed: {exc}", upstream
                ) from None
        if self._actor_id is not None and handle._actor_id.hex() == self._actor_id:
            record = await self._arrived(call_id)
            outcome_kind, payload = await asyncio.shield(record.outcome)
        else:
            try:
                outcome_kind, payload = await handle.result_of.remote(call_id)
            except Exception as exc:
                import ray

                if isinstance(exc, ray.exceptions.RayActorError):
                    reason = f"its supervisor died ({type(exc).__name__}). Resubmit {upstream}."
                else:
                    reason = f"it could not be fetched: {type(exc).__name__}: {exc}"
                raise UpstreamError(
                    f"{label} cannot start: the result of {upstream} is lost: {reason}", upstream
                ) from None
        if outcome_kind == _wire.OK:
            return pickle.loads(payload) if payload else None
        error = (
            _wire.loads_exception(payload, upstream)
            if outcome_kind == _wire.ERROR and payload
            else None
        )
        if outcome_kind == _wire.CANCELLED:
            raise UpstreamError(f"{label} cannot start: {upstream} was cancelled", upstream)
        if isinstance(error, SupervisorDiedError | UpstreamError):
            raise UpstreamError(f"{label} cannot start: {error}", upstream)
        raise UpstreamError(
            f"{label} cannot start: {upstream} failed with {type(error).__name__}: {error}",
            upstream,
        )


def _is_async_callable(fn: Any) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - instances with async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def _proc_status() -> dict[str, int]:
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


def _trim_malloc() -> None:
    """Hand freed heap pages back to the OS (glibc), so RSS reflects live memory."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
