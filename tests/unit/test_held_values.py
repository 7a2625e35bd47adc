"""Values left on supervisors, without Ray: what a held outcome carries (its size and
the value's own summary), and how a task run's state stands in for its result
until the result is read."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from aioray_runner._common import wire


class Frame:
    """A value with a summary of itself, as users may write one."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.data = bytes(rows)

    def __aioray_summary__(self) -> dict[str, int]:
        return {"rows": self.rows}


class BadSummary:
    def __aioray_summary__(self) -> Any:
        raise ValueError("no")


def test_a_held_payload_carries_the_size_and_the_summary() -> None:
    summary = wire.summary_of(Frame(5), "f#1")
    payload = wire.held_payload(123_456_789, summary)
    assert wire.held_size(payload) == 123_456_789
    assert pickle.loads(wire.held_summary(payload)) == {"rows": 5}


def test_no_summary_or_a_failing_one_travels_as_nothing() -> None:
    assert wire.summary_of(b"plain bytes", "f#1") == b""
    assert wire.summary_of(BadSummary(), "f#1") == b""
    payload = wire.held_payload(10, b"")
    assert wire.held_size(payload) == 10 and wire.held_summary(payload) == b""
    assert wire.held_size(None) == 0


class _Held:
    """A finished runtime future whose value stayed on its supervisor."""

    held = True

    def __init__(self, outcome: Any) -> None:
        self._outcome = outcome
        self.fetches = 0

    def summary(self) -> Any:
        return self._outcome.__aioray_summary__()

    def result(self, timeout: float | None = None) -> Any:
        self.fetches += 1
        return self._outcome


def test_a_task_runs_state_arrives_without_its_result_and_fetches_it_once_read() -> None:
    pytest.importorskip("prefect")
    from prefect.results import ResultRecord  # type: ignore[attr-defined]
    from prefect.states import Completed

    from aioray_runner._prefect import held
    from aioray_runner._prefect.transactions import HeldResult, TransactionOutcome

    record = ResultRecord(
        result=list(range(1000)),
        metadata={"storage_key": "k", "serializer": {"type": "pickle"}, "expiration": None},
    )
    outcome = TransactionOutcome(Completed(data=record), [], False)
    summary = outcome.__aioray_summary__()
    assert isinstance(summary.state.data, HeldResult)
    assert summary.state.type == outcome.state.type
    assert len(pickle.dumps(summary)) < len(pickle.dumps(outcome)) / 2

    future = _Held(outcome)
    state = held.with_result_on_demand(held.outcome_of(future).state, future)  # type: ignore[arg-type]
    assert future.fetches == 0  # the state alone fetches nothing
    assert state.is_completed()
    assert state.result() == list(range(1000))
    assert state.result() == list(range(1000))
    assert future.fetches == 1
    # Pickled (a flow returning its tasks' states), it becomes the plain record.
    copy = pickle.loads(pickle.dumps(state))
    assert copy.result() == list(range(1000))
