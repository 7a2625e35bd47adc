"""Prefect task runners on the same flows: async I/O fan-out, a DAG, sync CPU tasks.

One flow, :func:`bench_flow`, runs the three workloads in turn under one task
runner, so the runner starts once; each workload is timed inside the flow, from
its first submit to its last result. The "gather" runner is the same flow with
no task runner: tasks called and awaited in the flow (``asyncio.gather`` for the
async ones), which is what Prefect itself does on one event loop.

Runners are chosen by name (:data:`RUNNERS`); the ones whose package is not
installed are reported by :func:`missing_runners`, not run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from prefect import flow, task

from .common import COUNTERS, installed_version

#: Runner name -> (what it is, the distribution it needs, or None).
RUNNERS: dict[str, tuple[str, str | None]] = {
    "aioray": ("AioRayTaskRunner", None),
    "ray": ("prefect-ray RayTaskRunner", "prefect-ray"),
    "threadpool": ("Prefect ThreadPoolTaskRunner", None),
    "dask": ("prefect-dask DaskTaskRunner", "prefect-dask"),
    "gather": ("no runner: asyncio.gather in the flow", None),
}

#: The workloads, in the order the flow runs them.
WORKLOADS = ("fanout", "dag", "cpu")


def missing_runners(names: list[str]) -> dict[str, str]:
    """Runner name -> why it cannot run here (its package is missing), for ``names``."""
    missing = {}
    for name in names:
        distribution = RUNNERS[name][1]
        if distribution and installed_version(distribution) is None:
            missing[name] = (
                f"{distribution} is not installed (python -m pip install {distribution})"
            )
    return missing


def make_runner(
    name: str,
    *,
    num_cpus: int,
    supervisors: int | None = None,
    threadpool_workers: int | None = None,
) -> Any:
    """A new task runner called ``name`` (None for "gather": the flow runs its tasks)."""
    if name == "aioray":
        from ..._prefect.runner import AioRayTaskRunner

        return AioRayTaskRunner(supervisors=supervisors)
    if name == "ray":
        from prefect_ray import RayTaskRunner

        return RayTaskRunner()
    if name == "threadpool":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=threadpool_workers)
    if name == "dask":
        # From where it is defined: the package's __init__ imports it without
        # re-exporting it, which mypy --strict refuses once prefect-dask is installed.
        from prefect_dask.task_runners import DaskTaskRunner

        # A local cluster of processes on 127.0.0.1, no dashboard port.
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": num_cpus,
                "host": "127.0.0.1",
                "dashboard_address": None,
            }
        )
    if name == "gather":
        return None
    raise ValueError(f"unknown runner {name!r}; choose from {', '.join(RUNNERS)}")


# -- tasks -----------------------------------------------------------------------------------


@task
async def sleepy(i: int, delay: float) -> int:
    """Stands for I/O: waits ``delay`` seconds, no CPU."""
    await asyncio.sleep(delay)
    return i


@task
async def combine(parts: dict[str, list[Any]]) -> int:
    """Adds up upstream results, given as futures nested in a dict of lists."""
    return sum(parts["values"])


@task
def crunch(i: int, loops: int) -> int:
    """CPU work in plain Python (holds the GIL): ``loops`` multiply-adds."""
    acc = 0
    for k in range(loops):
        acc = (acc + k * k) % 1_000_003
    return i


# -- the flow -----------------------------------------------------------------------------------


async def _collect(futures: list[Any], marks: dict[str, float] | None = None) -> list[Any]:
    """Every future's result, counting them in COUNTERS as they come.

    ``marks["first"]``: when the first result came (``time.perf_counter()``).
    """
    marks = {} if marks is None else marks
    if all(hasattr(f, "__await__") for f in futures):
        values = []
        for future in futures:
            values.append(await future)
            COUNTERS.done += 1
            marks.setdefault("first", time.perf_counter())
        return values

    def blocking() -> list[Any]:  # sync futures: block a helper thread, not the flow's loop
        out = []
        for future in futures:
            out.append(future.result())
            COUNTERS.done += 1
            marks.setdefault("first", time.perf_counter())
        return out

    return await asyncio.to_thread(blocking)


async def _fanout(n: int, delay: float, submit: bool, marks: dict[str, float]) -> int:
    if not submit:

        async def one(i: int) -> int:
            value: int = await sleepy(i, delay)
            COUNTERS.done += 1
            marks.setdefault("first", time.perf_counter())
            return value

        calls = [one(i) for i in range(n)]
        COUNTERS.submitted += n
        marks["submitted"] = time.perf_counter()
        return sum(await asyncio.gather(*calls))
    futures = []
    for i in range(n):
        futures.append(sleepy.submit(i, delay))
        COUNTERS.submitted += 1
    marks["submitted"] = time.perf_counter()
    return sum(await _collect(futures, marks))


def _groups(items: list[Any], size: int) -> list[list[Any]]:
    return [items[k : k + size] for k in range(0, len(items), size)]


async def _dag(leaves: int, fan_in: int, delay: float, submit: bool) -> int:
    """``leaves`` sleeps; a combine per ``fan_in`` of them; one combine of those."""
    if not submit:
        values = await asyncio.gather(*[sleepy(i, delay) for i in range(leaves)])
        parts = await asyncio.gather(
            *[combine({"values": group}) for group in _groups(list(values), fan_in)]
        )
        total: int = await combine({"values": list(parts)})
        COUNTERS.submitted += dag_tasks(leaves, fan_in)
        COUNTERS.done += dag_tasks(leaves, fan_in)
        return total
    futures = [sleepy.submit(i, delay) for i in range(leaves)]
    # Futures nested in the parameters: each runner resolves them its own way.
    mids = [combine.submit({"values": group}) for group in _groups(futures, fan_in)]
    last = combine.submit({"values": mids})
    COUNTERS.submitted += len(futures) + len(mids) + 1
    (total,) = await _collect([last])
    COUNTERS.done = COUNTERS.submitted
    return int(total)


def dag_tasks(leaves: int, fan_in: int) -> int:
    """How many task runs the DAG workload makes."""
    return leaves + len(range(0, leaves, fan_in)) + 1


async def _cpu(n: int, loops: int, submit: bool) -> int:
    if not submit:
        total = 0
        for i in range(n):
            total += crunch(i, loops)
            COUNTERS.submitted += 1
            COUNTERS.done += 1
        return total
    futures = [crunch.submit(i, loops) for i in range(n)]
    COUNTERS.submitted += n
    return sum(await _collect(futures))


async def _timed(
    label: str, expected: int, body: Callable[[dict[str, float]], Any], tasks: int
) -> dict[str, Any]:
    marks: dict[str, float] = {}
    started = time.perf_counter()
    got = await body(marks)
    total_s = time.perf_counter() - started
    if got != expected:
        raise RuntimeError(f"{label}: wrong result {got}, expected {expected}")
    figures = {"n": tasks, "total_s": total_s, "per_task_ms": 1000 * total_s / tasks}
    if "submitted" in marks:
        figures["submit_s"] = marks["submitted"] - started
    if "first" in marks:
        figures["first_s"] = marks["first"] - started
    return figures


@flow(name="aioray-bench", validate_parameters=False, log_prints=False)
async def bench_flow(plan: dict[str, Any], submit: bool = True) -> dict[str, Any]:
    """Run the workloads in ``plan`` (sizes per workload); return their figures.

    ``submit``: through the flow's task runner (``.submit``), or, when False,
    called in the flow (asyncio.gather for the async tasks, one after the other
    for the sync ones).
    """
    delay = plan["delay"]
    # Untimed: the first calls pay for worker start-up and imports.
    await _fanout(plan.get("warmup", 2), 0.0, submit, {})
    await _cpu(2, 10, submit)
    out: dict[str, Any] = {}
    if "fanout" in plan:
        n = plan["fanout"]
        out["fanout"] = await _timed(
            "fanout", n * (n - 1) // 2, lambda marks: _fanout(n, delay, submit, marks), n
        )
    if "dag" in plan:
        leaves, fan_in = plan["dag"]
        out["dag"] = await _timed(
            "dag",
            leaves * (leaves - 1) // 2,
            lambda marks: _dag(leaves, fan_in, delay, submit),
            dag_tasks(leaves, fan_in),
        )
    if "cpu" in plan:
        n, loops = plan["cpu"]
        out["cpu"] = await _timed("cpu", n * (n - 1) // 2, lambda marks: _cpu(n, loops, submit), n)
    return out


async def run_runner(name: str, plan: dict[str, Any], **runner_options: Any) -> dict[str, Any]:
    """Run :func:`bench_flow` under the runner called ``name``; add the flow's wall time.

    ``runner_options``: for :func:`make_runner` (``num_cpus`` at least).
    """
    runner = make_runner(name, **runner_options)
    options: dict[str, Any] = {"name": f"aioray-bench-{name}"}
    if runner is not None:
        options["task_runner"] = runner
    started = time.perf_counter()
    figures: dict[str, Any] = await bench_flow.with_options(**options)(plan, runner is not None)
    figures["flow_wall_s"] = time.perf_counter() - started
    return figures
