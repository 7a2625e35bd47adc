"""The runtime's I/O thread: one asyncio loop in a daemon thread, and ObjectRef waits on it.

Everything that talks to supervisors (sending batches, polling, releases, the
Ray probe) runs here, so the caller's own loop (asyncio or trio) or thread is
never blocked by Ray, and the pool's bookkeeping has a single writer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class IOThread:
    """An asyncio loop running in its own daemon thread, with the tasks it spawned."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self) -> None:
        """Start the thread (and its loop)."""
        self._thread.start()

    def is_current(self) -> bool:
        """Whether the calling thread is this I/O thread."""
        return threading.current_thread() is self._thread

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the I/O loop (from any thread).

        Raises:
            RuntimeError: the loop is closed.
        """
        self.loop.call_soon_threadsafe(fn, *args)

    def call_later(self, delay: float, fn: Callable[[], Any]) -> None:
        """Run ``fn()`` on the I/O loop after ``delay`` seconds (I/O thread only)."""
        self.loop.call_later(delay, fn)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a coroutine as a task of the I/O loop (I/O thread only); kept until done."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stop(self, last: Callable[[], None], timeout: float = 5.0) -> None:
        """Cancel every spawned task, run ``last()`` on the loop, then stop the thread.

        Waits at most ``timeout`` seconds for each step: a loop stuck in a
        callback must not hang the caller's close.
        """
        if self._thread.is_alive():
            done = threading.Event()

            def cancel_then_last() -> None:
                for task in self._tasks:
                    task.cancel()
                try:
                    last()
                finally:
                    done.set()

            self.loop.call_soon_threadsafe(cancel_then_last)
            done.wait(timeout)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()


async def wait_ref(ref: Any) -> Any:
    """Await an ObjectRef on the I/O loop.

    Cancelling this wait (at close) leaves Ray's own future alone: the Ray
    client of Ray 2.10 and 2.40 sets a result on it without checking whether it
    was cancelled, and the error kills the client's data thread. A wait that was
    cancelled takes no outcome, so a late error (the supervisor killed at close)
    is not reported as "never retrieved" either.
    """
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[Any] = loop.create_future()

    def settle(done: concurrent.futures.Future[Any]) -> None:
        if not waiter.done():
            if done.cancelled():
                waiter.cancel()
            elif (exc := done.exception()) is not None:
                waiter.set_exception(exc)
            else:
                waiter.set_result(done.result())

    def on_done(done: concurrent.futures.Future[Any]) -> None:
        try:
            loop.call_soon_threadsafe(settle, done)
        except RuntimeError:
            pass  # the loop has closed: nobody waits any more

    ref.future().add_done_callback(on_done)
    return await waiter
