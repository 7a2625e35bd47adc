"""How a task run becomes a runtime call (the flow's process).

The callable that runs it on a supervisor (one per task object and place, so the
runtime pickles each task once), the request that travels with it (the per-run
part of Prefect's context, its ``wait_for`` and inputs), where it runs, and how
many times it may run again after its supervisor died.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from prefect.client.schemas.objects import RunInput
from prefect.context import AssetContext, TagsContext, TaskRunContext, serialize_context
from prefect.futures import PrefectFuture
from prefect.utilities.engine import collect_task_run_inputs_sync

from . import api, remote, transactions
from .future import PrefectAioRayFuture
from .options import ACTOR_PLACEMENT_OPTIONS, current_remote_options

if TYPE_CHECKING:
    from prefect.tasks import Task

#: Retries a task run is given after its supervisor died, at most (its own
#: ``retries`` permitting): see docs/failures.md.
MAX_CRASH_RETRIES = 2

# Where a task run runs: an async task on a supervisor's loop, a sync task in a
# thread of a supervisor, or a sync task as a Ray task of its own.
Where = Literal["async", "thread", "ray"]
_REMOTE_RUNNERS: dict[Where, Callable[..., Any]] = {
    "async": remote.run_async_task,
    "thread": remote.run_sync_task_in_thread,
    "ray": remote.run_sync_task,
}

# The parts of Prefect's serialized context that differ from task run to task run.
_PER_CALL_CONTEXT = ("task_run_context", "tags_context", "asset_context")


class TaskRunCall(NamedTuple):
    """One task run as a runtime call: ``runtime.submit_call(fn, (request,), parameters, ...)``."""

    fn: Callable[..., Any]
    request: remote.TaskRunRequest
    #: Extra actor options of the supervisors it runs on (``remote_options``).
    actor_options: dict[str, Any]
    #: Runs after a supervisor death (see :data:`MAX_CRASH_RETRIES`).
    reruns: int
    #: It was submitted inside the flow's transaction, and takes part in it.
    in_transaction: bool


class TaskRunCalls:
    """Makes the calls of one runner's task runs (see the module docstring).

    ``key`` names the runner on the supervisors (its flow run's scope there);
    ``sync_tasks`` and ``threads`` are the runner's settings of those names.
    """

    def __init__(self, key: str, sync_tasks: str, threads: int) -> None:
        self._key = key
        self._sync_tasks = sync_tasks
        self._threads = threads
        self._flow_context: dict[str, Any] | None = None
        self._callables: dict[tuple[int, Where], tuple[Task[Any, Any], Callable[..., Any]]] = {}

    def make(
        self,
        task: Task[Any, Any],
        task_run_id: uuid.UUID,
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None,
        dependencies: dict[str, set[RunInput]] | None,
    ) -> TaskRunCall:
        """The call for one task run.

        Raises:
            transactions.TransactionNotPortable: the run cannot take part in the
                flow's transaction from a supervisor.
        """
        call_context = self._call_context(task, task_run_id, parameters)
        transactions.check_task(task)
        call_context["transaction"] = transactions.snapshot()
        request = remote.TaskRunRequest(task_run_id, wait_for, dependencies, call_context)
        # A run whose supervisor dies is run again elsewhere: once to settle its
        # state from what the API recorded, and once more per retry it has left
        # (see recovery.after_loss), at most MAX_CRASH_RETRIES: a task that
        # kills its supervisor each time (memory, a segfault) takes the other
        # runs there with it, so it is not given every retry it has.
        reruns = min(int(task.retries or 0), MAX_CRASH_RETRIES) + 1
        where, request, placement = self._where(task, request, current_remote_options())
        fn = self._remote_callable(task, where)
        return TaskRunCall(fn, request, placement, reruns, bool(call_context["transaction"]))

    def _where(
        self, task: Task[Any, Any], request: remote.TaskRunRequest, options: dict[str, Any]
    ) -> tuple[Where, remote.TaskRunRequest, dict[str, Any]]:
        """Where a task run goes, its request for there, and the supervisors' actor options.

        An async task: on a supervisor's loop, of the group its placement options
        (``remote_options``) select. A sync task with Ray options (a core, a GPU,
        ...), or every sync task under ``sync_tasks="ray"``: a Ray task of its
        own. Any other sync task: a thread of a supervisor, which under
        ``sync_tasks="auto"`` runs it as a Ray task once it has learned that
        the task is CPU-bound (``kinds.py``).
        """
        if task.isasync:
            placement = {k: v for k, v in options.items() if k in ACTOR_PLACEMENT_OPTIONS}
            return "async", request, placement
        if options or self._sync_tasks == "ray":
            return "ray", request._replace(ray_options=options), {}
        auto = self._sync_tasks == "auto"  # the supervisor may choose a Ray task (kinds.py)
        return "thread", request._replace(threads=self._threads, auto=auto), {}

    def _remote_callable(self, task: Task[Any, Any], where: Where) -> Callable[..., Any]:
        # One callable per task object, so the runtime pickles the task once.
        key = (id(task), where)
        cached = self._callables.get(key)
        if cached is None or cached[0] is not task:
            run_remotely = _REMOTE_RUNNERS[where]
            fn = functools.partial(run_remotely, self._key, self._flow_context_once(), task)
            cached = self._callables[key] = (task, fn)
        return cached[1]

    def _flow_context_once(self) -> dict[str, Any]:
        # The flow run's context (settings, flow run) is the same for every
        # task run of this runner: serialize it once, send it once per supervisor.
        if self._flow_context is None:
            with _share_temporary_api():
                context = serialize_context()
            for key in _PER_CALL_CONTEXT:
                context.pop(key, None)
            self._flow_context = context
        return self._flow_context

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


@contextmanager
def _share_temporary_api() -> Iterator[None]:
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
