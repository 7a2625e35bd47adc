"""Task runs submitted from inside a task run: they run beside their parent.

A task that submits tasks (or calls a flow that does) runs on a supervisor, or
in a Ray task of its own. Prefect hands those submissions to a copy of the
flow's :class:`AioRayTaskRunner` that it enters there. Giving that copy a
runtime of its own started new supervisors at every level: seconds per level,
and Prefect's own test of 33 nested levels took 160 s against 4.3 s in its
thread pool.

So the copy does not start anything. It runs its task runs in the process that
submitted them, on the cluster that process is already on, as Prefect's
``ThreadPoolTaskRunner`` of the same release runs them (this module uses that
very runner): a sync task in a thread, an async task in a thread with a loop of
its own. **No cap applies to them**, as none does in Prefect's thread pool by
default (``PREFECT_TASK_RUNNER_THREAD_POOL_MAX_WORKERS`` caps both, and Prefect
then warns of nested submissions that could deadlock): a parent waits for its
children holding its own place (a thread, the supervisor's ``max_concurrency``
permit), and a child never waits for a place that its parent holds. So nested
submission cannot deadlock, at any depth.

An async parent may block its loop on a child (``child.submit().result()``);
the child has its own loop in a thread, so it still runs. A sync child
submitted inside ``remote_options(...)`` (or under ``sync_tasks="ray"``) runs
as a Ray task of its own, as at the top level; its upstream futures are waited
for here first and travel as finished futures (``settled.py``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
import time
import uuid
import weakref
from collections.abc import Generator, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from prefect.futures import PrefectConcurrentFuture, PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from . import transactions
from .options import current_remote_options
from .recovery import crashed_state
from .settled import SettledPrefectFuture, transporting

if TYPE_CHECKING:
    from prefect.tasks import Task

__all__ = [
    "NestedPrefectFuture",
    "NestedRuns",
    "closing_scope_here",
    "inside_task_runs",
    "ray_error_cause",
    "run_sync_task_in_worker",
    "sync_task_as_ray_task",
    "task_runs_here",
    "wait_for_nested_runs",
]

R = TypeVar("R")

# Every NestedRuns of this process with runs in flight (see wait_for_nested_runs).
_live: weakref.WeakSet[NestedRuns] = weakref.WeakSet()
_live_lock = threading.Lock()
# Set where task runs run: a supervisor's flow run scope, a Ray task's run. A
# runner entered there is Prefect's copy inside a task run (or a subflow's).
_in_task_runs: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "aioray_in_task_runs", default=False
)
# Set in a supervisor's flow run scope as it closes (see NestedRuns.__exit__).
_closing_scope: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "aioray_closing_scope", default=False
)


def inside_task_runs() -> bool:
    """Whether this code runs where the runner runs task runs (not in the flow's process,
    nor in a flow run started inside some other Ray actor or task)."""
    return _in_task_runs.get()


@contextmanager
def task_runs_here() -> Iterator[None]:
    """Mark the code inside as running task runs (see :func:`inside_task_runs`)."""
    token = _in_task_runs.set(True)
    try:
        yield
    finally:
        _in_task_runs.reset(token)


def closing_scope_here() -> None:
    """Mark the current context as a flow run scope closing on its supervisor (its
    holder's own context, after every task run's context was copied from it)."""
    _closing_scope.set(True)


class NestedPrefectFuture(PrefectConcurrentFuture[R]):
    """A nested task run's future: Prefect's thread pool's, awaitable as the
    runner's own are (``await fut``, :func:`aioray_runner.aresult`)."""

    async def wait_async(self, timeout: float | None = None) -> None:
        """Wait for the run to finish, at most ``timeout`` s, without blocking the loop."""
        waiting = asyncio.shield(asyncio.wrap_future(self.wrapped_future))
        try:
            await asyncio.wait_for(waiting, timeout)
        except TimeoutError:
            return
        except asyncio.CancelledError:
            raise  # the waiter was cancelled; the run goes on
        except BaseException:
            pass  # the run's own error: its state says it

    async def result_async(self, timeout: float | None = None, raise_on_failure: bool = True) -> R:
        """The run's result, awaited; raises its exception if it failed."""
        await self.wait_async(timeout)
        if not self.wrapped_future.done():
            raise TimeoutError(
                f"Task run {self.task_run_id} did not complete within {timeout} seconds"
            )
        # Prefect's engine returns the run's final State (return_type="state").
        state: Any = self.wrapped_future.result()
        return await state.aresult(raise_on_failure=raise_on_failure)  # type: ignore[no-any-return]

    def __await__(self) -> Generator[Any, None, R]:
        return self.result_async().__await__()


