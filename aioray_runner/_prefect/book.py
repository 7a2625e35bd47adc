"""The runner's book of the task runs it sent (the flow's process).

Which runtime call is which task run (a blocked-loop warning names a call, and
belongs in that task run's logs), how many were sent and for which flow run (the
runner waits until the API has recorded them), and the states the flow's process
records itself: a run that could not be sent, a run lost with its supervisor
(``recovery.py`` says which state), and a run that finished on a supervisor that
died before sending its final state to the API. At the end it waits until a
temporary API has recorded every run's end (or says which it has not).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextvars
import functools
import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, NamedTuple

from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext

from .._caller.futures import AioRayFuture
from .._caller.supervisors import RemoteSupervisor, supervisor_of
from .._common.watchdog import BlockedLoop
from ..errors import SerializationError, UpstreamError
from . import recovery
from .compat import with_data
from .console import RunsOnConsole
from .future import state_of
from .records import record_missed_finals, record_state, wait_until_recorded

if TYPE_CHECKING:
    from prefect.tasks import Task

logger = logging.getLogger("aioray_runner")

#: Seconds a final state is kept per supervisor, in case that supervisor dies
#: before Prefect's engine there has sent it to the API (it sends within seconds).
RECENT_S = 60.0


class _InFlight(NamedTuple):
    """A task run sent and not finished yet."""

    task_run_id: uuid.UUID
    flow_run_id: uuid.UUID | None
    task_name: str
    call: AioRayFuture[Any]


class _Final(NamedTuple):
    at: float  # time.monotonic() when the flow learned it
    task_run_id: uuid.UUID
    task: Any
    state: State[Any]


class TaskRunBook:
    """The task runs one runner sent, while it runs (see the module docstring).

    Made anew for each copy of a runner (copies are pickled into the context the
    supervisors receive, and start empty there).
    """

    def __init__(self, console: RunsOnConsole, logger: logging.Logger) -> None:
        self.console = console
        self.logger = logger
        #: Task runs sent so far (the API should record this many).
        self.submitted = 0
        #: The flow run of these task runs: its context is gone by the time the
        #: runner exits (Prefect enters the runner first).
        self.flow_run_id: uuid.UUID | None = None
        #: The flow's context at the first task run sent: crash states are
        #: recorded in it (its flow run, its API client settings).
        self.context: contextvars.Context | None = None
        # Call id -> the run in flight.
        self._runs_by_call: dict[int, _InFlight] = {}
        # Final states the flow learned in the last RECENT_S on each supervisor:
        # if that one dies, the API may never hear them (see close). Older ones
        # were sent long before any death.
        self._recent: dict[RemoteSupervisor, collections.deque[_Final]] = {}
        self._reporter: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def sent(self, task: Task[Any, Any], task_run_id: uuid.UUID, call: AioRayFuture[Any]) -> None:
        """A task run went out as this call (the flow's thread)."""
        if self.context is None:
            self.context = contextvars.copy_context()
        flow_run = FlowRunContext.get()
        flow_run_id = flow_run.flow_run.id if flow_run and flow_run.flow_run else None
        self.submitted += 1
        if self.flow_run_id is None:
            self.flow_run_id = flow_run_id
        self._runs_by_call[call.call_id] = _InFlight(task_run_id, flow_run_id, task.name, call)
        call.add_done_callback(functools.partial(self._on_done, task, task_run_id))

    def in_flight(self) -> list[AioRayFuture[Any]]:
        """The calls of the task runs sent and not finished yet."""
        return [run.call for run in list(self._runs_by_call.values())]

    def failed_at_submit(
        self, task: Task[Any, Any], task_run_id: uuid.UUID, exc: Exception
    ) -> State[Any]:
        """A parameter cannot be pickled, or the run cannot take part in the flow's
        transaction: this task run fails (in the API and the flow's log), the flow
        goes on. Returns its final state."""
        from prefect.states import Failed

        message = (
            f"Task run {task.name!r} could not be sent to a supervisor: {exc}"
            if isinstance(exc, SerializationError)
            else f"Task run {task.name!r} cannot run: {exc}"
        )
        state: State[Any] = Failed(message=message, data=exc)
        record_state(task, task_run_id, state, exists=False)
        flow_run = FlowRunContext.get()
        if flow_run is not None:
            from prefect.logging.loggers import get_run_logger

            get_run_logger(flow_run).error(message)
        else:
            logger.error(message)
        return state

    def on_blocked_loop(self, blocked: BlockedLoop) -> None:
        """Warn about a blocked supervisor loop in the logs of the task run that
        blocked it, which Prefect shows in the console and sends to the API
        (I/O thread). A stall no task run is known for goes to the runner's log."""
        runs = [self._runs_by_call[c] for c in blocked.call_ids if c in self._runs_by_call]
        if not runs:
            self.logger.warning("%s", blocked)
            return
        task_run_id, flow_run_id, task_name, _ = runs[0]
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

    def close(self, *, interrupted: bool) -> None:
        """After the runtime closed: finish recording crash states (after an
        interrupt: drop those not begun and stop there), record the final states
        that died unsent with a supervisor, and wait (with Prefect's temporary
        API) until the API has recorded every run's end, or warn naming those it
        has not."""
        with self._lock:
            reporter, self._reporter = self._reporter, None
        if reporter is not None:
            reporter.shutdown(wait=not interrupted, cancel_futures=interrupted)
        recent, self._recent = self._recent, {}
        if interrupted or self.context is None:
            return
        # Prefect's engine sends a run's final state to the API as an event, a
        # moment after the run ends; a supervisor that died took the events it
        # had not sent yet with it. The flow's process knows those states.
        missed = {
            final.task_run_id: (final.task, final.state)
            for supervisor, finals in recent.items()
            if supervisor.died
            for final in finals
        }
        if missed:
            self._record_missed(self.context, missed)
        if self.flow_run_id is None:
            return
        unrecorded = wait_until_recorded(self.flow_run_id, self.submitted, say=self.logger.info)
        if unrecorded is not None and unrecorded.runs:
            self.logger.warning(
                "Prefect's temporary API had not recorded the end of %d task run(s) when"
                " this flow ended (%s%s): the UI may show them unfinished, though the flow"
                " has their final states. A Prefect server of your own (PREFECT_API_URL)"
                " keeps recording after the flow's process exits.",
                unrecorded.runs,
                ", ".join(unrecorded.names) or "names unknown",
                ", ..." if unrecorded.runs > len(unrecorded.names) else "",
            )

    def _record_missed(
        self,
        context: contextvars.Context,
        missed: dict[uuid.UUID, tuple[Task[Any, Any], State[Any]]],
    ) -> None:
        failed = context.copy().run(record_missed_finals, missed)
        if failed:
            self.logger.warning(
                "The API may not show the final state of %d task run(s) that finished on"
                " a supervisor that died later (the API did not take it): %s",
                len(failed),
                ", ".join(failed),
            )

    def _on_done(
        self, task: Task[Any, Any], task_run_id: uuid.UUID, call: AioRayFuture[Any]
    ) -> None:
        """A run finished (I/O thread): forget it; if it was lost, say so in the API."""
        self._runs_by_call.pop(call.call_id, None)
        error = call.exception(0)
        state: State[Any] | None = None
        if error is None or self.console.summary:  # a lost run's state is made below
            try:
                state = state_of(call)
            except Exception:  # a count must never keep a crash from being recorded
                pass
        if self.console.summary:
            self.console.add(state.name or "?" if state is not None else "?")
        if error is None and state is not None and state.is_final():
            now = time.monotonic()
            finals = self._recent.setdefault(supervisor_of(call), collections.deque())
            while finals and finals[0].at < now - RECENT_S:
                finals.popleft()
            # Without its data: the result stays the user's to keep or drop.
            finals.append(_Final(now, task_run_id, task, with_data(state, None)))
        # A call that failed outside the task's own code (its supervisor died, the
        # remote side raised) ends Crashed in the flow: the API must say so too,
        # whatever the engine there had sent. (A lost upstream is Prefect's own
        # NotReady, which the engine records: left alone.)
        if error is None or isinstance(error, UpstreamError) or self.context is None:
            return
        with self._lock:
            if self._reporter is None:
                self._reporter = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="aioray-crash-reporter"
                )
            reporter = self._reporter
        state = recovery.crashed_state(error)
        reporter.submit(self.context.copy().run, record_state, task, task_run_id, state)
