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
  ``ThreadPoolTaskRunner``, until a task shows it is CPU-bound: its runs then
  run as Ray tasks, a core each (``kinds.py``); inside
  :func:`aioray_runner.remote_options` (say ``num_cpus=1``), or everywhere with
  ``sync_tasks="ray"``, each runs as a Ray task of its own, as under ``RayTaskRunner``;
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

import logging
import threading
import uuid
from collections.abc import Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar, overload

from prefect.client.schemas.objects import RunInput
from prefect.futures import (
    PrefectFuture,
    PrefectFutureList,
)
from prefect.task_runners import TaskRunner
from prefect.transactions import get_transaction
from typing_extensions import ParamSpec

# The core's public names only (each from the module that defines it, so that
# this adapter and the package's __init__ do not import each other; the few
# others are listed in tests/unit/test_house.py, PREFECT_MAY_IMPORT).
from .._caller.futures import AioRayFuture, wait_all
from .._caller.runtime import Runtime
from .._common.settings import (
    DEFAULT_BLOCKED_LOOP_THRESHOLD,
    DEFAULT_HOLD_RESULTS_ABOVE,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_START_TIMEOUT,
    Settings,
)
from ..errors import SerializationError, SupervisorDiedError
from . import api, interrupt, remote, transactions
from .book import TaskRunBook
from .calls import TaskRunCalls
from .console import RUN_LOGGERS, RunsOnConsole
from .future import PrefectAioRayFuture, aresult, aresults
from .nested import NestedRuns, inside_task_runs
from .records import Unrecorded, wait_until_recorded

if TYPE_CHECKING:
    from prefect.tasks import Task

__all__ = ["AioRayTaskRunner", "PrefectAioRayFuture", "aresult", "aresults"]

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("aioray_runner")


