"""Errors: remote exceptions, exceptions that cannot travel, pickling failures."""

from __future__ import annotations

import asyncio
import threading

import pytest

from aioray_runner import RemoteError, Runtime, SerializationError

pytestmark = pytest.mark.anyio


class AppError(Exception):
    pass


class NeedsTwoArgs(Exception):
    """Cannot be rebuilt from its ``args`` (one message, two constructor args)."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"code {code}: {detail}")
        self.code = code


class HoldsALock(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


async def raise_app_error(message: str) -> None:
    await asyncio.sleep(0)
    raise AppError(message)


def sync_raise_key_error() -> None:
    raise KeyError("sync-side")


class Unprintable(HoldsALock):
    """Cannot be pickled, and its message cannot be read either."""

    def __str__(self) -> str:
        raise ValueError("no text")


async def raise_unprintable() -> None:
    raise Unprintable("hidden")


async def raise_needs_two_args() -> None:
    raise NeedsTwoArgs(7, "not rebuildable")


async def raise_holds_a_lock() -> None:
    raise HoldsALock("cannot be pickled")


async def return_a_lock() -> threading.Lock:
    return threading.Lock()


async def echo(x: object, delay: float = 0.0) -> object:
    await asyncio.sleep(delay)
    return x


async def test_remote_exception_keeps_its_type_and_remote_traceback(runtime: Runtime) -> None:
    fut = runtime.submit(raise_app_error, "it broke")
    with pytest.raises(AppError, match="it broke") as info:
        await fut
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert f"Remote traceback of {fut.label}" in notes
    assert "raise_app_error" in notes and "Traceback" in notes
    assert isinstance(fut.exception(), AppError)


async def test_sync_function_exception_keeps_its_type(runtime: Runtime) -> None:
    with pytest.raises(KeyError, match="sync-side") as info:
        await runtime.submit(sync_raise_key_error)
    assert "sync_raise_key_error" in "\n".join(info.value.__notes__)


async def test_exception_that_cannot_be_rebuilt_becomes_remote_error(runtime: Runtime) -> None:
    with pytest.raises(RemoteError) as info:
        await runtime.submit(raise_needs_two_args)
    error = info.value
    assert error.type_name == "NeedsTwoArgs"
    assert "code 7: not rebuildable" in error.message
    assert "raise_needs_two_args" in error.traceback_text
    assert str(error) == "NeedsTwoArgs: code 7: not rebuildable"


async def test_unpicklable_exception_becomes_remote_error(runtime: Runtime) -> None:
    with pytest.raises(RemoteError) as info:
        await runtime.submit(raise_holds_a_lock)
    assert info.value.type_name == "HoldsALock"
    assert "cannot be pickled" in info.value.message


async def test_exception_that_cannot_even_be_printed_still_ends_its_call(
    runtime: Runtime,
) -> None:
    fut = runtime.submit(raise_unprintable)
    with pytest.raises(RemoteError) as info:
        await asyncio.wait_for(fut, 30)
    assert info.value.type_name == "Unprintable"
    assert "ValueError" in info.value.message  # what happened to its text
    assert await runtime.submit(echo, "next") == "next"  # the supervisor goes on


async def test_unpicklable_argument_fails_at_submit_naming_it(runtime: Runtime) -> None:
    in_flight = runtime.submit(echo, "still fine", 0.3)
    with pytest.raises(SerializationError) as info:
        runtime.submit(echo, 1, lock=threading.Lock())
    assert "'lock'" in str(info.value)
    assert isinstance(info.value, TypeError)
    with pytest.raises(SerializationError, match="positional argument 1"):
        runtime.submit(echo, "ok", threading.Lock())
    after = runtime.submit(echo, "after")
    assert await in_flight == "still fine"
    assert await after == "after"


async def test_unpicklable_function_fails_at_submit(runtime: Runtime) -> None:
    lock = threading.Lock()
    with pytest.raises(SerializationError, match="lambda"):
        runtime.submit(lambda: lock)


async def test_unpicklable_result_fails_only_that_call(runtime: Runtime) -> None:
    before = runtime.submit(echo, "before")
    bad = runtime.submit(return_a_lock)
    after = runtime.submit(echo, "after")
    with pytest.raises(SerializationError) as info:
        await bad
    assert bad.label in str(info.value)
    assert await before == "before"
    assert await after == "after"
