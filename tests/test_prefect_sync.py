"""Sync (``def``) tasks in threads of a supervisor, against a real Prefect API.

By default a sync task runs in a thread of a supervisor, in the flow run's
context entered once there, as Prefect's ``ThreadPoolTaskRunner`` runs it in the
flow's process. These tests check what Prefect promises for such runs:
ordering by finish time, many at once, logs and ``log_prints`` in the API,
hooks, results, retries, a timeout, a flow that ends while one runs, and the
warning for CPU-bound work. Placement and crash cases are in
``test_prefect_runner.py`` and ``test_prefect_faults.py``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect import flow, task
from prefect.futures import as_completed
from prefect.logging import get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from aioray_runner import AioRayTaskRunner
from tests._prefect_support import poll, read_logs, read_task_run_when, supervisor_pids
from tests._support import CollectRecords, gauge_peak, gauged_sleep_sync

pytestmark = pytest.mark.usefixtures("ray_session", "prefect_api")


# -- tasks (module level: pickled by reference, imported in the supervisors) ---------------


@task
def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@task
def gauged(token: str, delay: float, i: int) -> int:
    return gauged_sleep_sync(token, delay, i)


@task
def peak(token: str) -> int:
    return gauge_peak(token)


@task(log_prints=True)
def talks(word: str) -> dict[str, Any]:
    get_run_logger().info("logged %s from a thread", word)
    print(f"printed {word}")
    return {"pid": os.getpid(), "thread": threading.current_thread().name}


def write_hook(name: str, directory: str) -> Any:
    """A hook that writes which state it saw into ``directory`` (pickled by value)."""

    def hook(task: Any, task_run: Any, state: Any) -> None:
        (Path(directory) / f"{name}-{task_run.id}").write_text(state.type.value)

    return hook


@task
def hooked(directory: str, fail: bool) -> str:
    if fail:
        raise ValueError("asked to fail")
    return "ok"


@task(retries=2, retry_delay_seconds=0)
def flaky(directory: str) -> int:
    attempts = Path(directory) / "attempts"
    count = int(attempts.read_text()) + 1 if attempts.exists() else 1
    attempts.write_text(str(count))
    if count < 3:
        raise RuntimeError(f"attempt {count} fails")
    return count


@task(timeout_seconds=1)
def overruns() -> str:
    time.sleep(10)
    return "should have timed out"


@task
def slow_writer(path: str, seconds: float) -> str:
    time.sleep(seconds)
    Path(path).write_text("finished")
    return "finished"


@task
def burns_cpu(seconds: float) -> int:
    end = time.thread_time() + seconds
    count = 0
    while time.thread_time() < end:
        count += 1
    return count


# -- prefect-dask's ordering case: finish order, not submit order ----------------------------


@flow(task_runner=AioRayTaskRunner())
def finish_order() -> list[float]:
    futures = [sleep_for.submit(s) for s in (10, 5, 1)]
    return [future.result() for future in as_completed(futures)]


def test_as_completed_returns_sync_tasks_in_the_order_they_finish() -> None:
    """prefect-dask's test: 10, 5 and 1 s sleeps come back 1, 5, 10 on two cores."""
    assert finish_order() == [1, 5, 10]


# -- many I/O-bound sync tasks at once, in one supervisor ---------------------------------


@flow(task_runner=AioRayTaskRunner())
def many_at_once(n: int, token: str) -> dict[str, Any]:
    # One run first: the supervisor learns the task is I/O-bound (sync_tasks="auto"),
    # so the n runs below start at once (no wait for a first run's verdict).
    gauged.submit(f"{token}-first", 0.1, 0).result()
    futures = [gauged.submit(token, 1.0, i) for i in range(n)]
    results = [f.result() for f in futures]
    return {"results": results, "peak": peak.submit(token).result(), "sups": supervisor_pids()}