# Declared with the future type Prefect's @flow takes (TaskRunner is invariant in
# it, so a TaskRunner[PrefectAioRayFuture[Any]] is refused by mypy and pyright);
# submit and map still say they return PrefectAioRayFuture.
class AioRayTaskRunner(TaskRunner[PrefectFuture[Any]]):
    """Runs Prefect task runs on aioray-runner's supervisor actors.

    Args:
        address: A running Ray (``"ray://host:10001"``, ``"auto"``). ``None`` uses the
            Ray this process initialized, else ``RAY_ADDRESS``'s, else starts a temporary
            local one (never another program's ``ray start`` cluster); see :class:`Runtime`.
        init_kwargs: Extra keyword arguments for ``ray.init`` (namespace: ``"prefect"``).
        supervisors: Supervisor actors to start; ``None`` = one per Ray node with CPUs.
        max_concurrency: Task runs running at once per supervisor.
        threads: Sync task runs running at once in threads, per supervisor.
            ``None`` (the default) follows Prefect's ``ThreadPoolTaskRunner``:
            ``PREFECT_TASK_RUNNER_THREAD_POOL_MAX_WORKERS`` if set, else no
            limit below ``max_concurrency``.
        sync_tasks: Where sync (``def``) tasks run. ``"auto"`` (the default): in
            threads of a supervisor, as in Prefect's thread pool, until a task's
            first run there shows it is CPU-bound; its runs then run as Ray
            tasks, a core each. ``"threads"``: always in threads. ``"ray"``:
            always as Ray tasks, as under ``RayTaskRunner``. Inside
            ``remote_options(...)``, always a Ray task with those options.
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
        hold_results_above: Bytes above which a run's result stays on its supervisor
            until read (its state reaches the flow at once); see :class:`Runtime`.
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
        sync_tasks: Literal["auto", "threads", "ray"] = "auto",
        forward_logs: Iterable[str] = (),
        console: Literal["runs", "summary"] = "runs",
        name: str | None = None,
        hold_results_above: int | None = DEFAULT_HOLD_RESULTS_ABOVE,
    ) -> None:
        # Bad settings fail here, where they are written, not when a flow starts.
        check_choice("sync_tasks", sync_tasks, _SYNC_TASKS)
        #: Where sync tasks run: "auto", "threads" or "ray" (see the class docstring).
        self.sync_tasks = sync_tasks
        check_choice("console", console, _CONSOLES)
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
        self._key = uuid.uuid4().hex  # names this runner's flow run scope on the supervisors
        super().__init__()
        self._fresh()
        # The flow starts Prefect's temporary API (if it uses one) before it
        # enters this runner: a first start on a new PREFECT_HOME outlasts
        # Prefect's 20 s wait on a busy machine. See api.
        api.allow_slow_start()

    def _fresh(self) -> None:
        """The machinery of one runner's life; a copy (pickled) gets its own."""
        self._runtime: Runtime | None = None
        self._nested: NestedRuns | None = None  # inside a task run (see __enter__)
        self._shares = False  # runs on its parent flow's runtime (see __enter__)
        self._lock = threading.Lock()
        self._shown = RunsOnConsole(self.console)  # what the console shows of the task runs
        self._calls = TaskRunCalls(self._key, self.sync_tasks, self.settings.threads)
        self._book = TaskRunBook(self._shown, self.logger)

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
        mine = (self.settings, self.sync_tasks, self.console)
        return mine == (other.settings, other.sync_tasks, other.console)

    __hash__ = None  # type: ignore[assignment]  # mutable settings, compared by value

    def __getstate__(self) -> dict[str, Any]:
        # Flows (and so their runner) are pickled into the context that
        # supervisors receive: send the settings, not the live machinery.
        machinery = (
            "logger",
            "_runtime",
            "_nested",
            "_shares",
            "_lock",
            "_shown",
            "_calls",
            "_book",
        )
        state = {k: v for k, v in self.__dict__.items() if k not in machinery}
        state["_started"] = False
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        from prefect.logging.loggers import get_logger

        self.logger = get_logger(f"task_runner.{self.name}")
        self._fresh()

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> Self:
        super().__enter__()
        if inside_task_runs():
            # Prefect's copy of the flow's runner, inside a task run: its runs
            # run beside their parent, with no runtime of its own (nested.py).
            self._nested = NestedRuns(self.sync_tasks).__enter__()
        elif (shared := _enclosing_runtime(self)) is not None:
            # A subflow whose runner is like its parent flow's: its runs go to
            # the parent's supervisors (see _close_shared).
            self._runtime, self._shares = shared, True
        else:
            self._start_runtime()  # now, so the flow's log starts with where it runs
        return self

    def _start_runtime(self) -> Runtime:
        with self._lock:
            if self._runtime is None:
                self._runtime = _runtime_for(self.settings, self.logger, self._book, self._shown)
            return self._runtime

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        nested, self._nested = self._nested, None
        runtime, self._runtime = self._runtime, None
        # Ctrl-C (KeyboardInterrupt; in an async flow, the CancelledError asyncio.run
        # raises into it), SystemExit, a cancelled flow: end the runs in flight within
        # seconds (interrupt), not as after an error in the flow.
        interrupted = exc_type is not None and not issubclass(exc_type, Exception)
        book = self._book
        try:
            if nested is not None:  # inside a task run: nothing of the flow's to close
                nested.__exit__(exc_type, exc_value, traceback)
                return
            if runtime is not None and self._shares:
                self._shares = False
                _close_shared(runtime, self._key, book, exc_type)
            elif runtime is not None and interrupted:
                self._shown.interrupted = True
                self.logger.warning(
                    "%s", _close_interrupted(runtime, self._key, book, exc_type.__name__)
                )
            elif runtime is not None:
                _close_runtime(runtime, self._key, cancel=exc_type is not None)
            # Crash states, states a dead supervisor did not send, and a wait for a
            # temporary API to record them all.
            book.close(interrupted=interrupted)
            if self.console == "summary" and (line := self._shown.line()):
                self.logger.info(line)
        finally:
            super().__exit__(exc_type, exc_value, traceback)

    def cancel_all(self) -> None:
        """Cancel every task run still in flight (Prefect calls this on cancellation)."""
        if self._nested is not None:
            self._nested.cancel_all()
        runtime = self._runtime
        if runtime is not None and runtime.running:  # a subflow's: its own runs only
            for future in self._book.in_flight() if self._shares else runtime.outstanding():
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
        if self._nested is not None:  # inside a task run (nested.py); awaitable too
            return self._nested.submit(task, parameters, wait_for, dependencies)  # type: ignore[return-value]
        runtime = self._runtime or self._start_runtime()
        task_run_id = uuid.uuid4()
        try:
            call = self._calls.make(task, task_run_id, parameters, wait_for, dependencies)
            wrapped = runtime.submit_call(
                call.fn,
                (call.request,),
                parameters,
                label=task.name,
                actor_options=call.actor_options,
                reruns=call.reruns,
            )
        except _FAILS_THE_RUN as exc:
            state = self._book.failed_at_submit(task, task_run_id, exc)
            failed = AioRayFuture.failed(exc, task.name)
            future: PrefectAioRayFuture[Any] = PrefectAioRayFuture(
                task_run_id=task_run_id, wrapped_future=failed
            )
            future._final_state = state
            return future
        future = PrefectAioRayFuture(task_run_id=task_run_id, wrapped_future=wrapped)
        if call.in_transaction:
            future.take_part_in(get_transaction())
        self._book.sent(task, task_run_id, wrapped)
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


# Errors of submit that fail one task run (recorded as its state), not the flow: a
# parameter that cannot be pickled, a transaction a supervisor cannot take part in,
# supervisors for the run that keep failing as they start (docs/failures.md).
_FAILS_THE_RUN = (transactions.TransactionNotPortable, SerializationError, SupervisorDiedError)

