"""The supervisor's side of the Prefect integration.

Entering Prefect's serialized context costs about a quarter of a second of CPU
(settings rebuilt by pydantic, a new API client with a new TLS context): doing it
per task run stalls the supervisor's loop for every task. So a supervisor enters
a flow run's context once, opens one API client for it, and starts every task run
of that flow run as an asyncio task in a copy of that context. The flow run's
scope is closed (and Prefect's log and event queues drained) when the task runner
exits.

Per task run only what differs travels, in ``serialize_context``'s format: the
tags, the parent task run (for tasks submitted from inside tasks) and the asset
context.

**After a supervisor died.** The runner submits every task run with
``reruns=retries + 1``: if the supervisor running it dies, the runtime runs the
same call again on a live one, and ``recovery.after_loss`` (``recovery.py``)
decides there what that run does, from what the API recorded of the lost one: a
run that had already finished keeps its final state (nothing runs twice, and the
API never sees a finished run start again); a run with retries left is retried
(the crash counts as one attempt, as a failure would); any other ends ``Crashed``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import threading
import time
from contextlib import ExitStack
from typing import Any, NamedTuple
from uuid import UUID

from .._supervisor.attempt import current_attempt
from . import compat, transactions
from .kinds import Probe, TaskKinds, run_was_cpu_bound
from .nested import (
    closing_scope_here,
    ray_error_cause,
    sync_task_as_ray_task,
    task_runs_here,
    wait_for_nested_runs,
)
from .recovery import after_loss, crashed_state
from .settled import transporting


def _set_up_prefect_logging() -> None:
    # Prefect configures logging the first time a run's context is entered
    # here (hydrated_context), and doing so resets the handlers of its
    # loggers, among them the runtime's forwarder of run logs (see
    # Settings.forward_logs). This module is preloaded while the supervisor
    # starts, before that forwarder is installed: configure logging now.
    compat.ensure_logging_setup()


_set_up_prefect_logging()
_scopes: dict[str, _FlowRunScope] = {}
# Seconds a closing flow run scope waits for the task runs its task runs submitted.
_NESTED_RUNS_GRACE = 15.0  # within the flow side's 30 s for the whole close


class _FlowRunScope:
    """One flow run's context on this supervisor, entered once and held open."""

    def __init__(self, key: str, flow_context: dict[str, Any]) -> None:
        self.key = key
        self.flow_context = flow_context
        self.ready: asyncio.Future[contextvars.Context] = asyncio.get_running_loop().create_future()
        self.closing = asyncio.Event()
        # A context of its own: the first call's context (its attempt number,
        # say) must not leak into every task run of the flow run.
        self.holder = asyncio.get_running_loop().create_task(
            self._hold(), context=contextvars.Context()
        )

    async def _hold(self) -> None:
        from prefect.context import AsyncClientContext, SyncClientContext, hydrated_context

        try:
            # hydrated_context makes the flow run context's (sync) client inside
            # the flow's settings: a client made out here would not see the
            # flow's API URL and would start a temporary API of its own.
            #
            # One sync API client too, shared by the sync task runs in threads
            # (httpx's client is thread-safe): a client per run costs a new
            # connection pool and TLS context each time.
            with (
                task_runs_here(),
                hydrated_context(self.flow_context),
                SyncClientContext.get_or_create(),
            ):
                async with AsyncClientContext.get_or_create():
                    self.ready.set_result(contextvars.copy_context())
                    await self.closing.wait()
                    closing_scope_here()  # after every run's context was copied
        except BaseException as exc:
            if not self.ready.done():
                self.ready.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    async def close(self, nested_grace: float) -> None:
        # Prefect's thread pool of the runs that task runs submitted here
        # (nested.py) waits for them as it exits: give them ``nested_grace``
        # seconds to finish first, in a thread, so that exit does not hold this loop.
        if nested_grace > 0 and not await asyncio.to_thread(wait_for_nested_runs, nested_grace):
            logging.getLogger(__name__).warning(
                "Task runs submitted inside task runs were still running %.0f s after"
                " their flow run's own ended; they stop with this supervisor",
                nested_grace,
            )
        self.closing.set()
        # Closing the API client sometimes waits on its connection pool for a
        # long time; the supervisor is about to stop, so do not wait for it.
        done, _ = await asyncio.wait([self.holder], timeout=2)
        if not done:
            self.holder.cancel()


async def _scope_for(key: str, flow_context: dict[str, Any]) -> contextvars.Context:
    scope = _scopes.get(key)
    if scope is None:
        scope = _scopes[key] = _FlowRunScope(key, flow_context)
    return await asyncio.shield(scope.ready)


