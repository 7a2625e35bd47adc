"""Streams (``Runtime.stream``): a generator's values, in order, as they are made,
no further ahead of the consumer than its limits, ended and closed as users expect.

Real Ray (the session's), real supervisors; a supervisor killed with SIGKILL for
the fault case (Ray killed mid-stream: tests/test_ray_lost.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from aioray_runner import (
    CancelledError,
    InvalidCallError,
    Runtime,
    Stream,
    SupervisorDiedError,
)

from ._support import wait_until

pytestmark = pytest.mark.anyio

# -- generators (they run in the supervisors) ----------------------------------------------


async def count(n: int, start: int = 0) -> AsyncIterator[int]:
    for i in range(start, start + n):
        yield i


def count_sync(n: int) -> Iterator[int]:
    yield from range(n)


async def blobs(n: int, size: int, progress: str) -> AsyncIterator[bytes]:
    """``n`` values of ``size`` bytes; the number made so far is in ``progress``."""
    for i in range(n):
        Path(progress).write_text(str(i + 1))  # noqa: ASYNC240 - tiny, and the test reads it
        yield bytes(size)


async def counted(n: int, progress: str) -> AsyncIterator[int]:
    """0..n-1; before yielding value i, ``progress`` says i + 1 were made."""
    for i in range(n):
        Path(progress).write_text(str(i + 1))  # noqa: ASYNC240 - tiny, and the test reads it
        yield i


async def one_then_wait(go: str) -> AsyncIterator[str]:
    yield "first"
    deadline = time.monotonic() + 60
    # Only the consumer, having had the first value, makes the file.
    while not os.path.exists(go):  # noqa: ASYNC240
        assert time.monotonic() < deadline, "the first value never reached the consumer"
        await asyncio.sleep(0.01)
    yield "second"


async def endless_with_finally(marker: str) -> AsyncIterator[int]:
    i = 0
    try:
        while True:
            yield i
            i += 1
            await asyncio.sleep(0.001)
    finally:
        Path(marker).write_text("closed")  # noqa: ASYNC240 - tiny, and the test reads it


def endless_sync_with_finally(marker: str) -> Iterator[int]:
    i = 0
    try:
        while True:
            yield i
            i += 1
            time.sleep(0.001)
    finally:
        Path(marker).write_text("closed")


async def fails_after(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i
    raise KeyError("the page after the last")


async def slow_ticks(pid_file: str) -> AsyncIterator[int]:
    Path(pid_file).write_text(str(os.getpid()))  # noqa: ASYNC240
    for i in range(1_000_000):
        yield i
        await asyncio.sleep(0.02)


async def plus(a: int, b: int) -> int:
    return a + b


async def not_a_generator() -> int:
    return 1


# -- values ------------------------------------------------------------------------------


async def test_every_value_arrives_in_order(runtime: Runtime) -> None:
    got = [x async for x in runtime.stream(count, 100_000)]
    assert got == list(range(100_000))


async def test_a_plain_generator_streams_from_a_thread(runtime: Runtime) -> None:
    assert [x async for x in runtime.stream(count_sync, 5_000)] == list(range(5_000))


def test_sync_code_iterates_with_a_plain_for(runtime: Runtime) -> None:
    with runtime.stream(count, 1_000, 7) as values:
        assert list(values) == list(range(7, 1_007))


async def test_the_first_value_arrives_before_the_generator_ends(
    runtime: Runtime, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    stream = runtime.stream(one_then_wait, str(go))
    with anyio.fail_after(60):
        assert await stream.__anext__() == "first"
        go.write_text("")
        assert [x async for x in stream] == ["second"]


async def test_arguments_may_be_futures_resolved_on_the_supervisor(runtime: Runtime) -> None:
    n = runtime.submit(plus, 2, 3)
    start = runtime.submit(plus, 10, 0)
    assert [x async for x in runtime.stream(count, n, start=start)] == [10, 11, 12, 13, 14]  # type: ignore[arg-type]


def test_trio_consumers_iterate_with_async_for(runtime: Runtime) -> None:
    import trio

    async def consume() -> list[int]:
        return [x async for x in runtime.stream(count, 2_000)]

    assert trio.run(consume) == list(range(2_000))


async def test_a_thousand_streams_at_once_are_each_complete(runtime: Runtime) -> None:
    streams = [runtime.stream(count, 50, 1_000 * i) for i in range(1_000)]
    results: dict[int, list[int]] = {}

    async def drain(i: int, stream: Stream[int]) -> None:
        results[i] = [x async for x in stream]

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            for i, stream in enumerate(streams):
                tg.start_soon(drain, i, stream)
    assert all(results[i] == list(range(1_000 * i, 1_000 * i + 50)) for i in range(1_000))


# -- backpressure -----------------------------------------------------------------------------


async def test_a_slow_consumer_holds_the_generator_within_its_limit(
    runtime: Runtime, tmp_path: Path
) -> None:
    progress = tmp_path / "made"
    limit = 20
    ahead = []
    stream = runtime.stream_call(counted, (400, str(progress)), max_buffered=limit)
    async with stream:
        taken = 0
        async for value in stream:
            assert value == taken
            taken += 1
            if taken % 10 == 0:
                await asyncio.sleep(0.05)  # slow: let the generator run ahead if it could
            made = int(progress.read_text() or 0)
            ahead.append(made - taken)
    assert taken == 400
    assert max(ahead) <= limit, max(ahead)
    assert max(ahead) >= limit // 2, ahead  # it did run ahead: the bound was what held it


async def test_the_byte_limit_holds_big_values(runtime: Runtime, tmp_path: Path) -> None:
    progress = tmp_path / "made"
    size = 1 << 20  # 1 MiB each; the byte limit allows 4 made and not taken
    stream = runtime.stream_call(
        blobs, (30, size, str(progress)), max_buffered=1_000, max_buffered_bytes=4 * size
    )
    ahead = []
    async with stream:
        taken = 0
        async for value in stream:
            assert len(value) == size
            taken += 1
            await asyncio.sleep(0.05)
            ahead.append(int(progress.read_text()) - taken)
    assert taken == 30
    assert max(ahead) <= 4 + 1, ahead  # the value that crosses the limit is still sent


@pytest.mark.parametrize("limit", [0, -1, 1.5, True])
def test_bad_limits_are_refused_by_name(runtime: Runtime, limit: object) -> None:
    with pytest.raises((TypeError, ValueError), match="max_buffered"):
        runtime.stream_call(count, (1,), max_buffered=limit)  # type: ignore[arg-type]


# -- endings ---------------------------------------------------------------------------------


async def test_an_error_arrives_after_the_values_before_it(runtime: Runtime) -> None:
    got = []
    with pytest.raises(KeyError, match="the page after the last") as caught:
        async for x in runtime.stream(fails_after, 3):
            got.append(x)
    assert got == [0, 1, 2]
    assert any("Remote traceback" in note for note in caught.value.__notes__)


@pytest.mark.parametrize("kind", [endless_with_finally, endless_sync_with_finally])
async def test_leaving_early_runs_the_generators_finally(
    runtime: Runtime, tmp_path: Path, kind: object
) -> None:
    marker = tmp_path / "closed"
    async with runtime.stream(kind, str(marker)) as values:  # type: ignore[call-overload]
        async for x in values:
            if x == 5:
                break
    if kind is endless_with_finally:
        assert marker.exists()  # aclose waited for the generator's finally
    else:
        # A plain generator's thread may be inside next() (its sleep): it is
        # closed as soon as that returns, a moment later.
        await wait_until(marker.exists, within=10)
    assert values.future.cancelled()


async def test_a_dropped_stream_closes_its_generator(runtime: Runtime, tmp_path: Path) -> None:
    marker = tmp_path / "closed"
    async for x in runtime.stream(endless_with_finally, str(marker)):
        if x == 3:
            break  # the stream is referenced nowhere now
    await wait_until(marker.exists, within=15)


async def test_a_consumer_cancelled_while_waiting_closes_the_generator(
    runtime: Runtime, tmp_path: Path
) -> None:
    stream = runtime.stream(one_then_wait, str(tmp_path / "never"))
    assert await stream.__anext__() == "first"
    with anyio.move_on_after(0.5):
        await stream.__anext__()  # waits for a value that never comes
    assert await asyncio.wait_for(asyncio.shield(_finished(stream)), 15)
    assert stream.future.cancelled()


async def _finished(stream: Stream[object]) -> bool:
    await stream.future.wait()
    return True


async def test_reading_on_after_a_cancelled_wait_says_the_stream_was_cut_short(
    runtime: Runtime, tmp_path: Path
) -> None:
    stream = runtime.stream(one_then_wait, str(tmp_path / "never"))
    assert await stream.__anext__() == "first"
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(stream.__anext__(), 0.3)
    # Not a silent end: the values after that are lost, and the consumer hears so.
    with pytest.raises(CancelledError, match="was closed when the task waiting"):
        await stream.__anext__()


async def test_two_consumers_at_once_are_refused(runtime: Runtime, tmp_path: Path) -> None:
    async with runtime.stream(one_then_wait, str(tmp_path / "never")) as stream:
        assert await stream.__anext__() == "first"
        async with anyio.create_task_group() as tg:
            tg.start_soon(stream.__anext__)  # waits for a value that never comes
            await anyio.sleep(0.2)
            with pytest.raises(RuntimeError, match="already being iterated"):
                await stream.__anext__()
            tg.cancel_scope.cancel()


async def test_leaving_the_runtime_closes_a_stream_left_half_read(tmp_path: Path) -> None:
    marker = tmp_path / "closed"
    with anyio.fail_after(60):
        async with Runtime(supervisors=1) as rt:
            stream = rt.stream(endless_with_finally, str(marker))
            async for x in stream:
                if x == 5:
                    break  # still referenced: nobody will take its values now
    assert marker.exists()  # closed on the way out, its finally run: no hang


async def rows_then_enrich(rt: Runtime) -> list[int]:
    out = []
    async for row in rt.stream_call(count, (50,), max_buffered=4):
        out.append(await rt.submit(plus, row, 1000))
    return out


async def test_a_stream_waiting_for_its_consumer_holds_no_permit(tmp_path: Path) -> None:
    # One permit: the stream must give it back while it waits for room, or the
    # call its consumer waits for could never start.
    with anyio.fail_after(60):
        async with Runtime(supervisors=1, max_concurrency=1) as rt:
            assert await rows_then_enrich(rt) == [1000 + i for i in range(50)]


async def big(index: int, n: int, size: int) -> AsyncIterator[bytes]:
    for i in range(n):
        yield bytes([index, i]) * (size // 2)


async def test_many_streams_of_big_values_arrive_whole_and_in_order(runtime: Runtime) -> None:
    # 3 streams of 8 MiB values: more than one poll reply carries (32 MiB).
    size = 8 << 20
    streams = [runtime.stream(big, index, 6, size) for index in range(3)]
    seen: dict[int, list[int]] = {i: [] for i in range(3)}

    async def drain(index: int, stream: Stream[bytes]) -> None:
        async for value in stream:
            assert len(value) == size and value[0] == index
            seen[index].append(value[1])

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            for index, stream in enumerate(streams):
                tg.start_soon(drain, index, stream)
    assert seen == {i: list(range(6)) for i in range(3)}


async def test_cancelling_the_call_ends_the_consumer_with_cancelled_error(
    runtime: Runtime, tmp_path: Path
) -> None:
    stream = runtime.stream(endless_with_finally, str(tmp_path / "closed"))
    assert await stream.__anext__() == 0
    stream.future.cancel()
    with anyio.fail_after(15), pytest.raises(CancelledError):
        async for _ in stream:
            pass


# -- bad input --------------------------------------------------------------------------------


def test_bad_functions_are_refused_with_the_fix(runtime: Runtime) -> None:
    with pytest.raises(InvalidCallError, match=r"not_a_generator is a coroutine function.*submit"):
        runtime.stream(not_a_generator)  # type: ignore[call-overload]
    generator = count(3)
    with pytest.raises(InvalidCallError, match=r"generator object .*stream\(count, \*args\)"):
        runtime.stream(generator)  # type: ignore[call-overload]
    with pytest.raises(InvalidCallError, match="got an object of type int"):
        runtime.stream(3)  # type: ignore[call-overload]
    # and submit names stream for a generator function
    with pytest.raises(InvalidCallError, match=r"rt\.stream\(count"):
        runtime.submit(count, 3)  # type: ignore[arg-type]
    # nothing else was lost: the runtime still runs calls
    assert runtime.submit(plus, 1, 2).result(timeout=60) == 3


# -- faults -----------------------------------------------------------------------------------


async def test_a_supervisor_killed_mid_stream_ends_it_with_an_error(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    async with Runtime(supervisors=1) as rt:
        stream = rt.stream(slow_ticks, str(pid_file))
        got = [await stream.__anext__() for _ in range(5)]
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        killed = time.monotonic()
        with anyio.fail_after(30), pytest.raises(SupervisorDiedError, match="slow_ticks"):
            async for value in stream:
                got.append(value)
        assert time.monotonic() - killed < 15
        assert got == list(range(len(got)))  # no gap, no repeat: never run again
        # the replacement runs new streams
        assert [x async for x in rt.stream(count, 3)] == [0, 1, 2]


# -- the guide's example -----------------------------------------------------------------------


@pytest.mark.slow  # a Ray of its own in a subprocess
def test_the_paginated_example_streams_every_page(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run(
        [sys.executable, str(root / "examples" / "paginated_stream.py")],
        capture_output=True,
        text=True,
        timeout=240,
        env={**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "60 pages streamed in" in out.stdout, out.stdout
