"""Where the runtime stands against its floors and limits: every row, one run.

The rows of the speed-and-scale table (docs/measurements.md, "At the limit"),
each measured here beside the floor or limit it is compared with, so the ratio
is taken in one run on one machine:

* ``prefect.fanout``: 1,000 async Prefect tasks of ``asyncio.sleep(0.1)``
  submitted through ``AioRayTaskRunner``, against ``asyncio.gather`` of the same
  tasks in the flow with no runner (Prefect's engine on the flow's own loop);
* ``core.trivial``: 10,000 trivial coroutines through ``Runtime`` against a
  plain async actor called once per coroutine;
* ``core.sleep``: 10,000 ``asyncio.sleep(0.1)`` through ``Runtime`` (0.1 s is
  the floor);
* ``trio``: 10,000 ``trio.sleep(0.1)`` through ``Runtime(backend="trio")``
  against ``core.sleep`` on the asyncio backend;
* ``memory``: a supervisor's RSS after a first burst of 10,000 calls in
  flight, against its RSS before it (default allocator);
* ``wake-ups``: how often the caller's event loop was woken from the I/O
  thread, per delivered batch of results, during ``core.trivial``.
* ``prefect.nested``: Prefect's own test of recursive submission (a sync task
  that sleeps 0.1 s and submits itself, 33 levels deep) under
  ``AioRayTaskRunner`` against ``ThreadPoolTaskRunner``, whole flow calls, with
  the supervisor processes seen while it ran.

Usage::

    python benchmarks/bench_limits.py              # the table's sizes
    python benchmarks/bench_limits.py --quick      # a tenth of them, to try it
    python benchmarks/bench_limits.py --rows core.trivial,trio --json /tmp/limits.json

Progress goes to stderr; the table goes to stdout. Nothing is written unless
``--json PATH`` is given.
"""

from __future__ import annotations

import os

# Before Ray or Prefect is imported.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import argparse
import asyncio
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import ray
from _common import log, write_figures
from bench_runtime import memory_run, step

from aioray_runner import Runtime
from aioray_runner._tools.bench.common import COUNTERS, local_ray, quiet_environment, table
from aioray_runner._tools.bench.core import actor_run, plain_actor, runtime_run, warm_up

ROWS = (
    "prefect.fanout",
    "prefect.nested",
    "core.trivial",
    "core.sleep",
    "trio",
    "memory",
    "wake-ups",
)

#: The goal of each row (issue "Speed and scale"), as the table prints it.
GOALS = {
    "prefect.fanout": "<= 1.0x gather per task",
    "prefect.nested": "<= 2x the thread pool, no supervisor but the flow's",
    "core.trivial": ">= 20x the plain actor, 40k/s",
    "core.sleep": "< 0.5 s",
    "trio": "<= 1.5x the asyncio backend",
    "memory": "<= 1.05x of start",
    "wake-ups": "1 per delivered batch",
}


async def trio_sleep_then(i: int, delay: float) -> int:
    """``trio.sleep(delay)``, then ``i``: the trio backend's I/O stand-in."""
    import trio

    await trio.sleep(delay)
    return i


@contextmanager
def counting_wakeups() -> Iterator[dict[str, int]]:
    """Count ``call_soon_threadsafe`` on the running loop: how often it was woken."""
    loop = asyncio.get_running_loop()
    counts = {"wakeups": 0}
    original = loop.call_soon_threadsafe

    def counted(callback: Any, *args: Any, **kwargs: Any) -> Any:
        counts["wakeups"] += 1
        return original(callback, *args, **kwargs)

    loop.call_soon_threadsafe = counted  # type: ignore[method-assign, assignment]
    try:
        yield counts
    finally:
        del loop.call_soon_threadsafe


async def trio_run(rt: Runtime, n: int, delay: float, label: str) -> dict[str, Any]:
    """``n`` calls of :func:`trio_sleep_then` through a trio-backend runtime."""
    started = time.perf_counter()
    futures = [rt.submit(trio_sleep_then, i, delay) for i in range(n)]
    COUNTERS.submitted += n
    total = 0
    for future in futures:
        total += await future
        COUNTERS.done += 1
    wall = time.perf_counter() - started
    if total != n * (n - 1) // 2:
        raise RuntimeError(f"{label}: wrong results")
    return {"n": n, "total_s": wall, "per_task_ms": 1000 * wall / n}


