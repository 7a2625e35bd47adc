"""Mistakes the type checkers must still report: each line marked ``# error`` is one.

tests/test_typing.py asserts that mypy and pyright report an error on each of
these lines, and on no other line.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import ray
from prefect import flow, task

from aioray_runner import AioRayTaskRunner, Runtime, aresult, aresults


async def fetch(i: int) -> int:
    return i


def checksum(data: bytes) -> str:
    return data.hex()


@task
async def fetch_task(i: int) -> int:
    return i


async def wrong_arguments(rt: Runtime) -> None:
    # Typed as a ref of str: Ray 2.10 types ray.put as returning a bare ObjectRef (of Any).
    text_ref: ray.ObjectRef[str] = ray.put("1")
    rt.submit(fetch, "1")  # error
    rt.submit(fetch, text_ref)  # error
    rt.submit(fetch, rt.submit(checksum, b"x"))  # error
    rt.submit(checksum, b"x", b"y")  # error
    rt.map(checksum, [1, 2])  # error
    rt.options(num_cpus=1).submit(fetch, "1")  # error
    rt.stream(counting, "3")  # error


async def counting(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


async def wrong_stream_values(rt: Runtime) -> None:
    async for value in rt.stream(counting, 3):
        value.upper()  # error


@flow(task_runner=AioRayTaskRunner())
async def wrong_results() -> None:
    text: str = await aresult(fetch_task.submit(1))  # error
    texts: list[str] = await aresults(fetch_task.map(range(3)))  # error
    print(text, texts)
