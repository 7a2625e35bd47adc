"""``Runtime(backend="trio")``: trio-native coroutines run in the supervisors."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from aioray_runner import AioRayFuture, BlockedLoop, CancelledError, Runtime
from tests._support import submit_all_with_heartbeat, wait_until

pytestmark = pytest.mark.anyio

N = 10_000


@pytest.fixture(scope="module")
def trio_runtime(ray_session: None) -> Iterator[Runtime]:
    rt = Runtime(backend="trio")
    rt.start()
    yield rt
    rt.close(wait=False)


async def nursery_job(i: int) -> int:
    """trio-only code: a nursery of two children, each with a trio.sleep."""
    parts: list[int] = []

    async def child(k: int) -> None:
        await trio.sleep(0.1)
        parts.append(k)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(child, i)
        nursery.start_soon(child, 1)
    return sum(parts)


async def in_trio() -> str:
    trio.lowlevel.current_task()  # raises RuntimeError outside trio
    await trio.lowlevel.checkpoint()
    return type(trio.lowlevel.current_trio_token()).__name__


async def trio_fail(message: str) -> None:
    await trio.lowlevel.checkpoint()
    raise ArithmeticError(message)


def plain_thread_name() -> str:
    return threading.current_thread().name


async def trio_guarded_sleep(marker_dir: str, seconds: float) -> str:
    directory = Path(marker_dir)
    (directory / "started").write_text("yes")
    outcome = "returned"
    try:
        await trio.sleep(seconds)
    except trio.Cancelled:
        outcome = "cancelled"
        raise
    finally:
        (directory / "finally").write_text(outcome)
    return "done"


async def test_coroutines_run_under_trio_remotely(trio_runtime: Runtime) -> None:
    assert trio_runtime.supervisor_info()[0]["backend"] == "trio"
    assert await trio_runtime.submit(in_trio) == "TrioToken"
    assert await trio_runtime.submit(nursery_job, 41) == 42


async def test_plain_functions_still_use_the_thread_pool(trio_runtime: Runtime) -> None:
    assert (await trio_runtime.submit(plain_thread_name)).startswith("aioray-supervisor")


async def test_ten_thousand_trio_coroutines_with_heartbeat(trio_runtime: Runtime) -> None:
    results = await submit_all_with_heartbeat(trio_runtime, nursery_job, N)
    assert results == [i + 1 for i in range(N)]


async def test_trio_exception_keeps_its_type(trio_runtime: Runtime) -> None:
    fut = trio_runtime.submit(trio_fail, "trio side")
    with pytest.raises(ArithmeticError, match="trio side") as info:
        await fut
    assert "trio_fail" in "\n".join(info.value.__notes__)


async def cancel_once_started(fut: AioRayFuture[Any], marker_dir: Path) -> str:
    """Cancel ``fut`` once its call has started; check it ends cancelled; what its
    ``finally`` block wrote."""
    await wait_until(lambda: (marker_dir / "started").exists())
    assert fut.cancel()
    with trio.fail_after(30):
        with pytest.raises(CancelledError):
            await fut
    assert fut.cancelled()
    return (marker_dir / "finally").read_text()


async def test_cancel_reaches_trio_and_runs_finally(trio_runtime: Runtime, tmp_path: Path) -> None:
    fut = trio_runtime.submit(trio_guarded_sleep, str(tmp_path), 3600)
    assert await cancel_once_started(fut, tmp_path) == "cancelled"


async def trio_nursery_forever(marker_dir: str) -> str:
    directory = Path(marker_dir)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            nursery.start_soon(trio.sleep_forever)
            (directory / "started").write_text("yes")
    finally:
        (directory / "finally").write_text("ran")
    return "done"


async def test_cancel_reaches_a_call_with_an_open_nursery(
    trio_runtime: Runtime, tmp_path: Path
) -> None:
    # trio raises a group of Cancelled out of the nursery: the call still ends
    # cancelled, not failed.
    fut = trio_runtime.submit(trio_nursery_forever, str(tmp_path))
    assert await cancel_once_started(fut, tmp_path) == "ran"


async def test_caller_timeout_does_not_cancel_trio_call(
    trio_runtime: Runtime, tmp_path: Path
) -> None:
    fut = trio_runtime.submit(trio_guarded_sleep, str(tmp_path), 1.0)
    with trio.move_on_after(0.2) as scope:
        await fut
    assert scope.cancelled_caught
    assert await fut == "done"
    assert (tmp_path / "finally").read_text() == "returned"


def blocking_sleep(seconds: float) -> None:
    time.sleep(seconds)


async def trio_blocks(seconds: float) -> str:
    await trio.lowlevel.checkpoint()
    blocking_sleep(seconds)  # blocks the supervisor's trio thread
    return "done"


async def test_blocking_the_trio_thread_is_reported_and_other_calls_go_on(
    ray_session: None,
) -> None:
    seen: list[BlockedLoop] = []
    runtime = Runtime(
        backend="trio", supervisors=1, blocked_loop_threshold=0.2, on_blocked_loop=seen.append
    )
    async with runtime as rt:
        culprit = rt.submit(trio_blocks, 1.5)
        # The actor's own loop is not the trio thread: a plain call is answered meanwhile.
        with trio.fail_after(1.2):
            assert (await rt.submit(plain_thread_name)).startswith("aioray-supervisor")
        assert await culprit == "done"
        await wait_until(lambda: seen, within=10)
    (stall,) = seen
    assert 1.0 <= stall.seconds < 10
    assert "blocking_sleep" in stall.where and "test_trio_backend.py" in stall.where


# -- streams under trio ---------------------------------------------------------------------


async def trio_ticks(n: int, marker: str) -> Any:
    """A trio-native async generator: trio.sleep between values, a finally that
    says it ran (under trio)."""
    try:
        for i in range(n):
            await trio.sleep(0.001)
            trio.lowlevel.current_task()  # raises outside trio
            yield i
    finally:
        Path(marker).write_text("closed under trio")  # noqa: ASYNC240 - a few bytes


async def test_a_trio_async_generator_streams_from_the_trio_thread(
    trio_runtime: Runtime, tmp_path: Path
) -> None:
    marker = tmp_path / "done"
    values = [x async for x in trio_runtime.stream(trio_ticks, 500, str(marker))]
    assert values == list(range(500))
    assert marker.read_text() == "closed under trio"


async def test_closing_a_trio_stream_runs_its_finally(
    trio_runtime: Runtime, tmp_path: Path
) -> None:
    marker = tmp_path / "closed"
    async with trio_runtime.stream(trio_ticks, 1_000_000, str(marker)) as stream:
        async for x in stream:
            if x == 10:
                break
    await wait_until(marker.exists, within=10)
    assert stream.future.cancelled()