async def core_rows(args: argparse.Namespace, out: dict[str, Any]) -> None:
    n = args.n
    # The runtime first: Ray keeps working for seconds after 10,000 plain actor
    # calls (their task events go to the GCS), which would slow what follows.
    if {"core.trivial", "core.sleep", "trio", "wake-ups"} & set(args.rows):
        async with Runtime(supervisors=1) as rt:
            await warm_up(rt, 50)
            await runtime_run(rt, n, None, "untimed warm-up")  # the first burst grows buffers
            with counting_wakeups() as counts, step(f"Runtime, {n:,} trivial calls", n):
                out["runtime_trivial"] = await runtime_run(rt, n, None, "runtime noop")
            stats = await rt.stats()
            out["wakeups"] = counts["wakeups"]
            with step(f"Runtime, {n:,} sleeps of {args.delay} s", n):
                out["runtime_sleep"] = await runtime_run(rt, n, args.delay, "runtime sleep")
            out["supervisor_stats"] = stats
    if "trio" in args.rows:
        async with Runtime(supervisors=1, backend="trio") as rt:
            await trio_run(rt, 50, 0.0, "warm-up")
            await trio_run(rt, n, 0.0, "untimed warm-up")
            with step(f"Runtime(backend='trio'), {n:,} trio.sleep({args.delay})", n):
                out["trio_sleep"] = await trio_run(rt, n, args.delay, "trio sleep")
    if "memory" in args.rows:
        out["memory"] = await memory_run(1, n, args.delay * 10, 50, "memory")
    if "core.trivial" in args.rows:
        actor = plain_actor(max_concurrency=1000)
        with step(f"plain actor, {n:,} trivial calls", n):
            out["actor_trivial"] = await actor_run(actor, n, None, "actor noop")
        ray.kill(actor)


async def prefect_row(args: argparse.Namespace, out: dict[str, Any]) -> None:
    from aioray_runner._tools.bench.flows import run_runner

    plan = {"delay": args.delay, "fanout": args.fanout, "warmup": 20}
    # The default (one supervisor per node: one here), and two supervisors:
    # Prefect's engine costs ~3 ms of CPU per task run, on the flow's loop under
    # gather, on a supervisor's loop here; two supervisors spread it over two cores.
    for name, supervisors in (("gather", None), ("aioray", None), ("aioray", 2)):
        # The API records the previous flow's thousands of task runs for a while
        # after it ends; a flow started meanwhile waits for the API (up to 30 s
        # seen here), which is the API's backlog, not the runner's pace.
        settled = await api_settled()
        log(f"   the API recorded earlier runs in {settled:.1f} s")
        key = f"prefect_{name}" + (f"_{supervisors}" if supervisors else "")
        with (
            CpuByRole() as cpu,
            step(f"Prefect flow, {args.fanout:,} tasks, {key}", args.fanout),
        ):
            figures = await run_runner(name, plan, num_cpus=args.num_cpus, supervisors=supervisors)
        spent = {role: 1000 * s / args.fanout for role, s in cpu.seconds().items()}
        log("   CPU ms per task: " + ", ".join(f"{r} {ms:.2f}" for r, ms in sorted(spent.items())))
        out[key] = {
            **figures["fanout"],
            "flow_wall_s": figures["flow_wall_s"],
            "cpu_ms_per_task": spent,
        }


NESTED_DEPTH = 33  # Prefect's tests/test_task_runners.py, issue 14194


def nested_flow_seconds(runner: Any) -> float:
    """Prefect's recursive-submission test under ``runner``: the flow call's seconds."""
    from prefect import flow, task

    @task
    def recursive_task(n: int) -> int:
        if n == 0:
            return n
        time.sleep(0.1)
        return int(recursive_task.submit(n - 1).result())

    @flow(task_runner=runner)
    def recursive_flow() -> int:
        return int(recursive_task.submit(NESTED_DEPTH).result())

    started = time.perf_counter()
    assert recursive_flow() == 0
    return time.perf_counter() - started


