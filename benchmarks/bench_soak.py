"""Soak and load figures for ``Runtime``: is memory flat over a million calls, and
does a small concurrency cap hold under a flood?

Measures, in one Ray instance:

* **Soak**: ``--calls`` (1,000,000) tiny calls (``async def inc(i): return i + 1``)
  through ONE ``Runtime(supervisors=1)``, submitted in batches of ``--batch``
  (10,000) with ``rt.map``, each batch awaited before the next. Every result is
  checked. After every ``--every`` (100,000) calls the futures are dropped, the
  caller runs ``gc.collect()``, the script waits up to 1 s for the supervisor's
  ``calls_held`` to reach 0 (outcomes are released when their futures are garbage
  collected), then records: calls done, elapsed wall time, calls/s over that
  window (time spent submitting and awaiting, without the checkpoint pauses),
  the supervisor's RSS from ``rt.stats(collect=True)`` (gc and ``malloc_trim``
  run in the supervisor first), its ``calls_held``, and the caller's RSS
  (psutil, after its own ``gc.collect()``).
* **Load against a small cap**: ``--load-calls`` (100,000) calls of
  ``async def nap(): await asyncio.sleep(0.01)`` submitted all at once (one list
  comprehension) to ``Runtime(supervisors=1, max_concurrency=--cap)`` (100).
  Prints the wall time, the peak of ``running`` seen by sampling ``rt.stats()``
  while it runs (it must never exceed the cap), the caller's RSS before, at its
  peak (psutil, sampled every 0.1 s by a thread) and after the futures are
  dropped, and the supervisor's peak RSS (``peak_rss_bytes``, its VmHWM).

"Flat" means: the RSS after the last checkpoint is within 5% of the RSS after the
first checkpoint (the first window includes one-off growth: imports, caches,
pymalloc arenas; see ``docs/design.md``). The verdict lines say flat, grew or fell,
with the percentage.

Usage::

    python benchmarks/bench_soak.py --quick           # 100,000 soak calls, 10,000 load calls
    python benchmarks/bench_soak.py                   # the full soak: 1,000,000 + 100,000
    python benchmarks/bench_soak.py --calls 200000 --every 50000 --cap 50 --json /tmp/soak.json

These are not tests: they print figures, and nothing about time or memory is
asserted. The exit code is 1 only if a call failed, a result was wrong or missing,
or ``running`` was seen above the cap; otherwise 0. Progress goes to stderr, the
tables to stdout; nothing is written unless ``--json PATH`` is given.
"""

from __future__ import annotations

import os

# Before Ray is imported: keep a local Ray on 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import argparse
import asyncio
import gc
import platform
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import ray
from _common import log, ray_instance, write_figures

import aioray_runner
from aioray_runner import AioRayFuture, Runtime

MIB = 1024 * 1024
#: RSS within this fraction of the first checkpoint's counts as flat.
FLAT_WITHIN = 0.05
#: Errors kept (as text) for the report; the rest are only counted.
MAX_ERRORS_KEPT = 5

# -- what runs remotely --------------------------------------------------------------------


async def inc(i: int) -> int:
    """The soak's call: as small as a call gets."""
    return i + 1


async def nap() -> None:
    """The load phase's call: holds a concurrency slot for 10 ms."""
    await asyncio.sleep(0.01)


# -- helpers -------------------------------------------------------------------------------


def caller_rss() -> int:
    """This process's RSS in bytes."""
    return int(psutil.Process().memory_info().rss)


def mib(n: float) -> str:
    """Bytes as MiB, one decimal."""
    return f"{n / MIB:.1f}"


