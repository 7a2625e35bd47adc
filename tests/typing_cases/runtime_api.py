"""The runtime as README.md and docs/guide.md write it (type-checked only)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator

import anyio
import ray
import trio

from aioray_runner import AioRayFuture, Runtime, Stream, current_attempt


async def fetch(i: int) -> int:
    await anyio.sleep(0.1)
    return i * 2


async def add(a: int, b: int) -> int:
    return a + b


def checksum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def total_of(values: list[int], *, scale: int = 1) -> int:
    return sum(values) * scale


async def main() -> None:
    async with Runtime() as rt:
        futures = [rt.submit(fetch, i) for i in range(10_000)]
        total = sum([await f for f in futures])  # awaiting never blocks the caller's loop
        # A future as an argument is resolved inside the actor: fetch(fetch(21)).
        doubled = await rt.submit(fetch, futures[21])
        print(total + doubled)


async def example(rt: Runtime) -> int:
    x = rt.submit(fetch, 1)
    y = rt.submit(fetch, 2)
    z = rt.submit(add, x, y)  # resolved inside the supervisor
    big = rt.submit(total_of, ray.put([1, 2, 3]), scale=2)  # an ObjectRef stands for its value
    # Ray 2.10 types ray.put as returning an ObjectRef of Any, and an argument of
    # Any leaves the checkers unsure of the result's type: say it.
    mixed: AioRayFuture[int] = rt.submit(add, 1, ray.put(2))
    big_total: int = await big
    return await z + big_total + await mixed


async def checksums(rt: Runtime) -> list[str]:
    by_ref = rt.map(checksum, [ray.put(b"c")])
    return [await f for f in rt.map(checksum, [b"a", b"b"])] + [await f for f in by_ref]


async def sums(rt: Runtime) -> list[int]:
    firsts = [rt.submit(fetch, i) for i in range(3)]
    return [await f for f in rt.map(add, firsts, range(3))]


async def first_done(rt: Runtime) -> None:
    futures = [rt.submit(fetch, i) for i in range(100)]
    async for fut in rt.as_completed(futures):
        value: int = await fut
        print(fut.label, value)


async def placed(rt: Runtime) -> int:
    on_gpu = rt.options(num_gpus=1).submit(fetch, rt.submit(fetch, 1))
    return await on_gpu


async def step(x: int) -> int:
    if current_attempt().number > 1:
        return x
    return x + 1


def integrate(rt: Runtime) -> None:
    future = rt.submit_call(step, (1,), label="my-step", reruns=1)
    rt.broadcast(print, "hello", every_group=True)
    rt.drain(cancel=False)
    unsent: AioRayFuture[int] = AioRayFuture.failed(ValueError("could not be sent"), "my-step")
    print(future.result(), unsent.exception())


def sync_caller() -> int:
    with Runtime() as rt:
        digest: str = rt.submit(checksum, b"x").result()
        return len(digest) + rt.submit(fetch, 1).result(timeout=10)


async def pages(base: str, size: int = 10) -> AsyncIterator[list[int]]:
    for page in range(3):
        yield [page * size + i for i in range(size)]


def rows(n: int) -> Iterator[str]:
    for i in range(n):
        yield f"row {i}"


async def streams(rt: Runtime) -> int:
    total = 0
    stream: Stream[list[int]] = rt.stream(pages, "http://127.0.0.1:8000", size=5)
    async with stream:
        async for items in stream:
            total += sum(items)
    async for row in rt.stream(rows, rt.submit(fetch, 3)):  # a future as an argument
        total += len(row)
    limited = rt.stream_call(pages, ("http://127.0.0.1:8000",), max_buffered=8)
    await limited.aclose()
    return total


def sync_streams() -> list[str]:
    with Runtime() as rt, rt.stream(rows, 3) as values:
        return list(values)


async def crawl(url: str) -> int:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep, 0.1)
    return len(url)


async def main_trio() -> None:
    async with Runtime(backend="trio") as rt:
        length: int = await rt.submit(crawl, "https://example.org")
        print(length)


if __name__ == "__main__":
    anyio.run(main)
    trio.run(main_trio)