async def prefect_nested_row(out: dict[str, Any]) -> None:
    from prefect.task_runners import ThreadPoolTaskRunner

    from aioray_runner import AioRayTaskRunner

    for name, make in (("threads", ThreadPoolTaskRunner), ("aioray", AioRayTaskRunner)):
        await api_settled()
        with CpuByRole() as seen:
            seconds = await asyncio.to_thread(nested_flow_seconds, make())
        supervisors = len(seen.pids("supervisors"))
        log(f"   {name}: {NESTED_DEPTH} levels in {seconds:.2f} s, {supervisors} supervisor(s)")
        out[f"nested_{name}"] = {"flow_s": seconds, "supervisors": supervisors}


class CpuByRole:
    """CPU seconds spent by each kind of process on this machine while it runs.

    Sampled every 0.2 s (supervisors exit when their flow ends: their last
    sample counts). Roles: this process (the flow's), supervisors, the Prefect
    API, Ray's own processes, and the rest of the machine.
    """

    def __init__(self) -> None:
        self._start: dict[int, float] = {}
        self._last: dict[int, tuple[str, float]] = {}
        self._roles: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _role(self, process: psutil.Process) -> str:
        role = self._roles.get(process.pid)
        if role is not None:
            return role
        if process.pid == os.getpid():
            role = "flow process"
        else:
            try:
                command = " ".join(process.cmdline())
            except (psutil.Error, OSError):
                command = ""
            if "Supervisor" in command:
                role = "supervisors"
            elif "uvicorn" in command or "prefect" in command:
                role = "Prefect API"
            elif "ray" in command:
                role = "Ray"
            else:
                role = "other"
        if role != "Ray":  # a Ray worker may become a supervisor later
            self._roles[process.pid] = role
        return role

    def _read(self) -> dict[int, tuple[str, float]]:
        seen = {}
        for process in psutil.process_iter():
            try:
                times = process.cpu_times()
                seen[process.pid] = (self._role(process), times.user + times.system)
            except (psutil.Error, OSError):
                continue
        return seen

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self._last.update(self._read())

    def __enter__(self) -> CpuByRole:
        first = self._read()
        self._start = {pid: cpu for pid, (_, cpu) in first.items()}
        self._last = dict(first)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._last.update(self._read())

    def pids(self, role: str) -> set[int]:
        """The processes of this role seen between enter and exit."""
        return {pid for pid, (seen_as, _) in self._last.items() if seen_as == role}

    def seconds(self) -> dict[str, float]:
        """CPU seconds per role between enter and exit."""
        out: dict[str, float] = {}
        for pid, (role, cpu) in self._last.items():
            out[role] = out.get(role, 0.0) + cpu - self._start.get(pid, 0.0)
        return out


