"""Benchmark the core runtime against a plain async Ray actor, in one Ray instance.

Measures, in one run:

* throughput: N trivial coroutines (``async def noop(i): return i``) through a
  plain async actor called once per coroutine, and through ``Runtime``;
* latency under load: N coroutines that each ``await asyncio.sleep(delay)``,
  wall time from the first submit to the last result, both ways;
* memory: RSS of the caller and of the supervisors at start (after a warm-up),
  at the peak with N calls in flight, and after the calls are done and their
  futures dropped (the supervisors should give the memory back).

``aioray-runner bench --scenario core`` runs the first two (and one-call latency)
with the same code (``aioray_runner/_tools/bench/core.py``); this script adds supervisor
counts, repeats, allocators and the memory phase.

Usage::

    python benchmarks/bench_runtime.py                      # N=10,000, 1 supervisor
    python benchmarks/bench_runtime.py --supervisors 1,2 --repeat 3
    python benchmarks/bench_runtime.py --n 2000 --phases throughput,memory --json /tmp/rt.json

Progress goes to stderr (a line per phase, a counter every second); the summary
table goes to stdout. Nothing is written unless ``--json PATH`` is given.
"""

from __future__ import annotations

import os

# Before Ray is imported: keep a local Ray on 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import argparse
import asyncio
import gc
import itertools
import platform
import resource
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import ray
from _common import log, ray_instance, write_figures

import aioray_runner
from aioray_runner import Runtime
from aioray_runner._tools.bench.common import COUNTERS, Progress, table
from aioray_runner._tools.bench.core import (
    actor_run,
    check_sum,
    plain_actor,
    runtime_run,
    sleep_then,
    warm_up,
)

MIB = 1024 * 1024


@contextmanager
def step(label: str, n: int) -> Iterator[None]:
    """Progress on stderr for one measurement of ``n`` calls (a counter every second)."""
    with Progress(1, quiet_interval=1.0) as progress:
        progress.start_step(label, n)
        started = time.perf_counter()
        yield
        progress.end_step(f"{time.perf_counter() - started:.2f} s")


# -- memory helpers --------------------------------------------------------------------------


def caller_rss() -> int:
    return int(psutil.Process().memory_info().rss)


