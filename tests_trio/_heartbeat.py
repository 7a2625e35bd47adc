"""Submit N calls from a trio caller and await them all while a heartbeat ticks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import trio

from aioray_runner import Runtime
from tests._support import Heartbeat


async def submit_all_with_heartbeat(
    runtime: Runtime, fn: Callable[..., Any], n: int, waiters: int = 20
) -> list[Any]:
    """Results of ``fn(i)`` for ``i < n``; fails if the heartbeat stalled meanwhile."""
    heartbeat = Heartbeat()
    results: list[Any] = [None] * n
    chunk = max(1, n // waiters)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(heartbeat.run)
        await trio.sleep(0.05)
        futures = [runtime.submit(fn, i) for i in range(n)]
        start = time.monotonic()

        async def collect(lo: int, hi: int) -> None:
            for i in range(lo, hi):
                results[i] = await futures[i]

        async with trio.open_nursery() as collectors:
            for lo in range(0, n, chunk):
                collectors.start_soon(collect, lo, min(n, lo + chunk))
        end = time.monotonic()
        nursery.cancel_scope.cancel()
    heartbeat.assert_kept_ticking(start, end)
    return results