async def api_settled(within: float = 120.0) -> float:
    """Wait until the API holds no task run in a non-final state; the seconds waited."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import TaskRunSort

    unfinished = TaskRunFilter(
        state=TaskRunFilterState(
            type=TaskRunFilterStateType(
                any_=[StateType.PENDING, StateType.RUNNING, StateType.SCHEDULED]
            )
        )
    )
    started = time.perf_counter()
    async with get_client() as client:
        while time.perf_counter() - started < within:
            if not await client.read_task_runs(
                task_run_filter=unfinished, sort=TaskRunSort.ID_DESC, limit=1
            ):
                break
            await asyncio.sleep(0.5)
    return time.perf_counter() - started


def rows_of(args: argparse.Namespace, out: dict[str, Any]) -> list[list[str]]:
    """The table: what, measured, floor or limit, ratio, goal."""
    rows: list[list[str]] = []
    n = args.n
    for key, label in (
        ("prefect_aioray", "prefect.fanout"),
        ("prefect_aioray_2", "... 2 supervisors"),
    ):
        if key not in out:
            continue
        ours, floor = out[key], out["prefect_gather"]
        rows.append(
            [
                label,
                f"{ours['per_task_ms']:.2f} ms/task (flow {ours['flow_wall_s']:.1f} s)",
                f"gather {floor['per_task_ms']:.2f} ms/task (flow {floor['flow_wall_s']:.1f} s)",
                f"{ours['per_task_ms'] / floor['per_task_ms']:.2f}x"
                f" (flow {ours['flow_wall_s'] / floor['flow_wall_s']:.2f}x)",
                GOALS["prefect.fanout"],
            ]
        )
    if "nested_aioray" in out:
        ours, threads = out["nested_aioray"], out["nested_threads"]
        rows.append(
            [
                "prefect.nested",
                f"{ours['flow_s']:.1f} s, {ours['supervisors']} supervisor(s)",
                f"thread pool {threads['flow_s']:.1f} s",
                f"{ours['flow_s'] / threads['flow_s']:.2f}x",
                GOALS["prefect.nested"],
            ]
        )
    if "actor_trivial" in out:
        ours, actor = out["runtime_trivial"], out["actor_trivial"]
        rows.append(
            [
                "core.trivial",
                f"{ours['total_s']:.3f} s ({ours['per_s']:,.0f}/s)",
                f"plain actor {actor['total_s']:.2f} s ({actor['per_s']:,.0f}/s)",
                f"{actor['total_s'] / ours['total_s']:.1f}x faster",
                GOALS["core.trivial"],
            ]
        )
    if "runtime_sleep" in out and "core.sleep" in args.rows:
        ours = out["runtime_sleep"]
        rows.append(
            [
                "core.sleep",
                f"{ours['total_s']:.3f} s for {n:,}",
                f"{args.delay} s (the sleep itself)",
                f"{ours['total_s'] / args.delay:.1f}x the floor",
                GOALS["core.sleep"],
            ]
        )
    if "trio_sleep" in out:
        ours = out["trio_sleep"]
        asyncio_backend = out.get("runtime_sleep")
        ratio = f"{ours['total_s'] / asyncio_backend['total_s']:.2f}x" if asyncio_backend else "n/a"
        rows.append(
            [
                "trio",
                f"{ours['total_s']:.3f} s for {n:,}",
                f"asyncio backend {asyncio_backend['total_s']:.3f} s" if asyncio_backend else "-",
                ratio,
                GOALS["trio"],
            ]
        )
    if "memory" in out:
        mem = out["memory"]
        mib = 1024 * 1024
        rows.append(
            [
                "memory",
                f"{mem['supervisor_after_rss'] / mib:.1f} MiB after"
                f" (peak {mem['supervisor_peak_rss_sampled'] / mib:.1f})",
                f"{mem['supervisor_start_rss'] / mib:.1f} MiB at start",
                f"{mem['after_over_start']:.3f}x"
                f" (2nd burst {mem['round2']['after_over_start']:.3f}x)",
                GOALS["memory"],
            ]
        )
    if "wakeups" in out and "wake-ups" in args.rows:
        stats = out["supervisor_stats"]
        polls = sum(int(s.get("polls", 0)) for s in stats)
        rows.append(
            [
                "wake-ups",
                f"{out['wakeups']:,} wake-ups for {n:,} results",
                f"{polls:,} poll replies in all" if polls else "-",
                f"{n / max(out['wakeups'], 1):,.0f} results per wake-up",
                GOALS["wake-ups"],
            ]
        )
    return rows


async def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    await core_rows(args, out)
    if "prefect.fanout" in args.rows:
        await prefect_row(args, out)
    if "prefect.nested" in args.rows:
        await prefect_nested_row(out)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the sizes")
    parser.add_argument("--n", type=int, default=10_000, help="core calls per row")
    parser.add_argument("--fanout", type=int, default=1_000, help="Prefect tasks")
    parser.add_argument("--delay", type=float, default=0.1, help="seconds per sleep")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--rows", type=lambda s: s.split(","), default=list(ROWS), help=",".join(ROWS)
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    unknown = set(args.rows) - set(ROWS)
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}; choose from {', '.join(ROWS)}")
    if args.quick:
        args.n, args.fanout = args.n // 10, args.fanout // 10
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_environment()
    started = time.perf_counter()
    from aioray_runner._tools.bench.suite import prefect_api

    # The API first: Ray's workers inherit its address from the environment.
    with (
        prefect_api(bool({"prefect.fanout", "prefect.nested"} & set(args.rows))),
        local_ray(args.num_cpus, log_to_driver=False),
    ):
        out = asyncio.run(run(args))
    print(table(["row", "measured", "floor or limit", "ratio", "goal"], rows_of(args, out)))
    log(f"== done in {time.perf_counter() - started:.0f} s")
    if args.json:
        import aioray_runner

        write_figures(
            args.json, "bench_limits", args, {"aioray-runner": aioray_runner.__version__}, **out
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
