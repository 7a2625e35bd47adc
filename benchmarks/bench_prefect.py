"""Benchmark Prefect task runners on async tasks, in one run.

An async flow submits N tasks, each ``await asyncio.sleep(delay)``, and waits for
all of them; the time from the first submit to the last result is measured inside
the flow. Runners compared:

* ``aioray``: ``AioRayTaskRunner`` (this library);
* ``ray``: prefect-ray's ``RayTaskRunner`` (about 0.25 s a task on 2 CPUs, so it
  runs at most ``--ray-n`` tasks by default; ratios then use per-task times);
* ``threadpool``: Prefect's ``ThreadPoolTaskRunner``;
* ``gather``: no runner, ``await asyncio.gather(*[t(i) for i in range(N)])``
  inside the flow: every task run goes through Prefect's engine on the flow's
  own loop, the floor Prefect itself sets.

One temporary Prefect server (``prefect_test_harness``: a temporary database)
and one Ray instance serve the whole run; both Ray runners use that Ray.

Usage::

    python benchmarks/bench_prefect.py                                 # N=1000
    python benchmarks/bench_prefect.py --n 100,200,1000 --ray-n 200
    python benchmarks/bench_prefect.py --n 1000 --runners aioray,gather --repeat 3
    python benchmarks/bench_prefect.py --skip-slow --json /tmp/prefect.json

Progress goes to stderr (a line per flow, a counter every second); the summary
table goes to stdout. Prefect's console logs are limited to warnings unless
``--prefect-logs`` is given (logs are still sent to the API as usual). Nothing is
written unless ``--json PATH`` is given.
"""

from __future__ import annotations

import os

# Before Ray or Prefect is imported.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import argparse
import asyncio
import platform
import statistics
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from _common import log, write_figures

RUNNERS = ("aioray", "ray", "threadpool", "gather")
SLOW_RUNNERS = ("ray",)
RUNNER_NAMES = {
    "aioray": "AioRayTaskRunner",
    "ray": "RayTaskRunner (prefect-ray)",
    "threadpool": "ThreadPoolTaskRunner",
    "gather": "asyncio.gather in flow",
}

# Counters the flows update and the progress thread prints. A plain dict: the
# flow is pickled into the context the Ray runners send to their workers.
COUNTERS: dict[str, int] = {"submitted": 0, "done": 0}


class Progress:
    """Prints COUNTERS to stderr every second from a thread, while a flow runs."""

    def __init__(self, label: str, total: int, interval: float = 1.0) -> None:
        self.label = label
        self.total = total
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.perf_counter()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            elapsed = time.perf_counter() - self._started
            log(
                f"    {self.label}: submitted {COUNTERS['submitted']}/{self.total},"
                f" done {COUNTERS['done']}/{self.total}, {elapsed:.0f} s"
            )

    def __enter__(self) -> Progress:
        COUNTERS["submitted"] = COUNTERS["done"] = 0
        self._started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- flows -------------------------------------------------------------------------------


