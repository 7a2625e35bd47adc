"""Ctrl-C during a flow: every task run in flight ends within seconds, said in one line.

Prefect's flow engine meets an interrupt (``KeyboardInterrupt`` in a sync flow,
the ``CancelledError`` that ``asyncio.run`` raises into an async one) by marking
the flow run Crashed and leaving the task runner; what happens to the task runs
in flight is the runner's business. Before this module, the runner's exit did
what it does for a flow that failed: waited for the runs to unwind, for each
supervisor to flush Prefect's queues (30 s each), and for the API to record
every run (10 s), each wait against a temporary API that the same Ctrl-C may
have stopped: 176 s for the 500-task main job when the terminal signalled the
whole process group, over 1,000 ERROR lines, and runs left Running in the API.

Here every step has a bound, and together they stay under :data:`BUDGET_S`:

1. Cancel every call in flight (one message per supervisor) and give their
   engines :data:`CANCEL_GRACE_S` to unwind: ``finally`` blocks run, and
   Prefect's engine marks each run Crashed ("Execution was cancelled by the
   runtime environment"), as it does under its own runners.
2. Ask each supervisor to flush Prefect's event and log queues, for at most
   :data:`FLUSH_S` in all.
3. Mark Crashed, from here, every task run of the flow run that the API has
   as not final (read, mark, read again, for at most :data:`RECORD_S`), while
   Ray stops. A state written now is newer than any event still on its way, and
   the API keeps the newest. Runs the API never heard of stay unknown to it, as
   under Prefect's own runners (cancelled before they started, or their
   supervisor's events died with it). An API that is gone (a temporary one that
   got the interrupt too) is noticed at once and said.
4. One line says what happened; the task runs' own "Crash detected!" lines are
   kept out of the console (they are in the API).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from .._caller.runtime import Runtime
from . import remote

logger = logging.getLogger(__name__)

#: Seconds the cancelled runs get to unwind on their supervisors.
CANCEL_GRACE_S = 2.0
#: Seconds, in all, for the supervisors to send what their engines recorded.
FLUSH_S = 1.5
#: Seconds after the two steps above for marking runs Crashed in the API
#: (which starts with the cancelling).
RECORD_S = 3.0
#: What the steps above add up to at most.
BUDGET_S = CANCEL_GRACE_S + FLUSH_S + RECORD_S
#: The runner's whole share of a Ctrl-C: the steps above, then waiting for a
#: temporary API to record what it was sent (it stops with the process), so
#: that with Prefect's own exit (about a second) the process ends within 10 s.
WAIT_S = 8.0
# The runs to mark Crashed: Pending ones too (records.py's _NOT_FINAL leaves them
# out, as Pending("NotReady") is how a run whose upstream failed ends; after an
# interrupt a run still Pending never started and must end too).
_TO_MARK = ("SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING")


@dataclass
class InterruptReport:
    """What closing an interrupted flow's runner did (for its one line)."""

    reason: str
    in_flight: int = 0
    unwound: int = 0
    marked: int = 0
    api_gone: bool = False
    seconds: float = 0.0
    #: Task runs the (temporary) API had not recorded as final when the runner
    #: stopped waiting for it; None: not known.
    not_recorded: int | None = None
    started: float = field(default_factory=time.monotonic)
    #: Seconds since the interrupt's handling began, as each step ended.
    steps: dict[str, float] = field(default_factory=dict)

    def time_left(self) -> float:
        """Seconds left of :data:`WAIT_S`, the runner's whole share of an interrupt."""
        return max(0.5, self.started + WAIT_S - time.monotonic())

    def line(self) -> str:
        """The one line the runner logs."""
        parts = [
            f"Interrupted ({self.reason}): cancelled {self.in_flight:,} task run(s) in flight"
            f" in {self.seconds:.1f} s ({self.unwound:,} unwound on their supervisors)"
        ]
        if self.api_gone:
            parts.append(
                "Prefect's API did not answer, so runs it knows may keep a non-final state"
                " there (a temporary API started by the flow gets a terminal's Ctrl-C too:"
                " docs/faq.md)"
            )
        elif self.marked:
            parts.append(f"{self.marked:,} marked Crashed in the API from here")
        if self.not_recorded:
            parts.append(
                f"Prefect's temporary API had not recorded the end of {self.not_recorded:,}"
                " task run(s) when it stopped"
            )
        return "; ".join(parts)


