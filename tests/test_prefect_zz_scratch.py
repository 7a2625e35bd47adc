from __future__ import annotations
import asyncio, os, time, threading
import pytest, ray
from prefect import flow, task
from prefect.context import FlowRunContext
from prefect.futures import as_completed, wait
from aioray_runner import AioRayTaskRunner

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("ray_session", "prefect_api")]

@task
async def nap(i: int, delay: float = 0.05) -> int:
    await asyncio.sleep(delay)
    return i

@flow(task_runner=AioRayTaskRunner())
async def dbg():
    pool = FlowRunContext.get().task_runner._runtime._pool
    await nap.submit(0, 0)
    futs = [nap.submit(i, 0.1) for i in range(3)]
    print("pending", len(pool._pending), pool._handoff_scheduled, asyncio.current_task(), flush=True)
    await asyncio.sleep(0)
    print("pending after sleep0", len(pool._pending), pool._handoff_scheduled, flush=True)
    t0 = time.monotonic()
    print(sorted(f.result() for f in as_completed(futs, timeout=10)), time.monotonic() - t0)
    futs = [nap.submit(i, 0.1) for i in range(3)]
    t0 = time.monotonic()
    try:
        print(sorted(f.result() for f in as_completed(futs, timeout=10)), time.monotonic() - t0)
    except Exception as e:
        print("as_completed no-yield failed", repr(e))
    futs = [nap.submit(i, 0.1) for i in range(3)]
    t0 = time.monotonic()
    d, nd = wait(futs, timeout=10)
    print("wait timeout", len(d), len(nd), time.monotonic() - t0)
    return 1

async def test_dbg():
    await dbg()
