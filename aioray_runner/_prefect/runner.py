"""``AioRayTaskRunner``: a Prefect 3 task runner that runs async tasks on supervisors.

A drop-in for ``prefect_ray.RayTaskRunner``::

    from prefect import flow, task
    from aioray_runner import AioRayTaskRunner, aresult, aresults

    @task
    async def fetch(i: int) -> int:
        await asyncio.sleep(0.1)
        return i

    @flow(task_runner=AioRayTaskRunner())
    async def pipeline(n: int) -> int:
        first = await aresult(fetch.submit(0))  # a submitted task's result, awaited
        futures = fetch.map(range(n))           # thousands in flight on a few supervisors
        return first + sum(await aresults(futures))

(``await fetch.submit(0)`` works too; :func:`aresult` is the spelling that
mypy and pyright accept.)

* **async tasks** run through Prefect's async task engine on a supervisor's
  event loop, many at once, with the flow run's context and API client set up
  once per supervisor (see ``remote.py``);
* **sync tasks** run in threads of a supervisor, many at once, as in Prefect's
  ``ThreadPoolTaskRunner``; inside :func:`aioray_runner.remote_options` (say
  ``num_cpus=1``, for CPU-bound work), or everywhere with ``sync_tasks="ray"``,
  each runs as a Ray task of its own, as under ``RayTaskRunner``;
* upstream futures in parameters (nested anywhere) and ``wait_for`` are
  awaited inside the supervisor and arrive as finished Prefect futures:
  Prefect's engine then does what it always does (results, ``allow_failure``,
  ``NotReady`` for a failed upstream, a future left alone under ``quote``);
* a task submitted inside a flow's ``transaction()`` takes part in it, its
  commit and rollback hooks running in the flow's process (see
  ``transactions.py``).

This module only translates Prefect's calls into the runtime's; the runtime
never imports Prefect.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Generator, Iterable, Iterator
from contextlib import contextmanager
from types import CoroutineType
from typing import TYPE_CHECKING, Any, Literal, Self, TypeGuard, TypeVar, overload

import anyio
import ray
from prefect.client.schemas.objects import RunInput, State
from prefect.context import (
    AssetContext,
    FlowRunContext,
    TagsContext,
    TaskRunContext,
    serialize_context,
)
from prefect.futures import (
    PrefectDistributedFuture,
    PrefectFuture,
    PrefectFutureList,
    PrefectWrappedFuture,
)
from prefect.states import Pending
from prefect.task_runners import TaskRunner
from prefect.transactions import BaseTransaction, get_transaction
from prefect.utilities.engine import collect_task_run_inputs_sync
from typing_extensions import ParamSpec

# The core's public names only (each from the module that defines it, so that
# this adapter and the package's __init__ do not import each other; the few
# others are listed in tests/unit/test_house.py, PREFECT_MAY_IMPORT).
from .._caller.futures import AioRayFuture
from .._caller.runtime import Runtime
from .._common.settings import (
    DEFAULT_BLOCKED_LOOP_THRESHOLD,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_START_TIMEOUT,
    Settings,
)
from .._common.watchdog import BlockedLoop
from .._common.wire import register_reducer
from ..errors import SerializationError, SupervisorDiedError, UpstreamError
from . import api, compat, interrupt, recovery, remote, settled, transactions
from .options import ACTOR_PLACEMENT_OPTIONS, current_remote_options

if TYPE_CHECKING:
    from prefect.tasks import Task

__all__ = ["AioRayTaskRunner", "PrefectAioRayFuture", "aresult", "aresults"]

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("aioray_runner")

#: Retries a task run is given after its supervisor died, at most (its own
#: ``retries`` permitting): see docs/failures.md.
MAX_CRASH_RETRIES = 2

# Where a task run runs: an async task on a supervisor's loop, a sync task in a
# thread of a supervisor, or a sync task as a Ray task of its own.
_Where = Literal["async", "thread", "ray"]
_REMOTE_RUNNERS: dict[_Where, Callable[..., Any]] = {
    "async": remote.run_async_task,
    "thread": remote.run_sync_task_in_thread,
    "ray": remote.run_sync_task,
}

# The parts of Prefect's serialized context that differ from task run to task run.
_PER_CALL_CONTEXT = ("task_run_context", "tags_context", "asset_context")


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
            self._final_state = _state_of(self._wrapped_future)
        if self._transaction is not None:
            self._join_transaction(roll_back=True)

    def _join_transaction(self, *, roll_back: bool) -> None:
        """Hand the run's transactions to the flow's; roll it back if the run did.

        Handing over happens as soon as the run finishes (I/O thread); rolling
        back runs hooks, so it happens in the thread that waits for the run.
        """
        parent = self._transaction
        if parent is None or not self._wrapped_future.done():
            return
        try:
            outcome = self._wrapped_future.result(0)
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


def _state_of(future: AioRayFuture[Any]) -> State[Any]:
    """The final State a finished runtime future stands for."""
    try:
        state = transactions.unwrap(future.result(0))
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
    return state


register_reducer(PrefectAioRayFuture, _reduce_future)


def _awaitable(
    future: PrefectFuture[Any],
) -> TypeGuard[PrefectAioRayFuture[Any] | PrefectDistributedFuture[Any]]:
    """A future with ``result_async``: waiting for it needs no thread."""
    return isinstance(future, PrefectAioRayFuture | PrefectDistributedFuture)


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


# Declared with the future type Prefect's @flow takes (TaskRunner is invariant in
# it, so a TaskRunner[PrefectAioRayFuture[Any]] is refused by mypy and pyright);
# submit and map still say they return PrefectAioRayFuture.
class AioRayTaskRunner(TaskRunner[PrefectFuture[Any]]):
    """Runs Prefect task runs on aioray-runner's supervisor actors.

    Args:
        address: Address of a running Ray instance (``"ray://host:10001"``,
            ``"auto"``). ``None`` uses the Ray this process already initialized,
            else the cluster ``RAY_ADDRESS`` names, else starts a temporary local
            instance (never another program's ``ray start`` cluster: pass
            ``"auto"`` for that); see :class:`Runtime`.
        init_kwargs: Extra keyword arguments for ``ray.init`` (namespace: ``"prefect"``).
        supervisors: Supervisor actors to start; ``None`` = one per Ray node with CPUs.
        max_concurrency: Task runs running at once per supervisor.
        threads: Sync task runs running at once in threads, per supervisor.
            ``None`` (the default) follows Prefect's ``ThreadPoolTaskRunner``:
            ``PREFECT_TASK_RUNNER_THREAD_POOL_MAX_WORKERS`` if set, else no
            limit below ``max_concurrency``.
        sync_tasks: Where sync (``def``) tasks run. ``"threads"`` (the default):
            in threads of a supervisor, as in Prefect's thread pool, with the
            flow run's context and API client set up once; right for I/O-bound
            tasks. A task submitted inside ``remote_options(...)`` (say
            ``num_cpus=1``) runs as a Ray task of its own instead, on a core of
            its own. ``"ray"``: every sync task runs as a Ray task, as under
            ``RayTaskRunner``. See docs/migrating-from-ray-task-runner.md.
        console: What task runs print in the flow's console. ``"runs"`` (the
            default): their log lines, as under Prefect's own runners.
            ``"summary"``: only their warnings and errors, and one line with
            the count of each final state when the flow's runner closes: for
            flows of hundreds of task runs. Prefect's API (and UI) gets every
            line either way. Sync tasks run as Ray tasks (``remote_options``,
            ``sync_tasks="ray"``) print through Ray's worker output, which
            this does not filter.
        actor_options: Extra Ray actor options for the supervisors.
        blocked_loop_threshold: Seconds a supervisor's loop may stall before the
            runner warns, in the flow's logs and the blocking task run's logs
            (``None`` switches the watchdog off); see :class:`Runtime`.
        backend: ``"asyncio"`` only (Prefect's task engine runs on asyncio).
        start_timeout: Seconds to wait for the supervisors to start.
        preload: Modules each supervisor imports while it starts (Prefect's task
            engine is always preloaded): your task modules, pandas, ...
        forward_logs: Loggers of your own whose records, inside supervisors,
            print in the flow's console (Prefect's task and flow run loggers
            always do, as under Prefect's own runners); see :class:`Runtime`.
        name: A name for the supervisors (a slug of the flow's); see :class:`Runtime`.
        settings: All of the above as one :class:`Settings` (then the other
            arguments are ignored); ``runner.settings`` is the one in force.

    Ray is shut down on exit only if this runner started it.
    """

    def __init__(
        self,
        address: str | None = None,
        init_kwargs: dict[str, Any] | None = None,
        *,
        supervisors: int | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        threads: int | None = None,
        actor_options: dict[str, Any] | None = None,
        blocked_loop_threshold: float | None = DEFAULT_BLOCKED_LOOP_THRESHOLD,
        backend: str = "asyncio",
        start_timeout: float = DEFAULT_START_TIMEOUT,
        preload: Iterable[str] = (),
        settings: Settings | None = None,
        sync_tasks: Literal["threads", "ray"] = "threads",
        forward_logs: Iterable[str] = (),
        console: Literal["runs", "summary"] = "runs",
        name: str | None = None,
    ) -> None:
        # Bad settings fail here, where they are written, not when a flow starts.
        if sync_tasks not in ("threads", "ray"):
            raise ValueError(
                f"sync_tasks must be 'threads' (sync tasks run in threads of a supervisor)"
                f" or 'ray' (each runs as a Ray task, as under RayTaskRunner), not {sync_tasks!r}"
            )
        #: Where sync tasks run: "threads" or "ray" (see the class docstring).
        self.sync_tasks = sync_tasks
        if console not in ("runs", "summary"):
            raise ValueError(
                f"console must be 'runs' (task runs' log lines, as Prefect prints them) or"
                f" 'summary' (their warnings and errors, then one line of counts), not {console!r}"
            )
        #: What task runs print in the flow's console: "runs" or "summary".
        self.console = console
        if threads is None:
            threads = _thread_pool_size(max_concurrency)
        # As in RayTaskRunner: the namespace defaults to "prefect".
        init_kwargs = {"namespace": "prefect", **(init_kwargs or {})}
        # Every keyword argument named in SETTING_NAMES (the one list of settings).
        settings = Settings.from_arguments(settings, locals())
        if settings.backend != "asyncio":
            raise ValueError(
                f"AioRayTaskRunner runs Prefect's task engine, which needs asyncio: backend"
                f" must be 'asyncio', not {settings.backend!r}. To run trio code, call it"
                " from a task with trio.run in a thread, or use aioray_runner.Runtime"
                " (backend='trio') directly."
            )
        #: Every setting of this runner's runtime (see :class:`Settings`).
        self.settings = settings
        self._runtime: Runtime | None = None
        self._key = uuid.uuid4().hex
        self._flow_context: dict[str, Any] | None = None
        self._callables: dict[tuple[int, _Where], tuple[Task[Any, Any], Callable[..., Any]]] = {}
        self._submit_context: contextvars.Context | None = None
        self._reporter: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        # Call id -> (task run id, flow run id) of runs in flight: a blocked-loop
        # warning names a call, and belongs in that task run's logs.
        self._runs_by_call: dict[int, tuple[uuid.UUID, Any, str]] = {}
        self._submitted = 0  # task runs submitted by this runner (for _wait_until_recorded)
        # The flow run this runner's task runs belong to: its context is gone by
        # the time the runner exits (Prefect enters the runner first).
        self._flow_run_id: uuid.UUID | None = None
        self._shown = _RunsOnConsole(console)  # what the console shows of the task runs
        # The flow starts Prefect's temporary API (if it uses one) before it
        # enters this runner: a first start on a new PREFECT_HOME outlasts
        # Prefect's 20 s wait on a busy machine. See api.
        api.allow_slow_start()
        super().__init__()

    @property
    def address(self) -> str | None:
        """The Ray address this runner connects to (as ``RayTaskRunner.address``)."""
        return self.settings.address

    @property
    def init_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``ray.init`` (as ``RayTaskRunner.init_kwargs``)."""
        return dict(self.settings.init_kwargs)

    def duplicate(self) -> Self:
        """A new, unstarted runner with the same settings (one per flow run)."""
        return type(self)(settings=self.settings, sync_tasks=self.sync_tasks, console=self.console)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AioRayTaskRunner):
            return False
        return (
            self.settings == other.settings
            and self.sync_tasks == other.sync_tasks
            and self.console == other.console
        )

    __hash__ = None  # type: ignore[assignment]  # mutable settings, compared by value

    def __getstate__(self) -> dict[str, Any]:
        # Flows (and so their runner) are pickled into the context that
        # supervisors receive: send the settings, not the live machinery.
        state = {k: v for k, v in self.__dict__.items() if k != "logger"}
        state.update(
            _runtime=None,
            _flow_context=None,
            _callables={},
            _submit_context=None,
            _reporter=None,
            _runs_by_call={},
            _submitted=0,
            _flow_run_id=None,
            _shown=None,  # holds a lock: made anew on the other side
            _lock=None,
            _started=False,
        )
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._shown = _RunsOnConsole(self.console)
        from prefect.logging.loggers import get_logger

        self.logger = get_logger(f"task_runner.{self.name}")

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> Self:
        super().__enter__()
        if not _inside_ray_worker():
            # In the flow's process: start now, so Ray's address and the
            # supervisors are logged when the flow starts. Inside a supervisor
            # (Prefect enters a copy of the runner there) start only if a task
            # actually submits more tasks.
            self._start_runtime()
        return self

    def _start_runtime(self) -> Runtime:
        with self._lock:
            if self._runtime is None:
                # Importing Prefect takes a supervisor seconds: do it while it
                # starts, not when the first task run arrives.
                preload = ("prefect.task_engine", "aioray_runner._prefect.remote")
                settings = self.settings.replace(
                    preload=_merged(preload, self.settings.preload),
                    # Task and flow run logs print in the flow's console, as
                    # under Prefect's own runners (the supervisor sends them
                    # to the API itself).
                    forward_logs=_merged(_RUN_LOGGERS, self.settings.forward_logs),
                )
                self._runtime = Runtime(
                    settings=settings,
                    logger=self.logger,  # Prefect's console shows it
                    on_blocked_loop=self._on_blocked_loop,
                    on_log=self._shown.print_forwarded,
                ).start()
            return self._runtime

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        runtime, self._runtime = self._runtime, None
        # Ctrl-C (KeyboardInterrupt; in an async flow, the CancelledError asyncio.run
        # raises into it), SystemExit, a cancelled flow: end the runs in flight within
        # seconds (interrupt), not as after an error in the flow.
        interrupted = exc_type is not None and not issubclass(exc_type, Exception)
        try:
            if runtime is not None and interrupted:
                self._shown.interrupted = True
                flow_run_id = self._flow_run_id
                report = interrupt.close_interrupted(
                    runtime,
                    self._key,
                    flow_run_id,
                    exc_type.__name__,
                    self._submit_context,
                    # A temporary API stops with this process: what it has not
                    # recorded by then is lost (see _wait_until_recorded).
                    lambda within: (
                        _wait_until_recorded(flow_run_id, None, within) if flow_run_id else None
                    ),
                )
                self.logger.warning("%s", report.line())
            elif runtime is not None:
                self._close_runtime(runtime, cancel=exc_type is not None)
            if self._reporter is not None:
                self._reporter.shutdown(wait=not interrupted, cancel_futures=interrupted)
                self._reporter = None
            if runtime is not None and self._flow_run_id and not interrupted:
                _wait_until_recorded(self._flow_run_id, self._submitted, say=self.logger.info)
            if self.console == "summary" and (line := self._shown.line()):
                self.logger.info(line)
        finally:
            super().__exit__(exc_type, exc_value, traceback)

    def _close_runtime(self, runtime: Runtime, *, cancel: bool) -> None:
        runtime.drain(cancel=cancel, grace=10)
        # Close each supervisor's flow run scope and flush Prefect's log and
        # event queues there, before the supervisors are stopped.
        closers = runtime.broadcast(remote.close_flow_run, self._key, every_group=True)
        for closer in closers:
            if not closer.wait_sync(30):
                logger.warning("A supervisor did not flush its Prefect logs within 30 s")
        runtime.close(wait=False)

    def cancel_all(self) -> None:
        """Cancel every task run still in flight (Prefect calls this on cancellation)."""
        runtime = self._runtime
        if runtime is not None and runtime.running:
            for future in runtime.outstanding():
                future.cancel()

    # -- submitting ---------------------------------------------------------------------

    @overload  # type: ignore[override]  # Prefect's overloads, as prefect-ray has them
    def submit(
        self,
        task: Task[P, Coroutine[Any, Any, R]],
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
        dependencies: dict[str, set[RunInput]] | None = None,
    ) -> PrefectAioRayFuture[R]: ...

    @overload
    def submit(
        self,
        task: Task[Any, R],
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
        dependencies: dict[str, set[RunInput]] | None = None,
    ) -> PrefectAioRayFuture[R]: ...

    def submit(
        self,
        task: Task[P, Any],
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
        dependencies: dict[str, set[RunInput]] | None = None,
    ) -> PrefectAioRayFuture[Any]:
        """Submit one task run; returns at once with its future."""
        if not self._started:
            raise RuntimeError("The task runner must be started before submitting work.")
        runtime = self._runtime or self._start_runtime()
        task_run_id = uuid.uuid4()
        call_context = self._call_context(task, task_run_id, parameters)
        try:
            transactions.check_task(task)
            call_context["transaction"] = transactions.snapshot()
        except transactions.TransactionNotPortable as exc:
            return self._failed_at_submit(task, task_run_id, exc)
        options = current_remote_options()
        request = remote.TaskRunRequest(task_run_id, wait_for, dependencies, call_context)
        # A run whose supervisor dies is run again elsewhere: once to settle its
        # state from what the API recorded, and once more per retry it has left
        # (see recovery.after_loss), at most MAX_CRASH_RETRIES: a task
        # that kills its supervisor each time (memory, a segfault) takes the
        # other runs there with it, so it is not given every retry it has.
        reruns = min(int(task.retries or 0), MAX_CRASH_RETRIES) + 1
        where, request, placement = self._where(task, request, options)
        try:
            wrapped = runtime.submit_call(
                self._remote_callable(task, where),
                (request,),
                parameters,
                label=task.name,
                actor_options=placement,
                reruns=reruns,
            )
        except SerializationError as exc:
            return self._failed_at_submit(task, task_run_id, exc)
        future: PrefectAioRayFuture[Any] = PrefectAioRayFuture(
            task_run_id=task_run_id, wrapped_future=wrapped
        )
        if call_context["transaction"]:
            future._transaction = get_transaction()
            wrapped.add_done_callback(lambda _: future._join_transaction(roll_back=False))
        flow_run = FlowRunContext.get()
        self._submitted += 1
        if self._flow_run_id is None and flow_run and flow_run.flow_run:
            self._flow_run_id = flow_run.flow_run.id
        self._runs_by_call[wrapped.call_id] = (
            task_run_id,
            flow_run.flow_run.id if flow_run and flow_run.flow_run else None,
            task.name,
        )
        wrapped.add_done_callback(functools.partial(self._on_done, task, task_run_id))
        return future

    # PrefectFutureList[R] is a list of PrefectFuture[R]; its items are ours.
    # Prefect's own annotation (PrefectFutureList[F]) is a list of futures of futures.
    @overload  # type: ignore[override]
    def map(
        self,
        task: Task[P, Coroutine[Any, Any, R]],
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
    ) -> PrefectFutureList[R]: ...

    @overload
    def map(
        self,
        task: Task[Any, R],
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
    ) -> PrefectFutureList[R]: ...

    def map(
        self,
        task: Task[P, Any],
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
    ) -> PrefectFutureList[Any]:
        """Submit one task run per item of the iterable parameters (Prefect's rules)."""
        return super().map(task, parameters, wait_for)

    def _flow_context_once(self) -> dict[str, Any]:
        # The flow run's context (settings, flow run) is the same for every
        # task run of this runner: serialize it once, send it once per supervisor.
        if self._flow_context is None:
            with _share_ephemeral_api():
                context = serialize_context()
            for key in _PER_CALL_CONTEXT:
                context.pop(key, None)
            self._flow_context = context
            self._submit_context = contextvars.copy_context()
        return self._flow_context

    def _where(
        self, task: Task[Any, Any], request: remote.TaskRunRequest, options: dict[str, Any]
    ) -> tuple[_Where, remote.TaskRunRequest, dict[str, Any]]:
        """Where a task run goes, its request for there, and the supervisors' actor options.

        An async task: on a supervisor's loop, of the group its placement options
        (``remote_options``) select. A sync task with Ray options (a core, a GPU,
        ...), or every sync task under ``sync_tasks="ray"``: a Ray task of its
        own. Any other sync task: a thread of a supervisor.
        """
        if task.isasync:
            placement = {k: v for k, v in options.items() if k in ACTOR_PLACEMENT_OPTIONS}
            return "async", request, placement
        if options or self.sync_tasks == "ray":
            return "ray", request._replace(ray_options=options), {}
        return "thread", request._replace(threads=self.settings.threads), {}

    def _remote_callable(self, task: Task[Any, Any], where: _Where) -> Callable[..., Any]:
        # One callable per task object, so the runtime pickles the task once.
        key = (id(task), where)
        cached = self._callables.get(key)
        if cached is None or cached[0] is not task:
            run_remotely = _REMOTE_RUNNERS[where]
            fn = functools.partial(run_remotely, self._key, self._flow_context_once(), task)
            cached = self._callables[key] = (task, fn)
        return cached[1]

    def _call_context(
        self, task: Task[Any, Any], task_run_id: uuid.UUID, parameters: dict[str, Any]
    ) -> dict[str, Any]:
        """What differs per task run, in ``serialize_context``'s format (as prefect-ray)."""
        task_inputs = {
            k: collect_task_run_inputs_sync(v, future_cls=PrefectAioRayFuture)
            for k, v in parameters.items()
        }
        context: dict[str, Any] = {
            "asset_context": AssetContext.from_task_and_inputs(
                task=task, task_run_id=task_run_id, task_inputs=task_inputs, copy_to_child_ctx=True
            ).serialize()
        }
        if (tags := TagsContext.get()) and tags.current_tags:
            context["tags_context"] = tags.serialize()
        if parent := TaskRunContext.get():
            context["task_run_context"] = parent.serialize()
        return context

    # -- failures the runtime reports on the flow's side ---------------------------------------

    def _failed_at_submit(
        self, task: Task[Any, Any], task_run_id: uuid.UUID, exc: Exception
    ) -> PrefectAioRayFuture[Any]:
        """A parameter cannot be pickled, or the run cannot take part in the
        flow's transaction: this task run fails, the flow goes on."""
        from prefect.states import Failed

        message = (
            f"Task run {task.name!r} could not be sent to a supervisor: {exc}"
            if isinstance(exc, SerializationError)
            else f"Task run {task.name!r} cannot run: {exc}"
        )
        state: State[Any] = Failed(message=message, data=exc)
        _record_state(task, task_run_id, state, exists=False)
        flow_run = FlowRunContext.get()
        if flow_run is not None:
            from prefect.logging.loggers import get_run_logger

            get_run_logger(flow_run).error(message)
        else:
            logger.error(message)
        future: PrefectAioRayFuture[Any] = PrefectAioRayFuture(
            task_run_id=task_run_id, wrapped_future=AioRayFuture.failed(exc, task.name)
        )
        future._final_state = state
        return future

    def _on_blocked_loop(self, blocked: BlockedLoop) -> None:
        """Warn about a blocked supervisor loop in the logs of the task run that
        blocked it, which Prefect shows in the console and sends to the API
        (I/O thread). A stall no task run is known for goes to the runner's log."""
        runs = [self._runs_by_call[c] for c in blocked.call_ids if c in self._runs_by_call]
        if not runs:
            self.logger.warning("%s", blocked)
            return
        task_run_id, flow_run_id, task_name = runs[0]
        # Prefect sends only its run loggers' records to the API.
        logging.getLogger("prefect.task_runs").warning(
            "%s",
            blocked,
            extra={
                "task_run_id": task_run_id,
                "flow_run_id": flow_run_id,
                "task_run_name": task_name,
                "task_name": task_name,
            },
        )

    def _on_done(
        self, task: Task[Any, Any], task_run_id: uuid.UUID, future: AioRayFuture[Any]
    ) -> None:
        """A run finished (I/O thread): forget it; if it was lost, say so in the API."""
        self._runs_by_call.pop(future.call_id, None)
        error = future.exception(0)
        if self.console == "summary":
            try:
                self._shown.add(_state_of(future).name or "?")
            except Exception:  # a count must never keep a crash from being recorded
                self._shown.add("?")
        if not isinstance(error, SupervisorDiedError) or self._submit_context is None:
            return
        with self._lock:
            if self._reporter is None:
                self._reporter = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="aioray-crash-reporter"
                )
            reporter = self._reporter
        state = recovery.crashed_state(error)
        reporter.submit(self._submit_context.copy().run, _record_state, task, task_run_id, state)


