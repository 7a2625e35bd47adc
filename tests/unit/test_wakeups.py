"""Waking caller loops from the I/O thread: once per delivered batch, not once per result.

Real asyncio loops and threads, no Ray: a loop class that counts its thread-safe
wake-ups shows how many the bridge makes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from aioray_runner._caller.wakeups import loop_scheduler, one_wakeup_per_loop


class CountingLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__()
        self.threadsafe_calls = 0

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        self.threadsafe_calls += 1
        return super().call_soon_threadsafe(callback, *args, **kw)


def run_counting(main: Callable[[], Any]) -> tuple[Any, int]:
    with asyncio.Runner(loop_factory=CountingLoop) as runner:
        result = runner.run(main())
        loop = runner.get_loop()
        assert isinstance(loop, CountingLoop)
        return result, loop.threadsafe_calls


def test_a_batch_wakes_the_loop_once_and_every_waiter_runs() -> None:
    async def main() -> list[int]:
        schedule = loop_scheduler()
        assert schedule is not None
        events = [asyncio.Event() for _ in range(100)]
        order: list[int] = []

        def deliver() -> None:  # as the I/O thread does with one poll's outcomes
            with one_wakeup_per_loop():
                for i, event in enumerate(events):
                    schedule(lambda i=i, event=event: (order.append(i), event.set()))

        thread = threading.Thread(target=deliver)
        thread.start()
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 10)
        thread.join()
        return order

    order, wakeups = run_counting(main)
    assert order == list(range(100))  # all ran, in the order they were scheduled
    assert wakeups == 1


def test_outside_a_batch_each_schedule_wakes_at_once() -> None:
    async def main() -> None:
        schedule = loop_scheduler()
        assert schedule is not None
        done = asyncio.Event()
        thread = threading.Thread(target=lambda: [schedule(done.set) for _ in range(3)])
        thread.start()
        await asyncio.wait_for(done.wait(), 10)
        thread.join()

    _, wakeups = run_counting(main)
    assert wakeups == 3


def test_a_failing_callback_does_not_stop_the_others() -> None:
    async def main() -> bool:
        schedule = loop_scheduler()
        assert schedule is not None
        done = asyncio.Event()

        def boom() -> None:
            raise RuntimeError("broken callback")

        def deliver() -> None:
            with one_wakeup_per_loop():
                schedule(boom)
                schedule(done.set)

        threading.Thread(target=deliver).start()
        await asyncio.wait_for(done.wait(), 10)
        return done.is_set()

    assert run_counting(main)[0] is True
