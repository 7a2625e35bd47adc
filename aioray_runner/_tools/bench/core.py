"""The runtime against a plain async Ray actor: many calls at once, and one call at a time.

Every function here runs on the caller's event loop, in a process where Ray is
initialized (see :func:`.common.local_ray`); progress goes to :data:`.common.COUNTERS`.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import ray

from ..._caller.runtime import Runtime
from .common import COUNTERS

# -- what runs remotely ------------------------------------------------------------------


async def noop(i: int) -> int:
    """A trivial coroutine: measures the cost of a call and nothing else."""
    return i


async def sleep_then(i: int, delay: float) -> int:
    """Stands for I/O: waits ``delay`` seconds, no CPU."""
    await asyncio.sleep(delay)
    return i


@ray.remote
class PlainActor:
    """The baseline: an async Ray actor called once per coroutine."""

    async def run(self, i: int) -> int:
        return i

    async def sleep(self, i: int, delay: float) -> int:
        await asyncio.sleep(delay)
        return i


def plain_actor(max_concurrency: int = 1000) -> Any:
    """A started :class:`PlainActor` (``max_concurrency`` calls at once)."""
    actor = PlainActor.options(max_concurrency=max_concurrency).remote()  # type: ignore[attr-defined]
    ray.get(actor.run.remote(0))
    return actor


# -- measurements --------------------------------------------------------------------------


def check_sum(label: str, total: int, n: int) -> None:
    """Fail loudly when a run returned wrong results (a benchmark must not time garbage)."""
    if total != n * (n - 1) // 2:
        raise RuntimeError(f"{label}: wrong results (sum {total}, expected {n * (n - 1) // 2})")


def timing(n: int, started: float, submitted: float, finished: float) -> dict[str, Any]:
    """The figures of one run of ``n`` calls: wall time, submit time, rate, per call."""
    wall = finished - started
    return {
        "n": n,
        "total_s": wall,
        "submit_s": submitted - started,
        "per_s": n / wall if wall > 0 else float("inf"),
        "per_task_ms": 1000 * wall / n,
    }


async def actor_run(actor: Any, n: int, delay: float | None, label: str) -> dict[str, Any]:
    """``n`` calls of the plain actor, one per coroutine; submit all, then await all."""
    started = time.perf_counter()
    refs = []
    for i in range(n):
        refs.append(actor.run.remote(i) if delay is None else actor.sleep.remote(i, delay))
        COUNTERS.submitted += 1
    submitted = time.perf_counter()
    total = 0
    for ref in refs:
        total += await ref
        COUNTERS.done += 1
    finished = time.perf_counter()
    check_sum(label, total, n)
    return timing(n, started, submitted, finished)


async def runtime_run(rt: Runtime, n: int, delay: float | None, label: str) -> dict[str, Any]:
    """``n`` calls through ``Runtime``: submit all, then await each future."""
    started = time.perf_counter()
    futures = []
    for i in range(n):
        futures.append(rt.submit(noop, i) if delay is None else rt.submit(sleep_then, i, delay))
        COUNTERS.submitted += 1
    submitted = time.perf_counter()
    total = 0
    for future in futures:
        total += await future
        COUNTERS.done += 1
    finished = time.perf_counter()
    check_sum(label, total, n)
    return timing(n, started, submitted, finished)


async def actor_latency(actor: Any, n: int) -> dict[str, Any]:
    """``n`` trivial calls of the plain actor, one at a time: each awaited before the next."""
    return await _latency(lambda i: actor.run.remote(i), n)


async def runtime_latency(rt: Runtime, n: int) -> dict[str, Any]:
    """``n`` trivial calls through ``Runtime``, one at a time."""
    return await _latency(lambda i: rt.submit(noop, i), n)


async def _latency(call: Any, n: int) -> dict[str, Any]:
    samples = []
    started = time.perf_counter()
    for i in range(n):
        COUNTERS.submitted += 1
        t0 = time.perf_counter()
        if await call(i) != i:
            raise RuntimeError(f"call {i} returned a wrong result")
        samples.append(time.perf_counter() - t0)
        COUNTERS.done += 1
    wall = time.perf_counter() - started
    median = statistics.median(samples)
    return {
        "n": n,
        "total_s": wall,
        "per_task_ms": 1000 * median,
        "min_ms": 1000 * min(samples),
        "max_ms": 1000 * max(samples),
    }


async def warm_up(rt: Runtime, calls: int) -> None:
    """A few calls of each kind, so the first measured call does not pay for imports."""
    futures = [rt.submit(noop, i) for i in range(calls)]
    for future in futures:
        await future
    futures = [rt.submit(sleep_then, i, 0.0) for i in range(calls)]
    for future in futures:
        await future
