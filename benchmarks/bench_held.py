"""Results where they are: what holding values on the supervisors saves the caller, and
what it costs when the value is wanted. Every row compares ``hold_results_above`` at
its default (256 KiB) with ``None`` (every value sent back as its call finishes, as
before), in the same run, alternated ``--repeat`` times; medians printed.

Phases:

* ``trivial``: ``--n`` calls returning an int, all awaited: calls per second.
  Small values come back inline either way: this row must not move.
* ``unawaited``: ``--unawaited`` calls returning ``--size`` bytes, waited for
  (``future.wait()``) but never awaited: the caller's CPU per call and RSS growth.
* ``threshold``: 200 calls returning values of 16 KiB to 4 MiB, all awaited: time
  per call held (``hold_results_above=0``) and inline (``None``): where holding
  starts to pay for an awaited value.
* ``memory``: 200 calls of 5 MiB finished and held, then one awaited; caller RSS.
* ``chain``: 20 calls making 50 MiB, each read by a dependent on another
  supervisor that returns its length (the makers' futures kept); caller RSS and
  bytes fetched.

Usage::

    python benchmarks/bench_held.py
    python benchmarks/bench_held.py --phases trivial,unawaited --repeat 5

Not a test: it prints figures.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Callable, Coroutine
from typing import Any

import psutil
import ray

from aioray_runner import Runtime
from aioray_runner._common.settings import DEFAULT_HOLD_RESULTS_ABOVE

MIB = 1024 * 1024
WAYS: dict[str, int | None] = {"held": DEFAULT_HOLD_RESULTS_ABOVE, "inline": None}


async def trivial(i: int) -> int:
    return i


async def blob(size: int) -> bytes:
    return bytes(size)


async def length(value: bytes) -> int:
    return len(value)


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / MIB


async def phase_trivial(rt: Runtime, n: int) -> float:
    started = time.perf_counter()
    futures = [rt.submit(trivial, i) for i in range(n)]
    total = 0
    for future in futures:
        total += await future
    assert total == n * (n - 1) // 2
    return n / (time.perf_counter() - started)


async def phase_unawaited(rt: Runtime, n: int, size: int) -> tuple[float, float]:
    """Caller CPU per call (us) and RSS growth (MiB) for ``n`` values never awaited."""
    gc.collect()
    rss, cpu = rss_mib(), time.process_time()
    futures = [rt.submit(blob, size) for _ in range(n)]
    for future in futures:
        await future.wait()
    cpu_us = (time.process_time() - cpu) / n * 1e6
    grown = rss_mib() - rss
    del futures, future
    return cpu_us, grown


async def phase_threshold(rt: Runtime, size: int, n: int = 200) -> tuple[float, float]:
    """Wall ms and caller CPU us per awaited call of ``size`` bytes."""
    started, cpu = time.perf_counter(), time.process_time()
    futures = [rt.submit(blob, size) for _ in range(n)]
    values = await asyncio.gather(*(_value(f) for f in futures))
    assert all(len(v) == size for v in values)
    return (time.perf_counter() - started) / n * 1e3, (time.process_time() - cpu) / n * 1e6


async def _value(future: Any) -> Any:
    return await future


async def phase_memory(rt: Runtime) -> tuple[float, float]:
    gc.collect()
    before = rss_mib()
    futures = [rt.submit(blob, 5 * MIB) for _ in range(200)]
    for future in futures:
        await future.wait()
    held = rss_mib() - before
    assert len(await futures[0]) == 5 * MIB
    one = rss_mib() - before
    del futures, future
    return held, one


async def phase_chain(rt: Runtime) -> tuple[float, int]:
    other = rt.options(runtime_env={"env_vars": {"BENCH_SIDE": "b"}})
    gc.collect()
    before = rss_mib()
    fetched_before = rt._pool.fetcher.bytes_received if rt._pool else 0
    made = [rt.submit(blob, 50 * MIB) for _ in range(20)]  # kept, as a flow keeps futures
    lengths = [other.submit(length, m) for m in made]
    assert [await n for n in lengths] == [50 * MIB] * 20
    fetched = (rt._pool.fetcher.bytes_received if rt._pool else 0) - fetched_before
    return rss_mib() - before, fetched


async def alternate(
    repeat: int, run: Callable[[Runtime], Coroutine[Any, Any, Any]], supervisors: int = 1
) -> dict[str, list[Any]]:
    """``run(rt)`` on a runtime held and one inline, alternated ``repeat`` times."""
    results: dict[str, list[Any]] = {way: [] for way in WAYS}
    for _ in range(repeat):
        for way, hold in WAYS.items():
            async with Runtime(supervisors=supervisors, hold_results_above=hold) as rt:
                results[way].append(await run(rt))
    return results


def med(values: list[Any], index: int | None = None) -> float:
    return statistics.median(v if index is None else v[index] for v in values)


async def main(args: argparse.Namespace) -> None:
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    phases = set(args.phases.split(","))
    if "trivial" in phases:
        r = await alternate(args.repeat, lambda rt: phase_trivial(rt, args.n))
        a, b = med(r["held"]), med(r["inline"])
        print(
            f"trivial: {args.n:,} calls awaited: held default {a:,.0f}/s, inline {b:,.0f}/s"
            f" ({a / b:.2f}x)  [runs {[round(x) for x in r['held']]} | "
            f"{[round(x) for x in r['inline']]}]"
        )
    if "unawaited" in phases:
        r = await alternate(
            args.repeat, lambda rt: phase_unawaited(rt, args.unawaited, args.size), supervisors=2
        )
        a, b = med(r["held"], 0), med(r["inline"], 0)
        print(
            f"unawaited: {args.unawaited:,} calls of {args.size // 1024:,} KiB never awaited:"
            f" caller CPU per call held {a:,.0f} us, inline {b:,.0f} us ({b / a:.1f}x lower);"
            f" caller RSS growth held {med(r['held'], 1):,.0f} MiB, inline"
            f" {med(r['inline'], 1):,.0f} MiB"
        )
    if "threshold" in phases:
        for size in (16 * 1024, 64 * 1024, 256 * 1024, MIB, 4 * MIB):
            rows: dict[str, list[Any]] = {"held": [], "inline": []}
            for _ in range(args.repeat):
                for way, hold in (("held", 0), ("inline", None)):
                    async with Runtime(supervisors=1, hold_results_above=hold) as rt:
                        rows[way].append(await phase_threshold(rt, size))
            print(
                f"threshold: 200 awaited calls of {size // 1024:,} KiB: held"
                f" {med(rows['held'], 0):.2f} ms/call ({med(rows['held'], 1):,.0f} us CPU),"
                f" inline {med(rows['inline'], 0):.2f} ms/call"
                f" ({med(rows['inline'], 1):,.0f} us CPU)"
            )
    if "memory" in phases:
        r = await alternate(1, phase_memory, supervisors=2)
        print(
            f"memory: 200 x 5 MiB finished: caller RSS growth held {r['held'][0][0]:,.0f} MiB"
            f" (then {r['held'][0][1]:,.0f} MiB with one awaited), inline"
            f" {r['inline'][0][0]:,.0f} MiB"
        )
    if "chain" in phases:
        r = await alternate(1, phase_chain)
        print(
            f"chain: 20 x 50 MiB read by dependents on another supervisor: caller RSS growth"
            f" held {r['held'][0][0]:,.0f} MiB ({r['held'][0][1]:,} bytes fetched), inline"
            f" {r['inline'][0][0]:,.0f} MiB"
        )
    ray.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phases", default="trivial,unawaited,threshold,memory,chain")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--unawaited", type=int, default=2_000)
    parser.add_argument("--size", type=int, default=1 * MIB)
    parser.add_argument("--repeat", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