def test_io_bound_sync_tasks_wait_side_by_side() -> None:
    out = many_at_once(40, uuid.uuid4().hex)
    assert out["results"] == list(range(40))
    assert len(out["sups"]) == 1
    # All 40 slept at once in the one supervisor (RayTaskRunner: 2 at a time on 2 CPUs).
    assert out["peak"] == 40


# -- logs, log_prints, hooks, results, retries, timeouts ------------------------------------


@flow(task_runner=AioRayTaskRunner())
def prefect_promises(directory: str) -> dict[str, Any]:
    talked = talks.submit("hello")
    with_hooks = hooked.with_options(
        on_completion=[write_hook("completed", directory)],
        on_failure=[write_hook("failed", directory)],
    )
    good = with_hooks.submit(directory, False)
    bad = with_hooks.submit(directory, True)
    retried = flaky.submit(directory)
    late = overruns.submit()
    for future in (talked, good, bad, retried, late):
        future.wait()
    return {
        "talked": talked.result(),
        "talked_id": talked.task_run_id,
        "good": (good.state.type.value, good.result(), good.task_run_id),
        "bad": (bad.state.type.value, bad.task_run_id, str(bad.state.message)),
        "retried": (retried.result(), retried.state.type.value),
        "late": (late.state.type.value, late.state.name, str(late.state.message)),
        "sups": supervisor_pids(),
    }


def test_prefect_features_hold_for_sync_tasks_in_threads(tmp_path: Path) -> None:
    console = CollectRecords()
    task_runs = logging.getLogger("prefect.task_runs")
    task_runs.addHandler(console)
    try:
        state = prefect_promises(str(tmp_path), return_state=True)
    finally:
        task_runs.removeHandler(console)
    assert state.is_completed(), state
    out = state.result()
    flow_run_id = state.state_details.flow_run_id

    # It ran in a thread of the flow run's supervisor.
    assert out["talked"]["pid"] in out["sups"]
    assert out["talked"]["thread"].startswith("aioray-prefect-sync")

    # The run logger's line and the printed line reach the API, under the task run.
    def task_logs() -> list[str]:
        return [
            log.message for log in read_logs(flow_run_id) if log.task_run_id == out["talked_id"]
        ]

    messages = poll(
        task_logs,
        lambda ms: (
            any("logged hello from a thread" in m for m in ms)
            and any("printed hello" in m for m in ms)
        ),
    )
    # Each reached the API once (the flow's process only prints what it is sent).
    assert len([m for m in messages if "logged hello from a thread" in m]) == 1, messages
    # And the flow's process printed it, as Prefect's own runners do: the record
    # came from the supervisor with the task run's name, for Prefect's formatter.
    printed = [r for r in console.records if "logged hello from a thread" in r.getMessage()]
    assert len(printed) == 1, [r.getMessage() for r in console.records]
    assert printed[0].aioray_supervisor == 0  # type: ignore[attr-defined]
    assert printed[0].task_run_name.startswith("talks-")  # type: ignore[attr-defined]
    assert printed[0].send_to_api is False  # type: ignore[attr-defined]

    # Hooks ran, once each, with the final state; results came back.
    good_type, good_result, good_id = out["good"]
    bad_type, bad_id, bad_message = out["bad"]
    assert (good_type, good_result) == ("COMPLETED", "ok")
    assert bad_type == "FAILED" and "asked to fail" in bad_message
    assert (tmp_path / f"completed-{good_id}").read_text() == "COMPLETED"
    assert (tmp_path / f"failed-{bad_id}").read_text() == "FAILED"
    assert not (tmp_path / f"failed-{good_id}").exists()
    assert not (tmp_path / f"completed-{bad_id}").exists()

    # Retries: two failures, then a result from the third attempt.
    assert out["retried"] == (3, "COMPLETED")
    assert (tmp_path / "attempts").read_text() == "3"

    # timeout_seconds stops a sync task in a thread, as in Prefect's thread pool.
    late_type, late_name, late_message = out["late"]
    assert (late_type, late_name) == ("FAILED", "TimedOut"), out["late"]
    assert "1" in late_message


