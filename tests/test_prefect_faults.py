"""Faults under AioRayTaskRunner: supervisors killed mid-run, blocked loops.

Judged by what a user sees: the futures' final states and results in the flow,
the states and logs the Prefect API records, and that no finished run is ever
run again (the API never sees Completed followed by Running).
"""

from __future__ import annotations

import functools
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import prefect
import pytest
from prefect import flow, task
from prefect.states import StateType

from aioray_runner import AioRayTaskRunner, remote_options
from tests._prefect_support import (
    poll,
    read_logs,
    read_task_run_states,
    read_task_run_when,
    supervisor_pids,
    task_run_state_type,
)

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    pytest.mark.usefixtures("ray_session", "prefect_api"),
]


def assert_never_restarted_after_finishing(task_run_id: uuid.UUID) -> list[str]:
    """The API's state history of a run: nothing follows a final state but its end."""
    names = [f"{s.type.value}:{s.name}" for s in read_task_run_states(task_run_id)]
    finals = [i for i, n in enumerate(names) if n.split(":")[0] in ("COMPLETED", "FAILED")]
    assert not finals or finals[0] == len(names) - 1, names
    return names


# -- a task whose supervisor dies, with retries --------------------------------------------


@task(retries=1)
async def dies_once(marker: str) -> str:
    path = anyio.Path(marker)
    if not await path.exists():
        await path.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)  # the supervisor running it dies
    return f"second run, pid {os.getpid()}"


@task(retries=1)
def sync_dies_once(marker: str, supervisor_pid: int) -> str:
    path = Path(marker)
    if not path.exists():
        path.write_text("first")
        os.kill(supervisor_pid, signal.SIGKILL)  # the supervisor that started it
        time.sleep(30)  # if Ray lets this run on, it must not be the one that counts
    return "second run"


@task(retries=1)
def thread_dies_once(marker: str) -> str:
    """A sync task in a thread of a supervisor: killing its process kills the supervisor."""
    path = Path(marker)
    if not path.exists():
        path.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return f"second run, pid {os.getpid()}"


@task
async def dies_without_retries(marker: str) -> str:
    await anyio.Path(marker).write_text(str(os.getpid()))
    os.kill(os.getpid(), signal.SIGKILL)
    return "unreachable"


@flow(task_runner=AioRayTaskRunner())
async def crash_and_retry(tmp: str) -> dict[str, Any]:
    retried = dies_once.submit(str(Path(tmp) / "async.marker"))
    result = await retried
    (pid,) = supervisor_pids()
    with remote_options(num_cpus=1):  # a Ray task, started by the supervisor
        sync_retried = sync_dies_once.submit(str(Path(tmp) / "sync.marker"), pid)
    sync_result = await sync_retried
    thread_retried = thread_dies_once.submit(str(Path(tmp) / "thread.marker"))
    thread_result = await thread_retried
    # The next task kills its supervisor: let this run's last events reach the
    # API first (events a process has not sent yet die with it).
    read_task_run_when(thread_retried.task_run_id, lambda r: r.state.is_completed(), within=60)
    crashed = dies_without_retries.submit(str(Path(tmp) / "no-retries.marker"))
    await crashed.wait_async(timeout=120)
    return {
        "result": result,
        "id": retried.task_run_id,
        "sync_result": sync_result,
        "sync_id": sync_retried.task_run_id,
        "thread_result": thread_result,
        "thread_id": thread_retried.task_run_id,
        "crashed_type": crashed.state.type,
        "crashed_message": crashed.state.message or "",
        "crashed_id": crashed.task_run_id,
    }


async def test_a_crashed_run_with_retries_is_retried_on_the_replacement(tmp_path: Path) -> None:
    state = await crash_and_retry(str(tmp_path), return_state=True)
    assert state.is_completed(), state
    out = await state.result()
    first_pid = int((tmp_path / "async.marker").read_text())
    assert out["result"].startswith("second run") and str(first_pid) not in out["result"]
    assert out["sync_result"] == "second run"
    thread_first_pid = int((tmp_path / "thread.marker").read_text())
    assert out["thread_result"].startswith("second run")
    assert str(thread_first_pid) not in out["thread_result"]
    for key in ("id", "sync_id", "thread_id"):
        run = read_task_run_when(out[key], lambda r: r.state.is_completed(), within=60)
        names = assert_never_restarted_after_finishing(run.id)
        assert "SCHEDULED:AwaitingRetry" in names, names  # the crash was a retry
    # Without retries, the run ends Crashed, naming the dead supervisor.
    assert out["crashed_type"] == StateType.CRASHED
    assert "died" in out["crashed_message"] and "supervisor" in out["crashed_message"]
    poll(lambda: task_run_state_type(out["crashed_id"]), lambda t: t == "CRASHED", within=60)


# -- retry_condition_fn decides a retry after a crash, by the Prefect release's own rule ---------

# Prefect 3.9 calls any callable as retry_condition_fn; older releases call only
# plain functions and read anything else by its truth value (a truthy object
# means no retry). A crash is judged by the same rule as a raised error.
CALLS_ANY_CALLABLE = tuple(int(p) for p in prefect.__version__.split(".")[:2]) >= (3, 9)


