"""The sync side of the API (result, timeouts, ``with Runtime()``) and as_completed."""

from __future__ import annotations

import asyncio
import time

import pytest
import ray

from aioray_runner import Runtime, RuntimeNotRunningError


async def slow_value(x: int, seconds: float) -> int:
    await asyncio.sleep(seconds)
    return x


async def after(x: int, _upstream: object) -> int:
    return x


async def fails() -> None:
    raise ValueError("sync caller sees this")


def test_result_with_timeout_from_sync_code(runtime: Runtime) -> None:
    fut = runtime.submit(slow_value, 7, 1.0)
    with pytest.raises(TimeoutError):
        fut.result(timeout=0.1)
    assert not fut.done()
    with pytest.raises(TimeoutError):
        fut.exception(timeout=0.05)
    assert fut.wait_sync(0.01) is False
    assert fut.result(timeout=60) == 7
    assert fut.exception(timeout=0) is None
    assert fut.wait_sync(0) is True


def test_errors_from_sync_code(runtime: Runtime) -> None:
    fut = runtime.submit(fails)
    with pytest.raises(ValueError, match="sync caller sees this"):
        fut.result(timeout=60)
    assert isinstance(fut.exception(), ValueError)


def test_done_callback_runs_once(runtime: Runtime) -> None:
    seen: list[object] = []
    fut = runtime.submit(slow_value, 1, 0.2)
    fut.add_done_callback(seen.append)
    assert fut.result(timeout=60) == 1
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == [fut]
    # Added after the fact: runs at once.
    fut.add_done_callback(seen.append)
    assert seen == [fut, fut]


def test_with_runtime_from_sync_code_keeps_existing_ray(ray_session: None) -> None:
    assert ray.is_initialized()
    with Runtime() as rt:
        assert rt.running
        assert rt.owns_ray is False
        futures = rt.map(slow_value, range(5), [0.1] * 5)
        assert [f.result(timeout=60) for f in futures] == list(range(5))
        pending = rt.submit(slow_value, 99, 0.5)
    # Leaving the block waited for the call still running.
    assert pending.done() and pending.result(0) == 99
    assert not rt.running
    assert ray.is_initialized()
    with pytest.raises(RuntimeNotRunningError):
        rt.submit(slow_value, 1, 0)


@pytest.mark.anyio
async def test_as_completed_yields_each_future_once_in_finish_order(runtime: Runtime) -> None:
    first = runtime.submit(slow_value, 1, 0.1)
    second = runtime.submit(after, 2, first)
    third = runtime.submit(after, 3, second)
    done_already = runtime.submit(slow_value, 0, 0)
    await done_already
    order = []
    async for fut in runtime.as_completed([third, second, done_already, first, third, first]):
        assert fut.done()
        order.append(fut)
    assert len(order) == 4
    assert set(order) == {first, second, third, done_already}
    # The dependency chain fixes the order of the three others.
    chain = [f for f in order if f is not done_already]
    assert chain == [first, second, third]
    assert [await f for f in chain] == [1, 2, 3]


@pytest.mark.anyio
async def test_as_completed_of_nothing(runtime: Runtime) -> None:
    assert [f async for f in runtime.as_completed([])] == []