class TaskRunRequest(NamedTuple):
    """What the flow's side sends with each task run, beside its parameters."""

    task_run_id: UUID
    #: Prefect's ``wait_for`` futures (resolved to States on the supervisor).
    wait_for: Any
    #: Prefect's task run inputs, as ``submit`` received them.
    dependencies: dict[str, Any] | None
    #: The per-run part of Prefect's serialized context (tags, parent, assets).
    call_context: dict[str, Any]
    #: Ray options for a sync task's Ray task (``remote_options``); unused otherwise.
    ray_options: dict[str, Any] | None = None
    #: For a sync task run in a thread: the size of this process's pool of
    #: threads for sync task runs (the runner's ``threads``).
    threads: int = 0
    #: For a sync task run in a thread: this supervisor may run it as a Ray task
    #: instead, once it has learned that the task is CPU-bound (``sync_tasks="auto"``).
    auto: bool = False


def _engine_arguments(
    task: Any, request: TaskRunRequest, task_run: Any, parameters: dict[str, Any]
) -> dict[str, Any]:
    """The keyword arguments of Prefect's engine (``run_task_async``, ``run_task_sync``)
    for one task run, but its ``context``: the same for every way a run goes."""
    return {
        "task": task,
        "task_run_id": request.task_run_id,
        "task_run": task_run,
        "parameters": parameters,
        "wait_for": request.wait_for,
        "dependencies": request.dependencies,
        "return_type": "state",
    }


async def _after_loss_in(
    scope: contextvars.Context, task: Any, task_run_id: UUID, parameters: dict[str, Any]
) -> tuple[Any, Any, Any]:
    """:func:`recovery.after_loss` for the current call, run in the flow run's ``scope``."""
    attempt = current_attempt()  # the call's, read in the call's own context
    if attempt.number == 1:
        return None, task, None
    return await asyncio.get_running_loop().create_task(
        after_loss(task, task_run_id, attempt, parameters), context=scope.copy()
    )


def _enter_call_context(stack: ExitStack, call_context: dict[str, Any]) -> None:
    from prefect.context import AssetContext, FlowRunContext, TaskRunContext, tags

    if current_tags := (call_context.get("tags_context") or {}).get("current_tags"):
        stack.enter_context(tags(*current_tags))
    if parent := call_context.get("task_run_context"):
        flow_run = FlowRunContext.get()
        if flow_run is not None:
            stack.enter_context(TaskRunContext(**parent, client=flow_run.client))
    if asset_context := call_context.get("asset_context"):
        stack.enter_context(AssetContext(**asset_context))


async def run_async_task(
    key: str,
    flow_context: dict[str, Any],
    task: Any,
    request: TaskRunRequest,
    /,
    **parameters: Any,
) -> Any:
    """Run one async task run on this supervisor's loop; return its final State.

    The task's parameters arrive as keyword arguments, so an unpicklable one is
    named by its own name in the error ``submit`` raises.
    """
    from prefect.task_engine import run_task_async

    task_run_id, call_context = request.task_run_id, request.call_context
    attempt = current_attempt()

    context = await _scope_for(key, flow_context)

    async def run() -> Any:
        with ExitStack() as stack:
            _enter_call_context(stack, call_context)
            try:
                entered = transactions.enter_snapshot(stack, call_context.get("transaction"))
                final, run_task, task_run = await after_loss(task, task_run_id, attempt, parameters)
                if final is not None:
                    return transactions.outcome(final, None)
                state = await run_task_async(
                    **_engine_arguments(run_task, request, task_run, parameters),
                    context=None,  # already entered, once per flow run
                )
                return transactions.outcome(state, entered)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                # KeyboardInterrupt/SystemExit: the engine has recorded the crash;
                # they must not escape an asyncio task (that stops the loop).
                return transactions.outcome(crashed_state(exc), None)

    return await asyncio.get_running_loop().create_task(run(), context=context.copy())


_sync_threads: concurrent.futures.ThreadPoolExecutor | None = None
# Task keys whose CPU-bound runs were already spoken of (once per task and process).
_cpu_bound_warned: set[str] = set()
# Sync task runs in threads of this process right now.
_in_threads = 0
_in_threads_lock = threading.Lock()


def _thread_pool(size: int) -> concurrent.futures.ThreadPoolExecutor:
    global _sync_threads
    if _sync_threads is None:
        _sync_threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, size), thread_name_prefix="aioray-prefect-sync"
        )
    return _sync_threads


