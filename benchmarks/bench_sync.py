"""Benchmark sync (``def``) Prefect tasks under three runners, both kinds in one run.

Two scenarios, each a sync flow that submits every task, then collects every
result with ``future.result()``; the time from the first submit to the last
result is measured inside the flow:

* ``io``: N tasks (100 by default) that each ``time.sleep(0.1)``, like a
  request or a query: they wait, they do not compute;
* ``cpu``: 8 tasks that each keep a core busy for about 1 s (pure Python).

Runners: ``aioray`` (``AioRayTaskRunner`` with its defaults: sync tasks in
threads of a supervisor until one shows it is CPU-bound, then as Ray tasks),
``aioray-remote`` (the ``cpu`` tasks submitted inside
``remote_options(num_cpus=1)``: told, not learned), ``aioray-threads``
(``sync_tasks="threads"``: the ``cpu`` tasks kept in threads of one supervisor),
prefect-ray's ``RayTaskRunner`` and Prefect's ``ThreadPoolTaskRunner``. One
temporary Prefect API and one Ray instance serve the whole run.

Usage::

    python benchmarks/bench_sync.py
    python benchmarks/bench_sync.py --io-n 200 --repeat 3 --json /tmp/sync.json

Progress goes to stderr; the tables go to stdout.
"""

from __future__ import annotations

import os

# Before Ray or Prefect is imported.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _common import log, write_figures

RUNNER_NAMES = {
    "aioray": "AioRayTaskRunner",
    "aioray-2": "AioRayTaskRunner, 2 supervisors",
    "aioray-remote": "AioRayTaskRunner, remote_options(num_cpus=1)",
    "aioray-threads": "AioRayTaskRunner(sync_tasks='threads')",
    "ray": "RayTaskRunner (prefect-ray)",
    "threadpool": "ThreadPoolTaskRunner",
}
SCENARIO_RUNNERS = {
    "io": ("aioray", "aioray-threads", "ray", "threadpool"),
    "cpu": ("aioray", "aioray-remote", "aioray-threads", "ray", "threadpool"),
}


def busy(seconds: float) -> int:
    """Keep this thread on the CPU for about ``seconds`` of its own CPU time."""
    end = time.thread_time() + seconds
    count = 0
    while time.thread_time() < end:
        count += 1
    return count


def build_flow() -> Any:
    from prefect import flow, task

    from aioray_runner import remote_options

    @task
    def wait_io(i: int, delay: float) -> int:
        time.sleep(delay)
        return i

    @task
    def compute(i: int, seconds: float) -> int:
        busy(seconds)
        return i

    @flow(name="bench-sync", validate_parameters=False)
    def bench(scenario: str, n: int, size: float, own_core: bool) -> dict[str, float]:
        the_task = wait_io if scenario == "io" else compute
        started = time.perf_counter()
        if own_core:
            with remote_options(num_cpus=1):
                futures = [the_task.submit(i, size) for i in range(n)]
        else:
            futures = [the_task.submit(i, size) for i in range(n)]
        total = sum(f.result() for f in futures)
        elapsed = time.perf_counter() - started
        if total != n * (n - 1) // 2:
            raise RuntimeError(f"wrong results: {total}")
        return {"total_s": elapsed}

    return bench


def make_runner(name: str) -> Any:
    if name.startswith("aioray"):
        from aioray_runner import AioRayTaskRunner

        sync_tasks = "threads" if name == "aioray-threads" else "auto"
        supervisors = 2 if name == "aioray-2" else None
        return AioRayTaskRunner(supervisors=supervisors, sync_tasks=sync_tasks)
    if name == "ray":
        from prefect_ray import RayTaskRunner

        return RayTaskRunner()
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner()


