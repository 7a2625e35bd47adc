"""The outbox (``aioray_runner/_caller/outbox.py``), with a real I/O thread and no Ray.

The rules (docs/design.md, "Calls are batched per event-loop turn"): calls
submitted in one turn of the caller's loop leave together, in one handoff, at
the end of that turn; a sync caller's call leaves at once; ``send_now`` does not
wait for the turn to end (a caller about to block); once the I/O thread has
stopped, nothing is lost silently: the outbox says so.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from aioray_runner._caller.iothread import IOThread
from aioray_runner._caller.outbox import Outbox, Parcel


class Sent:
    """What the outbox handed to the I/O thread, handoff by handoff."""

    def __init__(self) -> None:
        self.handoffs: list[list[Any]] = []
        self.arrived = threading.Event()

    def __call__(self, parcels: list[Parcel]) -> None:
        self.handoffs.append([parcel[0] for parcel in parcels])
        self.arrived.set()

    def wait(self) -> None:
        assert self.arrived.wait(5), "nothing was handed to the I/O thread within 5 s"
        self.arrived.clear()


def parcel(name: str) -> Parcel:
    return (name, b"", b"", b"", [], [])  # type: ignore[return-value]  # only [0] is read here


@pytest.fixture
def io() -> Iterator[IOThread]:
    thread = IOThread("test-outbox-io")
    thread.start()
    yield thread
    thread.stop(lambda: None)


def test_a_loop_turns_calls_leave_together_at_its_end(io: IOThread) -> None:
    sent = Sent()
    outbox = Outbox(io, sent, lambda: None)

    async def caller() -> None:
        for i in range(1000):
            outbox.put(parcel(f"call {i}"))
        await asyncio.sleep(0)  # the turn ends here
        await asyncio.to_thread(sent.wait)
        outbox.put(parcel("next turn"))
        await asyncio.sleep(0)
        await asyncio.to_thread(sent.wait)

    asyncio.run(asyncio.wait_for(caller(), 10))
    assert [len(h) for h in sent.handoffs] == [1000, 1]
    assert sent.handoffs[0][0] == "call 0" and sent.handoffs[0][-1] == "call 999"
    assert sent.handoffs[1] == ["next turn"]


def test_a_sync_callers_call_leaves_at_once(io: IOThread) -> None:
    sent = Sent()
    outbox = Outbox(io, sent, lambda: None)
    outbox.put(parcel("sync"))  # no event loop in this thread
    sent.wait()
    assert sent.handoffs == [["sync"]]


def test_send_now_does_not_wait_for_the_end_of_the_turn(io: IOThread) -> None:
    sent = Sent()
    outbox = Outbox(io, sent, lambda: None)

    async def caller() -> None:
        outbox.put(parcel("about to block"))
        outbox.send_now()
        # The turn has not ended, and the thread blocks: the call left anyway.
        sent.wait()

    asyncio.run(asyncio.wait_for(caller(), 10))
    assert sent.handoffs[0] == ["about to block"]


def test_a_stopped_io_thread_is_reported_and_nothing_is_sent(io: IOThread) -> None:
    sent = Sent()
    closed: list[list[Any]] = []
    outbox = Outbox(io, sent, lambda: closed.append([p[0] for p in outbox.take_all()]))
    io.stop(lambda: None)
    outbox.put(parcel("too late"))
    assert closed == [["too late"]]
    assert sent.handoffs == []
    assert outbox.take_all() == []
