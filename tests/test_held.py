"""Results where they are: values above ``hold_results_above`` stay on the supervisor
that made them until something asks for them, and are released when their future
is dropped.

Real Ray (the session's), real supervisors; a supervisor killed with SIGKILL for
the fault case. Memory is the caller's resident set (``/proc/self/statm``), read
before and after in the same test.
"""

from __future__ import annotations

import gc
import os
import signal
import time

import anyio
import pytest

from aioray_runner import Runtime, SupervisorDiedError, UpstreamError

from ._support import wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("ray_session")]

MIB = 1024 * 1024


# -- functions (they run in the supervisors) -------------------------------------------------


async def blob(size: int, fill: int = 0) -> bytes:
    return bytes([fill]) * size


async def length(value: bytes) -> int:
    return len(value)


async def small(i: int) -> int:
    return i * 2


async def pid_and_blob(size: int) -> tuple[int, bytes]:
    return os.getpid(), bytes(size)


# -- helpers -----------------------------------------------------------------------------------


def rss_mib() -> float:
    """This process's resident set now, in MiB."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / MIB


def bytes_fetched(rt: Runtime) -> int:
    """Bytes of held values this caller has fetched so far."""
    pool = rt._pool  # the count is in no public place yet
    assert pool is not None
    return pool.fetcher.bytes_received


async def held_on_supervisors(rt: Runtime) -> tuple[int, int]:
    """Outcomes and bytes the supervisors hold now, after a GC here (releases go out)."""
    gc.collect()
    stats = await rt.stats()
    return sum(s["calls_held"] for s in stats), sum(s["held_bytes"] for s in stats)


# -- the value stays until asked for ------------------------------------------------------------


async def test_big_values_finish_held_and_cost_the_caller_nothing_until_awaited() -> None:
    async with Runtime(supervisors=2) as rt:
        gc.collect()
        before = rss_mib()
        futures = [rt.submit(blob, 5 * MIB, i % 251) for i in range(200)]
        for future in futures:
            await future.wait()
        grown = rss_mib() - before
        # 200 x 5 MiB finished: without holding, 1,000 MiB would be here now.
        assert grown < 150, f"the caller grew by {grown:.0f} MiB for values it never asked for"
        assert all(future.done() and future.held for future in futures)
        assert all(future.exception() is None for future in futures)  # no fetch for that
        assert all(future.held for future in futures)
        assert bytes_fetched(rt) == 0
        assert "5,242,8" in repr(futures[0])  # its size, pickled (a few bytes of header)

        # Asking fetches that one value, once, whoever asks.
        value = await futures[7]
        assert value == bytes([7]) * (5 * MIB) and not futures[7].held
        assert await futures[7] is value
        assert 5 * MIB <= bytes_fetched(rt) < 6 * MIB

        # Dropped futures: nothing stays on the supervisors.
        del futures, future, value
        await wait_until(lambda: _nothing_held(rt), within=20)


async def _nothing_held(rt: Runtime) -> bool:
    return await held_on_supervisors(rt) == (0, 0)


async def test_many_held_values_awaited_at_once_arrive_whole() -> None:
    async with Runtime(supervisors=2) as rt:
        futures = [rt.submit(blob, 300 * 1024, i) for i in range(100)]
        values = await _gather(futures)
        assert [v[:1] for v in values] == [bytes([i]) for i in range(100)]
        assert all(len(v) == 300 * 1024 for v in values)


async def _gather(futures: list) -> list:
    results: list = [None] * len(futures)

    async def one(i: int) -> None:
        results[i] = await futures[i]

    async with anyio.create_task_group() as tg:
        for i in range(len(futures)):
            tg.start_soon(one, i)
    return results


async def test_small_values_errors_and_the_setting_off_come_back_at_once() -> None:
    async with Runtime(supervisors=1, hold_results_above=1024) as rt:
        tiny = rt.submit(small, 21)
        bad = rt.submit(length, 5)  # TypeError: an error always comes back inline
        big = rt.submit(blob, 4096)
        for future in (tiny, bad, big):
            await future.wait()
        assert not tiny.held and await tiny == 42
        assert not bad.held and isinstance(bad.exception(), TypeError)
        assert big.held
    async with Runtime(supervisors=1, hold_results_above=None) as rt:
        future = rt.submit(blob, 2 * MIB)
        await future.wait()
        assert not future.held
        assert len(await future) == 2 * MIB


def test_sync_result_fetches_within_its_timeout() -> None:
    with Runtime(supervisors=1) as rt:
        future = rt.submit(blob, 3 * MIB, 9)
        assert future.wait_sync(60)
        assert future.held
        assert future.result(timeout=60) == bytes([9]) * (3 * MIB)
        assert not future.held


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_a_trio_caller_fetches_a_held_value() -> None:
    pytest.importorskip("trio")
    async with Runtime(supervisors=1) as rt:
        future = rt.submit(blob, 1 * MIB, 3)
        await future.wait()
        assert future.held
        assert await future == bytes([3]) * MIB


class Table:
    """A big value that says what it holds (see ``__aioray_summary__``)."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.data = bytes(rows * 1024)

    def __aioray_summary__(self) -> dict[str, int]:
        return {"rows": self.rows}


