"""The supervisor's start gate (``aioray_runner/_supervisor/gate.py``), without Ray.

The rules (docs/failures.md, "A supervisor dies"): a supervisor never starts a
call on its own; it first announces the call's id in the reply to the caller's
standing poll, and starts it only when the caller's *next* poll arrives, which
proves the caller read the announcement. Calls with nothing to wait for are
announced straight from the message that brought them, with no task parked per
call; the announcement costs one round trip per batch, not per call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from aioray_runner._supervisor.gate import StartGate


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 5))


async def turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


class Wakes:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def test_a_waiting_call_starts_only_at_the_poll_after_its_announcement() -> None:
    async def scenario() -> None:
        wakes = Wakes()
        gate: StartGate[str] = StartGate(wakes)
        started: list[int] = []

        async def call(call_id: int) -> None:
            await gate.admit(call_id)
            started.append(call_id)

        task = asyncio.ensure_future(call(7))
        await turns()
        assert started == [] and gate.has_news and wakes.count == 1  # the poll is woken
        gate.open()  # a poll that arrived before the announcement went out: no start
        await turns()
        assert started == []
        assert gate.announce() == [7]  # the reply carries it...
        await turns()
        assert started == [] and not gate.has_news  # ...and it still waits
        gate.open()  # the next poll: the caller has read the announcement
        await task
        assert started == [7]

    run(scenario)


def test_every_call_of_a_batch_is_announced_in_one_reply_and_starts_together() -> None:
    async def scenario() -> None:
        gate: StartGate[str] = StartGate(Wakes())
        started: list[int] = []

        async def call(call_id: int) -> None:
            await gate.admit(call_id)
            started.append(call_id)

        tasks = [asyncio.ensure_future(call(i)) for i in range(1, 101)]
        await turns()
        assert gate.announce() == list(range(1, 101))  # one round trip for the batch
        await turns()
        assert started == []
        gate.open()
        await asyncio.gather(*tasks)
        assert sorted(started) == list(range(1, 101))

    run(scenario)


def test_a_call_announced_after_a_reply_waits_for_the_next_reply_and_poll() -> None:
    async def scenario() -> None:
        gate: StartGate[str] = StartGate(Wakes())
        started: list[int] = []

        async def call(call_id: int) -> None:
            await gate.admit(call_id)
            started.append(call_id)

        first = asyncio.ensure_future(call(1))
        await turns()
        assert gate.announce() == [1]
        second = asyncio.ensure_future(call(2))  # after the reply left: not in it
        await turns()
        gate.open()  # opens call 1's gate only
        await first
        await turns()
        assert started == [1]
        assert gate.announce() == [2]
        await turns()
        assert started == [1]
        gate.open()
        await second
        assert started == [1, 2]

    run(scenario)


def test_calls_started_when_open_come_back_only_after_their_announcement_was_read() -> None:
    gate: StartGate[str] = StartGate(Wakes())
    gate.start_when_open(1, "start 1")
    gate.start_when_open(2, "start 2")
    assert gate.has_news
    assert gate.open() == []  # not announced yet
    assert gate.announce() == [1, 2]
    gate.start_when_open(3, "start 3")  # arrived after the reply: the next one
    assert gate.open() == ["start 1", "start 2"]
    assert gate.open() == []  # handed back once
    assert gate.announce() == [3]
    assert gate.open() == ["start 3"]


def test_both_ways_through_share_one_announcement() -> None:
    async def scenario() -> None:
        gate: StartGate[str] = StartGate(Wakes())
        started: list[int] = []

        async def call(call_id: int) -> None:
            await gate.admit(call_id)
            started.append(call_id)

        gate.start_when_open(1, "start 1")
        task = asyncio.ensure_future(call(2))
        await turns()
        assert gate.announce() == [1, 2]
        assert gate.open() == ["start 1"]
        await task
        assert started == [2]

    run(scenario)


def test_cancelling_one_waiting_call_leaves_the_others_gate_alone() -> None:
    async def scenario() -> None:
        gate: StartGate[str] = StartGate(Wakes())
        started: list[int] = []

        async def call(call_id: int) -> None:
            await gate.admit(call_id)
            started.append(call_id)

        one, two = asyncio.ensure_future(call(1)), asyncio.ensure_future(call(2))
        await turns()
        assert gate.announce() == [1, 2]
        one.cancel()
        await turns()
        assert one.cancelled() and started == []
        gate.open()
        await two
        assert started == [2]

    run(scenario)


def test_nothing_to_announce_is_no_news() -> None:
    gate: StartGate[str] = StartGate(Wakes())
    assert not gate.has_news
    assert gate.announce() == []
    assert gate.open() == []
