"""A task run's result left on its supervisor: its state comes to the flow at once,
its result only when something reads it.

A run returns its final State (in a :class:`TransactionOutcome`). When that is
bigger than ``hold_results_above``, the runtime leaves it on the supervisor and
the flow receives its summary (``TransactionOutcome.__aioray_summary__``):
the same State, with the result replaced by a :class:`HeldResult` that says only
where the result stays. The flow's side turns that marker into a result record
that fetches the result the first time it is read (:func:`with_result_on_demand`),
so ``future.state``, ``future.result()``, ``state.result()``, Prefect's ``wait``
and ``as_completed`` behave as under Prefect's thread pool; only the bytes move
later, or never. A downstream task reads the result on the supervisors, without
the flow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect.client.schemas.objects import State
from prefect.results import ResultRecord  # type: ignore[attr-defined]  # every 3.x re-exports it
from pydantic import PrivateAttr

from .._caller.futures import AioRayFuture
from .compat import with_data
from .transactions import HeldResult, unwrap


def outcome_of(future: AioRayFuture[Any]) -> Any:
    """A finished run's outcome: its summary while its result stays on the
    supervisor (nothing is fetched, so this works on the runtime's I/O thread),
    else the outcome itself."""
    if future.held:
        summary = future.summary()
        if summary is not None:
            return summary
    return future.result(0)


def with_result_on_demand(state: State[Any], future: AioRayFuture[Any]) -> State[Any]:
    """``state`` with a result record that fetches the result when first read."""
    if not isinstance(state.data, HeldResult):
        return state
    record = _RecordOnDemand.model_construct(metadata=state.data.metadata)
    record._fetch = lambda: _result_of(future)
    return with_data(state, record)  # type: ignore[no-any-return]


def _result_of(future: AioRayFuture[Any]) -> Any:
    data = unwrap(future.result()).data  # fetched once; later reads find it here
    return data.result if isinstance(data, ResultRecord) else data


class _RecordOnDemand(ResultRecord):  # type: ignore[type-arg]
    """A result record whose ``result`` is fetched from the supervisor when first read.

    Made with ``model_construct`` without ``result``: reading it finds no field
    value and comes to ``__getattr__``, which fetches it and keeps it.
    """

    _fetch: Callable[[], Any] | None = PrivateAttr(default=None)

    def __getattr__(self, name: str) -> Any:
        if name == "result" and self._fetch is not None:
            value = self._fetch()
            self.__dict__["result"] = value
            self._fetch = None  # the future may go now
            return value
        return super().__getattr__(name)  # type: ignore[misc]

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled (a flow that returns its tasks' states): as the plain record it
        # stands for, its result fetched; the fetch itself cannot travel.
        return _plain_record, (self.metadata, self.result)


def _plain_record(metadata: Any, result: Any) -> ResultRecord:  # type: ignore[type-arg]
    return ResultRecord.model_construct(metadata=metadata, result=result)
