"""The names that moved between Prefect releases, on the Prefect installed (no Ray).

nox runs this on Prefect 3.4.7, 3.6.29 and the newest (the sessions of Ray 2.10,
2.40 and 2.60), so each fallback meets the release it is for.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

import prefect
import pytest
from prefect import task
from prefect.states import Crashed

from aioray_runner._prefect import compat as _prefect_compat

# Prefect 3.9 calls any callable as retry_condition_fn; before, only functions.
CALLS_ANY_CALLABLE = tuple(int(p) for p in prefect.__version__.split(".")[:2]) >= (3, 9)


class Says:
    def __init__(self, answer: bool) -> None:
        self.answer = answer

    def __call__(self, task: Any, task_run: Any, state: Any) -> bool:
        return self.answer


def says(answer: bool, task: Any, task_run: Any, state: Any) -> bool:
    return answer


async def says_async(task: Any, task_run: Any, state: Any) -> bool:
    return "died" in (state.message or "") + repr(state.data)


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        (None, True),
        (functools.partial(says, True), CALLS_ANY_CALLABLE),
        (functools.partial(says, False), False),
        (Says(True), CALLS_ANY_CALLABLE),
        (Says(False), False),
        (says_async, True),
        (lambda task, task_run, state: False, False),
    ],
)
def test_retry_condition_is_read_as_the_running_prefect_reads_it(
    condition: Any, expected: bool
) -> None:
    made = task(retries=1, retry_condition_fn=condition)(lambda: 1)
    lost = Crashed(message="its supervisor died")
    # The task run may be unknown to the API (lost before its events were sent).
    assert asyncio.run(_prefect_compat.retry_condition_allows(made, None, lost)) is expected


def test_logging_is_set_up_once_and_kept() -> None:
    from prefect.logging import configuration

    _prefect_compat.ensure_logging_setup()
    handlers = list(logging.getLogger("prefect").handlers)
    assert configuration.PROCESS_LOGGING_CONFIG  # configured
    _prefect_compat.ensure_logging_setup()  # a second call changes nothing
    assert logging.getLogger("prefect").handlers == handlers