def table(headers: list[str], rows: list[list[str]], *, right: bool = True) -> str:
    """A plain text table: the first column left-aligned, the others right-aligned
    (or all left-aligned if not ``right``)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if right and i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *map(line, rows)])


def growth_verdict(who: str, first: dict[str, Any], last: dict[str, Any], key: str) -> str:
    """The "flat or not" line for one process's RSS between two checkpoints."""
    before, after = first[key], last[key]
    change = (after - before) / before if before else float("nan")
    within = f"{FLAT_WITHIN * 100:.0f}%"
    if abs(change) <= FLAT_WITHIN:
        word = f"flat (within {within})"
    else:
        word = f"{'GREW' if change > 0 else 'fell'} (more than {within}: not flat)"
    return (
        f"{who} RSS after {first['calls']:,}: {mib(before)} MiB;"
        f" after {last['calls']:,}: {mib(after)} MiB;"
        f" growth after the first {first['calls']:,}: {change * 100:+.1f}%, {word}"
    )


async def settle(rt: Runtime, wait_s: float = 1.0) -> tuple[dict[str, Any], float]:
    """Wait up to ``wait_s`` for the supervisor to hold no outcomes, then read its
    stats with ``collect=True``. Returns the stats and the seconds waited."""
    started = time.perf_counter()
    deadline = started + wait_s
    while True:
        (stats,) = await rt.stats()
        if stats["calls_held"] == 0 or time.perf_counter() >= deadline:
            break
        await asyncio.sleep(0.05)
    waited = time.perf_counter() - started
    (stats,) = await rt.stats(collect=True)
    return stats, waited


class Errors:
    """Failed calls: counted, the first few kept as text."""

    def __init__(self) -> None:
        self.count = 0
        self.examples: list[str] = []

    def add(self, what: str) -> None:
        """Count one failure and keep its description if there is room."""
        self.count += 1
        if len(self.examples) < MAX_ERRORS_KEPT:
            self.examples.append(what)


async def await_all(
    futures: list[AioRayFuture[Any]],
    timeout: float,
    errors: Errors,
    check: Callable[[int, Any], str | None] | None = None,
) -> tuple[int, int, int]:
    """Await every future in order, within ``timeout`` seconds in all.

    ``check(n, value)`` returns a complaint about the n-th result, or ``None``.
    Returns (results returned, wrong results, futures still unfinished at the
    timeout); failures go to ``errors``.
    """
    returned = wrong = 0
    try:
        async with asyncio.timeout(timeout):
            for n, future in enumerate(futures):
                try:
                    value = await future
                except Exception as exc:
                    errors.add(f"{future.label}: {type(exc).__name__}: {exc}")
                    continue
                returned += 1
                complaint = check(n, value) if check else None
                if complaint:
                    wrong += 1
                    errors.add(complaint)
    except TimeoutError:
        return returned, wrong, sum(1 for f in futures if not f.done())
    return returned, wrong, 0


# -- soak ----------------------------------------------------------------------------------


async def soak_batch(
    rt: Runtime, start: int, end: int, timeout: float, errors: Errors
) -> tuple[int, int]:
    """One batch of ``inc`` calls, checked. Returns (wrong results, missing results).

    The futures live only in this frame: they are garbage once it returns.
    """

    def check(n: int, value: Any) -> str | None:
        i = start + n
        return None if value == i + 1 else f"inc({i}) returned {value!r}, expected {i + 1}"

    futures = rt.map(inc, range(start, end))
    _, wrong, missing = await await_all(futures, timeout, errors, check)
    if missing:
        log(f"   batch {start:,}-{end:,}: {missing} results missing after {timeout} s")
    return wrong, missing


