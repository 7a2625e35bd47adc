"""The census of a supervisor's calls (``_supervisor/census.py``), without Ray."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aioray_runner._supervisor.census import (
    CANCELLED,
    FAILED,
    FINISHED,
    HANDED_BACK,
    IN_THREAD_POOL,
    MAX_FUNCTIONS,
    RUNNING,
    WAITING_FOR_DEPENDENCIES,
    WAITING_TO_START,
    Census,
    function_of,
)


@dataclass
class Holding:
    waiting: int


def test_phases_sum_what_the_parts_hold_and_what_runs() -> None:
    deps, permits, gate = Holding(3), Holding(2), Holding(5)
    census = Census({WAITING_FOR_DEPENDENCIES: [deps], WAITING_TO_START: [permits, gate]})
    census.running(1, "fetch#1")
    census.running(2, "fetch#2")
    assert census.phases() == {
        RUNNING: 2,
        WAITING_FOR_DEPENDENCIES: 3,
        WAITING_TO_START: 7,
        IN_THREAD_POOL: 0,
    }
    gate.waiting = 0  # read live, not copied
    assert census.phases()[WAITING_TO_START] == 2


def test_threads_are_counted_while_awaited_and_after_an_error() -> None:
    census = Census()

    async def main() -> None:
        seen = []

        async def work() -> None:
            seen.append(census.phases()[IN_THREAD_POOL])
            raise ValueError("boom")

        try:
            await census.in_thread_pool(work())
        except ValueError:
            pass
        assert seen == [1] and census.phases()[IN_THREAD_POOL] == 0

    asyncio.run(main())


def test_ended_counts_exactly_by_function_and_outcome() -> None:
    census = Census()
    for call_id in range(1, 6):
        census.running(call_id, f"fetch#{call_id}")
    census.ended(1, "fetch#1", FINISHED)
    census.ended(2, "fetch#2", FINISHED)
    census.ended(3, "fetch#3", FAILED)
    census.ended(4, "fetch#4", HANDED_BACK)  # ends elsewhere: not counted here
    census.ended(9, "parse#9", CANCELLED)  # never ran: counted, no run time
    snapshot = census.snapshot()
    assert (snapshot["finished"], snapshot["failed"], snapshot["cancelled"]) == (2, 1, 1)
    assert snapshot["running"] == 1 and snapshot["oldest_running"][0]["label"] == "fetch#5"
    ended, durations = census.take_ended()
    assert ended == {("fetch", FINISHED): 2, ("fetch", FAILED): 1, ("parse", CANCELLED): 1}
    assert sorted(f for f, _ in durations) == ["fetch", "fetch", "fetch"]
    assert census.take_ended() == ({}, [])  # taken once


def test_function_names_are_bounded() -> None:
    census = Census()
    for i in range(MAX_FUNCTIONS + 10):
        census.ended(i, f"f{i}#{i}", FINISHED)
    ended, _ = census.take_ended()
    assert len(ended) == MAX_FUNCTIONS + 1
    assert ended["other", FINISHED] == 10


def test_function_of_a_label() -> None:
    assert function_of("fetch#12") == "fetch"
    assert function_of("my#task#3") == "my#task"