def caller_peak_rss() -> int:
    """VmHWM of this process (since the last reset_caller_peak), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_caller_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def mib(n: float) -> str:
    return f"{n / MIB:.1f}"


# -- measurements --------------------------------------------------------------------------


def _sum_stats(stats: list[dict[str, Any]], key: str) -> int:
    return sum(int(s.get(key, 0)) for s in stats)


#: The supervisors' allocator (``--allocators``): CPython's own (pymalloc, the
#: default) or the C library's, chosen with PYTHONMALLOC in the actor's environment.
ALLOCATORS = {
    "pymalloc": {},
    "malloc": {"runtime_env": {"env_vars": {"PYTHONMALLOC": "malloc"}}},
}


async def memory_run(
    supervisors: int, n: int, hold_s: float, warmup: int, label: str, allocator: str = "pymalloc"
) -> dict[str, Any]:
    """Supervisor and caller RSS: at start, with N calls in flight, and after release.

    Two rounds on the same runtime: the first starts cold (after a small
    warm-up); the second starts where the first ended, which shows whether
    memory keeps growing from round to round or comes back to its level.
    """
    async with Runtime(supervisors=supervisors, actor_options=ALLOCATORS[allocator]) as rt:
        await warm_up(rt, warmup)
        first = await _memory_round(rt, n, hold_s, f"{label} round 1")
        second = await _memory_round(rt, n, hold_s, f"{label} round 2")
    result = dict(first)
    result["round2"] = {
        key: second[key]
        for key in (
            "supervisor_start_rss",
            "supervisor_peak_rss_sampled",
            "supervisor_after_rss",
            "after_over_start",
            "calls_held_after",
        )
    }
    return result


async def _memory_round(rt: Runtime, n: int, hold_s: float, label: str) -> dict[str, Any]:
    gc.collect()
    await asyncio.sleep(1.0)  # let earlier releases reach the supervisors
    start_stats = await rt.stats(collect=True)
    peak_reset = reset_caller_peak()
    caller_start = caller_rss()

    samples: list[dict[str, Any]] = []
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            stats = await rt.stats()
            samples.append(
                {
                    "t": time.perf_counter(),
                    "rss_bytes": _sum_stats(stats, "rss_bytes"),
                    "per_supervisor_rss": [s["rss_bytes"] for s in stats],
                    "running": _sum_stats(stats, "running"),
                    "calls_held": _sum_stats(stats, "calls_held"),
                    "caller_rss": caller_rss(),
                }
            )
            try:
                await asyncio.wait_for(stop.wait(), 0.2)
            except TimeoutError:
                pass

    with step(label, n):
        started = time.perf_counter()
        futures = []
        for i in range(n):
            futures.append(rt.submit(sleep_then, i, hold_s))
            COUNTERS.submitted += 1
        sampler = asyncio.create_task(sample())
        total = 0
        for future in futures:
            total += await future
            COUNTERS.done += 1
        finished = time.perf_counter()
        stop.set()
        await sampler
    check_sum(label, total, n)

    done_stats = await rt.stats()
    caller_done = caller_rss()
    # VmHWM is updated lazily: take the largest of it and what was sampled.
    caller_peak = max(
        caller_peak_rss(),
        caller_start,
        caller_done,
        *(s["caller_rss"] for s in samples),
    )
    del futures, future
    gc.collect()
    await asyncio.sleep(1.0)  # the runtime sends releases every 0.2 s
    after_stats = await rt.stats(collect=True)
    caller_after = caller_rss()

    start_rss = _sum_stats(start_stats, "rss_bytes")
    after_rss = _sum_stats(after_stats, "rss_bytes")
    sampled_peak = max((s["rss_bytes"] for s in samples), default=0)
    return {
        "n": n,
        "supervisors": len(start_stats),
        "hold_s": hold_s,
        "wall_s": finished - started,
        "supervisor_start_rss": start_rss,
        "supervisor_peak_rss_sampled": sampled_peak,
        "supervisor_peak_rss_hwm": _sum_stats(after_stats, "peak_rss_bytes"),
        "supervisor_done_rss": _sum_stats(done_stats, "rss_bytes"),
        "supervisor_after_rss": after_rss,
        "after_over_start": after_rss / start_rss if start_rss else float("nan"),
        "max_running_sampled": max((s["running"] for s in samples), default=0),
        "calls_held_done": _sum_stats(done_stats, "calls_held"),
        "calls_held_after": _sum_stats(after_stats, "calls_held"),
        "caller_start_rss": caller_start,
        "caller_peak_rss": caller_peak,
        "caller_peak_is_since_start": peak_reset,
        "caller_done_rss": caller_done,
        "caller_after_rss": caller_after,
        "samples": len(samples),
        "stats_start": start_stats,
        "stats_after": after_stats,
    }


# -- the run ---------------------------------------------------------------------------------


PHASES = ("throughput", "sleep", "memory")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"throughput": {}, "sleep": {}, "memory": {}}
    n, repeat = args.n, args.repeat

    if not args.skip_actor and {"throughput", "sleep"} & set(args.phases):
        log("== plain async actor (max_concurrency=1000), one call per coroutine")
        actor = plain_actor(max_concurrency=1000)
        for r in range(repeat):
            tag = f"[{r + 1}/{repeat}]"
            if "throughput" in args.phases:
                with step(f"actor noop {tag}", n):
                    res = await actor_run(actor, n, None, f"actor noop {tag}")
                results["throughput"].setdefault("actor", []).append(res)
                log(f"  actor noop {tag}: {res['total_s']:.2f} s, {res['per_s']:,.0f}/s")
            if "sleep" in args.phases:
                with step(f"actor sleep {tag}", n):
                    res = await actor_run(actor, n, args.delay, f"actor sleep {tag}")
                results["sleep"].setdefault("actor", []).append(res)
                log(f"  actor sleep {tag}: {res['total_s']:.2f} s")
        ray.kill(actor)

    for k, allocator in itertools.product(args.supervisors, args.allocators):
        key = f"runtime_{k}_{allocator}"
        if {"throughput", "sleep"} & set(args.phases):
            name = f"Runtime({k}, {allocator})"
            log(f"== Runtime(supervisors={k}), {allocator}")
            async with Runtime(supervisors=k, actor_options=ALLOCATORS[allocator]) as rt:
                await warm_up(rt, args.warmup)
                for r in range(repeat):
                    tag = f"[{r + 1}/{repeat}]"
                    if "throughput" in args.phases:
                        with step(f"{name} noop {tag}", n):
                            res = await runtime_run(rt, n, None, f"{name} noop {tag}")
                        results["throughput"].setdefault(key, []).append(res)
                        log(f"  {name} noop {tag}: {res['total_s']:.2f} s, {res['per_s']:,.0f}/s")
                    if "sleep" in args.phases:
                        with step(f"{name} sleep {tag}", n):
                            res = await runtime_run(rt, n, args.delay, f"{name} sleep {tag}")
                        results["sleep"].setdefault(key, []).append(res)
                        log(f"  {name} sleep {tag}: {res['total_s']:.2f} s")
        if "memory" in args.phases:
            log(
                f"== memory, Runtime(supervisors={k}), {allocator}:"
                f" {args.mem_n} sleeps of {args.hold}s"
            )
            for r in range(repeat):
                tag = f"[{r + 1}/{repeat}]"
                res = await memory_run(
                    k, args.mem_n, args.hold, args.warmup, f"memory({k}) {tag}", allocator
                )
                results["memory"].setdefault(key, []).append(res)
                log(
                    f"  memory({k}, {allocator}) {tag}: supervisors start"
                    f" {mib(res['supervisor_start_rss'])} MiB,"
                    f" peak {mib(res['supervisor_peak_rss_sampled'])} MiB,"
                    f" after {mib(res['supervisor_after_rss'])} MiB"
                    f" ({res['after_over_start']:.3f}x), calls_held {res['calls_held_after']}"
                )
    return results


# -- report ----------------------------------------------------------------------------------


def stat(values: list[float]) -> tuple[float, float]:
    return min(values), statistics.median(values)


def fmt_pair(values: list[float], fmt: str = "{:.2f}") -> str:
    lo, med = stat(values)
    if len(values) == 1:
        return fmt.format(med)
    return f"{fmt.format(lo)} / {fmt.format(med)}"


def path_name(key: str) -> str:
    if key == "actor":
        return "plain actor (1 call/coroutine)"
    _, k, *allocator = key.split("_")
    name = f"Runtime, {k} supervisor{'s' if k != '1' else ''}"
    return f"{name}, {allocator[0]}" if allocator else name


def report(args: argparse.Namespace, results: dict[str, Any]) -> str:
    out: list[str] = []
    agg = "min / median" if args.repeat > 1 else "one run"
    out.append(
        f"aioray-runner {aioray_runner.__version__}, ray {ray.__version__},"
        f" Python {platform.python_version()}, {os.cpu_count()} CPUs;"
        f" N={args.n}, repeat={args.repeat} ({agg})"
    )

    for phase, title in (
        ("throughput", f"Throughput: {args.n} trivial coroutines (`async def noop(i): return i`)"),
        ("sleep", f"Latency: {args.n} coroutines each `await asyncio.sleep({args.delay})`"),
    ):
        runs = results[phase]
        if not runs:
            continue
        out += ["", title, "(wall = first submit to last result)"]
        rows = []
        for key, res in runs.items():
            rows.append(
                [
                    path_name(key),
                    fmt_pair([r["total_s"] for r in res]),
                    fmt_pair([r["submit_s"] for r in res]),
                    fmt_pair([r["per_s"] for r in res], "{:,.0f}"),
                ]
            )
        out.append(table(["path", "wall s", "submit s", "coroutines/s"], rows))
        if "actor" in runs:
            actor_med = statistics.median(r["total_s"] for r in runs["actor"])
            for key, res in runs.items():
                if key == "actor":
                    continue
                med = statistics.median(r["total_s"] for r in res)
                out.append(
                    f"  {path_name(key)} vs plain actor: {actor_med / med:.1f}x faster"
                    f" (median wall times)"
                )
        if phase == "sleep" and args.n == 10_000:
            for key, res in runs.items():
                if key != "actor":
                    med = statistics.median(r["total_s"] for r in res)
                    goal = "meets" if med < 1.0 else "MISSES"
                    out.append(f"  {path_name(key)}: {goal} the goal of < 1 s for 10,000")

    mem = results["memory"]
    if mem:
        out += [
            "",
            f"Memory: {args.mem_n} calls each sleeping {args.hold} s, all in flight"
            f" (a fresh Runtime per run, warm-up {args.warmup} calls)",
            "supervisors' RSS summed over supervisors, MiB; after = futures dropped,"
            " gc in caller, 1 s wait, stats(collect=True)",
        ]
        rows = []
        for key, res in mem.items():
            rows.append(
                [
                    path_name(key),
                    fmt_pair([r["supervisor_start_rss"] / MIB for r in res], "{:.1f}"),
                    fmt_pair([r["supervisor_peak_rss_sampled"] / MIB for r in res], "{:.1f}"),
                    fmt_pair([r["supervisor_peak_rss_hwm"] / MIB for r in res], "{:.1f}"),
                    fmt_pair([r["supervisor_after_rss"] / MIB for r in res], "{:.1f}"),
                    fmt_pair([r["after_over_start"] for r in res], "{:.3f}"),
                    fmt_pair([r["max_running_sampled"] for r in res], "{:.0f}"),
                    fmt_pair([r["calls_held_after"] for r in res], "{:.0f}"),
                ]
            )
        out.append(
            table(
                [
                    "supervisors",
                    "start",
                    "peak (sampled)",
                    "peak (VmHWM)",
                    "after",
                    "after/start",
                    "max running",
                    "calls_held after",
                ],
                rows,
            )
        )
        for key, res in mem.items():
            ratio = statistics.median(r["after_over_start"] for r in res)
            verdict = "within" if ratio <= 1.10 else "ABOVE"
            out.append(
                f"  {path_name(key)}, round 1 (cold start): after/start {ratio:.3f},"
                f" {verdict} the 10% goal"
            )
            second = [r["round2"] for r in res if "round2" in r]
            if second:
                ratio2 = statistics.median(r["after_over_start"] for r in second)
                verdict2 = "within" if ratio2 <= 1.10 else "ABOVE"
                start2 = statistics.median(r["supervisor_start_rss"] / MIB for r in second)
                peak2 = statistics.median(r["supervisor_peak_rss_sampled"] / MIB for r in second)
                after2 = statistics.median(r["supervisor_after_rss"] / MIB for r in second)
                held2 = max(r["calls_held_after"] for r in second)
                out.append(
                    f"  {path_name(key)}, round 2 (same runtime): start {start2:.1f}, peak"
                    f" {peak2:.1f}, after {after2:.1f} MiB: after/start {ratio2:.3f},"
                    f" {verdict2} the 10% goal; calls_held after {held2}"
                )
        out += ["", "Caller process RSS, MiB"]
        rows = []
        for key, res in mem.items():
            rows.append(
                [
                    path_name(key),
                    fmt_pair([r["caller_start_rss"] / MIB for r in res], "{:.1f}"),
                    fmt_pair([r["caller_peak_rss"] / MIB for r in res], "{:.1f}"),
                    fmt_pair([r["caller_done_rss"] / MIB for r in res], "{:.1f}"),
                    fmt_pair([r["caller_after_rss"] / MIB for r in res], "{:.1f}"),
                ]
            )
        out.append(table(["run", "start", "peak", "results in hand", "after"], rows))
        if not all(r["caller_peak_is_since_start"] for res in mem.values() for r in res):
            out.append("  (peak is the process's lifetime peak: VmHWM could not be reset)")
    return "\n".join(out)


# -- main ------------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,2: {text!r}")
    return values


def phase_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in PHASES]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"phases are {', '.join(PHASES)}: got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--n", type=int, default=10_000, help="coroutines per measurement")
    parser.add_argument(
        "--supervisors", type=int_list, default=[1], help="supervisor counts to compare, e.g. 1,2"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of each measurement")
    parser.add_argument("--delay", type=float, default=0.1, help="sleep of the latency phase, s")
    parser.add_argument(
        "--hold", type=float, default=2.0, help="sleep of the memory phase's calls, s"
    )
    parser.add_argument("--mem-n", type=int, default=None, help="calls in the memory phase (N)")
    parser.add_argument("--warmup", type=int, default=100, help="warm-up calls per Runtime")
    parser.add_argument(
        "--phases",
        type=phase_list,
        default=list(PHASES),
        help="comma-separated subset of " + ",".join(PHASES),
    )
    parser.add_argument(
        "--allocators",
        type=lambda text: [a for a in text.split(",") if a],
        default=list(ALLOCATORS),
        help="memory phase: the supervisors' allocators, from " + ",".join(ALLOCATORS),
    )
    parser.add_argument("--skip-actor", action="store_true", help="skip the plain-actor baseline")
    parser.add_argument("--num-cpus", type=int, default=2, help="ray.init(num_cpus=...)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeat < 1:
        parser.error("--n and --repeat must be at least 1")
    if unknown := set(args.allocators) - set(ALLOCATORS):
        parser.error(f"unknown allocator(s) {sorted(unknown)}; choose from {', '.join(ALLOCATORS)}")
    if args.mem_n is None:
        args.mem_n = args.n
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    with ray_instance(args.num_cpus):
        results = asyncio.run(run(args))
    print(report(args, results))
    log(f"== done in {time.perf_counter() - started:.0f} s")
    if args.json:
        versions = {
            "aioray_runner": aioray_runner.__version__,
            "ray": ray.__version__,
            "python": platform.python_version(),
        }
        write_figures(args.json, "bench_runtime", args, versions, results=results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
