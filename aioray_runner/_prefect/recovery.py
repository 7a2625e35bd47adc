"""Recovery of a task run whose supervisor died (docs/failures.md, "Prefect task runs
when a supervisor dies").

The runner submits every task run with ``reruns``; a rerun first reads what the
API recorded of the lost run (:func:`settled_task_run`) and then decides
(:func:`after_loss`): keep its final state, retry it with the retries it has
left, or end it ``Crashed`` (:func:`crashed_state`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import time
import weakref
from typing import Any
from uuid import UUID

from .._supervisor.attempt import Attempt
from . import compat


async def after_loss(
    task: Any, task_run_id: UUID, attempt: Attempt, parameters: dict[str, Any] | None = None
) -> tuple[Any, Any, Any]:
    """``(final state, task to run, task run to continue)`` for this run.

    On a first run: ``(None, task, None)``, run as usual. On a run after its
    supervisor died (see the module docstring above): the final state to return at
    once, or the task (with the retries it has left) and the task run to go on.
    Runs inside the flow run's context (its API client); ``attempt`` is the
    call's, read in the call's own context; ``parameters`` name a run the API
    never heard of.

    The new state (AwaitingRetry, or Crashed) reaches the API as the engine's own
    states do, as an event: the runs of a dead supervisor all come back at once,
    and a forced write each would queue them up behind the API's database.
    """
    if attempt.number == 1:
        return None, task, None

    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext
    from prefect.states import AwaitingRetry

    from ..errors import SupervisorDiedError

    client = get_client()
    task_run = await settled_task_run(client, task_run_id, attempt.lost_at)
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
    if task_run is None:  # its first run's events died with it: make it here
        task_run = await task.create_local_run(
            id=task_run_id, parameters=parameters or {}, flow_run_context=FlowRunContext.get()
        )
    _announce(task_run, state)
    if not retry:
        return crashed, None, None
    if delay:
        await asyncio.sleep(delay)
    # The engine counts retries from zero in each run: give it only what is left.
    return None, task.with_options(retries=retries - attempts_so_far), task_run


def _announce(task_run: Any, state: Any) -> None:
    """Give ``task_run`` its new ``state``, and tell the API as the engine does."""
    from prefect.utilities.engine import emit_task_run_state_change_event

    state.state_details.task_run_id = task_run.id
    state.state_details.flow_run_id = task_run.flow_run_id
    emit_task_run_state_change_event(
        task_run=task_run, initial_state=task_run.state, validated_state=state
    )
    task_run.state = state
    task_run.state_id, task_run.state_type, task_run.state_name = state.id, state.type, state.name


#: Seconds after a loss by which the lost run's last events, sent before its
#: supervisor died, have normally been recorded by the API.
SETTLE_S = 1.0
#: Task runs read by id per API request.
READ_CHUNK = 200
#: Seconds between reads of a run whose recorded state may still be changing.
_REREAD_S = 0.5


async def settled_task_run(client: Any, task_run_id: UUID, lost_at: float = 0.0) -> Any:
    """The task run as the API records it, once the lost run's news has landed.

    Prefect 3 records task-run states from the engine's events, a little after
    they happen: the lost run's last events (a Completed state, say) may still be
    on their way when the rerun starts. The first read waits until
    :data:`SETTLE_S` after the loss (``lost_at``, a ``time.time()``; usually
    past already: a replacement supervisor takes longer to start); a state that
    is not final is read again until it stops changing, unless the loss is long
    past. Three seconds at most. Events the dead process had not sent yet are
    lost with it: then the run counts as not finished (best effort). The reads
    of every rerun on this loop go to the API together (:class:`_Reads`).
    """
    lost_at = lost_at or time.time()
    wait = lost_at + SETTLE_S - time.time()
    if wait > 0:
        await asyncio.sleep(min(wait, SETTLE_S))
    reads = _Reads.of(client)
    previous: Any = None
    task_run: Any = None
    for _ in range(4):
        task_run = await reads.read(task_run_id)  # None: not heard of (yet)
        state = task_run.state if task_run is not None else None
        if state is not None and state.is_final() and not state.is_crashed():
            return task_run
        key = (state.type, state.timestamp) if state is not None else None
        if (key is not None and key == previous) or time.time() - lost_at > 2 * SETTLE_S:
            return task_run
        previous = key
        await asyncio.sleep(_REREAD_S)
    return task_run


class _Reads:
    """Reads of task runs by id through one API client, sent together.

    When a supervisor dies, every run it had comes back at once on another: one
    request for all of them (a moment's wait gathers them), not one each.
    """

    _by_client: weakref.WeakKeyDictionary[Any, _Reads] = weakref.WeakKeyDictionary()
    #: Seconds a first read waits for others to join it.
    GATHER_S = 0.02

    def __init__(self, client: Any) -> None:
        # Weak: the map above holds this object as long as its client lives.
        self._client = weakref.ref(client)
        self._waiting: dict[UUID, list[asyncio.Future[Any]]] = {}
        self._sending: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, client: Any) -> _Reads:
        reads = cls._by_client.get(client)
        if reads is None:
            reads = cls._by_client[client] = cls(client)
        return reads

    async def read(self, task_run_id: UUID) -> Any:
        """The task run as the API has it, or None if it has never heard of it."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(task_run_id, []).append(future)
        if self._sending is None:
            self._sending = asyncio.get_running_loop().create_task(self._send())
        return await future

    async def _send(self) -> None:
        from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId

        waiting: dict[UUID, list[asyncio.Future[Any]]] = {}
        try:
            await asyncio.sleep(self.GATHER_S)
            waiting, self._waiting, self._sending = self._waiting, {}, None
            client = self._client()
            if client is None:
                raise RuntimeError("the flow run's API client was closed")
            ids = list(waiting)
            for start in range(0, len(ids), READ_CHUNK):
                chunk = ids[start : start + READ_CHUNK]
                runs = await client.read_task_runs(
                    task_run_filter=TaskRunFilter(id=TaskRunFilterId(any_=chunk)),
                    limit=len(chunk),
                )
                found = {run.id: run for run in runs}
                for task_run_id in chunk:
                    for future in waiting.pop(task_run_id):
                        if not future.done():
                            future.set_result(found.get(task_run_id))
        except BaseException as exc:
            # Cancelled, or the API failed: nobody may wait for ever. Reads
            # that joined during the gathering sleep are failed too.
            if self._sending is asyncio.current_task():
                waiting.update(self._waiting)
                self._waiting, self._sending = {}, None
            error = exc if isinstance(exc, Exception) else RuntimeError("the read was cancelled")
            for futures in waiting.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(error)
            if not isinstance(exc, Exception):
                raise


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
    # so sync callers (and callbacks on the I/O thread) need no event loop...
    coro = exception_to_crashed_state(exc)
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    except RuntimeError:
        # ... but Prefect asks anyio for the running loop's cancellation class,
        # and anyio raises where no loop runs (a sync flow's thread): give it one,
        # in a thread of its own (this thread may be running a loop already).
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, exception_to_crashed_state(exc)).result()
    coro.close()
    raise RuntimeError("exception_to_crashed_state awaited unexpectedly")