async def soak(
    rt: Runtime, calls: int, batch: int, every: int, batch_timeout: float
) -> dict[str, Any]:
    """``calls`` calls of ``inc`` in awaited batches, with a checkpoint every ``every``."""
    errors = Errors()
    mismatches = lost = 0
    checkpoints: list[dict[str, Any]] = []

    gc.collect()
    stats, _ = await settle(rt)
    checkpoints.append(
        {
            "calls": 0,
            "elapsed_s": 0.0,
            "window_calls_per_s": None,
            "supervisor_rss": stats["rss_bytes"],
            "calls_held": stats["calls_held"],
            "caller_rss": caller_rss(),
            "settle_s": 0.0,
        }
    )
    log(f"   start: supervisor {mib(stats['rss_bytes'])} MiB, caller {mib(caller_rss())} MiB")

    started = time.perf_counter()
    done = 0
    window_calls = 0
    window_busy = 0.0
    next_checkpoint = min(every, calls)
    while done < calls:
        end = min(done + batch, next_checkpoint)
        batch_started = time.perf_counter()
        wrong, missing = await soak_batch(rt, done, end, batch_timeout, errors)
        mismatches += wrong
        lost += missing
        window_busy += time.perf_counter() - batch_started
        window_calls += end - done
        done = end
        if done < next_checkpoint:
            continue

        gc.collect()
        stats, waited = await settle(rt)
        gc.collect()
        point = {
            "calls": done,
            "elapsed_s": time.perf_counter() - started,
            "window_calls_per_s": window_calls / window_busy if window_busy else None,
            "supervisor_rss": stats["rss_bytes"],
            "calls_held": stats["calls_held"],
            "caller_rss": caller_rss(),
            "settle_s": waited,
        }
        checkpoints.append(point)
        log(
            f"   {done:,} calls, {point['elapsed_s']:.1f} s,"
            f" {point['window_calls_per_s'] or 0:,.0f}/s, supervisor {mib(point['supervisor_rss'])}"
            f" MiB (calls_held {point['calls_held']}), caller {mib(point['caller_rss'])} MiB"
        )
        window_calls, window_busy = 0, 0.0
        next_checkpoint = min(next_checkpoint + every, calls)

    return {
        "calls": calls,
        "batch": batch,
        "every": every,
        "wall_s": time.perf_counter() - started,
        "failed": errors.count - mismatches,
        "wrong": mismatches,
        "lost": lost,
        "error_examples": errors.examples,
        "checkpoints": checkpoints,
    }


# -- load ----------------------------------------------------------------------------------


class RssSampler:
    """A thread sampling this process's RSS every ``interval`` seconds."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.peak = caller_rss()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, caller_rss())
            self.samples += 1
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, caller_rss())


async def load(rt: Runtime, calls: int, cap: int, timeout: float) -> dict[str, Any]:
    """``calls`` naps submitted at once; sample ``running`` and the caller's RSS."""
    errors = Errors()
    running_peak = 0
    stats_samples = 0
    stop = asyncio.Event()

    async def sample_running() -> None:
        nonlocal running_peak, stats_samples
        while not stop.is_set():
            (stats,) = await rt.stats()
            running_peak = max(running_peak, stats["running"])
            stats_samples += 1
            try:
                await asyncio.wait_for(stop.wait(), 0.05)
            except TimeoutError:
                pass

    gc.collect()
    before = caller_rss()
    log(f"   caller before: {mib(before)} MiB")
    with RssSampler(0.1) as rss:
        sampler = asyncio.create_task(sample_running())
        started = time.perf_counter()
        futures = [rt.submit(nap) for _ in range(calls)]
        submitted = time.perf_counter()
        returned, _, lost = await await_all(futures, timeout, errors)
        if lost:
            log(f"   {lost} results missing after {timeout:.0f} s")
        finished = time.perf_counter()
        stop.set()
        await sampler
    done_stats = (await rt.stats())[0]
    del futures
    gc.collect()
    after_stats, _ = await settle(rt)
    gc.collect()
    after = caller_rss()
    wall = finished - started
    return {
        "calls": calls,
        "cap": cap,
        "wall_s": wall,
        "submit_s": submitted - started,
        "calls_per_s": calls / wall if wall else None,
        "ideal_wall_s": calls * 0.01 / cap,
        "returned": returned,
        "failed": errors.count,
        "lost": lost,
        "error_examples": errors.examples,
        "running_peak_sampled": running_peak,
        "running_samples": stats_samples,
        "running_over_cap": running_peak > cap,
        "caller_rss_before": before,
        "caller_rss_peak": rss.peak,
        "caller_rss_after": after,
        "caller_rss_samples": rss.samples,
        "caller_growth_bytes": rss.peak - before,
        "caller_growth_per_call_bytes": (rss.peak - before) / calls,
        "supervisor_rss_peak": after_stats["peak_rss_bytes"],
        "supervisor_rss_after": after_stats["rss_bytes"],
        "calls_held_done": done_stats["calls_held"],
        "calls_held_after": after_stats["calls_held"],
    }