def build_flows() -> tuple[Any, Any]:
    """The task and the two flows (built after Prefect's logging env is set)."""
    from prefect import flow, task

    @task
    async def sleepy(i: int, delay: float) -> int:
        await asyncio.sleep(delay)
        return i

    def collect_blocking(
        futures: list[Any], counters: dict[str, int], marks: dict[str, float]
    ) -> int:
        total = 0
        for future in futures:
            total += future.result()
            counters["done"] += 1
            marks.setdefault("first", time.perf_counter())
        return total

    @flow(name="bench-submit", validate_parameters=False)
    async def submit_flow(n: int, delay: float) -> dict[str, Any]:
        counters = COUNTERS
        marks: dict[str, float] = {}
        started = time.perf_counter()
        futures = []
        for i in range(n):
            futures.append(sleepy.submit(i, delay))
            counters["submitted"] += 1
        submitted = time.perf_counter()
        if all(hasattr(f, "__await__") for f in futures):
            collected_with = "await future"
            total = 0
            for future in futures:
                total += await future
                counters["done"] += 1
                marks.setdefault("first", time.perf_counter())
        else:
            # Sync futures: block a helper thread, not the flow's loop.
            collected_with = "future.result() in a thread"
            total = await asyncio.to_thread(collect_blocking, futures, counters, marks)
        finished = time.perf_counter()
        return {
            "started": started,
            "submit_s": submitted - started,
            "first_s": marks["first"] - started,
            "total_s": finished - started,
            "sum": total,
            "collected_with": collected_with,
        }

    @flow(name="bench-gather", validate_parameters=False)
    async def gather_flow(n: int, delay: float) -> dict[str, Any]:
        counters = COUNTERS
        marks: dict[str, float] = {}

        async def one(i: int) -> int:
            value = await sleepy(i, delay)
            counters["done"] += 1
            marks.setdefault("first", time.perf_counter())
            return value  # type: ignore[no-any-return]

        started = time.perf_counter()
        calls = [one(i) for i in range(n)]
        counters["submitted"] = n
        submitted = time.perf_counter()
        values = await asyncio.gather(*calls)
        finished = time.perf_counter()
        return {
            "started": started,
            "submit_s": submitted - started,
            "first_s": marks["first"] - started,
            "total_s": finished - started,
            "sum": sum(values),
            "collected_with": "asyncio.gather",
        }

    return submit_flow, gather_flow


def make_runner(name: str, args: argparse.Namespace) -> Any:
    if name == "aioray":
        from aioray_runner import AioRayTaskRunner

        return AioRayTaskRunner(supervisors=args.supervisors)
    if name == "ray":
        from prefect_ray import RayTaskRunner

        return RayTaskRunner()
    if name == "threadpool":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=args.threadpool_workers)
    raise ValueError(name)


async def run_one(
    flows: tuple[Any, Any], name: str, n: int, args: argparse.Namespace, label: str
) -> dict[str, Any]:
    submit_flow, gather_flow = flows
    if name == "gather":
        bench = gather_flow.with_options(name="bench-gather")
    else:
        bench = submit_flow.with_options(name=f"bench-{name}", task_runner=make_runner(name, args))
    with Progress(label, n):
        wall_started = time.perf_counter()
        result: dict[str, Any] = await bench(n, args.delay)
        wall = time.perf_counter() - wall_started
    expected = n * (n - 1) // 2
    if result["sum"] != expected:
        raise RuntimeError(f"{label}: wrong results (sum {result['sum']}, expected {expected})")
    result.update(
        n=n,
        flow_wall_s=wall,
        per_task_ms=1000 * result["total_s"] / n,
        setup_s=result["started"] - wall_started,
    )
    del result["started"], result["sum"]
    return result


def effective_n(name: str, n: int, args: argparse.Namespace) -> int:
    cap = args.caps.get(name)
    return min(n, cap) if cap else n


async def run(args: argparse.Namespace) -> dict[str, Any]:
    flows = build_flows()
    # results[runner][effective n] = list of runs (dicts), or an error string
    results: dict[str, dict[int, Any]] = {name: {} for name in args.runners}

    if args.warmup:
        for name in args.runners:
            label = f"warm-up {name} n={args.warmup}"
            log(f"== {label}")
            try:
                res = await run_one(flows, name, args.warmup, args, label)
                log(f"   {res['total_s']:.2f} s (flow wall {res['flow_wall_s']:.1f} s)")
            except Exception as exc:
                log(f"   FAILED: {type(exc).__name__}: {exc}")
                traceback.print_exc()

    for n in args.n:
        for name in args.runners:
            m = effective_n(name, n, args)
            if m in results[name]:
                log(f"== {name} n={n}: capped to {m}, already measured")
                continue
            runs: list[dict[str, Any]] = []
            for r in range(args.repeat):
                label = f"{name} n={m} [{r + 1}/{args.repeat}]"
                log(f"== {label}" + (f" (capped from {n})" if m != n else ""))
                try:
                    res = await run_one(flows, name, m, args, label)
                except Exception as exc:
                    log(f"   FAILED: {type(exc).__name__}: {exc}")
                    traceback.print_exc()
                    results[name][m] = f"{type(exc).__name__}: {exc}"
                    break
                runs.append(res)
                log(
                    f"   {res['total_s']:.2f} s ({res['per_task_ms']:.1f} ms a task;"
                    f" submit {res['submit_s']:.2f} s; flow wall {res['flow_wall_s']:.1f} s)"
                )
            else:
                results[name][m] = runs
    return results


