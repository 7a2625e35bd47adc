"""What supervisors report beside outcomes: forwarded log records and stalls of
their loops, turned into records, warnings and callbacks in the caller's process."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from .._common.watchdog import BLOCKING_CAUSES, GARBAGE_COLLECTOR, UNSCHEDULED, BlockedLoop

# Seconds between two mentions of stalls no call caused, per cause (an overloaded machine).
STALL_MENTION_INTERVAL = 60.0


class Described(Protocol):
    """A supervisor as the reports name it."""

    index: int

    def describe(self) -> str:
        """``"supervisor N (pid P on IP)"``."""
        ...


class Reports:
    """Hands supervisors' log records and stall reports to this process (I/O thread)."""

    def __init__(
        self,
        logger: logging.Logger,
        on_blocked_loop: Callable[[BlockedLoop], object] | None = None,
        on_log: Callable[[logging.LogRecord], object] | None = None,
    ) -> None:
        self.logger = logger
        self.on_blocked_loop = on_blocked_loop
        self.on_log = on_log or _emit_here
        # When each cause of stalls no call caused was last mentioned.
        self._stall_mentioned_at: dict[str, float] = {}

    def forward_logs(self, supervisor: Described, logs: list[dict[str, Any]], dropped: int) -> None:
        """Re-emit records of the forwarded loggers here (see ``Settings.forward_logs``)."""
        for entry in logs:
            record = logging.makeLogRecord(entry)
            record.aioray_supervisor = supervisor.index
            try:
                self.on_log(record)
            except Exception:
                self.logger.exception("on_log callback %r raised", self.on_log)
                return
        if dropped:
            self.logger.warning(
                "%s dropped %d log record(s): they came faster than this process read them",
                supervisor.describe(),
                dropped,
            )

    def stall(
        self,
        supervisor: Described,
        seconds: float,
        calls: tuple[tuple[int, str], ...],
        where: str,
        cause: str,
    ) -> None:
        """A supervisor's loop was blocked: a warning (or ``on_blocked_loop``) when a
        call's code did it, else a mention at INFO (see ``_mention_stall``)."""
        if cause not in BLOCKING_CAUSES:
            self._mention_stall(supervisor, seconds, cause, where)
            return
        blocked = BlockedLoop(
            supervisor=supervisor.describe(),
            seconds=seconds,
            calls=tuple(label for _, label in calls),
            call_ids=tuple(call_id for call_id, _ in calls),
            where=where,
            cause=cause,
        )
        if self.on_blocked_loop is None:
            self.logger.warning("%s", blocked)
            return
        try:
            self.on_blocked_loop(blocked)
        except Exception:
            self.logger.exception("on_blocked_loop callback %r raised", self.on_blocked_loop)
            self.logger.warning("%s", blocked)

    def _mention_stall(
        self, supervisor: Described, seconds: float, cause: str, where: str = ""
    ) -> None:
        """A stall no call of the user's caused: said as what it was.

        Each cause (no CPU; work of no single call) once a minute at most. Not
        a warning, and not a :class:`BlockedLoop`: there is nothing to fix in
        the calls' code, and on a loaded machine it would come often.
        """
        now = time.monotonic()
        if now - self._stall_mentioned_at.get(cause, -STALL_MENTION_INTERVAL) < (
            STALL_MENTION_INTERVAL
        ):
            return
        self._stall_mentioned_at[cause] = now
        if where == GARBAGE_COLLECTOR:
            what = (
                f"{supervisor.describe()}'s event loop was paused for {seconds:.1f} s by Python's"
                " garbage collector (a full collection of a large heap); its calls waited meanwhile"
            )
        elif cause == UNSCHEDULED:
            what = (
                f"{supervisor.describe()} got little or no CPU for {seconds:.1f} s: the machine is"
                " overloaded (or the process was paused); its calls waited meanwhile"
            )
        else:
            what = (
                f"{supervisor.describe()}'s event loop was busy for {seconds:.1f} s with work that"
                " is no single call's own code (this package's, Prefect's engine's, a library's,"
                " or many calls' short steps at once); its calls waited meanwhile"
            )
        self.logger.info("%s (said at most once a minute)", what)


def _emit_here(record: logging.LogRecord) -> None:
    """Hand a forwarded record to the logger of the same name in this process."""
    logging.getLogger(record.name).handle(record)