_SYNC_TASKS = {
    "auto": "in threads of a supervisor, as Ray tasks once found CPU-bound",
    "threads": "sync tasks run in threads of a supervisor",
    "ray": "each runs as a Ray task, as under RayTaskRunner",
}
_CONSOLES = {
    "runs": "task runs' log lines, as Prefect prints them",
    "summary": "their warnings and errors, then one line of counts",
}


def _close_runtime(runtime: Runtime, key: str, *, cancel: bool) -> None:
    """Close a runner's runtime after its flow: its flow run scopes first (see remote.py)."""
    runtime.drain(cancel=cancel, grace=10)
    # Before the supervisors are stopped.
    _close_scopes(runtime, key, None, within=30)
    runtime.close(wait=False)


def _close_scopes(runtime: Runtime, key: str, crashed: str | None, *, within: float) -> None:
    """Close a runner's flow run scope on every supervisor and flush Prefect's log and
    event queues there (``remote.close_flow_run``; ``crashed``: after an interrupt)."""
    for closer in runtime.broadcast(remote.close_flow_run, key, crashed, every_group=True):
        if not closer.wait_sync(within):
            logger.warning("A supervisor did not flush its Prefect logs within %.0f s", within)


def _runtime_for(
    settings: Settings, logger: logging.Logger, book: TaskRunBook, shown: RunsOnConsole
) -> Runtime:
    """A started runtime for a flow's task runs."""
    # Importing Prefect takes a supervisor seconds: do it while it starts, not
    # when the first task run arrives.
    preload = ("prefect.task_engine", "aioray_runner._prefect.remote")
    settings = settings.replace(
        preload=_merged(preload, settings.preload),
        # Task and flow run logs print in the flow's console, as under Prefect's
        # own runners (the supervisor sends them to the API itself).
        forward_logs=_merged(RUN_LOGGERS, settings.forward_logs),
    )
    return Runtime(
        settings=settings,
        logger=logger,  # Prefect's console shows it
        on_blocked_loop=book.on_blocked_loop,
        on_log=shown.print_forwarded,
    ).start()


def _enclosing_runtime(runner: AioRayTaskRunner) -> Runtime | None:
    """The runtime of the flow run this runner is entered in, if that flow's runner is
    like this one: a subflow's runs then go to the supervisors already running (whose
    runtime prints their logs as that runner's console does)."""
    from prefect.context import FlowRunContext

    parent = getattr(FlowRunContext.get(), "task_runner", None)
    if not isinstance(parent, AioRayTaskRunner) or parent != runner:
        return None
    runtime = parent._runtime
    return runtime if runtime is not None and runtime.running else None


def _close_shared(runtime: Runtime, key: str, book: TaskRunBook, exc_type: Any) -> None:
    """A subflow's end on its parent's runtime: its own runs waited for (cancelled
    after an error, as ``_close_runtime`` does; within seconds after Ctrl-C, their
    runs in threads marked Crashed), its flow run's scope closed on the
    supervisors. The runtime stays, for the parent (which, interrupted too, ends
    the rest)."""
    interrupted = exc_type is not None and not issubclass(exc_type, Exception)
    grace = interrupt.CANCEL_GRACE_S if interrupted else 10
    wait_all(book.in_flight(), cancel=exc_type is not None, grace=grace)
    crashed = f"The flow run was interrupted ({exc_type.__name__})" if interrupted else None
    _close_scopes(runtime, key, crashed, within=5 if interrupted else 30)


def _close_interrupted(runtime: Runtime, key: str, book: TaskRunBook, reason: str) -> str:
    """End an interrupted flow run's task runs within seconds; the line that says how."""
    flow_run_id = book.flow_run_id
    report = interrupt.close_interrupted(
        runtime,
        key,
        flow_run_id,
        reason,
        book.context,
        # A temporary API stops with this process: what it has not recorded by
        # then is lost (see records.wait_until_recorded).
        lambda within: _count(
            wait_until_recorded(flow_run_id, None, within) if flow_run_id else None
        ),
    )
    return report.line()


def check_choice(name: str, value: object, choices: dict[str, str]) -> None:
    """Raise ``ValueError`` naming the setting and each valid value, if ``value`` is not one."""
    if value not in choices:
        valid = " or ".join(f"{choice!r} ({meaning})" for choice, meaning in choices.items())
        raise ValueError(f"{name} must be {valid}, not {value!r}")


def _count(unrecorded: Unrecorded | None) -> int | None:
    return None if unrecorded is None else unrecorded.runs


def _merged(first: Iterable[str], then: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*first, *then)))


def _thread_pool_size(max_concurrency: object) -> int:
    """Threads for sync task runs per supervisor, as Prefect's thread pool sizes itself."""
    from prefect.settings import get_current_settings

    configured = get_current_settings().tasks.runner.thread_pool_max_workers
    if configured:
        return int(configured)
    # No limit of its own: max_concurrency already caps runs per supervisor.
    return max_concurrency if isinstance(max_concurrency, int) and max_concurrency > 0 else 1
