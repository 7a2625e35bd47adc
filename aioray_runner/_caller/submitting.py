"""``Submitting``: the typed ``submit``, ``map`` and ``stream`` of a runtime and of its views.

:class:`Runtime` and :class:`RuntimeOptions` submit the same way and differ only
in where a call goes, so the overloads that type-check user code are written
once, here, and each subclass says where a call goes (``_target``).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeAlias, TypeVar, overload

from .futures import AioRayFuture
from .placement import GroupKey
from .pool import Pool
from .streams import (
    DEFAULT_LIMITS,
    DEFAULT_MAX_BUFFERED,
    DEFAULT_MAX_BUFFERED_BYTES,
    Inbox,
    Stream,
    StreamLimits,
    check_limits,
)

if TYPE_CHECKING:
    from ray import ObjectRef

P = ParamSpec("P")
T = TypeVar("T")
A1 = TypeVar("A1")
A2 = TypeVar("A2")
A3 = TypeVar("A3")
A4 = TypeVar("A4")

# What may stand for an argument of type A in submit and map: the value, or a
# future or ObjectRef of one, which the supervisor awaits before the call. The
# overloads give each of the first four positional arguments this type, so that
# the type checkers accept `rt.submit(add, x_future, ray.put(2))` and still
# reject a str where an int is expected; later and keyword arguments take the
# function's own types (a future there needs a cast).
A = TypeVar("A")
_Arg: TypeAlias = "A | AioRayFuture[A] | ObjectRef[A]"


class Streaming:
    """``stream`` and ``stream_call``: the base of :class:`Submitting`, which says
    where calls go (``_target``)."""

    def _target(self) -> tuple[Pool, GroupKey]:
        """Where calls go: the pool, and the group of supervisors."""
        raise NotImplementedError

    def _stream_one(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        limits: StreamLimits = DEFAULT_LIMITS,
        label: str | None = None,
    ) -> Stream[Any]:
        pool, group = self._target()
        inbox = Inbox()
        future = pool.submit(fn, args, kwargs, group=group, label=label, stream=(limits, inbox))
        # The consumer's progress goes to the supervisor from the I/O thread.
        report = functools.partial(pool.io.call_soon, pool.sender.taken)
        return Stream(future, inbox, pool.inboxes, limits, report)

    @overload
    def stream(
        self, fn: Callable[P, AsyncIterator[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Stream[T]: ...

    @overload
    def stream(
        self, fn: Callable[P, Iterator[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Stream[T]: ...

    @overload
    def stream(
        self,
        fn: Callable[Concatenate[A1, P], AsyncIterator[T]],
        a1: _Arg[A1],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Stream[T]: ...

    @overload
    def stream(
        self,
        fn: Callable[Concatenate[A1, P], Iterator[T]],
        a1: _Arg[A1],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Stream[T]: ...

    def stream(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Stream[Any]:
        """Run the generator function ``fn(*args, **kwargs)`` on a supervisor and
        receive its values as it yields them (docs/guide.md, "Streams").

        ``fn`` is an async generator function (run on the supervisor's loop, or
        its trio thread with ``backend="trio"``) or a plain generator function
        (run in the supervisor's thread pool). Arguments are handled as in
        :meth:`submit`: futures and Ray ``ObjectRef`` objects among them are resolved on
        the supervisor first. Iterate the returned :class:`Stream` with
        ``async for`` (asyncio or trio) or ``for`` (sync code); close it early
        with ``async with``/``with`` or ``aclose()``. The generator runs at most
        10,000 values (or 16 MiB) ahead of the consumer; :meth:`stream_call` sets
        other limits. A stream is never run again after a supervisor death:
        it ends with :class:`SupervisorDiedError` after the values already taken.

        Raises:
            InvalidCallError: ``fn`` is not a generator function (a coroutine
                function, a generator object, not callable); nothing is sent.
            SerializationError: ``fn`` or an argument cannot be pickled.
            RuntimeNotRunningError: the runtime is not running.
        """
        return self._stream_one(fn, args, kwargs)

    def stream_call(
        self,
        fn: Callable[..., Any],
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
        label: str | None = None,
    ) -> Stream[Any]:
        """:meth:`stream` with its limits and label set.

        ``max_buffered``: how many values the generator may make that the
        consumer has not taken yet (on the supervisor, on the way and here
        together) before it waits; ``max_buffered_bytes``: the same bound in
        pickled bytes (the value that crosses it is still sent). Both at least 1.
        ``label``: the name in the stream's label and errors. On other
        supervisors: ``rt.options(num_cpus=1).stream_call(...)``.

        Raises what :meth:`stream` raises, and TypeError or ValueError for a
        limit that is not a whole number of 1 or more.
        """
        limits = check_limits(max_buffered, max_buffered_bytes)
        return self._stream_one(fn, tuple(args), kwargs or {}, limits, label)


class Submitting(Streaming):
    """``submit``, ``map`` and ``stream``, typed for the functions they are given.

    The base of :class:`Runtime` and :class:`RuntimeOptions`.
    """

    def _submit_one(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AioRayFuture[Any]:
        pool, group = self._target()
        return pool.submit(fn, args, kwargs, group=group)

    @overload
    def submit(
        self,
        fn: Callable[P, Awaitable[T]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> AioRayFuture[T]: ...

    @overload
    def submit(
        self,
        fn: Callable[P, T],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> AioRayFuture[T]: ...

    @overload
    def submit(
        self,
        fn: Callable[Concatenate[A1, P], Awaitable[T]],
        a1: _Arg[A1],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> AioRayFuture[T]: ...

    @overload
    def submit(
        self,
        fn: Callable[Concatenate[A1, P], T],
        a1: _Arg[A1],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> AioRayFuture[T]: ...

    @overload
    def submit(
        self,
        fn: Callable[Concatenate[A1, A2, P], Awaitable[T]],
        a1: _Arg[A1],
        a2: _Arg[A2],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> AioRayFuture[T]: ...

    @overload
    def submit(
        self,
        fn: Callable[Concatenate[A1, A2, P], T],
        a1: _Arg[A1],
        a2: _Arg[A2],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> AioRayFuture[T]: ...

    @overload
    def submit(
        self,
        fn: Callable[Concatenate[A1, A2, A3, P], Awaitable[T]],
        a1: _Arg[A1],
        a2: _Arg[A2],
        a3: _Arg[A3],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> AioRayFuture[T]: ...

    @overload
    def submit(
        self,
        fn: Callable[Concatenate[A1, A2, A3, P], T],
        a1: _Arg[A1],
        a2: _Arg[A2],
        a3: _Arg[A3],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> AioRayFuture[T]: ...

    @overload
    def submit(
        self,
        fn: Callable[Concatenate[A1, A2, A3, A4, P], Awaitable[T]],
        a1: _Arg[A1],
        a2: _Arg[A2],
        a3: _Arg[A3],
        a4: _Arg[A4],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> AioRayFuture[T]: ...

    @overload
    def submit(
        self,
        fn: Callable[Concatenate[A1, A2, A3, A4, P], T],
        a1: _Arg[A1],
        a2: _Arg[A2],
        a3: _Arg[A3],
        a4: _Arg[A4],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> AioRayFuture[T]: ...

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> AioRayFuture[Any]:
        """Run ``fn(*args, **kwargs)`` on the least loaded supervisor.

        ``fn`` is a coroutine function (run on the supervisor's loop) or a plain
        function (run in the supervisor's thread pool). Futures of this runtime
        and Ray ``ObjectRef``\\ s anywhere in the arguments are awaited inside the
        supervisor before the call starts, and replaced by their values.

        Returns at once, from sync or async code; the call is sent at the end of
        the current event-loop turn together with the other calls made in it.

        For type checkers each of the first four positional arguments takes the
        parameter's type ``T``, an ``AioRayFuture[T]`` or an ``ObjectRef[T]``;
        other arguments take the parameter's own type (docs/guide.md, "Type
        checking").

        Raises:
            InvalidCallError: ``fn`` is not something a supervisor can run (not
                callable, a coroutine object, a generator); nothing is sent.
            SerializationError: ``fn`` or an argument cannot be pickled (the
                message names which); nothing is sent.
            RuntimeNotRunningError: the runtime is not running.
        """
        return self._submit_one(fn, args, kwargs)

    @overload
    def map(
        self,
        fn: Callable[[A1], Awaitable[T]],
        items1: Iterable[_Arg[A1]],
        /,
    ) -> list[AioRayFuture[T]]: ...

    @overload
    def map(
        self,
        fn: Callable[[A1], T],
        items1: Iterable[_Arg[A1]],
        /,
    ) -> list[AioRayFuture[T]]: ...

    @overload
    def map(
        self,
        fn: Callable[[A1, A2], Awaitable[T]],
        items1: Iterable[_Arg[A1]],
        items2: Iterable[_Arg[A2]],
        /,
    ) -> list[AioRayFuture[T]]: ...

    @overload
    def map(
        self,
        fn: Callable[[A1, A2], T],
        items1: Iterable[_Arg[A1]],
        items2: Iterable[_Arg[A2]],
        /,
    ) -> list[AioRayFuture[T]]: ...

    @overload
    def map(
        self,
        fn: Callable[[A1, A2, A3], Awaitable[T]],
        items1: Iterable[_Arg[A1]],
        items2: Iterable[_Arg[A2]],
        items3: Iterable[_Arg[A3]],
        /,
    ) -> list[AioRayFuture[T]]: ...

    @overload
    def map(
        self,
        fn: Callable[[A1, A2, A3], T],
        items1: Iterable[_Arg[A1]],
        items2: Iterable[_Arg[A2]],
        items3: Iterable[_Arg[A3]],
        /,
    ) -> list[AioRayFuture[T]]: ...

    @overload
    def map(
        self,
        fn: Callable[..., Awaitable[T]],
        items1: Iterable[Any],
        items2: Iterable[Any],
        items3: Iterable[Any],
        items4: Iterable[Any],
        /,
        *more: Iterable[Any],
    ) -> list[AioRayFuture[T]]: ...

    @overload
    def map(
        self,
        fn: Callable[..., T],
        items1: Iterable[Any],
        items2: Iterable[Any],
        items3: Iterable[Any],
        items4: Iterable[Any],
        /,
        *more: Iterable[Any],
    ) -> list[AioRayFuture[T]]: ...

    def map(self, fn: Callable[..., Any], /, *iterables: Iterable[Any]) -> list[AioRayFuture[Any]]:
        """Submit ``fn`` once per item (``zip`` of the iterables); return the futures in order.

        Items may be futures or ``ObjectRef``\\ s, as arguments of :meth:`submit`.
        """
        return [self._submit_one(fn, args, {}) for args in zip(*iterables)]
