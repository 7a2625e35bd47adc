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
    pool = FlowRunContext.get().task_runner._runtime._pool
    print("loop", asyncio.get_running_loop(), threading.current_thread().name)
    futs = [nap.submit(i, 0.1) for i in range(3)]
    print("pending", len(pool._pending), pool._handoff_scheduled, flush=True)
    await asyncio.sleep(0)
    print("pending after sleep0", len(pool._pending), pool._handoff_scheduled, flush=True)
    t0 = time.monotonic()
    for k in range(5):
        time.sleep(1)
        print(k, [s.in_flight for s in pool.slots()], [f._wrapped_future.done() for f in futs], flush=True)
    await asyncio.sleep(0)
    print("after", [f._wrapped_future for f in futs], flush=True)
    return [await f for f in futs]

async def test_dbg():
    assert sorted(await dbg()) == [0, 1, 2]