def run(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    bench = build_flow()
    sizes = {"io": (args.io_n, args.io_delay), "cpu": (args.cpu_n, args.cpu_seconds)}
    results: dict[str, dict[str, list[float]]] = {}
    for scenario in args.scenarios:
        n, size = sizes[scenario]
        results[scenario] = {}
        names = SCENARIO_RUNNERS[scenario]
        if args.two_supervisors and scenario == "io":
            names = ("aioray", "aioray-2", *names[1:])
        for name in names:
            flow = bench.with_options(task_runner=make_runner(name))
            own_core = scenario == "cpu" and name == "aioray-remote"
            # One untimed run first: start-up (imports, first workers) is not per task.
            flow(scenario, 2, size / 10, own_core)
            times = []
            for r in range(args.repeat):
                log(f"== {scenario}: {name} n={n} [{r + 1}/{args.repeat}]")
                figures = flow(scenario, n, size, own_core)
                times.append(figures["total_s"])
                log(
                    f"   {figures['total_s']:.2f} s ({1000 * figures['total_s'] / n:.1f} ms a task)"
                )
            results[scenario][name] = times
    return results


def report(args: argparse.Namespace, results: dict[str, dict[str, list[float]]]) -> str:
    out = [f"{platform.python_version()}, {os.cpu_count()} CPUs, repeat {args.repeat} (median)"]
    sizes = {
        "io": f"{args.io_n} sync tasks, each time.sleep({args.io_delay})",
        "cpu": f"{args.cpu_n} sync tasks, each {args.cpu_seconds} s of CPU",
    }
    for scenario, by_runner in results.items():
        n = args.io_n if scenario == "io" else args.cpu_n
        base = statistics.median(by_runner["aioray"])
        out += ["", f"{scenario}: {sizes[scenario]}"]
        out.append(f"{'runner':40} {'total s':>9} {'ms/task':>9} {'time vs AioRay':>15}")
        for name, times in by_runner.items():
            median = statistics.median(times)
            versus = "-" if name == "aioray" else f"{median / base:.2f}x"
            out.append(
                f"{RUNNER_NAMES[name]:40} {median:9.2f} {1000 * median / n:9.1f} {versus:>15}"
            )
    out += [
        "",
        "time vs AioRay: the runner's median time over AioRayTaskRunner's in the same run"
        " (2.00x = AioRay twice as fast). AioRayTaskRunner runs with its defaults: sync"
        " tasks in threads until one shows it is CPU-bound, then as Ray tasks; the"
        " remote_options row tells it so up front, the sync_tasks='threads' row keeps"
        " them in threads of one supervisor.",
    ]
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--scenarios", default="io,cpu", help="comma-separated: io, cpu")
    parser.add_argument("--io-n", type=int, default=100, help="tasks in the io scenario")
    parser.add_argument("--io-delay", type=float, default=0.1, help="each io task's sleep, s")
    parser.add_argument("--cpu-n", type=int, default=8, help="tasks in the cpu scenario")
    parser.add_argument("--cpu-seconds", type=float, default=1.0, help="CPU per cpu task, s")
    parser.add_argument("--repeat", type=int, default=1, help="timed flows per runner")
    parser.add_argument(
        "--two-supervisors",
        action="store_true",
        help="io: also run AioRayTaskRunner(supervisors=2), sync tasks spread over two processes",
    )
    parser.add_argument("--num-cpus", type=int, default=2, help="ray.init(num_cpus=...)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if bad := [s for s in args.scenarios if s not in SCENARIO_RUNNERS]:
        parser.error(f"unknown scenario(s) {bad}: choose from io, cpu")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import ray
    from prefect.testing.utilities import prefect_test_harness

    log(f"== starting Ray (num_cpus={args.num_cpus}) and a temporary Prefect API")
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False)
    try:
        with prefect_test_harness():
            results = run(args)
    finally:
        ray.shutdown()
    print(report(args, results))
    if args.json:
        import prefect

        import aioray_runner

        versions = {
            "aioray_runner": aioray_runner.__version__,
            "prefect": prefect.__version__,
            "ray": ray.__version__,
            "python": platform.python_version(),
        }
        write_figures(args.json, "bench_sync", args, versions, results=results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
