"""Helpers for the Prefect integration tests (tests/test_prefect_*.py).

Reading what reached the Prefect API, and reaching the live runner of the flow
run that is executing. Tasks defined in the test modules are pickled by
reference, so this module is also imported inside supervisors and Ray workers:
keep it free of side effects.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def current_runner() -> Any:
    """The AioRayTaskRunner of the flow run executing now (in the flow's process)."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    assert context is not None, "not inside a flow run"
    return context.task_runner


def supervisor_pids() -> set[int]:
    """Pids of the live supervisors of the current flow run's runner."""
    return {info["pid"] for info in current_runner()._runtime.supervisor_info()}


def poll(fetch: Callable[[], T], accept: Callable[[T], bool], within: float = 30.0) -> T:
    """Call ``fetch()`` until ``accept`` likes the value; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = fetch()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still {value!r} after {within} s")
        time.sleep(0.2)


def read_task_run(task_run_id: uuid.UUID) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_task_run(task_run_id)


def read_task_run_when(
    task_run_id: uuid.UUID, accept: Callable[[Any], bool], within: float = 30.0
) -> Any:
    """The task run as the API holds it, once ``accept(run)`` is true.

    Prefect 3 builds task runs and their states in the API from the engine's
    events, a little after they happen: reading once right after a flow can miss
    the last state, or the run itself, and the run can be there before any state
    (``state`` is ``None`` then: not accepted, read again).
    """
    from prefect.exceptions import ObjectNotFound

    def fetch() -> Any:
        try:
            return read_task_run(task_run_id)
        except ObjectNotFound:
            return None

    return poll(
        fetch, lambda run: run is not None and run.state is not None and accept(run), within
    )


def read_task_run_states(task_run_id: uuid.UUID) -> list[Any]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_task_run_states(task_run_id)


def read_flow_run(flow_run_id: uuid.UUID) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def task_run_state_type(task_run_id: uuid.UUID) -> str | None:
    """The type (``"COMPLETED"``, ``"CRASHED"``, ...) the API holds for a task run;
    ``None`` while the API has not heard of it (Prefect creates task runs from the
    engine's events, which reach the API a little later)."""
    from prefect.exceptions import ObjectNotFound

    try:
        state = read_task_run(task_run_id).state
    except ObjectNotFound:
        return None
    return state.type.value if state is not None else None


def read_logs(flow_run_id: uuid.UUID) -> list[Any]:
    """Every log the API holds for a flow run (its tasks' logs included)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
            limit=200,
            offset=0,
        )


def read_events(event_name: str, resource_id: str) -> list[Any]:
    """Events with this name about this resource that the API has stored."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    event_filter = EventFilter(
        event=EventNameFilter(name=[event_name]),
        resource=EventResourceFilter(id=[resource_id]),
    )
    with get_client(sync_client=True) as client:
        if hasattr(client, "read_events"):
            return list(client.read_events(filter=event_filter, limit=50).events)
    # Prefect releases whose client cannot read events yet: the same endpoint.
    import httpx
    from prefect.events.schemas.events import ReceivedEvent
    from prefect.settings import PREFECT_API_URL

    body = {"filter": event_filter.model_dump(mode="json"), "limit": 50}
    response = httpx.post(f"{PREFECT_API_URL.value()}/events/filter", json=body, timeout=30)
    response.raise_for_status()
    return [ReceivedEvent.model_validate(e) for e in response.json()["events"]]