# -- report -------------------------------------------------------------------------------


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def fmt_runs(runs: list[dict[str, Any]], key: str, fmt: str) -> str:
    values = [r[key] for r in runs]
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(min(values))} / {fmt.format(statistics.median(values))}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def report(
    args: argparse.Namespace, results: dict[str, dict[int, Any]], versions: dict[str, str]
) -> str:
    agg = "min / median" if args.repeat > 1 else "one run"
    out = [
        ", ".join(f"{k} {v}" for k, v in versions.items())
        + f"; {os.cpu_count()} CPUs; delay {args.delay} s; repeat {args.repeat} ({agg})",
        "total = first submit to last result, inside the flow; 1st result = first submit to"
        " the first result (start-up cost); flow wall = the flow call from outside (adds"
        " runner start/stop and the flow run's own API calls)",
    ]
    scaled_any = False
    for n in args.n:
        rows = []
        base_runs = results.get("aioray", {}).get(effective_n("aioray", n, args))
        base = base_runs if isinstance(base_runs, list) and base_runs else None
        for name in args.runners:
            m = effective_n(name, n, args)
            runs = results[name].get(m)
            if runs is None:
                continue
            if isinstance(runs, str):
                rows.append([RUNNER_NAMES[name], str(m), "FAILED", "", "", "", "", runs[:60]])
                continue
            if not runs:
                continue
            if name == "aioray":
                versus = "-"
            elif base is None:
                versus = "n/a"
            else:
                m_base = base[0]["n"]
                if m == m_base:
                    ratio = median_of(runs, "total_s") / median_of(base, "total_s")
                    versus = f"{ratio:.1f}x"
                else:
                    ratio = median_of(runs, "per_task_ms") / median_of(base, "per_task_ms")
                    versus = f"{ratio:.1f}x *"
                    scaled_any = True
            rows.append(
                [
                    RUNNER_NAMES[name],
                    str(m),
                    fmt_runs(runs, "total_s", "{:.2f}"),
                    fmt_runs(runs, "per_task_ms", "{:.2f}"),
                    fmt_runs(runs, "submit_s", "{:.2f}"),
                    fmt_runs(runs, "first_s", "{:.2f}"),
                    fmt_runs(runs, "flow_wall_s", "{:.1f}"),
                    versus,
                ]
            )
        if not rows:
            continue
        out += ["", f"N = {n}"]
        out.append(
            table(
                [
                    "runner",
                    "N run",
                    "total s",
                    "ms/task",
                    "submit s",
                    "1st result s",
                    "flow wall s",
                    "time vs AioRay",
                ],
                rows,
            )
        )
    out.append("")
    out.append(
        "time vs AioRay: the runner's median total time over AioRayTaskRunner's at the"
        " same N (2.0x = AioRay twice as fast)."
    )
    if scaled_any:
        out.append(
            "* the runner ran fewer tasks than AioRay (N capped): ratio of per-task times"
            " (total / N) instead, which flatters neither side exactly: a concurrent"
            " runner's per-task time falls as N grows."
        )
    collected = {
        name: {
            r["collected_with"] for runs in per_n.values() if isinstance(runs, list) for r in runs
        }
        for name, per_n in results.items()
    }
    out.append(
        "results collected with: "
        + "; ".join(f"{name}: {', '.join(sorted(c))}" for name, c in collected.items() if c)
    )
    return "\n".join(out)


# -- main ------------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 100,200: {text!r}")
    return values


def runner_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in RUNNERS]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"runners are {', '.join(RUNNERS)}: got {text!r}")
    return values


