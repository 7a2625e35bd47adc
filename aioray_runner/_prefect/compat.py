"""Names that moved between the Prefect 3 releases this package supports.

The supported range (3.4.7 to the newest 3.x, README.md "Supported versions") is what CI
runs. Each function here uses Prefect's own code where the running release has
it, and otherwise does what that release itself does, so a behaviour always
matches the Prefect the user runs, never a newer one.
"""

from __future__ import annotations

from typing import Any

# The floor: prefect-ray 0.6.0 (the runner this package replaces) supports Prefect
# from 3.4.7, and so do we; CI runs the Prefect suites on it. Kept in one place
# for pyproject's words, `aioray-runner doctor` and the docs.
OLDEST_SUPPORTED = "3.4.7"


def ensure_logging_setup() -> None:
    """Configure Prefect's logging in this process unless it already is.

    ``ensure_logging_setup`` exists from Prefect 3.6.25; before it, the same
    check is spelled out over ``PROCESS_LOGGING_CONFIG``.
    """
    from prefect.logging import configuration

    ensure = getattr(configuration, "ensure_logging_setup", None)
    if ensure is not None:
        ensure()
    elif not configuration.PROCESS_LOGGING_CONFIG:
        configuration.setup_logging()


def with_data(state: Any, data: Any) -> Any:
    """A copy of a Prefect State with other ``data``, and the state's own timestamp.

    ``State.model_copy`` resets ``timestamp`` to the field's default from Prefect
    3.9 (undefined there, so the copy cannot be sent to the API); before, it kept it.
    """
    return state.model_copy(update={"data": data, "timestamp": state.timestamp})


async def retry_condition_allows(task: Any, task_run: Any, state: Any) -> bool:
    """Whether ``task.retry_condition_fn`` lets ``task_run`` retry after ``state``.

    Asked of Prefect's own engine, so the rule is the running release's: before
    3.9 only plain functions are called (anything else counts by its truth
    value, negated); from 3.9 any callable, and an awaitable answer is awaited.
    """
    from prefect.client.schemas.objects import TaskRun
    from prefect.task_engine import AsyncTaskRunEngine

    if getattr(task, "retry_condition_fn", None) is None:
        return True
    if task_run is None:
        # Lost before the API heard of it: the condition still decides, given
        # a task run that says what is known (Prefect's engine needs one).
        task_run = TaskRun(task_key=task.task_key, dynamic_key="0", name=task.name)
    engine: Any = AsyncTaskRunEngine(task=task, task_run=task_run)
    return bool(await engine.can_retry(state))
