"""Task runs submitted from inside task runs run beside their parent (``_prefect/nested.py``).

No supervisor is started for them, at any depth: every level runs in a process
of the flow's own runner (or, under ``remote_options``, in a Ray task). Parity
of states and logs with ``ThreadPoolTaskRunner`` for nested tasks and subflows
is checked by the differential suite (``s_task_in_task``, ``s_subflow_in_task``).
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from prefect import flow, task
from prefect.task_runners import ThreadPoolTaskRunner

from aioray_runner import AioRayTaskRunner, aresult, remote_options
from tests._prefect_support import current_runner, poll, supervisor_pids

pytestmark = pytest.mark.usefixtures("ray_session", "prefect_api")

DEPTH = 33  # Prefect's own regression test (tests/test_task_runners.py, issue 14194)


class Holder:
    """Prefect leaves instances of plain classes alone: the future inside stays one."""

    def __init__(self, future: Any) -> None:
        self.future = future


@task
def recursive_task(n: int) -> list[int]:
    """Prefect's recursive test, with the pid of each level kept."""
    if n == 0:
        return [os.getpid()]
    time.sleep(0.1)
    return [os.getpid(), *recursive_task.submit(n - 1).result()]


@task
async def arecursive_task(n: int) -> list[int]:
    """The same, async: awaits its child at even levels, blocks its loop on it at odd ones."""
    if n == 0:
        return [os.getpid()]
    child = arecursive_task.submit(n - 1)
    below = await aresult(child) if n % 2 == 0 else child.result()
    return [os.getpid(), *below]


@flow
def recursive_flow(depth: int) -> dict[str, Any]:
    pids = recursive_task.submit(depth).result()
    apids = arecursive_task.submit(depth).result()
    runner = current_runner()
    flow_pids = supervisor_pids() if isinstance(runner, AioRayTaskRunner) else {os.getpid()}
    return {"pids": pids, "apids": apids, "flow_pids": flow_pids}


def test_recursive_submission_runs_on_the_flows_supervisors() -> None:
    """Prefect's 33 levels, sync and async: every level on the flow's own supervisors."""
    started = time.monotonic()
    under_threads = recursive_flow.with_options(task_runner=ThreadPoolTaskRunner())(DEPTH)
    threads_s = time.monotonic() - started
    started = time.monotonic()
    ours = recursive_flow.with_options(task_runner=AioRayTaskRunner())(DEPTH)
    ours_s = time.monotonic() - started
    print(f"\n{DEPTH} levels: thread pool {threads_s:.1f} s, AioRayTaskRunner {ours_s:.1f} s")

    assert len(under_threads["pids"]) == len(ours["pids"]) == DEPTH + 1
    assert len(under_threads["apids"]) == len(ours["apids"]) == DEPTH + 1
    # No runtime of its own per level: every level ran where the flow's runs run.
    assert set(ours["pids"]) <= ours["flow_pids"], (ours["pids"], ours["flow_pids"])
    assert set(ours["apids"]) <= ours["flow_pids"], (ours["apids"], ours["flow_pids"])


