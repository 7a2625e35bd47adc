"""``PrefectAioRayFuture`` and the ``aresult``/``aresults`` helpers.

The Prefect future of a task run sent to a supervisor: it wraps the runtime's
:class:`AioRayFuture`, whose outcome is the run's final State, and settles the
flow's transaction with it (``transactions.py``). Re-exported from
``aioray_runner.task_runners``.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Coroutine, Generator, Iterable
from types import CoroutineType
from typing import Any, TypeGuard, TypeVar, overload

import anyio
from prefect.client.schemas.objects import State
from prefect.futures import PrefectDistributedFuture, PrefectFuture, PrefectWrappedFuture
from prefect.states import Pending
from prefect.transactions import BaseTransaction

from .._caller.futures import AioRayFuture
from .._common.wire import register_reducer
from ..errors import UpstreamError
from . import held, recovery, settled, transactions
from .nested import NestedPrefectFuture

R = TypeVar("R")


def _reduce_future(future: PrefectAioRayFuture[Any]) -> tuple[Any, ...]:
    # A future in a task's parameters travels as its runtime future, which the
    # runtime lifts out and the supervisor awaits; it arrives as a finished
    # Prefect future, which Prefect's engine resolves where the thread pool's
    # would (see settled.py).
    return settled.settled_future, (future.task_run_id, future.wrapped_future)


_TRANSACTION_LOCK = threading.Lock()

# Prefect's annotations (quote, allow_failure, unmapped, ...) are pickled by
# the copyreg entries settled.py registers, for the runtime's pickler and
# Ray's alike.


class PrefectAioRayFuture(PrefectWrappedFuture[R, AioRayFuture[Any]]):
    """A Prefect future for a task run on a supervisor (or a Ray task it started).

    Everything ``PrefectFuture`` offers (``wait``, ``result``, ``state``,
    ``add_done_callback``, Prefect's ``wait`` and ``as_completed``), plus the
    async side: ``await future`` gives the result (raising if the run failed),
    and ``wait_async`` / ``result_async`` do not block the flow's event loop.
    """

    # The flow's transaction this run was submitted in (see transactions.py).
    _transaction: BaseTransaction | None = None
    _attached = False  # its transactions were handed to the flow's
    _rolled_back = False  # it rolled the flow's back

    def _settle(self) -> None:
        if self._final_state is None and self._wrapped_future.done():
            self._final_state = state_of(self._wrapped_future)
        if self._transaction is not None:
            self._join_transaction(roll_back=True)

    def take_part_in(self, transaction: BaseTransaction | None) -> None:
        """Take part in the flow's transaction: the run's own transactions are
        handed to it as soon as the run finishes (see transactions.py)."""
        self._transaction = transaction
        self._wrapped_future.add_done_callback(lambda _: self._join_transaction(roll_back=False))

    def _join_transaction(self, *, roll_back: bool) -> None:
        """Hand the run's transactions to the flow's; roll it back if the run did.

        Handing over happens as soon as the run finishes (I/O thread); rolling
        back runs hooks, so it happens in the thread that waits for the run.
        """
        parent = self._transaction
        if parent is None or not self._wrapped_future.done():
            return
        try:
            outcome = held.outcome_of(self._wrapped_future)
        except BaseException:
            return
        if not isinstance(outcome, transactions.TransactionOutcome):
            return
        with _TRANSACTION_LOCK:  # the I/O thread and the waiting thread may both be here
            attach, self._attached = not self._attached, True
            rollback = roll_back and not self._rolled_back
            self._rolled_back = self._rolled_back or rollback
        if attach:
            transactions.attach(parent, outcome)
        if rollback:
            transactions.roll_back(parent, outcome)

    @property
    def state(self) -> State[Any]:
        """The run's final state once it has finished; before that, what the API says.

        Under Prefect's thread pool, a future passed to another task is waited
        for by that task's engine, in the flow's process, so its ``state`` is
        final from then on; here that engine runs elsewhere, so a finished
        run's state is read from the run itself rather than from the API,
        which hears of it a little later.
        """
        self._settle()
        if self._final_state is not None:
            return self._final_state
        return super().state

    def wait(self, timeout: float | None = None) -> None:
        """Block until the task run finishes, or ``timeout`` seconds pass."""
        if self._final_state is None:
            self._wrapped_future.wait_sync(timeout)
            self._settle()

    async def wait_async(self, timeout: float | None = None) -> None:
        """Wait for the task run without blocking the event loop (asyncio or trio)."""
        if self._final_state is None:
            with anyio.move_on_after(timeout):
                await self._wrapped_future.wait()
            self._settle()

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> R:
        """The task run's result, blocking; raises its exception if it failed."""
        self.wait(timeout)
        if self._final_state is None:
            raise TimeoutError(
                f"Task run {self.task_run_id} did not complete within {timeout} seconds"
            )
        if self._wrapped_future.held:  # fetched here, within timeout (not in Prefect's thread)
            self._wrapped_future.result(timeout)
        return self._final_state.result(  # type: ignore[no-any-return, call-overload]
            raise_on_failure=raise_on_failure, _sync=True
        )

    async def result_async(self, timeout: float | None = None, raise_on_failure: bool = True) -> R:
        """The task run's result, awaited; raises its exception if it failed."""
        await self.wait_async(timeout)
        if self._final_state is None:
            raise TimeoutError(
                f"Task run {self.task_run_id} did not complete within {timeout} seconds"
            )
        if self._wrapped_future.held:  # fetch it without blocking the loop
            await self._wrapped_future
        return await self._final_state.aresult(raise_on_failure=raise_on_failure)  # type: ignore[return-value]

    def __await__(self) -> Generator[Any, None, R]:
        return self.result_async().__await__()

    def add_done_callback(self, fn: Callable[[PrefectFuture[R]], None]) -> None:
        """Call ``fn(self)`` when the run finishes (on the runtime's I/O thread)."""
        if self._final_state is not None:
            fn(self)
            return
        self._wrapped_future.add_done_callback(lambda _: fn(self))

    def __repr__(self) -> str:
        state = self._final_state.type.value if self._final_state else "PENDING"
        return f"<PrefectAioRayFuture task_run_id={self.task_run_id} {state}>"


def state_of(future: AioRayFuture[Any]) -> State[Any]:
    """The final State a finished runtime future stands for."""
    try:
        state = transactions.unwrap(held.outcome_of(future))
    except UpstreamError as exc:
        # An upstream was lost before it could report a State of its own: the
        # usual Prefect outcome for a task whose upstream did not complete.
        return Pending(name="NotReady", message=str(exc))
    except BaseException as exc:
        return recovery.crashed_state(exc)  # type: ignore[no-any-return]
    if not isinstance(state, State):
        # The type only: the value may be a task's result, which may hold secrets.
        raise TypeError(
            f"expected a Prefect State from the supervisor, got a {type(state).__name__}"
        )
    return held.with_result_on_demand(state, future)


register_reducer(PrefectAioRayFuture, _reduce_future)


def _awaitable(
    future: PrefectFuture[Any],
) -> TypeGuard[PrefectAioRayFuture[Any] | PrefectDistributedFuture[Any] | NestedPrefectFuture[Any]]:
    """A future with ``result_async``: waiting for it needs no thread."""
    return isinstance(future, PrefectAioRayFuture | PrefectDistributedFuture | NestedPrefectFuture)


# Prefect types an async task's future as PrefectFuture[Coroutine[..., R]]
# (Task.submit's first overload takes any Task[P, R]); its result is the R the
# task engine awaited. The first two overloads of each say so: pyright spells an
# async def's return type CoroutineType, mypy Coroutine, and PrefectFuture is
# invariant, so each needs its own.
@overload
async def aresult(
    future: PrefectFuture[CoroutineType[Any, Any, R]], timeout: float | None = None
) -> R: ...


@overload
async def aresult(
    future: PrefectFuture[Coroutine[Any, Any, R]], timeout: float | None = None
) -> R: ...


@overload
async def aresult(future: PrefectFuture[R], timeout: float | None = None) -> R: ...


async def aresult(future: PrefectFuture[Any], timeout: float | None = None) -> Any:
    """The result of a submitted task run, awaited: ``await aresult(fetch.submit(1))``.

    The typed spelling of ``await fetch.submit(1)``: Prefect's types say
    ``Task.submit`` returns a plain ``PrefectFuture``, which is not awaitable, so
    mypy and pyright reject ``await`` on it; this function gives the task's
    return type. It raises the task's exception if the run failed, and
    ``TimeoutError`` if the run has not finished after ``timeout`` seconds.

    Under :class:`AioRayTaskRunner` it awaits the future itself (nothing
    blocks the event loop). Any other Prefect future (Prefect's
    ``ThreadPoolTaskRunner``, ...) is waited for in a worker thread, so the same
    flow code runs under any task runner. Cancelling the awaiting task stops
    the wait at once (that thread then finishes its wait on its own).
    """
    if _awaitable(future):
        return await future.result_async(timeout)
    return await anyio.to_thread.run_sync(
        functools.partial(future.result, timeout), abandon_on_cancel=True
    )


@overload
async def aresults(
    futures: Iterable[PrefectFuture[CoroutineType[Any, Any, R]]], timeout: float | None = None
) -> list[R]: ...


@overload
async def aresults(
    futures: Iterable[PrefectFuture[Coroutine[Any, Any, R]]], timeout: float | None = None
) -> list[R]: ...


@overload
async def aresults(
    futures: Iterable[PrefectFuture[R]], timeout: float | None = None
) -> list[R]: ...


async def aresults(
    futures: Iterable[PrefectFuture[Any]], timeout: float | None = None
) -> list[Any]:
    """The results of many task runs, in order: ``await aresults(fetch.map(range(10)))``.

    :func:`aresult` for each future in turn, with ``timeout`` the seconds to
    wait for all of them together. Raises the exception of the first failed run
    met, and ``TimeoutError`` once the time is up.
    """
    # One future after another: they run concurrently anyway, and the list's
    # results are all needed. (One worker thread for all of a thread pool's
    # futures measured slower than a thread hop each: benchmarks/bench_aresult.py.)
    deadline = None if timeout is None else time.monotonic() + timeout
    results = []
    for future in futures:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        results.append(await aresult(future, left))
    return results