async def make_table(rows: int) -> Table:
    return Table(rows)


async def test_a_held_values_summary_comes_with_its_completion() -> None:
    async with Runtime(supervisors=1) as rt:
        table = rt.submit(make_table, 1024)  # 1 MiB: held
        small = rt.submit(make_table, 4)  # 4 KiB: back at once
        await table.wait()
        await small.wait()
        assert table.held and table.summary() == {"rows": 1024}
        assert bytes_fetched(rt) == 0  # the summary needed no fetch
        assert not small.held and small.summary() == {"rows": 4}  # computed here
        assert (await table).rows == 1024
        assert table.summary() == {"rows": 1024}  # the same once fetched
        plain = rt.submit(small_value_of, 3)
        await plain.wait()
        assert plain.summary() is None  # an int gives no summary


async def small_value_of(i: int) -> int:
    return i


# -- dependents take values where they are ---------------------------------------------------


async def test_a_chain_of_big_values_never_passes_through_the_caller() -> None:
    async with Runtime(supervisors=1) as rt:
        # A second group of supervisors: each dependent runs on another process
        # than the value it reads, which it takes from that supervisor directly.
        other = rt.options(runtime_env={"env_vars": {"AIORAY_TEST_SIDE": "b"}})
        gc.collect()
        before = rss_mib()
        made = [rt.submit(blob, 50 * MIB, i) for i in range(20)]  # kept, as a flow keeps them
        lengths = [other.submit(length, m) for m in made]
        assert [await n for n in lengths] == [50 * MIB] * 20
        grown = rss_mib() - before
        assert bytes_fetched(rt) == 0 and all(m.held for m in made)
        assert grown < 150, f"the caller grew by {grown:.0f} MiB passing values it never read"
        del made, lengths
        await wait_until(lambda: _nothing_held(rt), within=30)


# -- faults -----------------------------------------------------------------------------------


async def test_a_value_lost_with_its_supervisor_fails_at_once_naming_it() -> None:
    async with Runtime(supervisors=1) as rt:
        future = rt.submit(pid_and_blob, 2 * MIB)
        await future.wait()
        assert future.held
        pid = (await rt.stats())[0]["pid"]
        os.kill(pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(SupervisorDiedError, match=r"pid_and_blob#\d+ was lost"):
            with anyio.fail_after(15):
                await future
        assert time.monotonic() - started < 15
        # A dependent submitted now fails by name too, and the runtime goes on.
        dependent = rt.submit(length, future)
        with pytest.raises(UpstreamError, match="was lost"):
            with anyio.fail_after(30):
                await dependent
        assert await rt.submit(small, 4) == 8


async def test_a_value_left_when_the_runtime_closed_says_so() -> None:
    async with Runtime(supervisors=1) as rt:
        future = rt.submit(blob, 1 * MIB)
        await future.wait()
    assert future.held
    with pytest.raises(SupervisorDiedError, match="when the runtime closed"):
        with anyio.fail_after(15):
            await future
