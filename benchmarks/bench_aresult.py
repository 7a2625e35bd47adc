"""What ``aresult`` costs beside ``await future``: collecting results of finished task runs.

A flow maps a trivial async task over N items, waits until every run has
finished, then collects the N results several ways, timing each (per future, in
microseconds; the median of the repeats):

* under ``AioRayTaskRunner``: ``await f`` each, ``await aresult(f)`` each, and
  ``await aresults(futures)``;
* under Prefect's ``ThreadPoolTaskRunner``: ``f.result()`` each (blocking the
  flow's loop, what ``aresult`` avoids), ``await aresult(f)`` each (a worker
  thread per call) and ``await aresults(futures)`` (the same, in turn).

The runs have finished before timing starts, so the figures are the cost of the
collecting alone; a run still in flight costs its run time on top, whatever the
spelling. Figures go to stdout; nothing is written. docs/guide.md ("Type
checking") quotes a run.

Usage::

    python benchmarks/bench_aresult.py            # N=2000, 5 repeats
    python benchmarks/bench_aresult.py --n 500 --repeat 3
"""

from __future__ import annotations

import os

# Before Ray or Prefect is imported.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
os.environ.pop("RAY_ADDRESS", None)  # a temporary local Ray of its own

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prefect import flow, task
from prefect.futures import PrefectFuture, wait
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.testing.utilities import prefect_test_harness

from aioray_runner import AioRayTaskRunner, aresult, aresults

Futures = list[PrefectFuture[Any]]


@task
async def echo(i: int) -> int:
    """Returns at once: the run's own time is not what is measured."""
    return i


async def each_awaited(futures: Futures) -> list[Any]:
    return [await f for f in futures]  # type: ignore[misc]  # ours are awaitable


async def each_aresult(futures: Futures) -> list[Any]:
    return [await aresult(f) for f in futures]


async def all_aresults(futures: Futures) -> list[Any]:
    return await aresults(futures)


async def each_result_blocking(futures: Futures) -> list[Any]:
    return [f.result() for f in futures]


AIORAY_WAYS = {"await f": each_awaited, "aresult(f)": each_aresult, "aresults": all_aresults}
THREADPOOL_WAYS = {
    "f.result() (blocks)": each_result_blocking,
    "aresult(f)": each_aresult,
    "aresults": all_aresults,
}


async def _measure(
    n: int, repeat: int, ways: dict[str, Callable[[Futures], Awaitable[list[Any]]]]
) -> dict[str, float]:
    futures: Futures = list(echo.map(range(n)))
    wait(futures)  # every run has finished before timing starts
    await all_aresults(futures)  # once untimed: each future caches its final state
    samples: dict[str, list[float]] = {way: [] for way in ways}
    for _ in range(repeat):
        for way, collect in ways.items():
            started = time.perf_counter()
            values = await collect(futures)
            samples[way].append((time.perf_counter() - started) / n * 1e6)
            assert values == list(range(n)), way
    return {way: statistics.median(figures) for way, figures in samples.items()}


@flow(task_runner=AioRayTaskRunner(init_kwargs={"include_dashboard": False}))
async def on_aioray(n: int, repeat: int) -> dict[str, float]:
    return await _measure(n, repeat, AIORAY_WAYS)


@flow(task_runner=ThreadPoolTaskRunner(max_workers=8))  # type: ignore[arg-type]
async def on_threadpool(n: int, repeat: int) -> dict[str, float]:
    return await _measure(n, repeat, THREADPOOL_WAYS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=2000, help="task runs (default 2000)")
    parser.add_argument("--repeat", type=int, default=5, help="repeats (default 5)")
    args = parser.parse_args()
    with prefect_test_harness():
        for runner, run in (
            ("AioRayTaskRunner", on_aioray),
            ("ThreadPoolTaskRunner", on_threadpool),
        ):
            figures = asyncio.run(run(args.n, args.repeat))
            for way, micros in figures.items():
                print(f"{runner:22} {way:20} {micros:8.1f} us per future")


if __name__ == "__main__":
    main()