class NestedRuns:
    """Runs the task runs submitted inside one process's task runs (module docstring).

    ``sync_tasks`` is the runner's setting of that name.
    """

    def __init__(self, sync_tasks: str) -> None:
        self._sync_tasks = sync_tasks
        # Prefect's own runner (so its release's engine calls, context and
        # warnings), with its own default: no cap on threads.
        self._threads: ThreadPoolTaskRunner[Any] = ThreadPoolTaskRunner()
        # Threads that wait for the Ray tasks of sync runs under remote_options.
        self._ray_waiters: concurrent.futures.ThreadPoolExecutor | None = None
        self._in_flight: set[concurrent.futures.Future[Any]] = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)

    def __enter__(self) -> NestedRuns:
        self._threads.__enter__()
        with _live_lock:
            _live.add(self)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        with _live_lock:
            _live.discard(self)
        if self._ray_waiters is not None:
            self._ray_waiters.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            running = list(self._in_flight)
        if running and _closing_scope.get():
            # Prefect's thread pool waits for its runs as it exits, which would
            # hold the supervisor's loop as its flow run's scope closes. They had
            # their grace already (remote.py): the flow run was interrupted, or
            # they outlived it, and the supervisor is about to stop. Runs not
            # started yet never will; running ones end on their own. (A subflow's
            # runner waits for its runs, as the thread pool does, wherever it ends.)
            for future in running:
                future.cancel()
            return
        self._threads.__exit__(*exc_info)

    def submit(
        self,
        task: Task[Any, Any],
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None,
        dependencies: dict[str, Any] | None,
    ) -> NestedPrefectFuture[Any]:
        """Start one task run here (as a Ray task for a sync task under ``remote_options``)."""
        ray_options = current_remote_options()
        if not task.isasync and (ray_options or self._sync_tasks == "ray"):
            task_run_id, running = self._as_ray_task(
                task, parameters, wait_for, dependencies, ray_options
            )
        else:
            threaded = self._threads.submit(task, parameters, wait_for, dependencies)
            task_run_id, running = threaded.task_run_id, threaded.wrapped_future
        self._track(running)
        return NestedPrefectFuture(task_run_id=task_run_id, wrapped_future=running)

    def cancel_all(self) -> None:
        """As Prefect's thread pool: runs not started never will."""
        self._threads.cancel_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no run is in flight, at most ``timeout`` s; True if none is."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._in_flight, timeout)

    def _track(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._in_flight.add(future)

        def done(f: concurrent.futures.Future[Any]) -> None:
            with self._idle:
                self._in_flight.discard(f)
                self._idle.notify_all()

        future.add_done_callback(done)

    def _as_ray_task(
        self,
        task: Task[Any, Any],
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None,
        dependencies: dict[str, Any] | None,
        ray_options: dict[str, Any],
    ) -> tuple[uuid.UUID, concurrent.futures.Future[Any]]:
        if self._ray_waiters is None:
            self._ray_waiters = concurrent.futures.ThreadPoolExecutor(
                max_workers=10_000, thread_name_prefix="aioray-nested-ray"
            )
        task_run_id = uuid.uuid4()
        context = contextvars.copy_context()  # the parent's: its run, tags, options
        running = self._ray_waiters.submit(
            context.run,
            _run_as_ray_task,
            task,
            task_run_id,
            parameters,
            list(wait_for or ()),
            dependencies,
            ray_options,
        )
        return task_run_id, running


def wait_for_nested_runs(timeout: float) -> bool:
    """Wait until this process's nested task runs have finished, at most ``timeout`` s.

    Called (in a thread) before a flow run's scope closes on a supervisor, so
    that Prefect's thread pool, which waits for its runs as it exits, finds none.
    """
    deadline = time.monotonic() + timeout
    with _live_lock:
        live = list(_live)
    return all(runs.wait_idle(max(0.0, deadline - time.monotonic())) for runs in live)


def _settled(value: Any) -> Any:
    """``value`` with each Prefect future in it waited for and replaced by a finished one."""
    from prefect.utilities.collections import visit_collection

    def settle(item: Any) -> Any:
        if isinstance(item, PrefectFuture) and not isinstance(item, SettledPrefectFuture):
            item.wait()
            return SettledPrefectFuture(item.task_run_id, item.state)
        return item

    return visit_collection(value, visit_fn=settle, return_data=True)


def _run_as_ray_task(
    task: Task[Any, Any],
    task_run_id: uuid.UUID,
    parameters: dict[str, Any],
    wait_for: list[PrefectFuture[Any]],
    dependencies: dict[str, Any] | None,
    ray_options: dict[str, Any],
) -> Any:
    """Run a nested sync task run as a Ray task and return its final State (a thread here)."""
    import ray
    from prefect.context import serialize_context

    engine_arguments = {
        "task": task,
        "task_run_id": task_run_id,
        "task_run": None,
        "parameters": _settled(parameters),
        "wait_for": _settled(wait_for) or None,
        "dependencies": dependencies,
        "return_type": "state",
    }
    with transporting():
        ref = sync_task_as_ray_task(task, ray_options).remote(
            engine_arguments, serialize_context(), None
        )
    try:
        return transactions.unwrap(ray.get(ref))
    except Exception as exc:  # its worker died, Ray went away: Crashed, as at the top level
        return crashed_state(ray_error_cause(exc))


_in_worker: Any = None  # run_sync_task_in_worker as a Ray remote function, made once


def sync_task_as_ray_task(task: Any, ray_options: dict[str, Any]) -> Any:
    """:func:`run_sync_task_in_worker` as a Ray remote function named after ``task``,
    with ``ray_options`` (its ``.remote(engine_arguments, context, transaction)``)."""
    import ray

    global _in_worker
    if _in_worker is None:
        _in_worker = ray.remote(run_sync_task_in_worker)
    return _in_worker.options(name=getattr(task, "name", "task"), **ray_options)


def ray_error_cause(exc: BaseException) -> BaseException:
    """The task's own exception inside a Ray error (``RayTaskError.cause``), else ``exc``."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def run_sync_task_in_worker(
    engine_arguments: dict[str, Any],
    context: dict[str, Any],
    transaction: list[dict[str, Any]] | None,
) -> Any:
    """Run a sync task run in a Ray worker, as prefect-ray runs every task; return
    its final State with what it did in the flow's transaction (``transactions.py``)."""
    from prefect.task_engine import run_task_sync

    with ExitStack() as stack:
        stack.enter_context(task_runs_here())
        entered = transactions.enter_snapshot(stack, transaction)
        state = run_task_sync(**engine_arguments, context=context)
        return transactions.outcome(state, entered)
