"""The Crashed state of a run lost with its supervisor, made where no event loop runs.

A sync flow's thread has no event loop, and Prefect's ``exception_to_crashed_state``
asks anyio for the running loop's cancellation class: a lost run once failed the
whole flow there (``NoEventLoopError``), found by the chaos benchmark.
"""

from __future__ import annotations

import asyncio
import threading

from aioray_runner import SupervisorDiedError
from aioray_runner._prefect.recovery import crashed_state


def test_a_crashed_state_is_made_in_a_thread_without_an_event_loop() -> None:
    made: list[object] = []
    thread = threading.Thread(target=lambda: made.append(crashed_state(SupervisorDiedError("x"))))
    thread.start()
    thread.join(30)
    (state,) = made
    assert state.is_crashed()  # type: ignore[attr-defined]
    assert "SupervisorDiedError: x" in state.message  # type: ignore[attr-defined]


def test_a_crashed_state_is_made_inside_a_running_loop() -> None:
    async def inside() -> object:
        return crashed_state(SupervisorDiedError("y"))

    state = asyncio.run(inside())
    assert state.is_crashed()  # type: ignore[attr-defined]
