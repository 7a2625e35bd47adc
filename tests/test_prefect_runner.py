"""AioRayTaskRunner with the session's Ray and a real Prefect API: futures and placement.

Every flow run starts supervisors of its own (a new Ray actor that imports
Prefect and enters the flow run's context: seconds of set-up; a subflow with the
same runner settings uses its parent's), so each test runs one flow that checks
several things.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import logging
import os
import threading
import uuid
from typing import Any

import pytest
import ray
from prefect import flow, task
from prefect.futures import PrefectFutureList, as_completed, wait
from prefect.logging import get_logger
from prefect.states import StateType
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import unmapped

from aioray_runner import AioRayTaskRunner, PrefectAioRayFuture, remote_options
from tests._prefect_support import (
    current_runner,
    poll,
    read_flow_run,
    read_logs,
    supervisor_pids,
)
from tests._support import TEST_RESOURCE, CollectRecords, gauge_peak, gauged_sleep

pytestmark = pytest.mark.usefixtures("ray_session", "prefect_api")


# -- tasks (module level: pickled by reference, imported in the supervisors) ---------------


@task
async def nap(i: int, delay: float = 0.0) -> int:
    await asyncio.sleep(delay)
    return i


@task
async def gauged_nap(token: str, delay: float, i: int) -> int:
    """Counts, in the supervisor's process, how many of these sleep at once."""
    return await gauged_sleep(token, delay, i)


@task
async def peak_of(token: str) -> int:
    return gauge_peak(token)


@task
async def where_async() -> dict[str, Any]:
    context = ray.get_runtime_context()
    return {
        "pid": os.getpid(),
        "actor_id": context.get_actor_id(),
        "resources": context.get_assigned_resources(),
    }


@task
def where_sync(x: int) -> dict[str, Any]:
    context = ray.get_runtime_context()
    return {
        "x": x,
        "pid": os.getpid(),
        "thread": threading.current_thread().name,
        "actor_id": context.get_actor_id(),
        "task_id": context.get_task_id(),
        "resources": context.get_assigned_resources(),
    }


@task
def square(x: int) -> int:
    return x * x


def block_on(future: PrefectAioRayFuture[int]) -> int:
    """Plain sync code that blocks on a future (inside an async flow's loop thread)."""
    return future.result(timeout=120)


# -- an async flow: the future API ---------------------------------------------------------


