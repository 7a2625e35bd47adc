"""Runtimes of their own: concurrency cap, memory release, supervisor death."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import uuid
from pathlib import Path

import anyio
import pytest
import ray

from aioray_runner import Runtime, SupervisorDiedError, UpstreamError
from tests._support import gauge_peak, gauged_sleep, wait_until

pytestmark = pytest.mark.anyio


async def double(x: int) -> int:
    return 2 * x


async def add_one(x: int) -> int:
    return x + 1


async def fail(message: str) -> None:
    raise ValueError(message)


async def nap(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "woke"


def read_env(name: str) -> str | None:
    return os.environ.get(name)


async def test_max_concurrency_caps_calls_running_at_once(ray_session: None) -> None:
    token = uuid.uuid4().hex
    async with Runtime(max_concurrency=5) as rt:
        assert rt.owns_ray is False
        assert rt.supervisor_info()[0]["max_concurrency"] == 5
        futures = [rt.submit(gauged_sleep, token, 0.3, i) for i in range(20)]
        assert [await f for f in futures] == list(range(20))
        assert await rt.submit(gauge_peak, token) == 5
        stats = await rt.stats()
        assert stats[0]["running"] == 0
        assert stats[0]["started_total"] >= 21
    assert ray.is_initialized()
    assert not rt.running


async def test_stats_running_never_exceeds_the_cap(ray_session: None) -> None:
    token = uuid.uuid4().hex
    async with Runtime(max_concurrency=3) as rt:
        futures = [rt.submit(gauged_sleep, token, 0.6, i) for i in range(9)]
        seen = []
        while not all(f.done() for f in futures):
            seen.append((await rt.stats())[0]["running"])
            await anyio.sleep(0.05)
        assert max(seen) <= 3
        assert 3 in seen  # the cap was reached, so calls did overlap
        assert [await f for f in futures] == list(range(9))


async def test_dropped_futures_are_released_remotely(runtime: Runtime) -> None:
    def held(stats: list[dict[str, int]]) -> int:
        return sum(s["calls_held"] for s in stats)

    baseline = held(await runtime.stats())
    futures = [runtime.submit(double, i) for i in range(500)]
    results = [await f for f in futures]
    assert results == [2 * i for i in range(500)]
    assert held(await runtime.stats()) >= 500  # still held: the futures are alive

    del futures
    gc.collect()

    async def released() -> bool:
        return held(await runtime.stats()) <= baseline + 5

    await wait_until(released, within=30, interval=0.1)


async def test_supervisor_death_fails_calls_in_flight_then_recovers(ray_session: None) -> None:
    async with Runtime() as rt:
        old_pid = rt.supervisor_info()[0]["pid"]
        finished = rt.submit(double, 21)
        failed = rt.submit(fail, "before the crash")
        assert await finished == 42
        with pytest.raises(ValueError):
            await failed
        victim = rt.submit(nap, 3600)

        async def victim_running() -> bool:
            return (await rt.stats())[0]["running"] >= 1

        await wait_until(victim_running)
        os.kill(old_pid, signal.SIGKILL)
        with anyio.fail_after(30):
            with pytest.raises(SupervisorDiedError) as info:
                await victim
        assert victim.label in str(info.value)
        assert str(old_pid) in str(info.value)

        # A new call runs on a replacement in the same place.
        again = rt.submit(double, 5)
        assert await again == 10
        assert again.supervisor == 0

        def replaced() -> bool:
            pids = [i.get("pid") for i in rt.supervisor_info()]
            return len(pids) == 1 and pids[0] not in (None, old_pid)

        await wait_until(replaced)

        # Outcomes the caller already holds still feed dependents.
        assert await rt.submit(add_one, finished) == 43
        with pytest.raises(UpstreamError) as upstream:
            await rt.submit(add_one, failed)
        assert upstream.value.upstream == failed.label
        assert "before the crash" in str(upstream.value)
    assert ray.is_initialized()


def test_options_start_a_supervisor_with_other_actor_options(runtime: Runtime) -> None:
    group = runtime.options(runtime_env={"env_vars": {"AIORAY_TEST_GROUP": "yes"}})
    assert group.submit(read_env, "AIORAY_TEST_GROUP").result(timeout=120) == "yes"
    assert runtime.submit(read_env, "AIORAY_TEST_GROUP").result(timeout=60) is None


async def guarded_nap(marker_dir: str) -> None:
    directory = Path(marker_dir)
    try:
        await asyncio.sleep(3600)
    finally:
        (directory / "marker").write_text("finally ran")


async def test_error_in_async_with_cancels_calls_in_flight(
    ray_session: None, tmp_path: Path
) -> None:
    with pytest.raises(LookupError, match="leaving the block"):
        async with Runtime() as rt:
            fut = rt.submit(guarded_nap, str(tmp_path))

            async def running() -> bool:
                return (await rt.stats())[0]["running"] >= 1

            await wait_until(running)
            raise LookupError("leaving the block")
    assert fut.cancelled()
    assert (tmp_path / "marker").read_text() == "finally ran"
    assert ray.is_initialized()


async def test_dependent_on_another_dead_supervisor_gets_upstream_error(
    ray_session: None,
) -> None:
    async with Runtime(supervisors=2) as rt:
        upstream = rt.submit(nap, 3600)
        dependent = rt.submit(add_one, upstream)
        assert upstream.supervisor != dependent.supervisor
        doomed = next(i["pid"] for i in rt.supervisor_info() if i["index"] == upstream.supervisor)

        async def upstream_running() -> bool:
            return any(s["running"] for s in await rt.stats() if s["pid"] == doomed)

        await wait_until(upstream_running)
        os.kill(doomed, signal.SIGKILL)
        with anyio.fail_after(30):
            with pytest.raises(SupervisorDiedError):
                await upstream
            with pytest.raises(UpstreamError) as info:
                await dependent
        assert info.value.upstream == upstream.label
        assert "died" in str(info.value)


async def test_closing_leaves_no_unretrieved_errors(
    ray_session: None, caplog: pytest.LogCaptureFixture
) -> None:
    # Killing the supervisors at close fails the waits still open on them (the
    # long poll); those failures belong to nobody and must not be logged as
    # "Future exception was never retrieved".
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        for _ in range(2):
            async with Runtime(supervisors=2) as rt:
                futures = [rt.submit(double, i) for i in range(2000)]
                assert [await f for f in futures] == [2 * i for i in range(2000)]
                del futures  # their releases go out as the runtime closes
            await asyncio.sleep(1)  # the supervisors' deaths reach the I/O loop
            gc.collect()
    unretrieved = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert not unretrieved, unretrieved[0].getMessage()
