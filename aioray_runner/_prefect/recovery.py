"""Recovery of a task run whose supervisor died (docs/failures.md, "Prefect task runs
when a supervisor dies").

The runner submits every task run with ``reruns``; a rerun first reads what the
API recorded of the lost run (:func:`settled_task_run`) and then decides
(:func:`after_loss`): keep its final state, retry it with the retries it has
left, or end it ``Crashed`` (:func:`crashed_state`).
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Any
from uuid import UUID

from .._supervisor.attempt import Attempt
from . import compat


async def after_loss(task: Any, task_run_id: UUID, attempt: Attempt) -> tuple[Any, Any, Any]:
    """``(final state, task to run, task run to continue)`` for this run.

    On a first run: ``(None, task, None)``, run as usual. On a run after its
    supervisor died (see the module docstring above): the final state to return at
    once, or the task (with the retries it has left) and the task run to go on.
    Runs inside the flow run's context (its API client); ``attempt`` is the
    call's, read in the call's own context.
    """
    if attempt.number == 1:
        return None, task, None

    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext
    from prefect.states import AwaitingRetry

    from ..errors import SupervisorDiedError

    client = get_client()
    task_run = await settled_task_run(client, task_run_id)
    recorded = task_run.state if task_run is not None else None
    # Finished before its supervisor died: keep that outcome. Crashed is no
    # outcome of the task's own: a sync task's Ray worker dies with the
    # supervisor that started it, and says Crashed on its way out.
    if recorded is not None and recorded.is_final() and not recorded.is_crashed():
        return recorded, None, None

    loss = SupervisorDiedError(f"Task run {task.name!r} was lost: {attempt.previous_loss}")
    crashed = crashed_state(loss)
    attempts_so_far = max(task_run.run_count if task_run else 0, attempt.number - 1)
    retries = int(task.retries or 0)
    retry = attempts_so_far <= retries and await compat.retry_condition_allows(
        task, task_run, crashed
    )
    if retry:
        delay = retry_delay(task, attempts_so_far - 1)
        state: Any = AwaitingRetry(
            scheduled_time=datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=delay),
            message=f"Retry {attempts_so_far} of {retries} after a crash: {loss}",
        )
    else:
        state = crashed
    if task_run is not None:
        await client.set_task_run_state(task_run_id, state, force=True)
        task_run.state = state
    else:
        flow_run = FlowRunContext.get()
        task_run = await client.create_task_run(
            task=task,
            flow_run_id=flow_run.flow_run.id if flow_run and flow_run.flow_run else None,
            dynamic_key=f"{task.task_key}-{task_run_id.hex[:8]}",
            id=task_run_id,
            state=state,
        )
    if not retry:
        return crashed, None, None
    if delay:
        await asyncio.sleep(delay)
    # The engine counts retries from zero in each run: give it only what is left.
    return None, task.with_options(retries=retries - attempts_so_far), task_run


async def settled_task_run(client: Any, task_run_id: UUID) -> Any:
    """The task run as the API records it, once the lost run's news has landed.

    Prefect 3 records task-run states from the engine's events, a little after
    they happen: the lost run's last events (a Completed state, say) may still be
    on their way. Read until the state is final or has not changed for two
    reads a second apart, five seconds at most. Events the dead process had not
    sent yet are lost with it: then the run counts as not finished (best effort).
    """
    from prefect.exceptions import ObjectNotFound

    previous: Any = None
    task_run: Any = None
    for _ in range(5):
        await asyncio.sleep(1.0)
        try:
            task_run = await client.read_task_run(task_run_id)
        except ObjectNotFound:
            task_run = None  # not heard of (yet)
        state = task_run.state if task_run is not None else None
        if state is not None and state.is_final() and not state.is_crashed():
            return task_run
        key = (state.type, state.timestamp) if state is not None else None
        if key is not None and key == previous:
            return task_run
        previous = key
    return task_run


def retry_delay(task: Any, retry_index: int) -> float:
    delays = getattr(task, "retry_delay_seconds", None)
    if not delays:
        return 0.0
    if isinstance(delays, list | tuple):
        return float(delays[min(retry_index, len(delays) - 1)])
    return float(delays)


def crashed_state(exc: BaseException) -> Any:
    """Prefect's Crashed state for an exception raised outside the task's own code."""
    from prefect.states import exception_to_crashed_state

    # Without a result store the coroutine never awaits: run it to its end here,
    # so sync callers (and callbacks on the I/O thread) need no event loop.
    coro = exception_to_crashed_state(exc)
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("exception_to_crashed_state awaited unexpectedly")
