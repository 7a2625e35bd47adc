"""What a task receives for an upstream future, wherever it runs.

Under Prefect's ``ThreadPoolTaskRunner`` a task's parameters hold the very
future objects the flow passed, and the task engine resolves those it looks at
(plain values, lists, dicts, sets, dataclasses, pydantic models) into the
upstream's result. The ones it does not look at, under ``quote()`` or inside an
object of a plain class, reach the task as futures.

Here the runtime lifts every future out of the parameters while pickling them
and the supervisor awaits it first; :func:`settled_future` then puts back, in
its place, a :class:`SettledPrefectFuture` holding the upstream's final state.
The engine in the supervisor (or the Ray worker of a sync task run as a Ray
task) sees futures exactly where the thread pool's engine sees them and resolves
them the same way; a future it leaves alone works in the task: ``result()``,
``wait()``, ``state``, ``task_run_id``. The one difference: it has already
finished (the task starts after its quoted upstreams, where the thread pool
starts it at once).
"""

from __future__ import annotations

import copyreg
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from prefect.client.schemas.objects import State
from prefect.futures import PrefectFuture, PrefectTaskRunFuture
from prefect.utilities import annotations as prefect_annotations

from .transactions import unwrap

R = TypeVar("R")

_transport = threading.local()


class SettledPrefectFuture(PrefectTaskRunFuture[R]):
    """An upstream task run's future inside a task: finished, with its final state.

    Like the thread pool's futures it cannot be pickled by user code (so a
    task's cache key is not computed from it, as under the thread pool); the
    runner pickles it only to hand it to a sync task run as a Ray task
    (``remote_options``, ``sync_tasks="ray"``, a task found CPU-bound, a nested run).
    """

    def __init__(self, task_run_id: uuid.UUID, state: State[R]) -> None:
        super().__init__(task_run_id)
        self._final_state = state

    def wait(self, timeout: float | None = None) -> None:
        """Return at once: the upstream has finished."""

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> R:
        """The upstream's result; raises its exception if it failed."""
        assert self._final_state is not None
        return self._final_state.result(  # type: ignore[no-any-return, call-overload]
            raise_on_failure=raise_on_failure, _sync=True
        )

    def add_done_callback(self, fn: Callable[[PrefectFuture[R]], None]) -> None:
        """Call ``fn(self)`` at once: the upstream has finished."""
        fn(self)

    def __reduce__(self) -> tuple[Any, ...]:
        if not getattr(_transport, "allowed", False):
            raise TypeError(f"cannot pickle '{type(self).__qualname__}' object")
        return (SettledPrefectFuture, (self._task_run_id, self._final_state))

    def __repr__(self) -> str:
        state = self._final_state.type.value if self._final_state else "?"
        return f"<SettledPrefectFuture task_run_id={self._task_run_id} {state}>"


@contextmanager
def transporting() -> Iterator[None]:
    """Let settled futures be pickled in this thread (to send a sync task's parameters)."""
    previous = getattr(_transport, "allowed", False)
    _transport.allowed = True
    try:
        yield
    finally:
        _transport.allowed = previous


def settled_future(task_run_id: uuid.UUID, outcome: Any) -> SettledPrefectFuture[Any]:
    """Rebuild a flow-side future inside a task, from its upstream's outcome.

    ``outcome`` is what the upstream's call returned: its final State, or that
    State with what it did in a transaction (see ``transactions.py``).
    """
    state = unwrap(outcome)
    if not isinstance(state, State):
        raise TypeError(
            f"expected the upstream task run's final State, got a {type(state).__name__}"
        )
    return SettledPrefectFuture(task_run_id, state)


def _rebuild_annotation(annotation: Any) -> tuple[Any, ...]:
    return type(annotation), (annotation[0],)


# Prefect's annotations (quote, allow_failure, unmapped, ...) are tuples whose
# __new__ wraps its argument: pickled the default way they come back wrapped
# twice, quote((x,)). Under the thread pool nothing is pickled; here a sync
# task's parameters travel to its Ray worker with Ray's serializer, which
# honours copyreg: rebuild them from their value.
for _annotation in vars(prefect_annotations).values():
    if (
        isinstance(_annotation, type)
        and issubclass(_annotation, prefect_annotations.BaseAnnotation)
        and _annotation is not prefect_annotations.BaseAnnotation
    ):
        copyreg.pickle(_annotation, _rebuild_annotation)
