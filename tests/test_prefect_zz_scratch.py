from __future__ import annotations
import asyncio, os, time, threading
import pytest, ray
from prefect import flow, task
from prefect.context import FlowRunContext
from aioray_runner import AioRayTaskRunner

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("ray_session", "prefect_api")]

@task
async def nap(i: int, delay: float = 0.05) -> int:
    await asyncio.sleep(delay)
    return i

@flow(task_runner=AioRayTaskRunner())
async def dbg():
    t0 = time.monotonic()
    await nap.submit(0, 0)
    print("first", time.monotonic() - t0, flush=True)
    t0 = time.monotonic()
    await nap.submit(0, 0)
    print("second", time.monotonic() - t0, flush=True)
    futs = [nap.submit(i, 0.1) for i in range(3)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    t0 = time.monotonic()
    for k in range(8):
        time.sleep(0.5)
        print(k, [f._wrapped_future.done() for f in futs], flush=True)
    await asyncio.sleep(0)
    print("after", [f._wrapped_future for f in futs], time.monotonic() - t0, flush=True)
    return [await f for f in futs]

async def test_dbg():
    assert sorted(await dbg()) == [0, 1, 2]