# Prefect's loggers for task and flow runs: records of these, made in a
# supervisor, are printed by the flow's process (see _RunsOnConsole).
_RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")


def _merged(first: Iterable[str], then: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*first, *then)))


class _RunsOnConsole:
    """What the flow's console shows of the task runs: their forwarded log lines,
    or (``console="summary"``) only their problems and a count of final states,
    which any thread may add to."""

    def __init__(self, console: str) -> None:
        self._summary = console == "summary"
        #: The flow was interrupted: the runner's one line speaks for the runs.
        self.interrupted = False
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._started = time.monotonic()

    def print_forwarded(self, record: logging.LogRecord) -> None:
        """Show a run's log record from a supervisor in this process's console (I/O thread).

        The supervisor's own API log handler already sent it to the API: here it
        only goes to the console handlers (Prefect's, and any the user added).
        In summary mode, task runs' records below WARNING are not shown; after an
        interrupt none are (each cancelled run says "Crash detected!": the
        interrupt's one line says it for all of them).
        """
        if record.name == "prefect.task_runs" and (
            self.interrupted or (self._summary and record.levelno < logging.WARNING)
        ):
            return
        record.send_to_api = False
        logging.getLogger(record.name).handle(record)

    def add(self, state_name: str) -> None:
        with self._lock:
            self._counts[state_name] = self._counts.get(state_name, 0) + 1

    def line(self) -> str | None:
        """One line of counts, most common state first; None if no run ended."""
        with self._lock:
            counts = sorted(self._counts.items(), key=lambda item: (-item[1], item[0]))
        if not counts:
            return None
        total = sum(n for _, n in counts)
        each = ", ".join(f"{n:,} {name}" for name, n in counts)
        return (
            f"{total:,} task run(s) ended in {time.monotonic() - self._started:.1f} s: {each}"
            " (their log lines are in Prefect's API and UI)"
        )


