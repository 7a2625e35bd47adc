"""10,000 calls at once: all come back right while the caller's loop stays free."""

from __future__ import annotations

import asyncio
import time

import pytest

from aioray_runner import Runtime
from tests._support import Heartbeat

pytestmark = pytest.mark.anyio

N = 10_000


async def nap_and_square(i: int) -> int:
    await asyncio.sleep(0.1)
    return i * i


async def test_ten_thousand_coroutines_with_heartbeat(runtime: Runtime) -> None:
    heartbeat = Heartbeat()
    async with asyncio.TaskGroup() as tg:
        beat = tg.create_task(heartbeat.run())
        await asyncio.sleep(0.05)
        futures = [runtime.submit(nap_and_square, i) for i in range(N)]
        start = time.monotonic()
        results = await asyncio.gather(*futures)
        end = time.monotonic()
        beat.cancel()
    assert results == [i * i for i in range(N)]
    assert all(f.done() and not f.cancelled() for f in futures)
    assert len({f.call_id for f in futures}) == N
    heartbeat.assert_kept_ticking(start, end)