# -- the run -------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both phases, each on a fresh ``Runtime`` joined to the Ray this script started."""
    results: dict[str, Any] = {}
    log(
        f"== soak: {args.calls:,} calls of inc, batches of {args.batch:,},"
        f" checkpoint every {args.every:,}"
    )
    async with Runtime(supervisors=1) as rt:
        if rt.owns_ray:
            raise RuntimeError("the Runtime started its own Ray instead of joining this one")
        results["soak"] = await soak(rt, args.calls, args.batch, args.every, args.batch_timeout)
    log(f"== load: {args.load_calls:,} naps of 10 ms at once, max_concurrency={args.cap}")
    timeout = args.load_timeout or 60.0 + 10 * args.load_calls * 0.01 / args.cap
    async with Runtime(supervisors=1, max_concurrency=args.cap) as rt:
        results["load"] = await load(rt, args.load_calls, args.cap, timeout)
    return results


def problems(results: dict[str, Any]) -> list[str]:
    """What makes the exit code 1: failed, wrong or missing calls, ``running`` over the cap."""
    out = []
    s, ld = results["soak"], results["load"]
    if s["failed"] or s["wrong"] or s["lost"]:
        out.append(f"soak: {s['failed']} failed, {s['wrong']} wrong, {s['lost']} missing")
    if ld["failed"] or ld["lost"] or ld["returned"] != ld["calls"]:
        out.append(
            f"load: {ld['failed']} failed, {ld['lost']} missing,"
            f" {ld['returned']:,} of {ld['calls']:,} returned"
        )
    if ld["running_over_cap"]:
        out.append(f"load: running reached {ld['running_peak_sampled']}, above the cap {ld['cap']}")
    return out


def report(args: argparse.Namespace, results: dict[str, Any]) -> str:
    """The printed figures."""
    s, ld = results["soak"], results["load"]
    out = [
        f"aioray-runner {aioray_runner.__version__}, ray {ray.__version__},"
        f" Python {platform.python_version()}, {os.cpu_count()} CPUs, ray.init(num_cpus="
        f"{args.num_cpus}){', --quick' if args.quick else ''}",
        "",
        f"Soak: {s['calls']:,} calls of `async def inc(i): return i + 1`, Runtime(supervisors=1),"
        f" batches of {s['batch']:,} awaited in turn",
        "(elapsed: wall time incl. checkpoints; calls/s: that window, checkpoint pauses excluded;"
        " RSS in MiB after gc, supervisor via stats(collect=True))",
    ]
    rows = []
    for p in s["checkpoints"]:
        rate = p["window_calls_per_s"]
        rows.append(
            [
                f"{p['calls']:,}",
                f"{p['elapsed_s']:.1f}",
                f"{rate:,.0f}" if rate else "-",
                mib(p["supervisor_rss"]),
                str(p["calls_held"]),
                mib(p["caller_rss"]),
            ]
        )
    out.append(
        table(["calls", "elapsed s", "calls/s", "supervisor RSS", "calls_held", "caller RSS"], rows)
    )
    total_rate = s["calls"] / s["wall_s"] if s["wall_s"] else 0
    out.append(
        f"  {s['calls']:,} calls in {s['wall_s']:.1f} s ({total_rate:,.0f}/s overall);"
        f" failed {s['failed']}, wrong {s['wrong']}, missing {s['lost']}"
    )
    points = s["checkpoints"][1:]
    if len(points) >= 2:
        out.append("  " + growth_verdict("supervisor", points[0], points[-1], "supervisor_rss"))
        out.append("  " + growth_verdict("caller", points[0], points[-1], "caller_rss"))
    else:
        out.append("  (one checkpoint only: no growth verdict; lower --every)")
    out.append(
        f"  calls_held at the last checkpoint: {points[-1]['calls_held'] if points else '-'}"
    )

    out += [
        "",
        f"Load: {ld['calls']:,} calls of `await asyncio.sleep(0.01)` submitted at once,"
        f" Runtime(supervisors=1, max_concurrency={ld['cap']})",
    ]
    rows = [
        ["wall s", f"{ld['wall_s']:.2f} (cap allows at best {ld['ideal_wall_s']:.2f})"],
        ["submit s", f"{ld['submit_s']:.2f}"],
        ["calls/s", f"{ld['calls_per_s']:,.0f}"],
        ["returned / failed / missing", f"{ld['returned']:,} / {ld['failed']} / {ld['lost']}"],
        [
            "peak running (sampled)",
            f"{ld['running_peak_sampled']} of cap {ld['cap']} ({ld['running_samples']} samples)",
        ],
        [
            "caller RSS MiB before / peak / after",
            f"{mib(ld['caller_rss_before'])} / {mib(ld['caller_rss_peak'])}"
            f" / {mib(ld['caller_rss_after'])} ({ld['caller_rss_samples']} samples)",
        ],
        [
            "supervisor RSS MiB peak / after",
            f"{mib(ld['supervisor_rss_peak'])} / {mib(ld['supervisor_rss_after'])}",
        ],
        ["calls_held done / after drop", f"{ld['calls_held_done']} / {ld['calls_held_after']}"],
    ]
    out.append(table(["figure", "value"], rows, right=False))
    over = "ABOVE the cap" if ld["running_over_cap"] else "never above the cap"
    out.append(
        f"  caller memory bounded: peak - before = {mib(ld['caller_growth_bytes'])} MiB,"
        f" {ld['caller_growth_per_call_bytes']:,.0f} bytes per call submitted; running {over}"
    )
    return "\n".join(out)


