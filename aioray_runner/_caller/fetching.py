"""Fetching the values supervisors held, when someone asks for them (I/O thread).

A call whose value is above ``Settings.hold_results_above`` comes back in its
poll as "finished, value held" (``wire.HELD``): its future is done, and the value
stays on the supervisor, where dependents on any supervisor take it from. Only
``await future`` or ``future.result()`` fetch it. Every fetch asked for in one
turn of the I/O loop goes to its supervisor in one message
(``Supervisor.results_of``), so awaiting a thousand held futures at once costs
one round trip per supervisor, not one per future.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ray

from ..errors import SupervisorDiedError
from .futures import AioRayFuture, fetched, lost
from .iothread import IOThread, wait_ref

if TYPE_CHECKING:
    from .supervisors import RemoteSupervisor


def lost_value_message(label: str, index: int, *, stopped: bool = False) -> str:
    """Why a held value cannot be had: its supervisor died (or the runtime closed)
    before it was fetched."""
    if stopped:
        return (
            f"the result of {label} was still on supervisor {index} when the runtime"
            " closed (values above hold_results_above stay on their supervisor until"
            " asked for): await it before the runtime closes, or run with"
            " hold_results_above=None to have every value sent back at once"
        )
    return (
        f"the result of {label} was lost: supervisor {index}, which held it, died before"
        " it was fetched (values above hold_results_above stay on their supervisor until"
        " asked for). Submit the call again to remake it, or keep such values in"
        " storage every process can read"
    )


def _why_lost(future: AioRayFuture[Any], supervisor: RemoteSupervisor) -> SupervisorDiedError:
    stopped = not supervisor.died and not supervisor.alive
    return SupervisorDiedError(lost_value_message(future.label, supervisor.index, stopped=stopped))


class Fetcher:
    """Fetches held values in groups, one message per supervisor per I/O loop turn."""

    def __init__(
        self,
        io: IOThread,
        logger: logging.Logger,
        on_death: Callable[[RemoteSupervisor, BaseException], None],
    ) -> None:
        self._io = io
        self._logger = logger
        # A fetch may be the first to find its supervisor dead: the recovery
        # puts a replacement in place before anyone hears of the loss.
        self._on_death = on_death
        # Fetches asked for in this turn of the I/O loop, by supervisor.
        self._asked: dict[RemoteSupervisor, list[AioRayFuture[Any]]] = {}
        # Every fetch not answered yet, with its supervisor: the runtime's close
        # fails what its I/O thread will not answer any more.
        self._open: dict[AioRayFuture[Any], RemoteSupervisor] = {}
        self._lock = threading.Lock()
        #: Bytes of values fetched, in all.
        self.bytes_received = 0

    def fetch(self, supervisor: RemoteSupervisor, future: AioRayFuture[Any]) -> None:
        """Fetch the value ``future``'s call left on ``supervisor`` (any thread)."""
        with self._lock:
            self._open[future] = supervisor
        try:
            self._io.call_soon(self._ask, supervisor, future)
        except RuntimeError:  # the runtime has closed: its I/O thread is gone
            self.close()

    def close(self) -> None:
        """The runtime closed: every fetch still open fails, saying why (any thread)."""
        with self._lock:
            left, self._open = self._open, {}
        for future, supervisor in left.items():
            lost(future, _why_lost(future, supervisor))

    def _answer(self, future: AioRayFuture[Any], kind: int, payload: bytes | None) -> None:
        with self._lock:
            self._open.pop(future, None)
        fetched(future, kind, payload)

    def _ask(self, supervisor: RemoteSupervisor, future: AioRayFuture[Any]) -> None:
        if not supervisor.alive:
            self._lose([future], supervisor)
            return
        if not self._asked:
            self._io.call_soon(self._send)
        self._asked.setdefault(supervisor, []).append(future)

    def _send(self) -> None:
        asked, self._asked = self._asked, {}
        for supervisor, futures in asked.items():
            self._io.spawn(self._fetch(supervisor, futures))

    async def _fetch(self, supervisor: RemoteSupervisor, futures: list[AioRayFuture[Any]]) -> None:
        try:
            ref = supervisor.handle.results_of.remote([future.call_id for future in futures])
            outcomes = await wait_ref(ref)
        except asyncio.CancelledError:
            # The runtime closes: close() fails these once the supervisors are
            # stopped, saying so (they did not die).
            raise
        except Exception as exc:  # it died, or Ray went away
            self._logger.debug("fetching from %s failed: %r", supervisor.describe(), exc)
            if isinstance(exc, ray.exceptions.RayActorError):
                self._on_death(supervisor, exc)
            self._lose(futures, supervisor)
            return
        for future, (kind, payload) in zip(futures, outcomes, strict=True):
            self.bytes_received += len(payload or b"")
            self._answer(future, kind, payload)

    def _lose(self, futures: list[AioRayFuture[Any]], supervisor: RemoteSupervisor) -> None:
        with self._lock:
            for future in futures:
                self._open.pop(future, None)
        for future in futures:
            lost(future, _why_lost(future, supervisor))
