"""Benchmark Prefect task runners on async tasks, in one run.

An async flow submits N tasks, each ``await asyncio.sleep(delay)``, and waits for
all of them; the time from the first submit to the last result is measured inside
the flow. This is the ``prefect.fanout`` scenario of ``aioray-runner bench``
(same flow: ``aioray_runner/_tools/bench/flows.py``) with the knobs a study needs: a
list of N, repeats, caps, supervisors, thread-pool size. Runners compared:

* ``aioray``: ``AioRayTaskRunner`` (this library);
* ``ray``: prefect-ray's ``RayTaskRunner`` (about 0.25 s a task on 2 CPUs, so it
  runs at most ``--ray-n`` tasks by default; ratios then use per-task times);
* ``threadpool``: Prefect's ``ThreadPoolTaskRunner``;
* ``dask``: prefect-dask's ``DaskTaskRunner`` (when installed; a local cluster);
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
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from _common import log, write_figures

from aioray_runner._tools.bench.common import Progress, local_ray, quiet_environment
from aioray_runner._tools.bench.common import table as _table
from aioray_runner._tools.bench.flows import RUNNERS as ALL_RUNNERS

RUNNERS = tuple(ALL_RUNNERS)
SLOW_RUNNERS = ("ray", "dask")
RUNNER_NAMES = {name: label for name, (label, _) in ALL_RUNNERS.items()}


# -- runs ----------------------------------------------------------------------------------


async def run_one(name: str, n: int, args: argparse.Namespace, label: str) -> dict[str, Any]:
    """One flow of ``n`` sleeps under the runner ``name``.

    The flow: ``aioray_runner._tools.bench.flows``.
    """
    from aioray_runner._tools.bench.flows import run_runner

    plan = {"delay": args.delay, "fanout": n, "warmup": args.warmup}
    with Progress(1, quiet_interval=1.0) as progress:
        progress.start_step(label, n + args.warmup + 2)
        figures = await run_runner(
            name,
            plan,
            num_cpus=args.num_cpus,
            supervisors=args.supervisors,
            threadpool_workers=args.threadpool_workers,
        )
        result: dict[str, Any] = figures["fanout"]
        progress.end_step(f"{result['total_s']:.2f} s")
    result["flow_wall_s"] = figures["flow_wall_s"]
    result["collected_with"] = "asyncio.gather" if name == "gather" else "the runner's futures"
    return result


def effective_n(name: str, n: int, args: argparse.Namespace) -> int:
    cap = args.caps.get(name)
    return min(n, cap) if cap else n


async def run(args: argparse.Namespace) -> dict[str, Any]:
    # results[runner][effective n] = list of runs (dicts), or an error string
    results: dict[str, dict[int, Any]] = {name: {} for name in args.runners}
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
                    res = await run_one(name, m, args, label)
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


table = _table


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
    parser.add_argument(
        "--skip-slow", action="store_true", help="leave out RayTaskRunner and DaskTaskRunner"
    )
    parser.add_argument("--delay", type=float, default=0.1, help="each task's sleep, s")
    parser.add_argument("--repeat", type=int, default=1, help="timed flows per runner and N")
    parser.add_argument(
        "--warmup", type=int, default=4, help="untimed tasks at the start of each flow (0: none)"
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
    if args.prefect_logs:
        os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "INFO"
    quiet_environment()  # else Prefect's console shows warnings only (the API gets all)
    from aioray_runner._tools.bench.flows import missing_runners
    from aioray_runner._tools.bench.suite import prefect_api

    for name, reason in missing_runners(args.runners).items():
        log(f"   left out {name}: {reason}")
        args.runners.remove(name)
    started = time.perf_counter()
    import aioray_runner
    from aioray_runner._tools.bench.common import versions as installed

    found = installed("prefect", "prefect-ray", "prefect-dask", "ray")
    versions = {
        "aioray-runner": aioray_runner.__version__,
        **{name: v for name, v in found.items() if v is not None},
    }
    with (
        prefect_api(True, grace=args.server_grace),
        local_ray(args.num_cpus, log_to_driver=args.prefect_logs),
    ):
        results = asyncio.run(run(args))
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
