"""What the flow's console shows of the task runs a runner sends to supervisors.

Task runs log in the supervisors; their records come back to the flow's process
(the runtime's log forwarding) and are printed there, as under Prefect's own
runners. With ``console="summary"`` only warnings and errors print, then one
line counting the runs' final states.
"""

from __future__ import annotations

import logging
import threading
import time

# Prefect's loggers for task and flow runs: records of these, made in a
# supervisor, are printed by the flow's process (see RunsOnConsole).
RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")


class RunsOnConsole:
    """What the flow's console shows of the task runs: their forwarded log lines,
    or (``console="summary"``) only their problems and a count of final states,
    which any thread may add to."""

    def __init__(self, console: str) -> None:
        #: ``console="summary"``: count the final states, print only problems.
        self.summary = console == "summary"
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
            self.interrupted or (self.summary and record.levelno < logging.WARNING)
        ):
            return
        record.send_to_api = False
        logging.getLogger(record.name).handle(record)

    def add(self, state_name: str) -> None:
        """Count one task run that ended in this state (any thread)."""
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
