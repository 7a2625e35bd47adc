"""Final states under AioRayTaskRunner: dependencies, timeouts, retries, crashes.

Each test runs one flow on the session's Ray against the session's Prefect API,
then checks what the futures said and what the API recorded.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from prefect import flow, task
from prefect.runtime import task_run as current_task_run
from prefect.states import State, StateType
from prefect.utilities.annotations import allow_failure

from aioray_runner import AioRayTaskRunner, PrefectAioRayFuture
from tests._prefect_support import (
    poll,
    read_flow_run,
    read_task_run,
    read_task_run_states,
    read_task_run_when,
    supervisor_pids,
    task_run_state_type,
)

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("ray_session", "prefect_api")]


# -- tasks -----------------------------------------------------------------------------


@task
async def add(x: int, y: int = 0) -> int:
    return x + y


@task
async def boom(message: str) -> int:
    raise ValueError(message)


@task
async def total(values: list[int], mapping: dict[str, Any]) -> int:
    return sum(values) + mapping["x"] + sum(mapping["nested"].values())


@task
def sync_total(values: list[int]) -> int:
    return sum(values)


@task
async def describe(value: Any) -> str:
    return f"{type(value).__name__}: {value}"


@task
async def write_later(path: str, delay: float, text: str) -> None:
    await asyncio.sleep(delay)
    await anyio.Path(path).write_text(text)


@task
async def read_text(path: str) -> str:
    return await anyio.Path(path).read_text()


@task
def read_text_sync(path: str) -> str:
    return Path(path).read_text()


@task(timeout_seconds=1)
async def too_slow_async() -> str:
    await asyncio.sleep(120)
    return "finished"


@task(timeout_seconds=1)
def too_slow_sync() -> str:
    for _ in range(1200):
        time.sleep(0.1)
    return "finished"


@task(retries=2, retry_delay_seconds=0)
async def flaky_async() -> int:
    if current_task_run.run_count < 3:
        raise RuntimeError(f"attempt {current_task_run.run_count} fails")
    return current_task_run.run_count


@task(retries=2, retry_delay_seconds=0)
def flaky_sync() -> int:
    if current_task_run.run_count < 3:
        raise RuntimeError(f"attempt {current_task_run.run_count} fails")
    return current_task_run.run_count


@task(retries=1, retry_delay_seconds=0)
async def always_fails() -> None:
    raise RuntimeError("never works")


@task
async def interrupted_async() -> None:
    raise KeyboardInterrupt("interrupted in an async task")


@task
def interrupted_sync() -> None:
    raise KeyboardInterrupt("interrupted in a sync task")


@task
async def uses_lock(guard_lock: Any, value: int) -> int:
    return value


@task
def uses_lock_sync(guard_lock: Any, value: int) -> int:
    return value


@task
async def linger(pid_file: str) -> str:
    await anyio.Path(pid_file).write_text(str(os.getpid()))
    await asyncio.sleep(3600)
    return "woke"


def summary(future: PrefectAioRayFuture[Any]) -> dict[str, Any]:
    """What a finished future says about its run."""
    state: State[Any] = future.state
    return {
        "type": state.type,
        "name": state.name,
        "message": state.message or "",
        "id": future.task_run_id,
    }


async def settle(futures: dict[str, PrefectAioRayFuture[Any]]) -> dict[str, dict[str, Any]]:
    for future in futures.values():
        await future.wait_async(timeout=120)
    return {name: summary(future) for name, future in futures.items()}


# -- dependencies --------------------------------------------------------------------------


@flow(task_runner=AioRayTaskRunner())
async def dependencies(tmp: str) -> dict[str, Any]:
    a = add.submit(1)
    b = add.submit(2, 3)
    nested = total.submit([a, b, 10], {"x": a, "nested": {"y": b}})
    sync_nested = sync_total.submit([a, b, 100])
    chained = add.submit(nested, sync_nested)

    path = str(Path(tmp) / "ordered.txt")
    writer = write_later.submit(path, 0.5, "written first")
    reader = read_text.submit(path, wait_for=[writer])
    sync_reader = read_text_sync.submit(path, wait_for=[writer])

    failed = boom.submit("kaput")
    futures = {
        "failed": failed,
        "by_parameter": add.submit(failed),
        "nested_parameter": total.submit([a, failed], {"x": 1, "nested": {}}),
        "by_wait_for": add.submit(1, wait_for=[failed]),
        "sync_by_parameter": sync_total.submit([failed]),
        "sync_by_wait_for": read_text_sync.submit(path, wait_for=[failed]),
        "allowed_parameter": describe.submit(allow_failure(failed)),
        "allowed_wait_for": add.submit(5, wait_for=[allow_failure(failed)]),
    }
    return {
        "results": {
            "nested": await nested,
            "sync_nested": await sync_nested,
            "chained": await chained,
            "reader": await reader,
            "sync_reader": sync_reader.result(),
            "allowed_parameter": await futures["allowed_parameter"],
            "allowed_wait_for": await futures["allowed_wait_for"],
        },
        "states": await settle(futures),
    }


async def test_dependencies_nested_wait_for_not_ready_and_allow_failure(tmp_path: Path) -> None:
    state = await dependencies(str(tmp_path), return_state=True)
    assert state.is_completed(), state  # failed task runs it does not return do not fail it
    out = await state.result()
    assert out["results"] == {
        "nested": (1 + 5 + 10) + 1 + 5,
        "sync_nested": 1 + 5 + 100,
        "chained": 22 + 106,
        "reader": "written first",
        "sync_reader": "written first",
        "allowed_parameter": "ValueError: kaput",
        "allowed_wait_for": 5,
    }
    states = out["states"]
    assert states["failed"]["type"] == StateType.FAILED
    assert "kaput" in states["failed"]["message"]
    for name in (
        "by_parameter",
        "nested_parameter",
        "by_wait_for",
        "sync_by_parameter",
        "sync_by_wait_for",
    ):
        assert (states[name]["type"], states[name]["name"]) == (StateType.PENDING, "NotReady"), (
            name,
            states[name],
        )
        assert str(states["failed"]["id"]) in states[name]["message"], states[name]
        # The API agrees: the run never started.
        read_task_run_when(states[name]["id"], lambda run: run.state.name == "NotReady")
    for name in ("allowed_parameter", "allowed_wait_for"):
        assert states[name]["type"] == StateType.COMPLETED
        poll(lambda id=states[name]["id"]: task_run_state_type(id), lambda t: t == "COMPLETED")


# -- timeouts, retries, interrupts -------------------------------------------------------


@flow(task_runner=AioRayTaskRunner())
async def outcomes() -> dict[str, Any]:
    futures = {
        "timeout_async": too_slow_async.submit(),
        "timeout_sync": too_slow_sync.submit(),
        "flaky_async": flaky_async.submit(),
        "flaky_sync": flaky_sync.submit(),
        "always_fails": always_fails.submit(),
        "interrupted_async": interrupted_async.submit(),
        "interrupted_sync": interrupted_sync.submit(),
        "fine": add.submit(20, 22),
    }
    states = await settle(futures)
    states["flaky_async"]["result"] = await futures["flaky_async"]
    states["flaky_sync"]["result"] = futures["flaky_sync"].result()
    states["fine"]["result"] = await futures["fine"]
    try:
        await futures["timeout_async"]
    except BaseException as exc:
        states["timeout_async"]["raised"] = (type(exc).__name__, isinstance(exc, TimeoutError))
    return states


def _retry_history(task_run_id: Any) -> list[str]:
    return [s.name for s in read_task_run_states(task_run_id)]


async def test_timeouts_retries_and_interrupts_end_as_prefect_says(ray_session: None) -> None:
    state = await outcomes(return_state=True)
    assert state.is_completed(), state
    states = await state.result()

    for name in ("timeout_async", "timeout_sync"):
        got = states[name]
        assert (got["type"], got["name"]) == (StateType.FAILED, "TimedOut"), (name, got)
        assert "exceeded timeout of 1" in got["message"], got
        read_task_run_when(got["id"], lambda run: run.state.name == "TimedOut")
    raised, is_timeout_error = states["timeout_async"]["raised"]
    assert is_timeout_error, raised

    for name in ("flaky_async", "flaky_sync"):
        got = states[name]
        assert got["type"] == StateType.COMPLETED, (name, got)
        assert got["result"] == 3
        run = read_task_run_when(got["id"], lambda run: run.state.is_completed())
        assert run.run_count == 3, name
        history = _retry_history(got["id"])
        assert history.count("Retrying") == 2, (name, history)
        assert history[-1] == "Completed", (name, history)

    got = states["always_fails"]
    assert got["type"] == StateType.FAILED
    assert "never works" in got["message"]
    assert read_task_run_when(got["id"], lambda run: run.state.is_failed()).run_count == 2
    assert _retry_history(got["id"]).count("Retrying") == 1

    for name in ("interrupted_async", "interrupted_sync"):
        got = states[name]
        assert got["type"] == StateType.CRASHED, (name, got)
        poll(lambda id=got["id"]: task_run_state_type(id), lambda t: t == "CRASHED")

    # Prefect's own message for a KeyboardInterrupt. (In a Ray worker, Ray turns it
    # into a cancellation of the Ray task, so the sync run's message names that.)
    assert "aborted by an interrupt signal" in states["interrupted_async"]["message"]

    assert states["fine"]["result"] == 42


# -- a parameter that cannot be pickled -------------------------------------------------------


@flow(task_runner=AioRayTaskRunner())
async def unpicklable_parameter() -> dict[str, Any]:
    ok_before = add.submit(1, 2)
    bad = uses_lock.submit(threading.Lock(), 1)
    bad_sync = uses_lock_sync.submit(threading.Lock(), 2)
    ok_after = add.submit(3, 4)
    downstream = add.submit(bad, 1)
    futures = {"bad": bad, "bad_sync": bad_sync, "downstream": downstream}
    return {
        "ok": (await ok_before, await ok_after),
        "states": await settle(futures),
    }


async def test_an_unpicklable_parameter_fails_only_its_task_run() -> None:
    state = await unpicklable_parameter(return_state=True)
    assert state.is_completed(), state
    out = await state.result()
    assert out["ok"] == (3, 7)
    for name in ("bad", "bad_sync"):
        got = out["states"][name]
        assert got["type"] == StateType.FAILED, (name, got)
        assert "guard_lock" in got["message"], got
        assert "lock" in got["message"].lower() and "pickle" in got["message"].lower()
        api_state = read_task_run_when(got["id"], lambda run: run.state.is_failed()).state
        assert "guard_lock" in (api_state.message or ""), name
    # A run downstream of it does not start, as with any failed upstream.
    downstream = out["states"]["downstream"]
    assert (downstream["type"], downstream["name"]) == (StateType.PENDING, "NotReady"), downstream
    assert read_flow_run(state.state_details.flow_run_id).state.is_completed()


# -- a supervisor that dies ----------------------------------------------------------------


@flow(task_runner=AioRayTaskRunner())
async def supervisor_dies(tmp: str) -> dict[str, Any]:
    out: dict[str, Any] = {"before": await add.submit(1, 1)}
    (old_pid,) = supervisor_pids()
    pid_file = Path(tmp) / "supervisor.pid"
    victim = linger.submit(str(pid_file))
    deadline = time.monotonic() + 120
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the task never started"
        await asyncio.sleep(0.05)
    out["task_pid"] = int(pid_file.read_text())
    out["old_pid"] = old_pid
    os.kill(out["task_pid"], signal.SIGKILL)

    await victim.wait_async(timeout=60)
    out["victim"] = summary(victim)
    try:
        await victim
    except BaseException as exc:
        out["victim_raised"] = f"{type(exc).__name__}: {exc}"
    out["after"] = await add.submit(2, 2)
    out["new_pids"] = supervisor_pids()
    dependent = add.submit(victim, 1)
    await dependent.wait_async(timeout=60)
    out["dependent"] = summary(dependent)
    return out


async def test_a_dead_supervisor_crashes_its_runs_and_is_replaced(tmp_path: Path) -> None:
    state = await supervisor_dies(str(tmp_path), return_state=True)
    assert state.is_completed(), state
    out = await state.result()
    assert out["before"] == 2
    assert out["task_pid"] == out["old_pid"]  # the task ran in the supervisor we killed

    victim = out["victim"]
    assert victim["type"] == StateType.CRASHED, victim
    assert "SupervisorDiedError" in victim["message"], victim
    assert str(out["old_pid"]) in victim["message"]
    assert "died" in victim["message"]
    assert "died" in out["victim_raised"]

    # The API learns of the crash too.
    poll(lambda: task_run_state_type(victim["id"]), lambda t: t == "CRASHED", within=30)
    assert "died" in (read_task_run(victim["id"]).state.message or "")

    # Later runs of the same flow use a replacement supervisor.
    assert out["after"] == 4
    assert len(out["new_pids"]) == 1 and out["old_pid"] not in out["new_pids"]
    dependent = out["dependent"]
    assert (dependent["type"], dependent["name"]) == (StateType.PENDING, "NotReady"), dependent


@flow(task_runner=AioRayTaskRunner())
async def records_a_crash_the_api_never_heard_of() -> str:
    # What the runner does when a supervisor dies before the engine's events
    # (which create the task run in the API) left it: the run is created, crashed.
    from aioray_runner._prefect import recovery
    from aioray_runner._prefect.records import record_state
    from aioray_runner.errors import SupervisorDiedError

    task_run_id = uuid.uuid4()
    error = SupervisorDiedError("supervisor 0 (pid 1) died before the run was reported")
    record_state(add, task_run_id, recovery.crashed_state(error))
    return str(task_run_id)


async def test_a_crash_is_recorded_even_for_a_run_the_api_never_heard_of() -> None:
    task_run_id = uuid.UUID(await records_a_crash_the_api_never_heard_of())
    run = read_task_run(task_run_id)
    assert run.state.type == StateType.CRASHED
    assert "died before the run was reported" in (run.state.message or "")
    assert run.task_key == add.task_key