@flow(task_runner=AioRayTaskRunner())
async def async_future_api(n: int, token: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    first = nap.submit(41)
    assert isinstance(first, PrefectAioRayFuture)
    out["await_submit"] = await first
    out["first_state"] = first.state.type

    # n async sleeps at once on the supervisor.
    futures = gauged_nap.map(unmapped(token), unmapped(0.5), range(n))
    out["map_type"] = type(futures).__name__
    out["awaited"] = [await f for f in futures]
    out["peak"] = await peak_of.submit(token)
    out["list_result"] = futures.result()

    # PrefectFutureList.result() and Prefect's wait() right after submitting, blocking the loop.
    out["fresh_list_result"] = nap.map(range(5)).result()
    batch = [nap.submit(i, 0.05) for i in range(5)]
    done, not_done = wait(batch)
    out["wait"] = (len(done), len(not_done), sorted(f.result() for f in done))

    # Sync code blocking on a future it has just submitted.
    out["sync_result"] = block_on(nap.submit(7, 0.05))

    # add_done_callback: before and after the run finishes.
    calls: list[tuple[bool, uuid.UUID]] = []
    called = threading.Event()
    watched = nap.submit(3, 0.2)

    def callback(fut: Any) -> None:
        calls.append((fut is watched, fut.task_run_id))
        called.set()

    watched.add_done_callback(callback)
    out["watched"] = await watched
    out["callback_fired"] = await asyncio.to_thread(called.wait, 30)
    late: list[Any] = []
    watched.add_done_callback(late.append)
    out["callbacks"] = (calls, watched.task_run_id, late == [watched])

    # wait_async / result_async with timeouts on a run still going.
    slow = nap.submit(9, 3.0)
    await slow.wait_async(timeout=0.05)
    out["slow_final_after_short_wait"] = slow._final_state
    try:
        await slow.result_async(timeout=0.05)
    except TimeoutError as exc:
        out["result_async_timeout"] = str(exc)
    await slow.wait_async()
    out["slow"] = (slow.state.type, await slow.result_async(), slow.result())
    return out


@pytest.mark.anyio
async def test_async_flow_future_api() -> None:
    token = uuid.uuid4().hex
    n = 200
    out = await async_future_api(n, token)

    assert out["await_submit"] == 41
    assert out["first_state"] == StateType.COMPLETED
    assert out["map_type"] == PrefectFutureList.__name__
    assert out["awaited"] == list(range(n))
    assert out["list_result"] == list(range(n))
    # They slept together on the supervisor's loop, not one or two at a time.
    assert out["peak"] >= 10, out["peak"]
    assert out["fresh_list_result"] == list(range(5))
    assert out["wait"] == (5, 0, [0, 1, 2, 3, 4])
    assert out["sync_result"] == 7

    assert out["watched"] == 3
    assert out["callback_fired"] is True
    calls, watched_id, late_called_at_once = out["callbacks"]
    assert calls == [(True, watched_id)]
    assert late_called_at_once

    assert out["slow_final_after_short_wait"] is None
    assert "did not complete within" in out["result_async_timeout"]
    assert out["slow"] == (StateType.COMPLETED, 9, 9)


# -- Prefect's as_completed / wait(timeout=...) called right after submitting ---------------


@flow(task_runner=AioRayTaskRunner())
async def blocking_waits_right_after_submit() -> dict[str, Any]:
    # Warm the supervisor first, so the timeouts below only cover 0.1 s tasks.
    await nap.submit(0)
    out: dict[str, Any] = {}
    futures = nap.map(range(5), delay=unmapped(0.1))
    try:
        out["as_completed"] = sorted(f.result() for f in as_completed(futures, timeout=15))
    except TimeoutError as exc:
        out["as_completed"] = f"{type(exc).__name__}: {exc}"
    futures = nap.map(range(5), delay=unmapped(0.1))
    done, not_done = wait(futures, timeout=15)
    out["wait_timeout"] = (len(done), len(not_done))
    futures = nap.map(range(5), delay=unmapped(0.1))
    try:
        out["list_result_timeout"] = futures.result(timeout=15)
    except TimeoutError as exc:
        out["list_result_timeout"] = f"{type(exc).__name__}: {exc}"
    return out


@pytest.mark.anyio
async def test_as_completed_and_timed_waits_right_after_submit() -> None:
    """Prefect's as_completed, wait(timeout=) and PrefectFutureList.result(timeout=)
    block the flow's thread until done callbacks fire.

    In an async flow the runs just submitted are still queued for the end of the
    loop's turn, which cannot come while the thread is blocked: the futures must be
    sent when a callback is added (as ``wait()`` does), or these never finish.
    """
    out = await blocking_waits_right_after_submit()
    assert out == {
        "as_completed": [0, 1, 2, 3, 4],
        "wait_timeout": (5, 0),
        "list_result_timeout": [0, 1, 2, 3, 4],
    }


# -- a sync flow --------------------------------------------------------------------------


@flow(task_runner=AioRayTaskRunner())
def sync_flow_using_the_runner(n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async_future = nap.submit(5, 0.05)
    sync_future = square.submit(4)
    out["results"] = (async_future.result(timeout=120), sync_future.result(timeout=120))
    squares = square.map(range(n))
    out["as_completed"] = sorted(f.result() for f in as_completed(squares, timeout=120))
    naps = nap.map(range(n), delay=unmapped(0.05))
    done, not_done = wait(naps, timeout=120)
    out["wait"] = (len(done), len(not_done))
    out["naps"] = naps.result()
    out["state"] = squares[0].state.type
    return out


def test_sync_flow_using_the_runner() -> None:
    state = sync_flow_using_the_runner(6, return_state=True)
    assert state.is_completed(), state
    out = state.result()
    assert out["results"] == (5, 16)
    assert out["as_completed"] == [i * i for i in range(6)]
    assert out["wait"] == (6, 0)
    assert out["naps"] == list(range(6))
    assert out["state"] == StateType.COMPLETED
    assert read_flow_run(state.state_details.flow_run_id).state.is_completed()


# -- where tasks run, and remote_options ---------------------------------------------------


@flow(task_runner=AioRayTaskRunner())
async def placement() -> dict[str, Any]:
    out: dict[str, Any] = {"flow_pid": os.getpid()}
    out["supervisor_pids"] = supervisor_pids()
    out["async_default"] = await where_async.submit()
    out["sync_default"] = await where_sync.submit(1)
    with remote_options(num_cpus=2):
        out["sync_two_cpus"] = await where_sync.submit(2)
    with remote_options(num_cpus=0.5, resources={TEST_RESOURCE: 1}):
        out["sync_resource"] = await where_sync.submit(3)
    # An async task with a placement option runs on a supervisor started with it.
    with remote_options(num_cpus=1, resources={TEST_RESOURCE: 2}):
        out["async_placed"] = await where_async.submit()
        out["async_placed_again"] = await where_async.submit()
    out["async_default_again"] = await where_async.submit()
    out["supervisor_pids_after"] = supervisor_pids()
    return out


@flow(task_runner=AioRayTaskRunner(sync_tasks="ray"))
async def every_sync_task_a_ray_task() -> dict[str, Any]:
    return {
        "flow_pid": os.getpid(),
        "supervisors": supervisor_pids(),
        "sync": await where_sync.submit(4),
    }


@pytest.mark.anyio
async def test_sync_tasks_run_in_supervisor_threads_unless_given_ray_options() -> None:
    out = await placement()
    flow_pid = out["flow_pid"]
    (default_supervisor,) = out["supervisor_pids"]

    # Async tasks run in the (default) supervisor actor, which holds no CPU.
    assert out["async_default"]["pid"] == default_supervisor
    assert out["async_default"]["actor_id"] is not None
    assert "CPU" not in out["async_default"]["resources"]

    # A sync task with no Ray options runs in a thread of the default supervisor.
    assert out["sync_default"]["x"] == 1
    assert out["sync_default"]["pid"] == default_supervisor
    assert out["sync_default"]["thread"].startswith("aioray-prefect-sync")
    # With Ray options, a sync task runs as a Ray task: a worker that is neither
    # the flow nor a supervisor, holding what the options asked for.
    sync_runs = [out[k] for k in ("sync_two_cpus", "sync_resource")]
    assert [r["x"] for r in sync_runs] == [2, 3]
    for run in sync_runs:
        assert run["pid"] not in (flow_pid, default_supervisor)
        assert run["actor_id"] is None
        assert run["task_id"] is not None
    assert out["sync_two_cpus"]["resources"].get("CPU") == 2.0
    assert out["sync_resource"]["resources"].get("CPU") == 0.5
    assert out["sync_resource"]["resources"].get(TEST_RESOURCE) == 1.0

    # Async tasks under placement options: a second supervisor that holds them.
    placed = out["async_placed"]
    assert placed["pid"] not in (flow_pid, default_supervisor)
    assert placed["actor_id"] is not None
    assert placed["resources"].get("CPU") == 1.0
    assert placed["resources"].get(TEST_RESOURCE) == 2.0
    assert out["async_placed_again"]["pid"] == placed["pid"]
    assert out["async_default_again"]["pid"] == default_supervisor
    assert out["supervisor_pids_after"] == {default_supervisor, placed["pid"]}

    # sync_tasks="ray": every sync task is a Ray task with a CPU, as under RayTaskRunner.
    ray_out = await every_sync_task_a_ray_task()
    run = ray_out["sync"]
    assert run["pid"] not in (ray_out["flow_pid"], *ray_out["supervisors"])
    assert run["actor_id"] is None and run["resources"].get("CPU") == 1.0


# -- subflows ------------------------------------------------------------------------------


@flow(task_runner=AioRayTaskRunner())
async def child_flow(values: list[int]) -> dict[str, Any]:
    futures = nap.map(values)
    return {
        "results": [await f for f in futures],
        "runner_key": current_runner()._key,
        "supervisors": supervisor_pids(),
        "where": await where_async.submit(),
    }


@flow(task_runner=AioRayTaskRunner())
async def parent_flow() -> dict[str, Any]:
    before = await nap.submit(1)
    child = await child_flow([2, 3, 4])
    after = await nap.submit(5)
    return {
        "results": (before, child["results"], after),
        "child": child,
        "parent_runner_key": current_runner()._key,
        "parent_supervisors": supervisor_pids(),
        "parent_where": await where_async.submit(),
    }


@pytest.mark.anyio
async def test_subflow_with_its_own_runner() -> None:
    out = await parent_flow()
    assert out["results"] == (1, [2, 3, 4], 5)
    child = out["child"]
    # The subflow's runner is its own (its own flow run scope on the supervisors),
    # but with the parent's settings it runs on the parent's supervisors
    # (tests/test_prefect_nested.py: other settings start their own).
    assert child["runner_key"] != out["parent_runner_key"]
    assert child["supervisors"] == out["parent_supervisors"]
    assert child["where"]["pid"] in out["parent_supervisors"]
    assert out["parent_where"]["pid"] in out["parent_supervisors"]


# -- settings, like prefect-ray's RayTaskRunner ----------------------------------------------


def test_duplicate_and_equality_like_prefect_ray() -> None:
    from prefect_ray import RayTaskRunner

    runner = AioRayTaskRunner(
        address="ray://127.0.0.1:10001",
        init_kwargs={"num_cpus": 2},
        supervisors=2,
        max_concurrency=50,
        threads=4,
        actor_options={"memory": 10**8},
    )
    copy = runner.duplicate()
    assert copy is not runner
    assert type(copy) is AioRayTaskRunner
    assert copy == runner
    assert copy.address == "ray://127.0.0.1:10001"
    assert copy.init_kwargs == {"num_cpus": 2, "namespace": "prefect"}  # as RayTaskRunner
    settings = copy.settings
    assert (settings.supervisors, settings.max_concurrency, settings.threads) == (2, 50, 4)
    assert settings.actor_options == {"memory": 10**8}
    assert copy._runtime is None and not copy._started

    # As in prefect-ray: same settings compare equal; other settings or classes do not.
    ray_runner = RayTaskRunner(address="ray://127.0.0.1:10001", init_kwargs={"num_cpus": 2})
    assert ray_runner.init_kwargs == runner.init_kwargs
    assert AioRayTaskRunner() == AioRayTaskRunner()
    assert AioRayTaskRunner(address="auto") != AioRayTaskRunner()
    assert AioRayTaskRunner(init_kwargs={"num_cpus": 1}) != AioRayTaskRunner()
    assert AioRayTaskRunner(supervisors=2) != AioRayTaskRunner()
    assert AioRayTaskRunner() != RayTaskRunner()
    assert AioRayTaskRunner() != ThreadPoolTaskRunner()
    # The caller's dict is copied, not shared.
    kwargs = {"num_cpus": 1}
    owner = AioRayTaskRunner(init_kwargs=kwargs)
    kwargs["num_cpus"] = 8
    assert owner.init_kwargs["num_cpus"] == 1


def test_flow_decorator_accepts_the_class_and_an_instance() -> None:
    @flow(task_runner=AioRayTaskRunner)
    def by_class() -> None: ...

    @flow(task_runner=AioRayTaskRunner(supervisors=1))
    def by_instance() -> None: ...

    assert isinstance(by_class.task_runner, AioRayTaskRunner)
    assert by_instance.task_runner == AioRayTaskRunner(supervisors=1)


def test_prefect_collections_entry_point_is_registered() -> None:
    entry_points = importlib.metadata.entry_points(group="prefect.collections")
    ours = [ep for ep in entry_points if ep.name == "aioray_runner"]
    assert len(ours) == 1, [ep.name for ep in entry_points]
    assert ours[0].value == "aioray_runner"
    module = ours[0].load()
    assert module.AioRayTaskRunner is AioRayTaskRunner
    assert module.remote_options is remote_options


def test_an_unstarted_runner_refuses_to_submit() -> None:
    with pytest.raises(RuntimeError, match="must be started"):
        AioRayTaskRunner().submit(nap, {"i": 1})


# -- console="summary": one line instead of a line per task run ----------------------------


@task
async def quietly(i: int) -> int:
    from prefect import get_run_logger

    if i == 3:
        get_run_logger().warning("item %d looks odd", i)
    return i


@task
def fails_quietly() -> None:
    raise ValueError("boom")


@flow(task_runner=AioRayTaskRunner(console="summary"))
async def summarised() -> Any:
    values = [await f for f in quietly.map(range(8))]
    failed = fails_quietly.submit()
    failed.wait()
    return values, failed.task_run_id


def test_console_summary_prints_problems_and_one_line_and_the_api_keeps_every_line() -> None:
    console = CollectRecords()
    watched = [logging.getLogger("prefect.task_runs"), get_logger("task_runner.aioray")]
    for logger in watched:
        logger.addHandler(console)
    try:
        state = asyncio.run(summarised(return_state=True))
    finally:
        for logger in watched:
            logger.removeHandler(console)
    assert state.is_completed(), state
    result = state.result()  # a coroutine in an async context on some Prefect releases
    values, failed_id = asyncio.run(result) if inspect.isawaitable(result) else result
    assert values == list(range(8))
    printed = [r.getMessage() for r in console.records if r.name == "prefect.task_runs"]
    # No "Finished in state Completed()" line per run; the warning and the failure print.
    assert not [m for m in printed if "Completed()" in m], printed
    assert any("item 3 looks odd" in m for m in printed), printed
    assert any("boom" in m for m in printed), printed
    [summary] = [r.getMessage() for r in console.records if "task run(s) ended" in r.getMessage()]
    assert "9 task run(s) ended" in summary and "8 Completed, 1 Failed" in summary, summary
    # Prefect's API still has every run's own lines.
    flow_run_id = state.state_details.flow_run_id
    finished = poll(
        lambda: [
            log
            for log in read_logs(flow_run_id)
            if "Finished in state" in log.message and log.task_run_id is not None
        ],
        lambda logs: len(logs) >= 9,
    )
    assert len({log.task_run_id for log in finished}) == 9
    assert failed_id in {log.task_run_id for log in finished}


def test_console_must_be_runs_or_summary() -> None:
    with pytest.raises(ValueError, match=r"console must be 'runs'.*not 'quiet'"):
        AioRayTaskRunner(console="quiet")  # type: ignore[arg-type]


def test_a_runner_pickles_with_its_choices_and_without_its_machinery() -> None:
    # Prefect pickles the flow, and so its runner, into the context each task run
    # gets (some releases on every submit): locks must not travel.
    import cloudpickle

    runner = AioRayTaskRunner(console="summary", sync_tasks="ray", supervisors=1)
    copy = cloudpickle.loads(cloudpickle.dumps(runner))
    assert copy == runner
    assert (copy.console, copy.sync_tasks) == ("summary", "ray")
    assert copy.duplicate() == runner
