"""The function table: the functions sent to a supervisor, unpickled once each."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import cloudpickle

from .._common import wire
from ..errors import SerializationError


class FunctionTable:
    """Functions by digest: each arrives once (pickled), is unpickled once, and is
    adapted to the backend once (``adapt``: the host's, see ``_backends``)."""

    def __init__(self, index: int, adapt: Callable[[Any], Any]) -> None:
        self._index = index
        self._adapt = adapt
        self._functions: dict[bytes, Callable[..., Any] | BaseException] = {}
        self._arrived: dict[bytes, asyncio.Event] = {}
        # Per function: the coroutine function to await (adapted to the
        # backend), or None for a plain function (it runs in the thread pool).
        self._awaitable: dict[bytes, Callable[..., Any] | None] = {}

    def __len__(self) -> int:
        return len(self._functions)

    def add(self, digest: bytes, blob: bytes) -> None:
        """A function arrived; one that cannot be unpickled is kept as its error."""
        if digest in self._functions:
            return
        try:
            fn: Callable[..., Any] | BaseException = cloudpickle.loads(blob)
        except Exception as exc:
            fn = SerializationError(
                f"a function could not be unpickled on supervisor {self._index}:"
                f" {wire.describe_error(exc)}. Install the module that defines it on"
                " every Ray node, or ship it with runtime_env={'py_modules': [...]}"
            )
        self._functions[digest] = fn
        event = self._arrived.pop(digest, None)
        if event is not None:
            event.set()

    async def get(self, digest: bytes) -> Callable[..., Any]:
        """The function, once it arrived (an earlier batch may not be processed yet)."""
        fn = self._functions.get(digest)
        if fn is None:
            event = self._arrived.setdefault(digest, asyncio.Event())
            await event.wait()
            fn = self._functions[digest]
        if isinstance(fn, BaseException):
            raise fn
        return fn

    def awaitable(self, digest: bytes, fn: Callable[..., Any]) -> Callable[..., Any] | None:
        """The coroutine function to await for ``fn``, or None for a plain function."""
        try:
            return self._awaitable[digest]
        except KeyError:
            run = self._adapt(fn) if wire.is_coroutine_function(fn) else None
            self._awaitable[digest] = run
            return run