# -- a flow that ends while a sync task runs: as under the thread pool -----------------------


def ends_early(runner: Any, path: str) -> Any:
    @flow(task_runner=runner, timeout_seconds=2)
    def ends_while_a_task_runs() -> None:
        future = slow_writer.submit(path, 4)
        future.wait()

    return ends_while_a_task_runs(return_state=True)


def test_a_running_sync_task_finishes_when_its_flow_times_out(tmp_path: Path) -> None:
    """Neither runner can stop a thread: the run finishes, as under the thread pool."""
    outcomes = {}
    for name, runner in (("threadpool", ThreadPoolTaskRunner()), ("aioray", AioRayTaskRunner())):
        path = tmp_path / f"{name}.txt"
        state = ends_early(runner, str(path))
        outcomes[name] = (state.type.value, state.name, path.exists() and path.read_text())
    assert outcomes["aioray"] == outcomes["threadpool"], outcomes
    assert outcomes["aioray"][:2] == ("FAILED", "TimedOut")


# -- CPU-bound work kept in threads (sync_tasks="threads"): one warning, saying what to set ---


@flow(task_runner=AioRayTaskRunner(sync_tasks="threads"))
def cpu_in_threads() -> list[uuid.UUID]:
    futures = [burns_cpu.submit(0.6) for _ in range(2)]
    for future in futures:
        future.wait()
    return [future.task_run_id for future in futures]


def test_cpu_bound_sync_tasks_get_one_warning_naming_remote_options() -> None:
    state = cpu_in_threads(return_state=True)
    assert state.is_completed(), state
    first, second = state.result()
    read_task_run_when(first, lambda r: r.state.is_completed())
    flow_run_id = state.state_details.flow_run_id

    def warnings() -> list[Any]:
        return [log for log in read_logs(flow_run_id) if "Kept the CPU busy" in log.message]

    found = poll(warnings, lambda logs: len(logs) >= 1)
    time.sleep(1)  # a second warning would have landed by now
    found = warnings()
    assert len(found) == 1, [log.message for log in found]
    assert found[0].task_run_id in (first, second)
    assert "remote_options(num_cpus=1)" in found[0].message
    assert "burns_cpu" in found[0].message


# -- the default (sync_tasks="auto"): CPU-bound tasks found out, then given cores ------------


@task
def burns_cpu_where(seconds: float) -> int:
    burns_cpu.fn(seconds)
    return os.getpid()


@task
def sleeps_where(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@flow(task_runner=AioRayTaskRunner())
def placed_by_kind() -> dict[str, Any]:
    cpu = [burns_cpu_where.submit(0.4) for _ in range(4)]
    io = [sleeps_where.submit(0.3) for _ in range(20)]
    return {
        "cpu": [future.result() for future in cpu],
        "io": [future.result() for future in io],
        "supervisors": supervisor_pids(),
    }


def test_cpu_bound_sync_tasks_run_as_ray_tasks_once_found_out() -> None:
    state = placed_by_kind(return_state=True)
    assert state.is_completed(), state
    seen = state.result()
    supervisors = seen["supervisors"]
    # The I/O-bound task stays in threads of the supervisor, every run.
    assert set(seen["io"]) <= supervisors, seen
    # The CPU-bound task's first run (the probe) ran in a thread; the runs that
    # waited for its verdict ran as Ray tasks, in other processes.
    on_supervisor = [pid for pid in seen["cpu"] if pid in supervisors]
    assert len(on_supervisor) == 1, seen
    flow_run_id = state.state_details.flow_run_id

    def said() -> list[Any]:
        return [log for log in read_logs(flow_run_id) if "keep a core busy" in log.message]

    found = poll(said, lambda logs: len(logs) >= 1)
    assert len(found) == 1 and "burns_cpu_where" in found[0].message, found
    assert not [log for log in read_logs(flow_run_id) if "Kept the CPU busy" in log.message]
