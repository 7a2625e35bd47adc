"""Cancelling a call remotely, and cancelling only the caller's wait."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio
import pytest

from aioray_runner import CancelledError, Runtime
from tests._support import wait_until

pytestmark = pytest.mark.anyio


async def guarded_sleep(marker_dir: str, seconds: float) -> str:
    """Write ``started``, sleep, and record in ``finally`` how it ended."""
    directory = Path(marker_dir)
    (directory / "started").write_text("yes")
    outcome = "returned"
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    finally:
        (directory / "finally").write_text(outcome)
    return "done"


async def slow_value(x: int, seconds: float) -> int:
    await asyncio.sleep(seconds)
    return x


async def test_cancel_stops_the_remote_coroutine_and_runs_finally(
    runtime: Runtime, tmp_path: Path
) -> None:
    fut = runtime.submit(guarded_sleep, str(tmp_path), 3600)
    await wait_until(lambda: (tmp_path / "started").exists())
    assert not (tmp_path / "finally").exists()
    assert fut.cancel() is True
    with anyio.fail_after(30):
        with pytest.raises(CancelledError):
            await fut
    assert fut.cancelled() and fut.done()
    # The future is marked cancelled only after the remote finally block ran.
    assert (tmp_path / "finally").read_text() == "cancelled"
    assert fut.cancel() is False  # already finished
    assert isinstance(fut.exception(), CancelledError)


async def test_cancel_right_after_submit(runtime: Runtime, tmp_path: Path) -> None:
    # The cancel may reach the supervisor before (or just after) the call itself;
    # either way the future must end up cancelled rather than pending forever.
    fut = runtime.submit(guarded_sleep, str(tmp_path), 3600)
    assert fut.cancel() is True
    with anyio.move_on_after(10):
        with pytest.raises(CancelledError):
            await fut
    assert fut.done(), f"{fut!r} is still pending 10 s after cancel()"
    assert fut.cancelled()
    # If the body started at all, its finally block ran too.
    if (tmp_path / "started").exists():
        assert (tmp_path / "finally").read_text() == "cancelled"


async def test_cancel_after_finish_returns_false(runtime: Runtime) -> None:
    fut = runtime.submit(slow_value, 5, 0)
    assert await fut == 5
    assert fut.cancel() is False
    assert not fut.cancelled()
    assert await fut == 5


async def test_wait_for_timeout_does_not_cancel_the_remote_call(
    runtime: Runtime, tmp_path: Path
) -> None:
    fut = runtime.submit(guarded_sleep, str(tmp_path), 1.0)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(fut, timeout=0.2)
    assert not fut.done()
    assert await fut == "done"
    assert not fut.cancelled()
    assert (tmp_path / "finally").read_text() == "returned"


async def test_cancelling_the_awaiting_task_does_not_cancel_the_call(runtime: Runtime) -> None:
    fut = runtime.submit(slow_value, 3, 1.0)
    waiter = asyncio.create_task(fut.wait())
    await asyncio.sleep(0.1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert await fut == 3
