"""Soak of repeated flows: does a long-running process that runs flow after flow, each
with a fresh ``AioRayTaskRunner``, stay flat?

A worker process (a Prefect worker, a service that calls flows) runs many flow
runs one after another. This runs ``--flows`` (50) of them in one process, on one
local Ray started once, each a small flow of ``--tasks`` (30) task runs (async
tasks, sync tasks in threads, one dependent), each under a new runner (Prefect
makes one per flow run). After each flow (and a ``gc.collect()``) it records the
process's RSS, threads, open file descriptors and child processes, the Ray
actors alive (named actors in every namespace: every supervisor is one), and
the Python threads by name.

"Flat" means: between flow ``--from`` (10) and the last, RSS grew by less than
5%, and threads, file descriptors, children and live actors did not grow at all.
The table shows every ``--every`` (5) flows; the verdict lines say flat or grew.

Usage::

    python benchmarks/bench_flow_soak.py                 # 50 flows
    python benchmarks/bench_flow_soak.py --flows 20 --from 5 --json /tmp/flow-soak.json

Not a test (tests/test_chaos.py runs a short soak): it prints figures. The exit
code is 1 if a flow did not complete or something leaked (actors, threads, file
descriptors or child processes grew); RSS growth is reported, not judged.
"""

from __future__ import annotations

import os

# Before Ray is imported: keep a local Ray on 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import argparse
import asyncio
import gc
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import ray
from _common import log, ray_instance, write_figures

import aioray_runner

MIB = 1024 * 1024


def snapshot() -> dict[str, Any]:
    """What a leak would grow, read after a gc."""
    gc.collect()
    me = psutil.Process()
    names = Counter(
        t.name.rstrip("0123456789_-") or "?" for t in threading.enumerate() if t.is_alive()
    )
    return {
        "rss_mib": round(me.memory_info().rss / MIB, 1),
        "threads": me.num_threads(),
        "python_threads": dict(names),
        "fds": me.num_fds(),
        "children": len(me.children(recursive=True)),
        "actors": len(ray.util.list_named_actors(all_namespaces=True)),
    }


def make_flow(tasks: int) -> Any:
    from prefect import flow, task

    from aioray_runner import AioRayTaskRunner

    @task
    async def fetch(i: int) -> int:
        await asyncio.sleep(0.05)
        return i

    @task
    def parse(i: int) -> int:
        time.sleep(0.01)
        return i * 2

    @task
    async def total(values: list[int]) -> int:
        return sum(values)

    @flow(task_runner=AioRayTaskRunner(), log_prints=False)
    def soak_flow() -> int:
        fetched = [fetch.submit(i) for i in range(tasks * 2 // 3)]
        parsed = [parse.submit(i) for i in range(tasks - len(fetched) - 1)]
        return total.submit([f.result() for f in fetched + parsed]).result()

    return soak_flow


def grew(rows: list[dict[str, Any]], start: int, key: str) -> float:
    return float(rows[-1][key] - rows[start][key])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=50)
    parser.add_argument("--tasks", type=int, default=30, help="task runs per flow")
    parser.add_argument("--from", dest="start", type=int, default=10, help="baseline flow")
    parser.add_argument("--every", type=int, default=5, help="table rows every N flows")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not 1 <= args.start < args.flows:
        parser.error("--from must be between 1 and --flows - 1")

    import logging

    # Each flow logs a few lines (Ray, supervisors, the flow's end): keep the table readable.
    logging.getLogger("prefect").setLevel(logging.WARNING)
    rows: list[dict[str, Any]] = []
    failed = 0
    with ray_instance(args.num_cpus):
        soak_flow = make_flow(args.tasks)
        expected = sum(range(args.tasks * 2 // 3)) + 2 * sum(
            range(args.tasks - args.tasks * 2 // 3 - 1)
        )
        rows.append({"flow": 0, "s": 0.0, **snapshot()})
        for n in range(1, args.flows + 1):
            started = time.monotonic()
            state = soak_flow(return_state=True)
            took = time.monotonic() - started
            ok = state.is_completed() and state.result() == expected
            failed += not ok
            rows.append({"flow": n, "s": round(took, 2), "ok": ok, **snapshot()})
            log(f"flow {n}/{args.flows}: {took:.1f} s, {'ok' if ok else state}, {rows[-1]}")

    print(f"\n{args.flows} flows of {args.tasks} task runs, each with a new AioRayTaskRunner")
    print(
        f"{'flow':>5} {'s':>6} {'RSS MiB':>8} {'threads':>8} {'fds':>5} {'children':>9}"
        f" {'actors':>7}"
    )
    for row in rows:
        if row["flow"] in (0, 1, args.start) or row["flow"] % args.every == 0:
            print(
                f"{row['flow']:>5} {row['s']:>6} {row['rss_mib']:>8} {row['threads']:>8}"
                f" {row['fds']:>5} {row['children']:>9} {row['actors']:>7}"
            )
    base, last = rows[args.start], rows[-1]
    rss_growth = (last["rss_mib"] - base["rss_mib"]) / base["rss_mib"]
    print(
        f"RSS from flow {args.start} to {args.flows}: {base['rss_mib']} -> {last['rss_mib']} MiB"
        f" ({rss_growth:+.1%}; {'flat' if abs(rss_growth) < 0.05 else 'grew'}: goal under 5%)"
    )
    leaks = {key: grew(rows, args.start, key) for key in ("threads", "fds", "children", "actors")}
    for key, delta in leaks.items():
        print(f"{key} from flow {args.start} to {args.flows}: {delta:+.0f}")
    if last["python_threads"] != base["python_threads"]:
        print(f"Python threads, flow {args.start}: {base['python_threads']}")
        print(f"Python threads, flow {args.flows}: {last['python_threads']}")
    print(f"flows not completed: {failed}")
    if args.json:
        write_figures(
            args.json,
            "bench_flow_soak",
            args,
            {"aioray_runner": aioray_runner.__version__, "ray": ray.__version__},
            rows=rows,
            rss_growth=rss_growth,
            leaks=leaks,
        )
    return 1 if failed or any(delta > 0 for delta in leaks.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
