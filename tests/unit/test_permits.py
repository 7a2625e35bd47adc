"""The supervisor's max_concurrency permits, and a stream giving its permit back
while it waits for its consumer (no Ray: the parts themselves)."""

from __future__ import annotations

import asyncio

from aioray_runner._supervisor.calls import Permits
from aioray_runner._supervisor.streams import StreamFlow, Streams


def test_taking_anyway_goes_below_zero_until_given_back() -> None:
    permits = Permits(1)
    assert permits.try_acquire()
    permits.take_anyway()  # a call that must hold one while it unwinds
    assert not permits.try_acquire()
    permits.release()
    assert not permits.try_acquire()  # still one out
    permits.release()
    assert permits.try_acquire()


def _streams(permits: Permits) -> Streams:
    return Streams(lambda: None, None, lambda fn: fn, permits)  # type: ignore[arg-type]


def test_a_stream_waiting_for_room_lets_another_call_run_then_takes_its_turn() -> None:
    async def scenario() -> list[str]:
        permits = Permits(1)
        assert permits.try_acquire()  # the stream's permit
        flow = StreamFlow((1, 1 << 20))
        flow.made_one(10)  # at its limit: it must wait for the consumer
        said: list[str] = []

        async def other_call() -> None:
            await permits.acquire()  # possible only while the stream waits
            said.append("other ran")
            await asyncio.sleep(0.01)
            permits.release()

        waiting = asyncio.create_task(_streams(permits)._wait_for_room(flow))
        await asyncio.sleep(0)
        await asyncio.wait_for(other_call(), 1)
        flow.taken_up_to(1)  # the consumer took it
        await asyncio.wait_for(waiting, 1)
        said.append("stream goes on")
        assert not permits.try_acquire()  # the stream holds the one permit again
        return said

    assert asyncio.run(scenario()) == ["other ran", "stream goes on"]


def test_a_stream_cancelled_while_waiting_still_holds_one_for_its_end() -> None:
    async def scenario() -> None:
        permits = Permits(1)
        assert permits.try_acquire()
        flow = StreamFlow((1, 1 << 20))
        flow.made_one(10)
        waiting = asyncio.create_task(_streams(permits)._wait_for_room(flow))
        await asyncio.sleep(0)
        waiting.cancel()
        try:
            await waiting
        except asyncio.CancelledError:
            pass
        permits.release()  # what the call's end does
        assert permits.try_acquire()  # balanced: exactly one free again
        assert not permits.try_acquire()

    asyncio.run(scenario())
