"""Futures and ObjectRefs in arguments are resolved inside the supervisor."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import ray

from aioray_runner import CancelledError, Runtime, UpstreamError
from tests._support import wait_until

pytestmark = pytest.mark.anyio


@dataclasses.dataclass
class Bundle:
    name: str
    items: list[Any]
    extra: dict[str, Any]


async def value(x: Any, delay: float = 0.0) -> Any:
    if delay:
        await asyncio.sleep(delay)
    return x


async def identity(x: Any) -> Any:
    return x


async def add(a: int, b: int) -> int:
    return a + b


async def inc(x: int) -> int:
    return x + 1


async def fail(message: str, delay: float = 0.0) -> None:
    if delay:
        await asyncio.sleep(delay)
    raise ValueError(message)


async def sleep_forever(marker_dir: str) -> None:
    (Path(marker_dir) / "started").write_text("yes")
    await asyncio.sleep(3600)


def pid() -> int:
    return os.getpid()


@ray.remote
def ray_task_that_fails() -> None:
    raise KeyError("ray task broke")


@pytest.fixture(scope="module")
def two_supervisors(ray_session: None) -> Iterator[Runtime]:
    rt = Runtime(supervisors=2)
    rt.start()
    yield rt
    rt.close(wait=False)


async def test_nested_containers_and_dataclass(runtime: Runtime) -> None:
    a = runtime.submit(value, 1)
    b = runtime.submit(value, "two", 0.2)
    c = runtime.submit(value, [3])
    ref = ray.put({"from": "ray.put"})
    structure = {
        "list": [a, [b, (c, a)]],
        "tuple": (b,),
        "bundle": Bundle(name="n", items=[a, ref], extra={"deep": {"deeper": [c]}}),
        "ref": ref,
        "plain": 7,
    }
    got = await runtime.submit(identity, structure)
    assert got == {
        "list": [1, ["two", ([3], 1)]],
        "tuple": ("two",),
        "bundle": Bundle(
            name="n", items=[1, {"from": "ray.put"}], extra={"deep": {"deeper": [[3]]}}
        ),
        "ref": {"from": "ray.put"},
        "plain": 7,
    }
    assert isinstance(got["bundle"], Bundle)


async def test_raw_object_ref_argument(runtime: Runtime) -> None:
    ref = ray.put(20)
    assert await runtime.submit(add, ref, 22) == 42


async def test_chain_of_dependents_in_one_turn(runtime: Runtime) -> None:
    fut = runtime.submit(value, 0, 0.1)
    for _ in range(25):
        fut = runtime.submit(inc, fut)
    assert await fut == 25


async def test_dependency_across_two_supervisors(two_supervisors: Runtime) -> None:
    rt = two_supervisors
    assert len({info["pid"] for info in rt.supervisor_info()}) == 2
    a = rt.submit(value, 40, 0.3)
    b = rt.submit(value, 2, 0.3)
    assert {a.supervisor, b.supervisor} == {0, 1}
    total = rt.submit(add, a, b)
    assert await total == 42
    # Whichever supervisor `total` ran on, one argument came from the other one.
    other = b if total.supervisor == a.supervisor else a
    assert other.supervisor != total.supervisor


async def test_broadcast_reaches_every_supervisor(two_supervisors: Runtime) -> None:
    futures = two_supervisors.broadcast(pid)
    pids = [await f for f in futures]
    assert sorted(pids) == sorted(info["pid"] for info in two_supervisors.supervisor_info())
    assert len(set(pids)) == 2


async def test_upstream_failure_names_the_upstream(runtime: Runtime) -> None:
    bad = runtime.submit(fail, "root cause here", 0.1)
    downstream = runtime.submit(add, bad, 1)
    with pytest.raises(UpstreamError) as info:
        await downstream
    assert info.value.upstream == bad.label
    assert bad.label in str(info.value)
    assert "ValueError" in str(info.value) and "root cause here" in str(info.value)
    with pytest.raises(ValueError, match="root cause here"):
        await bad


async def test_upstream_failure_propagates_through_a_chain(runtime: Runtime) -> None:
    root = runtime.submit(fail, "deep failure")
    middle = runtime.submit(inc, root)
    leaf = runtime.submit(inc, [middle])
    with pytest.raises(UpstreamError) as info:
        await leaf
    assert info.value.upstream == middle.label
    assert root.label in str(info.value)  # the root cause stays visible
    assert "deep failure" in str(info.value)


async def test_upstream_failure_across_supervisors(two_supervisors: Runtime) -> None:
    rt = two_supervisors
    slow = rt.submit(value, 1, 0.3)  # keeps one supervisor busier
    bad = rt.submit(fail, "remote upstream", 0.1)
    assert bad.supervisor != slow.supervisor
    downstream = rt.submit(add, slow, bad)
    with pytest.raises(UpstreamError) as info:
        await downstream
    assert info.value.upstream == bad.label
    assert "remote upstream" in str(info.value)


async def test_failed_object_ref_is_an_upstream_error(runtime: Runtime) -> None:
    ref = ray_task_that_fails.remote()
    with pytest.raises(UpstreamError) as info:
        await runtime.submit(identity, {"x": ref})
    assert info.value.upstream.startswith("ObjectRef ")
    assert ref.hex()[:12] in info.value.upstream
    assert "ray task broke" in str(info.value)


async def test_cancelled_upstream_is_an_upstream_error(runtime: Runtime, tmp_path: Path) -> None:
    up = runtime.submit(sleep_forever, str(tmp_path))
    down = runtime.submit(identity, up)
    await wait_until(lambda: (tmp_path / "started").exists())
    assert up.cancel()
    with anyio.fail_after(30):
        with pytest.raises(CancelledError):
            await up
        with pytest.raises(UpstreamError) as info:
            await down
    assert info.value.upstream == up.label
    assert "cancelled" in str(info.value)
