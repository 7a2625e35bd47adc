"""Streams: values per second through ``Runtime.stream`` against a plain Ray actor's
streaming generator (``num_returns="streaming"``), and what a slow consumer costs.

Phases, each in the same run:

* ``one``: one stream of ``--values`` small values (ints), through the runtime and
  through a plain async actor method that yields them (its consumer awaits each
  ObjectRef, as Ray's docs do). Alternated ``--repeat`` times; medians and their
  ratio printed.
* ``many``: ``--streams`` streams of ``--per-stream`` values at once, both ways.
* ``limits``: one stream of ``--values`` values with ``max_buffered`` of 16, 100,
  1,000 and 10,000 (the default): what the limit costs in throughput.
* ``slow``: one stream of ``--slow-values`` values taken by a slow consumer (it
  sleeps 2 ms every 100 values) with the default limits: how far the generator
  ran ahead of the consumer (it says how far it got, every 100 values), and the
  caller's and supervisor's RSS before and after.

Usage::

    python benchmarks/bench_streams.py
    python benchmarks/bench_streams.py --phases one --values 200000 --repeat 5

Not a test: it prints figures.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import ray

from aioray_runner import Runtime
from aioray_runner._caller.streams import DEFAULT_MAX_BUFFERED


async def numbers(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


async def numbers_reporting(n: int, progress: str) -> AsyncIterator[int]:
    """``numbers``, writing how many it has made to ``progress`` every 100."""
    for i in range(n):
        if i % 100 == 0:
            Path(progress).write_text(str(i + 1))  # noqa: ASYNC240 - a few bytes
        yield i


LIMITS = (16, 100, 1_000, DEFAULT_MAX_BUFFERED)


@ray.remote
class PlainStreamer:
    """What a user writes with Ray alone: an async actor with a streaming method."""

    async def ready(self) -> int:
        return os.getpid()

    @ray.method(num_returns="streaming")  # type: ignore[misc]
    async def numbers(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i


async def through_runtime(rt: Runtime, n: int) -> float:
    started = time.perf_counter()
    total = 0
    async for _ in rt.stream(numbers, n):
        total += 1
    assert total == n
    return n / (time.perf_counter() - started)


async def with_limit(rt: Runtime, n: int, limit: int) -> float:
    started = time.perf_counter()
    total = 0
    async for _ in rt.stream_call(numbers, (n,), max_buffered=limit):
        total += 1
    assert total == n
    return n / (time.perf_counter() - started)


async def through_plain(actor: Any, n: int) -> float:
    started = time.perf_counter()
    total = 0
    async for ref in actor.numbers.remote(n):
        await ref
        total += 1
    assert total == n
    return n / (time.perf_counter() - started)


async def many_runtime(rt: Runtime, streams: int, each: int) -> float:
    started = time.perf_counter()

    async def drain(i: int) -> int:
        return len([x async for x in rt.stream(numbers, each)])

    counts = await asyncio.gather(*(drain(i) for i in range(streams)))
    assert sum(counts) == streams * each
    return streams * each / (time.perf_counter() - started)


async def many_plain(actor: Any, streams: int, each: int) -> float:
    started = time.perf_counter()

    async def drain(i: int) -> int:
        total = 0
        async for ref in actor.numbers.remote(each):
            await ref
            total += 1
        return total

    counts = await asyncio.gather(*(drain(i) for i in range(streams)))
    assert sum(counts) == streams * each
    return streams * each / (time.perf_counter() - started)


async def slow(rt: Runtime, n: int) -> None:
    info = rt.supervisor_info()[0]
    supervisor = psutil.Process(info["pid"])
    me = psutil.Process()
    before = (me.memory_info().rss, supervisor.memory_info().rss)
    with tempfile.TemporaryDirectory() as directory:
        progress = Path(directory) / "made"
        ahead = 0
        taken = 0
        started = time.perf_counter()
        async for value in rt.stream(numbers_reporting, n, str(progress)):
            assert value == taken
            taken += 1
            if taken % 100 == 0:
                await asyncio.sleep(0.002)
                made = int(progress.read_text() or 0)
                ahead = max(ahead, made - taken)
        took = time.perf_counter() - started
    after = (me.memory_info().rss, supervisor.memory_info().rss)
    print(
        f"slow consumer: {n:,} values in {took:.1f} s; the generator ran at most"
        f" {ahead:,} values ahead (limit {DEFAULT_MAX_BUFFERED:,}); RSS caller"
        f" {before[0] / 2**20:.0f} -> {after[0] / 2**20:.0f} MiB, supervisor"
        f" {before[1] / 2**20:.0f} -> {after[1] / 2**20:.0f} MiB"
    )


async def main(args: argparse.Namespace) -> None:
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    phases = set(args.phases.split(","))
    actor = PlainStreamer.remote()  # type: ignore[attr-defined]
    await actor.ready.remote()
    async with Runtime(supervisors=1) as rt:
        await through_runtime(rt, 1_000)  # warm both up
        await through_plain(actor, 100)
        if "one" in phases:
            ours, plain = [], []
            for _ in range(args.repeat):
                ours.append(await through_runtime(rt, args.values))
                plain.append(await through_plain(actor, args.plain_values))
            a, b = statistics.median(ours), statistics.median(plain)
            print(
                f"one stream: runtime {a:,.0f} values/s ({args.values:,} values), plain actor"
                f" streaming generator {b:,.0f} values/s ({args.plain_values:,}): {a / b:.1f}x"
                f"  [runs: {', '.join(f'{x:,.0f}' for x in ours)} | "
                f"{', '.join(f'{x:,.0f}' for x in plain)}]"
            )
        if "many" in phases:
            a = await many_runtime(rt, args.streams, args.per_stream)
            b = await many_plain(actor, args.streams, args.per_stream)
            print(
                f"{args.streams:,} streams x {args.per_stream} values at once: runtime"
                f" {a:,.0f} values/s, plain actor {b:,.0f} values/s: {a / b:.1f}x"
            )
        if "limits" in phases:
            rates = {limit: await with_limit(rt, args.values, limit) for limit in LIMITS}
            print(
                "one stream by max_buffered: "
                + ", ".join(f"{limit:,}: {rate:,.0f} values/s" for limit, rate in rates.items())
            )
        if "slow" in phases:
            await slow(rt, args.slow_values)
    ray.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phases", default="one,many,limits,slow")
    parser.add_argument("--values", type=int, default=100_000)
    parser.add_argument("--plain-values", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--streams", type=int, default=1_000)
    parser.add_argument("--per-stream", type=int, default=100)
    parser.add_argument("--slow-values", type=int, default=200_000)
    asyncio.run(main(parser.parse_args()))
