"""What Prefect's API records of a runner's task runs: waiting until it has them, and
recording a state the flow's process learned itself (a run lost with its supervisor,
a run that could not be sent).

Everything here talks to the API from the flow's process, and never fails the flow:
an API that does not answer is logged and waited for no longer.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext

from . import api
from .recovery import READ_CHUNK, SETTLE_S

if TYPE_CHECKING:
    from prefect.tasks import Task

logger = logging.getLogger("aioray_runner")

#: Seconds to wait at most for Prefect's temporary API to record the task runs.
RECORD_WAIT_S = 120.0
#: ... and without progress: an API that records nothing more for this long has
#: stopped (or lost those events), and waiting longer would only delay the exit.
RECORD_STALL_S = 10.0
# States a task run has before its end. Pending counts only under its own name:
# Pending("NotReady") is how a run whose upstream failed ends.
_NOT_FINAL = ("SCHEDULED", "RUNNING", "PAUSED", "CANCELLING")


class Unrecorded(NamedTuple):
    """Task runs the API had not recorded as ended when :func:`wait_until_recorded` stopped."""

    runs: int
    #: Names of some of them (``"name (id)"``), for the warning.
    names: list[str]


def wait_until_recorded(
    flow_run_id: uuid.UUID,
    submitted: int | None,
    within: float = RECORD_WAIT_S,
    say: Callable[..., None] | None = None,
    stall: float = RECORD_STALL_S,
) -> Unrecorded | None:
    """With Prefect's temporary API, wait until it has recorded every task run's end.

    Returns what it has not recorded (or not as final) when the wait ends, or
    None where nothing was waited for or the API did not answer.
    ``submitted=None``: only runs the API has are waited for (after an
    interrupt, runs cancelled before they started never reach it, as under
    Prefect's own runners).

    That API records task-run states from the engine's events, a moment after
    they happen (seconds after, when a flow ends hundreds of task runs at once
    on a busy machine), and it stops when the flow's process exits: a script
    whose flow returns right after its last task stops it mid-write, Prefect logs
    ``Error flushing N events`` and those task runs keep a non-final state. A
    server of your own (``PREFECT_API_URL``) keeps running, so nothing is
    waited for there. The wait goes on while the API makes progress: it ends
    after ``stall`` seconds without any, and ``within`` seconds at most. ``say``
    gets one line if there is anything to wait for (the flow seems to pause
    otherwise).
    """
    if not api.uses_temporary_api():
        return None
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateName,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    of_this_flow = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    unfinished = TaskRunFilter(
        state=TaskRunFilterState(
            type=TaskRunFilterStateType(any_=[StateType(t) for t in _NOT_FINAL])
        )
    )
    just_pending = TaskRunFilter(
        state=TaskRunFilterState(
            type=TaskRunFilterStateType(any_=[StateType.PENDING]),
            name=TaskRunFilterStateName(any_=["Pending"]),
        )
    )
    started = time.monotonic()
    deadline = started + within
    missing: int | None = None
    try:
        with get_client(sync_client=True) as client:

            def count(task_runs: TaskRunFilter | None = None) -> int:
                body = {"flow_runs": of_this_flow.model_dump(mode="json")}
                if task_runs is not None:
                    body["task_runs"] = task_runs.model_dump(mode="json")
                response = client.request("POST", "/task_runs/count", json=body)
                response.raise_for_status()
                return int(response.json())

            said = False
            fewest, progress_at = -1, started
            while True:
                missing = count(unfinished) + count(just_pending)
                if submitted is not None:
                    missing += max(0, submitted - count())
                now = time.monotonic()
                if fewest < 0 or missing < fewest:
                    fewest, progress_at = missing, now
                if not missing or now >= deadline or now - progress_at >= stall:
                    break
                if not said and say is not None:
                    said = True  # a pause at the end of a flow, explained once
                    say(
                        "Waiting for Prefect's temporary API to record the end of %d task"
                        " run(s): it stops when this process exits",
                        missing,
                    )
                time.sleep(0.2)
            if not missing:
                return Unrecorded(0, [])
            runs = client.read_task_runs(
                flow_run_filter=of_this_flow, task_run_filter=unfinished, limit=5
            )
            return Unrecorded(missing, [f"{run.name} ({run.id})" for run in runs])
    except Exception:  # the API going away must not fail the flow
        logger.debug("could not read the task runs back from the API", exc_info=True)
    return None if missing is None else Unrecorded(missing, [])


def record_state(
    task: Task[Any, Any], task_run_id: uuid.UUID, state: State[Any], *, exists: bool = True
) -> bool:
    """Give a task run this final state in the API, creating the run if the API
    has not heard of it (never sent, or its supervisor died before the engine's
    events reached the API: Prefect creates task runs from those events).

    Runs in the flow's context (for the flow run and its API client settings).
    Returns whether the API took it (a failure is logged, never raised).
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    try:
        with get_client(sync_client=True) as client:
            if exists:
                try:
                    client.set_task_run_state(task_run_id, state, force=True)
                    return True
                except ObjectNotFound:
                    pass
                except PrefectHTTPStatusError as exc:  # what set_state raises for a 404
                    if exc.response.status_code != 404:
                        raise
            flow_run = FlowRunContext.get()
            client.create_task_run(
                task=task,
                flow_run_id=flow_run.flow_run.id if flow_run and flow_run.flow_run else None,
                # The run's own id: the next key of this flow run's counter may
                # already name another run (made on a supervisor), and Prefect
                # then returns that run instead of making this one.
                dynamic_key=task_run_id.hex,
                id=task_run_id,
                state=state,
            )
        return True
    except Exception:
        logger.exception(
            "Could not record the %s state of task run %s in the API", state.type.value, task_run_id
        )
        return False


def record_missed_finals(finals: dict[uuid.UUID, tuple[Task[Any, Any], State[Any]]]) -> list[str]:
    """Put in the API the final states the flow's process knows and the API lacks.

    ``finals`` are task runs that finished on a supervisor which died later: the
    engine there had emitted their final state as an event, and events a process
    has not sent yet die with it, so the API may still show them Running (or not
    know them at all). Each one whose API state is still not the flow's a moment
    later (events already sent are not overtaken) is given the flow's, forced.
    Returns the names of the runs that could not be recorded (the API refused or
    did not answer). Runs in the flow's context.
    """
    from prefect.client.orchestration import get_client

    def differs(states: dict[uuid.UUID, Any], task_run_id: uuid.UUID) -> bool:
        in_api, state = states.get(task_run_id), finals[task_run_id][1]
        return in_api is None or (in_api.type, in_api.name) != (state.type, state.name)

    try:
        with get_client(sync_client=True) as client:
            states = _read_states(client, list(finals))
            missed = [task_run_id for task_run_id in finals if differs(states, task_run_id)]
            if missed:
                # Events already on their way are not overtaken.
                time.sleep(SETTLE_S)
                states = _read_states(client, missed)
                missed = [task_run_id for task_run_id in missed if differs(states, task_run_id)]
    except Exception:
        logger.debug("could not read the task runs back from the API", exc_info=True)
        return [f"{task.name} ({task_run_id})" for task_run_id, (task, _) in finals.items()]
    failed: list[str] = []
    for task_run_id in missed:
        task, state = finals[task_run_id]
        if not record_state(task, task_run_id, state, exists=task_run_id in states):
            failed.append(f"{task.name} ({task_run_id})")
    if missed:
        logger.debug("recorded %d final state(s) a dead supervisor had not sent", len(missed))
    return failed


def _read_states(client: Any, ids: list[uuid.UUID]) -> dict[uuid.UUID, Any]:
    """The API's current state of each of these task runs it knows."""
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId

    states: dict[uuid.UUID, Any] = {}
    for start in range(0, len(ids), READ_CHUNK):
        chunk = ids[start : start + READ_CHUNK]
        runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(id=TaskRunFilterId(any_=chunk)), limit=len(chunk)
        )
        states.update({run.id: run.state for run in runs})
    return states
