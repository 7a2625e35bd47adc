"""The caller's side under each async library a caller may use: asyncio and trio.

Written once with anyio and run under both (``anyio_backend`` is parametrized, as
anyio's own suite does), against the default asyncio supervisors. A caller's
loop is woken by its backend's caller half (``aioray_runner/_backends/``).
"""

from __future__ import annotations

import asyncio
import time

import anyio
import pytest

from aioray_runner import CancelledError, Runtime, UpstreamError
from aioray_runner._caller.wakeups import current_async_library
from tests._support import Heartbeat, submit_all_with_heartbeat, wait_until

pytestmark = pytest.mark.anyio

N = 10_000


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    if request.param == "trio":
        pytest.importorskip("trio")
    return str(request.param)


async def asyncio_nap(i: int, seconds: float = 0.1) -> int:
    # Runs in the supervisor's asyncio loop, whatever library the caller uses.
    asyncio.get_running_loop()
    await asyncio.sleep(seconds)
    return i + 1


async def asyncio_fail(message: str) -> None:
    raise LookupError(message)


async def test_runs_under_the_callers_library(runtime: Runtime, anyio_backend: str) -> None:
    assert current_async_library() == anyio_backend  # really on that library, as the runtime sees
    assert await runtime.submit(asyncio_nap, 41, 0) == 42


async def test_ten_thousand_calls_with_a_heartbeat(runtime: Runtime) -> None:
    results = await submit_all_with_heartbeat(runtime, asyncio_nap, N)
    assert results == [i + 1 for i in range(N)]


async def test_cancel_scopes_and_timeouts_stop_only_the_wait(runtime: Runtime) -> None:
    fut = runtime.submit(asyncio_nap, 1, 1.0)
    with anyio.move_on_after(0.2) as scope:
        await fut
    assert scope.cancelled_caught
    assert not fut.done()
    with pytest.raises(TimeoutError):
        with anyio.fail_after(0.1):
            await fut
    with anyio.CancelScope() as outer:
        outer.cancel()
        await fut  # cancelled at once: the wait never starts
    assert outer.cancelled_caught
    assert await fut == 2
    assert not fut.cancelled()


async def test_heartbeat_ticks_while_awaiting(runtime: Runtime) -> None:
    heartbeat = Heartbeat()
    async with anyio.create_task_group() as tg:
        tg.start_soon(heartbeat.run)
        start = time.monotonic()
        assert await runtime.submit(asyncio_nap, 9, 1.0) == 10
        end = time.monotonic()
        tg.cancel_scope.cancel()
    heartbeat.assert_kept_ticking(start, end)


async def test_errors_and_dependencies(runtime: Runtime) -> None:
    bad = runtime.submit(asyncio_fail, "the caller sees it")
    with pytest.raises(LookupError, match="the caller sees it") as info:
        await bad
    assert any(bad.label in note for note in info.value.__notes__)
    with pytest.raises(UpstreamError) as upstream:
        await runtime.submit(asyncio_nap, bad)
    assert upstream.value.upstream == bad.label
    a = runtime.submit(asyncio_nap, 1, 0.1)
    assert await runtime.submit(asyncio_nap, a, 0) == 3


async def test_remote_cancel(runtime: Runtime) -> None:
    fut = runtime.submit(asyncio_nap, 0, 3600)

    async def running() -> bool:
        return (await runtime.stats())[0]["running"] >= 1

    await wait_until(running)
    assert fut.cancel()
    with anyio.fail_after(30):
        with pytest.raises(CancelledError):
            await fut
    assert fut.cancelled()


async def test_as_completed(runtime: Runtime) -> None:
    futures = [runtime.submit(asyncio_nap, i, 0.05 * (i % 3)) for i in range(12)]
    seen = [f async for f in runtime.as_completed(futures + futures[:4])]
    assert len(seen) == 12
    assert set(seen) == set(futures)
    assert sorted([await f for f in seen]) == list(range(1, 13))