# -- main ----------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1 (``1_000_000`` allowed)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1: {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options; ``--quick`` changes the defaults of the ones not given."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes: soak 100,000 calls, checkpoint every 20,000; load 10,000 calls",
    )
    parser.add_argument("--calls", type=positive_int, help="soak calls (default 1,000,000)")
    parser.add_argument("--batch", type=positive_int, default=10_000, help="soak batch size")
    parser.add_argument(
        "--every", type=positive_int, help="soak calls between checkpoints (default 100,000)"
    )
    parser.add_argument("--load-calls", type=positive_int, help="load calls (default 100,000)")
    parser.add_argument("--cap", type=positive_int, default=100, help="load max_concurrency")
    parser.add_argument(
        "--batch-timeout",
        type=float,
        default=300.0,
        help="soak: seconds a batch may take before its unfinished calls count as missing",
    )
    parser.add_argument(
        "--load-timeout",
        type=float,
        default=None,
        help="load: seconds before unfinished calls count as missing"
        " (default 60 + 10x the time the cap allows)",
    )
    parser.add_argument("--num-cpus", type=positive_int, default=2, help="ray.init(num_cpus=...)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = parser.parse_args(argv)
    if args.calls is None:
        args.calls = 100_000 if args.quick else 1_000_000
    if args.every is None:
        args.every = 20_000 if args.quick else 100_000
    if args.load_calls is None:
        args.load_calls = 10_000 if args.quick else 100_000
    return args


def main(argv: list[str] | None = None) -> int:
    """Run both phases, print the figures, return the exit code."""
    args = parse_args(argv)
    started = time.perf_counter()
    with ray_instance(args.num_cpus):
        results = asyncio.run(run(args))
    print(report(args, results))
    found = problems(results)
    for problem in found:
        print(f"PROBLEM: {problem}")
    log(f"== done in {time.perf_counter() - started:.0f} s")
    if args.json:
        versions = {
            "aioray_runner": aioray_runner.__version__,
            "ray": ray.__version__,
            "python": platform.python_version(),
        }
        write_figures(args.json, "bench_soak", args, versions, results=results, problems=found)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
