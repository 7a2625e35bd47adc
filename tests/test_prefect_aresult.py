"""``aresult`` and ``aresults``: a submitted task's result awaited, under any task runner.

Under AioRayTaskRunner they await the future; under Prefect's ThreadPoolTaskRunner
they wait in a worker thread, and the flow's event loop keeps running meanwhile.
Their types are checked in tests/test_typing.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prefect import flow, task
from prefect.utilities.annotations import unmapped

from aioray_runner import AioRayTaskRunner, aresult, aresults

pytestmark = pytest.mark.usefixtures("ray_session", "prefect_api")


@task
async def nap(i: int, delay: float = 0.0) -> int:
    await asyncio.sleep(delay)
    return i


@task
def double(i: int) -> int:
    return 2 * i


@task
async def fails(message: str) -> int:
    raise ValueError(message)


async def _ticks_while(awaitable: Any, every: float = 0.05) -> tuple[Any, int]:
    """Await ``awaitable`` while counting how often the loop ran a ticker meanwhile."""
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            await asyncio.sleep(every)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    try:
        return await awaitable, ticks
    finally:
        stop.set()
        await ticking


async def _exercise() -> dict[str, Any]:
    out: dict[str, Any] = {}
    out["async"] = await aresult(nap.submit(41))
    out["sync"] = await aresult(double.submit(21))
    out["many"] = await aresults(nap.map(range(5), delay=unmapped(0.01)))
    out["many_sync"] = await aresults([double.submit(i) for i in range(3)], timeout=60)
    try:
        await aresult(fails.submit("no good"))
    except ValueError as exc:
        out["failed"] = str(exc)
    try:
        await aresult(nap.submit(1, 5.0), timeout=0.1)
    except TimeoutError:
        out["timed_out"] = True
    try:
        await aresults([nap.submit(2), nap.submit(3, 5.0)], timeout=0.5)
    except TimeoutError:
        out["list_timed_out"] = True
    # The loop keeps running while a result is awaited.
    out["ticked"] = await _ticks_while(aresult(nap.submit(7, 0.5)))
    return out


@flow(task_runner=AioRayTaskRunner())
async def on_aioray() -> dict[str, Any]:
    return await _exercise()


@flow  # Prefect's ThreadPoolTaskRunner
async def on_threadpool() -> dict[str, Any]:
    return await _exercise()


@pytest.mark.anyio
@pytest.mark.parametrize("run", [on_aioray, on_threadpool], ids=["aioray", "threadpool"])
async def test_aresult_and_aresults_under_either_runner(run: Any) -> None:
    out = await run()
    value, ticks = out.pop("ticked")
    assert value == 7
    assert ticks >= 4, ticks  # about 10 in 0.5 s: the wait did not block the loop
    assert out == {
        "async": 41,
        "sync": 42,
        "many": [0, 1, 2, 3, 4],
        "many_sync": [0, 2, 4],
        "failed": "no good",
        "timed_out": True,
        "list_timed_out": True,
    }