def _thread_pool_size(max_concurrency: object) -> int:
    """Threads for sync task runs per supervisor, as Prefect's thread pool sizes itself."""
    from prefect.settings import get_current_settings

    configured = get_current_settings().tasks.runner.thread_pool_max_workers
    if configured:
        return int(configured)
    # No limit of its own: max_concurrency already caps runs per supervisor.
    return max_concurrency if isinstance(max_concurrency, int) and max_concurrency > 0 else 1


@contextmanager
def _share_ephemeral_api() -> Iterator[None]:
    """Point the supervisors at this process's temporary Prefect server.

    With no ``PREFECT_API_URL``, every process that talks to Prefect starts a
    temporary server of its own (seconds each, several writers on one
    database). The flow's process already runs one: name it in the context the
    supervisors receive. On a remote cluster set ``PREFECT_API_URL`` instead.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api_url = api.start_temporary_api()  # a no-op once the flow started it
    if api_url is None:
        yield
        return
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        yield


#: Seconds to wait at most for Prefect's temporary API to record the task runs.
RECORD_WAIT_S = 10.0
# States a task run has before its end. Pending counts only under its own name:
# Pending("NotReady") is how a run whose upstream failed ends.
_NOT_FINAL = ("SCHEDULED", "RUNNING", "PAUSED", "CANCELLING")


def _wait_until_recorded(
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


def _record_state(
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


def _inside_ray_worker() -> bool:
    if not ray.is_initialized():
        return False
    try:
        return bool(ray.get_runtime_context().worker.mode != ray.SCRIPT_MODE)
    except Exception:
        return False
