"""Fault figures for ``Runtime``: a supervisor killed under load, and the watchdog's cost.

Measures, in one Ray instance:

* **Kill under load** (the scenario of docs/failures.md): ``Runtime(supervisors=2)``,
  ``--in-flight`` (1,000) calls sleeping, supervisor 0 SIGKILLed once at least
  ``--in-flight``/3 of its calls run, then ``--fresh`` (200) calls submitted at
  once. Prints how many of the fresh calls failed (the goal: none: they never
  started), how many of the calls in flight on the dead supervisor were lost
  (they had started: ``SupervisorDiedError``), how many were announced to the
  caller yet still waited (0 here: nothing waits on a cap), and the time from the
  kill to the last outcome.
* **Watchdog overhead**: ``--n`` (10,000) trivial coroutines through a
  ``Runtime(supervisors=1)`` with the blocked-loop watchdog on (the default
  threshold) and off, alternated ``--repeat`` (5) times in one run; prints the
  median of each and their ratio.

Usage::

    python benchmarks/bench_faults.py            # both
    python benchmarks/bench_faults.py --repeat 9 --json /tmp/faults.json

These are not tests: they print figures. The exit code is 1 only if a result
was wrong, or a call that never started was lost.
"""

from __future__ import annotations

import os

# Before Ray is imported: keep a local Ray on 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import argparse
import asyncio
import json
import signal
import statistics
import sys
import time
from typing import Any

import ray

from aioray_runner import Runtime, Settings, SupervisorDiedError

DEFAULT_BLOCKED_LOOP_THRESHOLD = Settings().blocked_loop_threshold


async def sleep_then_pid(seconds: float) -> int:
    await asyncio.sleep(seconds)
    return os.getpid()


async def inc(i: int) -> int:
    return i + 1


async def kill_under_load(in_flight: int, fresh: int) -> dict[str, Any]:
    """The issue's scenario; see the module docstring."""
    async with Runtime(supervisors=2) as rt:
        sleepers = [rt.submit(sleep_then_pid, 30) for _ in range(in_flight)]
        victim = next(i["pid"] for i in rt.supervisor_info() if i["index"] == 0)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            stats = {s["pid"]: s["running"] for s in await rt.stats()}
            if stats.get(victim, 0) >= in_flight // 3:
                break
            await asyncio.sleep(0.05)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        fresh_futures = [rt.submit(sleep_then_pid, 0.2) for _ in range(fresh)]
        on_victim = [f for f in sleepers if f.supervisor == 0]
        outcomes: dict[str, int] = {"fresh ok": 0, "fresh failed": 0, "lost": 0, "other": 0}
        for future in fresh_futures:
            await future.wait()
            ok = future.exception(0) is None and future.result(0) != victim
            outcomes["fresh ok" if ok else "fresh failed"] += 1
        for future in on_victim:
            await future.wait()
            error = future.exception(0)
            outcomes["lost" if isinstance(error, SupervisorDiedError) else "other"] += 1
        last_outcome_s = time.monotonic() - killed_at
        for future in sleepers:
            future.cancel()
    return {
        "in_flight": in_flight,
        "on_killed_supervisor": len(on_victim),
        "fresh": fresh,
        **outcomes,
        "last_outcome_s": round(last_outcome_s, 2),
    }


async def trivial_round(n: int, threshold: float | None) -> float:
    async with Runtime(supervisors=1, blocked_loop_threshold=threshold) as rt:
        await asyncio.gather(*rt.map(inc, range(200)))  # warm up
        started = time.perf_counter()
        results = [await f for f in rt.map(inc, range(n))]
        took = time.perf_counter() - started
    if results != [i + 1 for i in range(n)]:
        raise AssertionError("wrong results")
    return took


async def watchdog_overhead(n: int, repeat: int) -> dict[str, Any]:
    on: list[float] = []
    off: list[float] = []
    for _ in range(repeat):  # alternated, so drift on a noisy machine hits both
        on.append(await trivial_round(n, DEFAULT_BLOCKED_LOOP_THRESHOLD))
        off.append(await trivial_round(n, None))
    median_on, median_off = statistics.median(on), statistics.median(off)
    return {
        "n": n,
        "threshold_s": DEFAULT_BLOCKED_LOOP_THRESHOLD,
        "on_s": [round(t, 3) for t in on],
        "off_s": [round(t, 3) for t in off],
        "median_on_s": round(median_on, 3),
        "median_off_s": round(median_off, 3),
        "ratio_on_to_off": round(median_on / median_off, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-flight", type=int, default=1000)
    parser.add_argument("--fresh", type=int, default=200)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False)
    try:
        kill = asyncio.run(kill_under_load(args.in_flight, args.fresh))
        overhead = asyncio.run(watchdog_overhead(args.n, args.repeat))
    finally:
        ray.shutdown()

    print(f"\nKill under load: supervisor 0 of 2 SIGKILLed with {args.in_flight} calls in flight")
    print(f"  calls on the killed supervisor:   {kill['on_killed_supervisor']}")
    print(f"  of those, lost (had started):      {kill['lost']}  (other outcomes: {kill['other']})")
    print(f"  fresh calls submitted after:       {kill['fresh']}")
    print(f"  of those, failed:                  {kill['fresh failed']}  (goal: 0)")
    print(f"  kill to the last outcome:          {kill['last_outcome_s']} s")
    print(f"\nWatchdog overhead: {args.n:,} trivial coroutines, {args.repeat} rounds each")
    print(f"  on  (threshold {overhead['threshold_s']} s): median {overhead['median_on_s']} s")
    print(f"  off:                        median {overhead['median_off_s']} s")
    print(f"  ratio on/off: {overhead['ratio_on_to_off']} (goal: under 1.02)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"kill_under_load": kill, "watchdog": overhead}, f, indent=2)
    return 1 if kill["fresh failed"] or kill["other"] else 0


if __name__ == "__main__":
    sys.exit(main())
