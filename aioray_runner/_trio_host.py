"""trio inside a supervisor: one trio guest run on top of the actor's asyncio loop.

Ray's async actors own an asyncio loop. trio's guest mode lets a trio run share
that loop: trio's scheduler ticks as asyncio callbacks, so trio-native code
(``trio.sleep``, nurseries, cancel scopes) runs in the supervisor next to the
asyncio machinery that receives and returns calls. Each call is started in one
long-lived nursery, inside its own cancel scope.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import trio


class TrioHost:
    """The trio backend (see ``_backends``): owns the guest run and starts calls in it."""

    def __init__(self) -> None:
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._to_start: list[Callable[[], Any]] = []

    async def start(self) -> None:
        """Start the guest run and wait until its nursery is open."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._token = trio.lowlevel.current_trio_token()
                ready.set_result(None)
                await trio.sleep_forever()

        def done(outcome: Any) -> None:
            if not ready.done():
                ready.set_exception(RuntimeError(f"the trio guest run ended: {outcome!r}"))

        trio.lowlevel.start_guest_run(
            main,
            run_sync_soon_threadsafe=loop.call_soon_threadsafe,
            run_sync_soon_not_threadsafe=loop.call_soon,
            done_callback=done,
            host_uses_signal_set_wakeup_fd=True,  # the actor's loop is not in the main thread
        )
        await ready

    def adapt(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """A coroutine function that runs ``fn`` under trio (see :meth:`run`)."""

        async def run_in_trio(*args: Any, **kwargs: Any) -> Any:
            return await self.run(fn, args, kwargs)

        return run_in_trio

    def _start_pending(self) -> None:
        assert self._nursery is not None
        pending, self._to_start = self._to_start, []
        for runner in pending:
            self._nursery.start_soon(runner)

    async def run(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` under trio; asyncio cancellation cancels it."""
        assert self._token is not None and self._nursery is not None
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[Any] = loop.create_future()
        scope = trio.CancelScope()

        async def runner() -> None:
            value: Any = None
            error: BaseException | None = None
            with scope:
                try:
                    value = await fn(*args, **kwargs)
                except trio.Cancelled:
                    raise
                except BaseException as exc:
                    error = exc
            if finished.done():
                return
            if scope.cancelled_caught:
                finished.cancel()
            elif error is not None:
                finished.set_exception(error)
            else:
                finished.set_result(value)

        # Calls made in one loop turn are started by one trio callback.
        self._to_start.append(runner)
        if len(self._to_start) == 1:
            self._token.run_sync_soon(self._start_pending)
        try:
            return await asyncio.shield(finished)
        except asyncio.CancelledError:
            if finished.done():
                raise
            # Cancel the trio side and wait for its finally blocks before reporting.
            self._token.run_sync_soon(scope.cancel)
            try:
                await finished
            except (asyncio.CancelledError, Exception):
                pass
            raise