@task
def square(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


@task
def total(parts: list[tuple[int, int]]) -> int:
    return sum(value for value, _ in parts)


@task
async def fans_out_cpu(n: int) -> dict[str, Any]:
    """Sync children under remote_options run as Ray tasks; one waits for the others."""
    with remote_options(num_cpus=0.1):
        parts = [square.submit(i) for i in range(n)]
        summed = total.submit(parts)  # futures of nested runs, as a parameter
    return {
        "sum": await aresult(summed),
        "pids": {(await aresult(p))[1] for p in parts},
        "here": os.getpid(),
    }


@task
def plus_one(x: int) -> tuple[int, int]:
    return x + 1, os.getpid()


@flow
def child_flow(x: int) -> tuple[int, set[int]]:
    first, second = plus_one.submit(x).result(), plus_one(x)
    return first[0] + second[0], {first[1], second[1]}


@task
def calls_a_subflow(x: int) -> tuple[int, set[int]]:
    return child_flow(x)


@flow
def leaves_a_run(delay: float) -> Holder:
    return Holder(pid_after.submit(delay))


@task
async def acalls_a_subflow() -> str:
    """A subflow that ends on a running loop (this task's): the state of the run it
    left unawaited, as it returned (the thread pool's subflow waits for it)."""
    holder = leaves_a_run(0.5)
    return str(holder.future.state.type.value)


@flow
def asubflow_flow() -> str:
    return acalls_a_subflow.submit().result()


def test_a_subflow_in_an_async_task_ends_as_under_the_thread_pool() -> None:
    states = {
        name: asubflow_flow.with_options(task_runner=runner)()
        for name, runner in (("threads", ThreadPoolTaskRunner()), ("aioray", AioRayTaskRunner()))
    }
    assert states["aioray"] == states["threads"], states


@flow(task_runner=AioRayTaskRunner())
def nested_kinds_flow() -> dict[str, Any]:
    return {
        "cpu": fans_out_cpu.submit(4).result(),
        "subflow": calls_a_subflow.submit(10).result(),
        "flow_pids": supervisor_pids(),
    }


def test_nested_ray_tasks_and_subflows_start_no_supervisor() -> None:
    from prefect.client.orchestration import get_client

    state = nested_kinds_flow(return_state=True)
    seen = state.result()
    cpu, (subflow_value, subflow_pids) = seen["cpu"], seen["subflow"]
    assert cpu["sum"] == 0 + 1 + 4 + 9
    assert cpu["here"] in seen["flow_pids"]
    # num_cpus was honoured: the squares ran as Ray tasks, not on a supervisor.
    assert not cpu["pids"] & seen["flow_pids"], (cpu["pids"], seen["flow_pids"])
    assert subflow_value == 11 + 11
    assert subflow_pids <= seen["flow_pids"]  # the subflow's own task ran there too

    flow_run_id = state.state_details.flow_run_id

    def task_runs() -> dict[str, list[str]]:
        from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                task_run_filter=TaskRunFilter(
                    flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id])
                )
            )
        by_name: dict[str, list[str]] = {}
        for run in runs:
            by_name.setdefault(run.task_key.split("-")[0], []).append(run.state_type.value)
        return {name: sorted(states) for name, states in by_name.items()}

    # The nested runs are the flow run's task runs in the API, every one completed.
    expected = {
        "fans_out_cpu": ["COMPLETED"],
        "square": ["COMPLETED"] * 4,
        "total": ["COMPLETED"],
        "calls_a_subflow": ["COMPLETED"],
        "child_flow": ["COMPLETED"],  # the subflow's own task run, as Prefect makes it
    }
    poll(task_runs, lambda runs: runs == expected)


# -- subflows called by the flow: on the flow's supervisors -------------------------------------


@task
async def pid_after(delay: float) -> int:
    import asyncio

    await asyncio.sleep(delay)
    return os.getpid()


@flow(task_runner=AioRayTaskRunner())
def same_settings_subflow() -> dict[str, Any]:
    # A run left unawaited: the subflow still waits for it as it ends, as
    # Prefect's thread pool does.
    left = Holder(pid_after.submit(1.0))
    return {"pid": pid_after.submit(0).result(), "supervisors": supervisor_pids(), "left": left}


@flow(task_runner=AioRayTaskRunner(max_concurrency=7))
def other_settings_subflow() -> set[int]:
    return supervisor_pids()


@flow(task_runner=AioRayTaskRunner())
def calls_subflows() -> dict[str, Any]:
    own = supervisor_pids()
    same = same_settings_subflow()
    same["left_done"] = same.pop("left").future.state.is_completed()  # right as it returned
    other = other_settings_subflow()
    after = pid_after.submit(0).result()  # the flow's runtime still works after both
    return {"own": own, "same": same, "other": other, "after": after}


def test_a_subflow_with_the_same_runner_uses_the_flows_supervisors() -> None:
    seen = calls_subflows()
    own = seen["own"]
    assert seen["same"]["supervisors"] == own
    assert seen["same"]["pid"] in own
    assert seen["same"]["left_done"]  # the subflow's end waited for its run
    assert not seen["other"] & own  # other settings: supervisors of its own
    assert seen["after"] in own
