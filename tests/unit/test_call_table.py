"""A supervisor's call table and outcome packing (``_supervisor/calls.py``), without Ray.

The rules: a dependent may ask for a call's outcome before the call arrives, and
gets it once it does; a cancel that arrives before its call ends that call as it
arrives; a released outcome is forgotten once the call has finished, never
before (a dependent may still need it); an outcome that cannot be pickled is
still reported, as an error that says so.
"""

from __future__ import annotations

import asyncio
import pickle
import threading

from aioray_runner._common import wire
from aioray_runner._supervisor.calls import CallTable, Resend, pack_outcome
from aioray_runner.errors import RemoteError, SerializationError


def test_a_dependent_may_ask_before_the_call_arrives() -> None:
    async def scenario() -> None:
        table = CallTable()
        asked = asyncio.ensure_future(table.arrived(7))
        await asyncio.sleep(0)
        assert not asked.done()
        record, cancelled = table.arrive(7, "fetch#7")
        assert not cancelled
        assert await asyncio.wait_for(asked, 1) is record
        assert await table.arrived(7) is record  # and at once, once it is here

    asyncio.run(scenario())


def test_a_cancel_that_came_first_ends_the_call_as_it_arrives() -> None:
    table = CallTable()
    table.cancel_early(3)
    _, cancelled = table.arrive(3, "slow#3")
    assert cancelled
    _, cancelled_again = table.arrive(4, "other#4")
    assert not cancelled_again


def test_a_released_outcome_is_kept_until_the_call_has_finished() -> None:
    table = CallTable()
    running, _ = table.arrive(1, "running#1")
    finished, _ = table.arrive(2, "finished#2")
    finished.outcome = (wire.OK, b"")
    table.release([1, 2, 99])  # 99: never here (released twice, or long gone)
    assert table.get(2) is None
    assert table.get(1) is running and running.released
    assert len(table) == 1
    table.forget(1)
    assert len(table) == 0 and list(table.records()) == []


def test_outcomes_are_packed_for_the_caller() -> None:
    kind, payload = pack_outcome(wire.ERROR, ValueError("bad"), "f#1")
    assert kind == wire.ERROR and payload is not None
    kind, payload = pack_outcome(wire.RESEND, Resend(2, "abc"), "f#2")
    assert kind == wire.RESEND and pickle.loads(payload or b"") == wire.ResendReason(2, "abc")
    assert pack_outcome(wire.CANCELLED, None, "f#3") == (wire.CANCELLED, None)


def test_an_outcome_that_cannot_be_pickled_is_reported_as_an_error() -> None:
    kind, payload = pack_outcome(wire.OK, threading.Lock(), "makes_a_lock#4")
    assert kind == wire.ERROR and payload is not None
    error = wire.loads_exception(payload, "makes_a_lock#4")
    assert isinstance(error, SerializationError)
    assert "makes_a_lock#4" in str(error)


def test_an_outcome_that_cannot_be_packed_at_all_is_still_reported() -> None:
    # Not a Resend, though handed back as one: packing fails, the call is still reported.
    kind, payload = pack_outcome(wire.RESEND, object(), "broken#5")
    assert kind == wire.ERROR and payload is not None
    error = wire.loads_exception(payload, "broken#5")
    assert isinstance(error, RemoteError)
    assert "the outcome of broken#5 could not be sent back: AttributeError" in str(error)