def cap(text: str) -> tuple[str, int]:
    name, _, value = text.partition("=")
    if name not in RUNNERS or not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected RUNNER=N with RUNNER in {RUNNERS}: {text!r}")
    return name, int(value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--n", type=int_list, default=[1000], help="tasks per flow; a list runs each, e.g. 100,1000"
    )
    parser.add_argument(
        "--runners", type=runner_list, default=list(RUNNERS), help="comma-separated subset"
    )
    parser.add_argument(
        "--ray-n",
        type=int,
        default=200,
        help="run RayTaskRunner with at most this many tasks (0: no cap)",
    )
    parser.add_argument(
        "--cap",
        type=cap,
        action="append",
        default=[],
        metavar="RUNNER=N",
        help="cap any runner's N (repeatable); overrides --ray-n for ray",
    )
    parser.add_argument("--skip-slow", action="store_true", help="leave out RayTaskRunner")
    parser.add_argument("--delay", type=float, default=0.1, help="each task's sleep, s")
    parser.add_argument("--repeat", type=int, default=1, help="timed flows per runner and N")
    parser.add_argument(
        "--warmup", type=int, default=4, help="tasks in one untimed flow per runner first (0: none)"
    )
    parser.add_argument(
        "--supervisors", type=int, default=None, help="AioRayTaskRunner(supervisors=...)"
    )
    parser.add_argument(
        "--threadpool-workers", type=int, default=None, help="ThreadPoolTaskRunner(max_workers=...)"
    )
    parser.add_argument("--num-cpus", type=int, default=2, help="ray.init(num_cpus=...)")
    parser.add_argument(
        "--server-grace",
        type=float,
        default=3.0,
        help="seconds to let the Prefect server flush events before stopping it",
    )
    parser.add_argument(
        "--prefect-logs", action="store_true", help="show Prefect's INFO logs on the console"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.skip_slow:
        args.runners = [r for r in args.runners if r not in SLOW_RUNNERS]
    if not args.runners:
        parser.error("no runner left to run")
    caps: dict[str, int] = {}
    if args.ray_n:
        caps["ray"] = args.ray_n
    caps.update(dict(args.cap))
    args.caps = {k: v for k, v in caps.items() if v > 0}
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.prefect_logs:
        # Console only (the API still receives the logs): 1000s of "Finished in
        # state Completed()" lines would bury the progress. Inherited by Ray workers.
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")

    started = time.perf_counter()
    log("== importing Prefect and Ray, starting a temporary Prefect server")
    import prefect
    import prefect_ray
    import ray
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    import aioray_runner

    versions = {
        "aioray-runner": aioray_runner.__version__,
        "prefect": prefect.__version__,
        "prefect-ray": getattr(prefect_ray, "__version__", "?"),
        "ray": ray.__version__,
        "Python": platform.python_version(),
    }
    with prefect_test_harness(server_startup_timeout=120):
        api_url = PREFECT_API_URL.value()
        # Ray workers inherit this environment: they reach the same server even
        # before a task's serialized settings are entered.
        os.environ["PREFECT_API_URL"] = api_url
        log(f"   Prefect server at {api_url} ({time.perf_counter() - started:.1f} s)")
        log(f"== starting Ray (num_cpus={args.num_cpus})")
        ray_started = time.perf_counter()
        ray.init(num_cpus=args.num_cpus, include_dashboard=False)
        log(f"   Ray up in {time.perf_counter() - ray_started:.1f} s")
        try:
            results = asyncio.run(run(args))
        finally:
            log("== shutting Ray down, stopping the Prefect server")
            ray.shutdown()
            # Let the server record the last events before it is stopped.
            time.sleep(args.server_grace)
    failed = any(isinstance(runs, str) for per_n in results.values() for runs in per_n.values())
    print(report(args, results, versions))
    log(f"== done in {time.perf_counter() - started:.0f} s")
    if args.json:
        figures = {
            name: {str(m): runs for m, runs in per_n.items()} for name, per_n in results.items()
        }
        write_figures(args.json, "bench_prefect", args, versions, results=figures)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