def close_interrupted(
    runtime: Runtime,
    key: str,
    flow_run_id: uuid.UUID | None,
    reason: str,
    flow_context: contextvars.Context | None = None,
    wait_recorded: Callable[[float], int | None] | None = None,
) -> InterruptReport:
    """End an interrupted flow run's task runs in flight, within :data:`BUDGET_S`.

    ``key`` names the flow run's scope on the supervisors; the task runs of
    ``flow_run_id`` that the API has as not final are marked Crashed (``None``:
    none are), from ``flow_context`` (the context of a submit in the flow run, since
    the flow run's own context is gone when its runner exits). The runtime is
    closed on the way, without waiting for anything. Then ``wait_recorded(seconds)``,
    if given, waits for the API to record the runs' ends for what is left of
    :data:`WAIT_S`, and returns how many it has not (see :attr:`InterruptReport.not_recorded`).
    """
    report = InterruptReport(reason)
    started = report.started
    # Marking starts at once, beside the cancelling: the engines that unwind in
    # time send a Crashed state of their own, newer, which the API keeps; a run
    # that finishes in its grace sends its Completed state, newer still.
    marker = None
    if flow_run_id is not None:
        marker = _start_marking(flow_run_id, reason, report, flow_context)
    try:
        outstanding = runtime.outstanding()
        report.in_flight = len(outstanding)
        for future in outstanding:
            future.cancel()
        deadline = time.monotonic() + CANCEL_GRACE_S
        for future in outstanding:
            if future.wait_sync(max(0.0, deadline - time.monotonic())):
                report.unwound += 1
        closers = runtime.broadcast(remote.close_flow_run, key, _message(reason), every_group=True)
        deadline = time.monotonic() + FLUSH_S
        for closer in closers:
            closer.wait_sync(max(0.0, deadline - time.monotonic()))
    finally:
        # The runs had their grace above: Ray stops while they are marked.
        report.steps["cancel+flush"] = time.monotonic() - started
        runtime.close(wait=False, grace=0)
        report.steps["close"] = time.monotonic() - started
    if marker is not None:
        marker.join(max(0.0, started + BUDGET_S - time.monotonic()))
    report.seconds = time.monotonic() - started
    report.steps["marked"] = report.seconds
    if wait_recorded is not None and not report.api_gone:
        report.not_recorded = wait_recorded(report.time_left())
    logger.debug("interrupt steps (s since it began): %s", report.steps)
    return report


def _start_marking(
    flow_run_id: uuid.UUID,
    reason: str,
    report: InterruptReport,
    flow_context: contextvars.Context | None,
) -> threading.Thread:
    """Mark the flow run's task runs that are not final Crashed in the API.

    In a thread with an event loop of its own (the flow's loop is being torn
    down), for at most :data:`RECORD_S`.
    """
    context = contextvars.copy_context()  # the API settings in force
    flow_context = (flow_context or context).copy()

    def work() -> None:
        try:
            context.run(asyncio.run, _mark(flow_run_id, reason, report, flow_context))
        except Exception:
            logger.debug("marking task runs Crashed failed", exc_info=True)

    marker = threading.Thread(target=work, name="aioray-interrupt-marker", daemon=True)
    marker.start()
    return marker


async def _mark(
    flow_run_id: uuid.UUID, reason: str, report: InterruptReport, context: contextvars.Context
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed
    from prefect.utilities.engine import emit_task_run_state_change_event

    deadline = report.started + BUDGET_S
    message = _message(reason)
    of_this_flow_run = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    not_final = TaskRunFilter(
        state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType(t) for t in _TO_MARK]))
    )
    marked: set[uuid.UUID] = set()
    async with get_client() as client:
        # An API that is gone refuses the connection at once; one that is only
        # busy (recording a burst of events) may take seconds to answer, and is
        # given what is left of the budget.
        patience = max(1.0, deadline - time.monotonic() - 0.5)
        try:
            with anyio.fail_after(patience):
                gone = await client.api_healthcheck()  # the error, not raised
        except TimeoutError:
            gone = TimeoutError(f"no answer within {patience:.1f} s")
        if gone is not None:
            report.api_gone = True
            return
        with anyio.move_on_after(max(0.1, deadline - time.monotonic())):
            # Read, mark, read again until the time is up: the API records the
            # events the supervisors sent a moment after they arrive (seconds on a
            # busy machine), so runs keep turning up Running for a while.
            while True:
                found: list[Any] = []
                while True:  # at most 200 a page
                    page = await client.read_task_runs(
                        flow_run_filter=of_this_flow_run,
                        task_run_filter=not_final,
                        offset=len(found),
                        limit=200,
                    )
                    found += page
                    if len(page) < 200:
                        break
                # A run the pages skipped (the set shrinks as the API records
                # states) turns up in the next round.
                for run in found:
                    # Pending("NotReady") is how a run whose upstream failed ends.
                    if run.id in marked or (run.state and run.state.name == "NotReady"):
                        continue
                    # The event Prefect's engine sends for a state change: the API
                    # records a batch of them at once, and keeps the newest state.
                    # Sent in the flow run's context, which names the flow run.
                    context.run(
                        emit_task_run_state_change_event,
                        task_run=run,
                        initial_state=run.state,
                        validated_state=Crashed(message=message),
                    )
                    marked.add(run.id)
                report.marked = len(marked)
                await asyncio.sleep(0.25)


# Prefect's own messages for these (prefect.states.exception_to_crashed_state).
_MESSAGES = {
    "KeyboardInterrupt": "Execution was aborted by an interrupt signal.",
    "CancelledError": "Execution was cancelled by the runtime environment.",
    "SystemExit": "Execution was aborted by Python system exit call.",
}


def _message(reason: str) -> str:
    """The Crashed state's message for a task run in flight when the flow was interrupted."""
    return _MESSAGES.get(
        reason, f"The flow run was interrupted ({reason}) while this task run was in flight."
    )