class RetryIfLost:
    """A callable object (not a function) as retry_condition_fn."""

    def __init__(self, allow: bool) -> None:
        self.allow = allow

    def __call__(self, task: Any, task_run: Any, state: Any) -> bool:
        return self.allow and "died" in (state.message or "") + repr(state.data)


def _retry_if(allow: bool, task: Any, task_run: Any, state: Any) -> bool:
    return allow


async def _die_once(marker: str) -> str:
    path = anyio.Path(marker)
    if not await path.exists():
        await path.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return "second run"


dies_once_object_says_yes = task(retries=1, retry_condition_fn=RetryIfLost(True))(_die_once)
dies_once_partial_says_no = task(retries=1, retry_condition_fn=functools.partial(_retry_if, False))(
    _die_once
)


@flow(task_runner=AioRayTaskRunner())
async def crash_with_retry_conditions(tmp: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, made in (("yes", dies_once_object_says_yes), ("no", dies_once_partial_says_no)):
        future = made.submit(str(Path(tmp) / f"{name}.marker"))
        await future.wait_async(timeout=120)
        out[name] = (future.state.type, future.task_run_id)
        # Let the API record this run before the next kill (unsent events die too).
        read_task_run_when(future.task_run_id, lambda r: r.state.is_final(), within=60)
    return out


async def test_retry_condition_fn_decides_after_a_crash_as_prefect_does(tmp_path: Path) -> None:
    state = await crash_with_retry_conditions(str(tmp_path), return_state=True)
    assert state.is_completed(), state
    out = await state.result()
    yes_type, yes_id = out["yes"]
    no_type, no_id = out["no"]
    # A callable object saying yes: retried from Prefect 3.9 on, as Prefect's own
    # engine would; before 3.9 Prefect reads the object as "no retry".
    expected_yes = StateType.COMPLETED if CALLS_ANY_CALLABLE else StateType.CRASHED
    assert yes_type == expected_yes, out
    names = assert_never_restarted_after_finishing(yes_id)
    assert ("SCHEDULED:AwaitingRetry" in names) is CALLS_ANY_CALLABLE, names
    # A partial saying no: never retried (on 3.9 because it says no; before,
    # because it is not a plain function).
    assert no_type == StateType.CRASHED, out
    assert "SCHEDULED:AwaitingRetry" not in assert_never_restarted_after_finishing(no_id)


# -- a run that finished before its supervisor died keeps its outcome ----------------------------


@task(persist_result=True)
def finishes_while_its_supervisor_is_frozen(supervisor_pid: int) -> int:
    # Freeze the supervisor that waits for this run: it cannot hear that the
    # run finished. The run itself completes here, in its Ray worker.
    os.kill(supervisor_pid, signal.SIGSTOP)
    return 42


@flow(task_runner=AioRayTaskRunner())
async def finished_then_lost() -> dict[str, Any]:
    (pid,) = supervisor_pids()
    with remote_options(num_cpus=1):  # a Ray task: it runs on while its supervisor is frozen
        future = finishes_while_its_supervisor_is_frozen.submit(pid)
    try:
        # The API hears that the run completed; only then does the supervisor die.
        read_task_run_when(future.task_run_id, lambda r: r.state.is_completed(), within=90)
    finally:
        os.kill(pid, signal.SIGKILL)
    value = await future
    return {"value": value, "type": future.state.type, "id": future.task_run_id}


async def test_a_run_that_finished_keeps_its_result_when_its_supervisor_dies() -> None:
    state = await finished_then_lost(return_state=True)
    assert state.is_completed(), state
    out = await state.result()
    assert out["value"] == 42
    assert out["type"] == StateType.COMPLETED
    await anyio.sleep(2)  # any late state the runner might write would have landed
    assert task_run_state_type(out["id"]) == "COMPLETED"
    names = assert_never_restarted_after_finishing(out["id"])
    assert not [n for n in names if n.startswith("CRASHED")], names


# -- a blocked supervisor loop --------------------------------------------------------------------


@task
async def blocks_its_supervisor() -> str:
    time.sleep(1.5)  # noqa: ASYNC251 - the classic mistake this test is about
    return "done"


@flow(task_runner=AioRayTaskRunner())
async def blocked_flow() -> dict[str, Any]:
    future = blocks_its_supervisor.submit()
    await future
    return {"id": future.task_run_id}


async def test_a_blocked_loop_is_reported_in_the_task_runs_logs() -> None:
    state = await blocked_flow(return_state=True)
    out = await state.result()
    flow_run_id = state.state_details.flow_run_id

    def warnings() -> list[Any]:
        return [
            log
            for log in read_logs(flow_run_id)
            if "event loop was blocked" in log.message and log.task_run_id == out["id"]
        ]

    found = poll(warnings, bool, within=30)
    assert "blocks_its_supervisor" in found[0].message
    assert "test_prefect_faults.py" in found[0].message
    assert found[0].level == 30  # WARNING
