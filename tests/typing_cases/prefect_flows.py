"""Prefect flows as README.md and docs/getting-started.md write them (type-checked only)."""

from __future__ import annotations

import asyncio

from prefect import flow, task
from prefect.futures import wait

from aioray_runner import AioRayTaskRunner, aresult, aresults, remote_options


@task
async def fetch(i: int) -> int:
    await asyncio.sleep(0.1)
    return i


@task
def parse(raw: int) -> str:
    return str(raw)


@task(retries=2)
def crunch(n: int) -> int:
    return sum(range(n))


@flow(task_runner=AioRayTaskRunner())  # address=, init_kwargs= as in RayTaskRunner
async def pipeline(n: int) -> int:
    first = await aresult(fetch.submit(0))  # the submitted task's result
    futures = fetch.map(range(n))  # thousands in flight on a few supervisors
    return first + sum(await aresults(futures))


@flow(task_runner=AioRayTaskRunner(supervisors=2, max_concurrency=1_000, sync_tasks="ray"))
async def mixed(n: int) -> str:
    text: str = await aresult(parse.submit(n), timeout=30)
    with remote_options(num_cpus=1):
        heavy = [crunch.submit(i) for i in range(4)]
    totals: list[int] = await aresults(heavy)
    return text + str(sum(totals))


@flow(task_runner=AioRayTaskRunner(address="auto", init_kwargs={"namespace": "mine"}))
def sync_pipeline(n: int) -> list[str]:
    futures = parse.map(range(n))
    wait(futures)
    first: str = parse.submit(1).result()
    return [first, *futures.result()]


@flow  # Prefect's ThreadPoolTaskRunner
async def portable(n: int) -> int:
    # The same spelling under Prefect's own runner: aresult waits in a worker thread.
    one: int = await aresult(fetch.submit(n))
    many: list[int] = await aresults(fetch.map(range(n)))
    return one + sum(many)


if __name__ == "__main__":
    print(asyncio.run(pipeline(1_000)))
    print(sync_pipeline(3))
