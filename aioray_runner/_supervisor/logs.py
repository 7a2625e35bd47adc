"""Forwarding the records of some loggers from a supervisor to the caller."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from .._common import wire


class LogForwarder(logging.Handler):
    """Sends the records of some loggers to the caller instead of this process's console.

    Installed on each logger named in ``Settings.forward_logs``, with its
    propagation switched off (so the actor's console handlers, which Ray would
    echo with a ``(Supervisor pid=...)`` prefix, never see them). Records from
    any thread wait here, as plain data, until the next ``poll`` reply carries
    them; the caller re-emits them under the same logger names.
    """

    #: Records kept between two polls at most; the rest are counted and dropped.
    MAX_PENDING = 20_000

    def __init__(self, names: Sequence[str], wake: Callable[[], None]) -> None:
        super().__init__()
        self._names = tuple(names)
        self._wake = wake
        self._lock_pending = threading.Lock()
        self._pending: list[dict[str, Any]] = []
        self._dropped = 0
        self.install()

    @property
    def pending(self) -> bool:
        """Whether records wait for the next poll."""
        return bool(self._pending) or bool(self._dropped)

    def install(self) -> None:
        """Attach to the forwarded loggers (again, if a logging set-up removed it)."""
        for name in self._names:
            target = logging.getLogger(name)
            if self not in target.handlers:
                target.addHandler(self)
            target.propagate = False

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the record, as plain data, for the next poll reply."""
        try:
            entry = wire.log_entry(record)
        except Exception:
            self.handleError(record)
            return
        with self._lock_pending:
            first = not self._pending
            if len(self._pending) < self.MAX_PENDING:
                self._pending.append(entry)
            else:
                self._dropped += 1
        if first:
            try:
                self._wake()
            except RuntimeError:
                pass  # the loop is closed: the actor is stopping

    def take(self) -> tuple[list[dict[str, Any]], int]:
        """The records waiting, and how many were dropped, since the last take."""
        with self._lock_pending:
            pending, self._pending = self._pending, []
            dropped, self._dropped = self._dropped, 0
        return pending, dropped
