"""The supervisor's backend host, started once, before the first call runs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .._backends import Host, make_host
from .._common.watchdog import Stall


class HostStart:
    """Starts a backend's host once (see ``_backends``); calls arriving meanwhile
    wait for the same start."""

    def __init__(self, backend: str) -> None:
        self.host: Host = make_host(backend)
        self._start: asyncio.Future[None] | None = None
        self.ready = False

    def adapt(self, fn: Any) -> Any:
        """The host's ``adapt``: the coroutine function to await for ``fn``."""
        return self.host.adapt(fn)

    async def start(self, threshold: float, on_stall: Callable[[Stall], None]) -> None:
        """Start the host (once) with the loop's stall threshold; ``on_stall`` is
        called on this loop for a stall the host's own watchdog sees."""
        if self._start is None:
            loop = asyncio.get_running_loop()

            def stalled(stall: Stall) -> None:  # from the host's thread
                try:
                    loop.call_soon_threadsafe(on_stall, stall)
                except RuntimeError:
                    pass  # the actor's loop is closed: the process is going away

            self._start = asyncio.ensure_future(self.host.start(threshold, stalled))
        await asyncio.shield(self._start)
        self.ready = True
