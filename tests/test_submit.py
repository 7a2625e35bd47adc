"""Submitting coroutines and plain functions, and awaiting them (asyncio caller)."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
import uuid

import pytest

from aioray_runner import AioRayFuture, Runtime, RuntimeNotRunningError
from tests._support import block_until_set, set_when_started

pytestmark = pytest.mark.anyio


async def add(a: int, b: int = 0) -> int:
    await asyncio.sleep(0)
    return a + b


async def where() -> tuple[int, str]:
    import os

    return os.getpid(), threading.current_thread().name


def sync_add(a: int, b: int) -> tuple[int, str]:
    return a + b, threading.current_thread().name


async def slow_double(x: int, delay: float = 0.1) -> int:
    await asyncio.sleep(delay)
    return x * 2


class AsyncCallable:
    def __init__(self, offset: int) -> None:
        self.offset = offset

    async def __call__(self, x: int) -> tuple[int, str]:
        return x + self.offset, threading.current_thread().name


async def test_coroutine_result_and_kwargs(runtime: Runtime) -> None:
    fut = runtime.submit(add, 2, b=40)
    assert isinstance(fut, AioRayFuture)
    assert fut.label == f"add#{fut.call_id}"
    assert await fut == 42
    assert fut.done() and not fut.cancelled()
    assert "finished" in repr(fut)
    # Awaiting again gives the same value.
    assert await fut == 42


async def test_coroutine_runs_in_the_supervisor_process(runtime: Runtime) -> None:
    import os

    pid, thread = await runtime.submit(where)
    assert pid != os.getpid()
    assert pid in {info["pid"] for info in runtime.supervisor_info()}
    # Coroutines run on the actor's event loop, not in the thread pool.
    assert not thread.startswith("aioray-supervisor")


async def test_sync_function_runs_in_the_thread_pool(runtime: Runtime) -> None:
    value, thread = await runtime.submit(sync_add, 1, 2)
    assert value == 3
    assert thread.startswith("aioray-supervisor"), thread


async def test_blocking_sync_function_leaves_the_loop_free(runtime: Runtime) -> None:
    # The plain function blocks its thread until a coroutine on the same supervisor
    # sets an event. If it ran on the event loop, the coroutine could never run and
    # the wait would time out.
    token = uuid.uuid4().hex
    blocked = runtime.submit(block_until_set, token, 20.0)
    setter = runtime.submit(set_when_started, token, 20.0)
    thread, was_set = await blocked
    assert await setter is True
    assert was_set is True
    assert thread.startswith("aioray-supervisor"), thread


async def test_partial_and_async_callable_instance(runtime: Runtime) -> None:
    fut = runtime.submit(functools.partial(add, 5), 6)
    assert await fut == 11
    assert fut.label.startswith("add#")

    value, thread = await runtime.submit(AsyncCallable(100), 1)
    assert value == 101
    # Detected as async: it ran on the loop, not in the thread pool.
    assert not thread.startswith("aioray-supervisor")


async def test_map_keeps_order(runtime: Runtime) -> None:
    futures = runtime.map(add, [1, 2, 3], [10, 20, 30])
    assert [await f for f in futures] == [11, 22, 33]


async def test_many_calls_in_one_turn_run_concurrently(runtime: Runtime) -> None:
    # 50 calls of 0.5 s each take far less than 50 x 0.5 s when they overlap;
    # compare with one call measured in the same run.
    start = time.monotonic()
    assert await runtime.submit(slow_double, 1, 0.5) == 2
    one = time.monotonic() - start
    start = time.monotonic()
    futures = [runtime.submit(slow_double, i, 0.5) for i in range(50)]
    assert [await f for f in futures] == [2 * i for i in range(50)]
    many = time.monotonic() - start
    assert many < 10 * one, (one, many)


async def own_task_throughout() -> tuple[bool, str]:
    """A call sees one task of its own from its first step on: anyio's cancel
    scopes (under httpx and others) break if a scope spans an await across tasks."""
    import anyio
    import anyio.lowlevel

    first = asyncio.current_task()
    with anyio.CancelScope():
        await anyio.lowlevel.checkpoint()
    with anyio.move_on_after(5):
        await anyio.sleep(0.01)
    return first is asyncio.current_task() and first is not None, type(first).__name__


async def test_each_call_has_its_own_task_from_its_first_step(runtime: Runtime) -> None:
    futures = [runtime.submit(own_task_throughout) for _ in range(200)]
    assert {await f for f in futures} == {(True, "Task")}


def test_submit_before_start_and_bad_settings() -> None:
    with pytest.raises(RuntimeNotRunningError):
        Runtime().submit(add, 1)
    with pytest.raises(ValueError):
        Runtime(backend="curio")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Runtime(supervisors=0)
    with pytest.raises(ValueError):
        Runtime(max_concurrency=0)
