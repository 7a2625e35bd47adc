"""Releases: outcomes the caller no longer needs, forgotten by their supervisors.

A supervisor keeps each outcome until the caller's future is dropped (a later
call may name it as a dependency). The future's ``__del__`` (any thread) adds a
release here; the I/O thread sends them in groups, one message per supervisor,
every :data:`RELEASE_EVERY_S` seconds (or at once: ``flush``).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from .iothread import IOThread

RELEASE_EVERY_S = 0.2


class _Alive(Protocol):
    alive: bool


S = TypeVar("S", bound=_Alive)


class Releases(Generic[S]):
    """Queued releases by supervisor; ``send(supervisor, call_ids)`` sends one group."""

    def __init__(self, io: IOThread, send: Callable[[S, list[int]], None]) -> None:
        self._io = io
        self._send = send
        self._queue: collections.deque[tuple[S, int]] = collections.deque()

    def add(self, supervisor: S, call_id: int) -> None:
        """Release one outcome (any thread: a deque's append is atomic)."""
        self._queue.append((supervisor, call_id))

    def start(self, stopped: Callable[[], bool]) -> None:
        """Flush every RELEASE_EVERY_S seconds on the I/O thread until ``stopped()``."""

        def tick() -> None:
            self.flush()
            if not stopped():
                self._io.call_later(RELEASE_EVERY_S, tick)

        self._io.call_soon(tick)

    def flush(self) -> None:
        """Send what is queued now, one group per live supervisor (I/O thread)."""
        if not self._queue:
            return
        by_supervisor: dict[S, list[int]] = {}
        while self._queue:
            supervisor, call_id = self._queue.popleft()
            if supervisor.alive:
                by_supervisor.setdefault(supervisor, []).append(call_id)
        for supervisor, call_ids in by_supervisor.items():
            self._send(supervisor, call_ids)