async def run_sync_task_in_thread(
    key: str,
    flow_context: dict[str, Any],
    task: Any,
    request: TaskRunRequest,
    /,
    **parameters: Any,
) -> Any:
    """Run a sync task run in a thread of this supervisor; return its final State.

    As under Prefect's ``ThreadPoolTaskRunner``: the engine runs in a thread, in
    a copy of the flow run's context, which this supervisor entered once (see
    the module docstring), so a run costs what it costs in the thread pool and
    I/O-bound runs wait side by side. Once running it cannot be interrupted:
    cancelling it lets it finish, as the thread pool does. Under
    ``sync_tasks="auto"`` a task found CPU-bound here runs as a Ray task instead
    (``kinds.py``).
    """
    task_run_id = request.task_run_id
    if not request.auto:
        return await _run_in_thread(key, flow_context, task, request, None, parameters)
    kind, probe = await _kinds.place(_task_key(task))
    if kind == "ray":  # CPU-bound: a core of its own (kinds.py)
        scope = await _scope_for(key, flow_context)  # the log goes to the flow run's
        scope.copy().run(_say_cpu_bound_once, task, task_run_id)
        return await run_sync_task(key, flow_context, task, request, **parameters)
    try:
        return await _run_in_thread(key, flow_context, task, request, probe, parameters)
    finally:
        if probe is not None:
            _kinds.drop(probe)  # if its run never reached its thread: the next run probes


async def _run_in_thread(
    key: str,
    flow_context: dict[str, Any],
    task: Any,
    request: TaskRunRequest,
    probe: Probe | None,
    parameters: dict[str, Any],
) -> Any:
    """:func:`run_sync_task_in_thread`, placed: ``probe`` watches it if it is its task's
    first run here under ``sync_tasks="auto"`` (kinds.py)."""
    from prefect.task_engine import run_task_sync

    task_run_id, call_context = request.task_run_id, request.call_context
    scope = await _scope_for(key, flow_context)
    final, run_task, task_run = await _after_loss_in(scope, task, task_run_id, parameters)
    if final is not None:
        return transactions.outcome(final, None)

    def run() -> Any:
        global _in_threads
        with _in_threads_lock:
            _in_threads += 1
            beside = _in_threads
        cpu, wall = time.thread_time(), time.monotonic()
        with ExitStack() as stack:
            try:
                if probe is not None:
                    probe.started(getattr(getattr(run_task, "fn", None), "__code__", None))
                _enter_call_context(stack, call_context)
                entered = transactions.enter_snapshot(stack, call_context.get("transaction"))
                state = run_task_sync(
                    **_engine_arguments(run_task, request, task_run, parameters),
                    context=None,  # already entered, once per flow run
                )
                return transactions.outcome(state, entered)
            except BaseException as exc:
                return transactions.outcome(crashed_state(exc), None)
            finally:
                with _in_threads_lock:
                    beside = max(beside, _in_threads)
                    _in_threads -= 1
                _judged(task, task_run_id, request, probe, beside, cpu, wall)

    context = scope.copy()
    _in_threads_now[task_run_id] = (key, context)  # for close_flow_run(crashed=...)
    running = _thread_pool(request.threads).submit(context.run, run)
    waiting = asyncio.wrap_future(running)
    waiting.add_done_callback(lambda _: _in_threads_now.pop(task_run_id, None))
    try:
        return await asyncio.shield(waiting)
    except asyncio.CancelledError:
        if running.cancel():  # had not started: it never will
            raise
        return await waiting  # a thread cannot be interrupted: its outcome stands


def _judged(
    task: Any,
    task_run_id: UUID,
    request: TaskRunRequest,
    probe: Probe | None,
    beside: int,
    cpu0: float,
    wall0: float,
) -> None:
    """What a sync run in a thread, ending now (in its thread), taught: its probe's
    verdict, a CPU-bound run of a task thought I/O-bound, or (``sync_tasks="threads"``)
    a warning that it was CPU-bound."""
    cpu, wall = time.thread_time() - cpu0, time.monotonic() - wall0
    if probe is not None:
        probe.finished(beside)
    elif not request.auto:  # the user's choice of threads: said once
        _warn_if_cpu_bound(task, task_run_id, cpu, wall, beside)
    elif _kinds.judge_run(_task_key(task), cpu, wall, beside):
        _say_cpu_bound_once(task, task_run_id)


def _threads_busy() -> int:
    with _in_threads_lock:
        return _in_threads


# What this supervisor learned of each sync task under sync_tasks="auto".
_kinds = TaskKinds(_threads_busy)


def _task_key(task: Any) -> str:
    return str(getattr(task, "task_key", None) or getattr(task, "name", "?"))


def _say_cpu_bound_once(task: Any, task_run_id: UUID) -> None:
    """Say, in that run's log, that a task's runs now run as Ray tasks (once per task)."""
    _say_once_per_task(
        task,
        task_run_id,
        logging.INFO,
        "Runs of %r keep a core busy (a run here was CPU-bound): its runs from now on"
        " run as Ray tasks, a core each, as under RayTaskRunner."
        " AioRayTaskRunner(sync_tasks='threads') keeps them in threads.",
        getattr(task, "name", "?"),
    )


