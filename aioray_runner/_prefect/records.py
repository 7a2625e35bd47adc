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
from typing import TYPE_CHECKING, Any

from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext

from . import api, compat

if TYPE_CHECKING:
    from prefect.tasks import Task

logger = logging.getLogger("aioray_runner")

#: Seconds to wait at most for Prefect's temporary API to record the task runs.
RECORD_WAIT_S = 10.0
# States a task run has before its end. Pending counts only under its own name:
# Pending("NotReady") is how a run whose upstream failed ends.
_NOT_FINAL = ("SCHEDULED", "RUNNING", "PAUSED", "CANCELLING")


def wait_until_recorded(
    flow_run_id: uuid.UUID,
    submitted: int | None,
    within: float = RECORD_WAIT_S,
    say: Callable[..., None] | None = None,
) -> int | None:
    """With Prefect's temporary API, wait until it has recorded every task run's end.

    Returns how many task runs it has not recorded (or not as final) when the
    wait ends, or None where nothing was waited for or the API did not answer.
    ``submitted=None``: only runs the API has are waited for (after an
    interrupt, runs cancelled before they started never reach it, as under
    Prefect's own runners).

    That API records task-run states from the engine's events, a moment after
    they happen, and it stops when the flow's process exits: a script whose flow
    returns right after its last task stops it mid-write, Prefect logs
    ``Error flushing N events`` and those task runs keep a non-final state. A
    server of your own (``PREFECT_API_URL``) keeps running, so nothing is
    waited for there. At most ``within`` seconds; ``say`` gets one line if
    there is anything to wait for (the flow seems to pause otherwise).
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
    deadline = time.monotonic() + within
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
            while True:
                missing = count(unfinished) + count(just_pending)
                if submitted is not None:
                    missing += max(0, submitted - count())
                if not missing or time.monotonic() >= deadline:
                    return missing
                if not said and say is not None:
                    said = True  # a pause at the end of a flow, explained once
                    say(
                        "Waiting up to %.0f s for Prefect's temporary API to record the end of"
                        " %d task run(s): it stops when this process exits",
                        max(0.0, deadline - time.monotonic()),
                        missing,
                    )
                time.sleep(0.2)
    except Exception:  # the API going away must not fail the flow
        logger.debug("could not read the task runs back from the API", exc_info=True)
    return missing


def record_state(
    task: Task[Any, Any], task_run_id: uuid.UUID, state: State[Any], *, exists: bool = True
) -> None:
    """Give a task run this final state in the API, creating the run if the API
    has not heard of it (never sent, or its supervisor died before the engine's
    events reached the API: Prefect creates task runs from those events).

    Runs in the flow's context (for the flow run and its API client settings).
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    try:
        with get_client(sync_client=True) as client:
            if exists:
                try:
                    client.set_task_run_state(task_run_id, state, force=True)
                    return
                except ObjectNotFound:
                    pass
                except PrefectHTTPStatusError as exc:  # what set_state raises for a 404
                    if exc.response.status_code != 404:
                        raise
            flow_run = FlowRunContext.get()
            client.create_task_run(
                task=task,
                flow_run_id=flow_run.flow_run.id if flow_run and flow_run.flow_run else None,
                dynamic_key=compat.dynamic_key_for_task_run(flow_run, task) if flow_run else "0",
                id=task_run_id,
                state=state,
            )
    except Exception:
        logger.exception(
            "Could not record the %s state of task run %s in the API", state.type.value, task_run_id
        )