def _warn_if_cpu_bound(task: Any, task_run_id: UUID, cpu: float, wall: float, beside: int) -> None:
    """Say once per task when a sync task run in a thread was CPU-bound."""
    if not run_was_cpu_bound(cpu, wall, beside):
        return
    _say_once_per_task(
        task,
        task_run_id,
        logging.WARNING,
        "Kept the CPU busy for %.2f s of its %.2f s in a thread on a supervisor, where"
        " sync task runs share one core (Python's GIL). For CPU-bound work, submit %r"
        " inside `remote_options(num_cpus=1)`: each run then gets a core of its own as a"
        " Ray task, as under RayTaskRunner (or set AioRayTaskRunner(sync_tasks='ray')"
        " for every sync task).",
        cpu,
        wall,
        getattr(task, "name", "?"),
    )


def _say_once_per_task(
    task: Any, task_run_id: UUID, level: int, message: str, *args: object
) -> None:
    """Log ``message`` in a task run's log (console and API), once per task and process."""
    task_key = _task_key(task)
    if task_key in _cpu_bound_warned:
        return
    _cpu_bound_warned.add(task_key)
    name = getattr(task, "name", "?")
    logging.getLogger("prefect.task_runs").log(
        level,
        message,
        *args,
        extra={"task_run_id": task_run_id, "task_run_name": name, "task_name": name},
    )


async def run_sync_task(
    key: str,
    flow_context: dict[str, Any],
    task: Any,
    request: TaskRunRequest,
    /,
    **parameters: Any,
) -> Any:
    """Start a sync task run as a Ray task and await its State on this loop.

    Its upstream results were already resolved here, in the supervisor; the
    Ray task holds a worker slot only while the task's own code runs.
    """
    import ray

    task_run = None
    if current_attempt().number > 1:  # run again after a supervisor died
        scope = await _scope_for(key, flow_context)
        final, task, task_run = await _after_loss_in(scope, task, request.task_run_id, parameters)
        if final is not None:
            return transactions.outcome(final, None)

    remote = sync_task_as_ray_task(task, request.ray_options or {})
    context = {**flow_context, **request.call_context}
    transaction = context.pop("transaction", None)
    with transporting():  # upstream futures Prefect leaves alone
        ref = remote.remote(
            _engine_arguments(task, request, task_run, parameters), context, transaction
        )
    try:
        return await ref
    except asyncio.CancelledError:
        ray.cancel(ref)
        raise
    except Exception as exc:
        return transactions.outcome(crashed_state(ray_error_cause(exc)), None)


async def close_flow_run(key: str, crashed: str | None = None) -> int:
    """Close a flow run's scope here and flush Prefect's log and event queues.

    ``crashed``: the flow run was interrupted, and this supervisor is about to be
    stopped: first give each of its task runs still running in a thread (which
    cannot be interrupted) a Crashed state with this message, as its engine
    would have, had it seen the interrupt.
    """
    if crashed is not None:
        _crash_runs_in_threads(key, crashed)
    scope = _scopes.pop(key, None)
    if scope is not None:
        # Interrupted: the user is waiting for Ctrl-C to take effect.
        await scope.close(0 if crashed is not None else _NESTED_RUNS_GRACE)
    await asyncio.to_thread(_drain_prefect_queues)
    return len(_scopes)


# Task runs running in threads here: task run id -> (flow run key, the context the
# thread runs in, which holds its engine's TaskRunContext while it runs).
_in_threads_now: dict[UUID, tuple[str, contextvars.Context]] = {}


def _crash_runs_in_threads(key: str, message: str) -> None:
    """Send a Crashed state for each of the flow run's task runs running in a thread.

    The event Prefect's engine sends for a state change, made from the engine's
    own task run (read from a copy of the thread's context: a context another
    thread has entered cannot be entered here), so the API records it like the
    engine's own. Flushed by :func:`close_flow_run`.
    """
    from prefect.context import TaskRunContext
    from prefect.states import Crashed
    from prefect.utilities.engine import emit_task_run_state_change_event

    for owner, context in list(_in_threads_now.values()):
        if owner != key:
            continue
        snapshot = context.copy()
        run_context = snapshot.run(TaskRunContext.get)
        task_run = run_context.task_run if run_context is not None else None
        if task_run is None:
            continue
        try:
            snapshot.run(
                emit_task_run_state_change_event,
                task_run=task_run,
                initial_state=task_run.state,
                validated_state=Crashed(message=message),
            )
        except Exception:  # one run's event must not keep the others'
            logging.getLogger(__name__).debug(
                "could not send a Crashed state for %s", task_run.id, exc_info=True
            )


def _drain_prefect_queues() -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)
