"""What task runs on supervisors and Ray workers send to the Prefect API: logs, asset events."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from prefect import flow, get_run_logger, task
from prefect.assets import Asset, AssetProperties, add_asset_metadata, materialize
from prefect.runtime import flow_run as current_flow_run
from prefect.runtime import task_run as current_task_run

from aioray_runner import AioRayTaskRunner
from tests._prefect_support import poll, read_events, read_logs

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("ray_session", "prefect_api")]


@task
async def log_async(marker: str) -> str:
    get_run_logger().info("async task says %s", marker)
    return current_task_run.id


@task
def log_sync(marker: str) -> str:
    get_run_logger().warning("sync task says %s", marker)
    return current_task_run.id


async def test_task_logs_reach_the_api() -> None:
    marker = f"marker-{uuid.uuid4()}"

    @flow(task_runner=AioRayTaskRunner())
    async def logging_flow(marker: str) -> dict[str, Any]:
        return {
            "flow_run_id": current_flow_run.id,
            "async": await log_async.submit(marker),
            "sync": await log_sync.submit(marker),
        }

    out = await logging_flow(marker)
    flow_run_id = uuid.UUID(out["flow_run_id"])

    def ours(logs: list[Any]) -> dict[str, Any]:
        return {log.message: log for log in logs if marker in log.message}

    found = poll(lambda: ours(read_logs(flow_run_id)), lambda found: len(found) == 2)
    by_async = found[f"async task says {marker}"]
    by_sync = found[f"sync task says {marker}"]
    assert str(by_async.task_run_id) == out["async"]
    assert str(by_sync.task_run_id) == out["sync"]
    assert by_async.flow_run_id == by_sync.flow_run_id == flow_run_id
    assert by_async.level == 20 and by_sync.level == 30


async def test_asset_materialization_events_reach_the_api() -> None:
    # A fresh key per test run: events from earlier sessions cannot satisfy it.
    key = f"s3://aioray-runner-tests/{uuid.uuid4().hex}/report.csv"
    upstream_key = f"s3://aioray-runner-tests/{uuid.uuid4().hex}/source.csv"
    report = Asset(key=key, properties=AssetProperties(name="test report"))

    # Defined here (pickled by value) so the supervisor sees the same keys.
    @materialize(report, asset_deps=[upstream_key])
    async def build_report(rows: int) -> int:
        add_asset_metadata(key, {"rows": rows})
        return rows

    @flow(task_runner=AioRayTaskRunner())
    async def asset_flow() -> dict[str, Any]:
        future = build_report.submit(42)
        return {"rows": await future, "task_run_id": str(future.task_run_id)}

    out = await asset_flow()
    assert out["rows"] == 42

    events = poll(
        lambda: read_events("prefect.asset.materialization.succeeded", key),
        lambda events: len(events) >= 1,
    )
    assert len(events) == 1
    event = events[0]
    assert event.resource.id == key
    assert event.resource.get("prefect.resource.name") == "test report"
    assert event.payload.get("rows") == 42
    related = {(r.id, r.role) for r in event.related}
    assert (upstream_key, "asset") in related
    assert (f"prefect.task-run.{out['task_run_id']}", "task-run") in related

    referenced = poll(
        lambda: read_events("prefect.asset.referenced", upstream_key),
        lambda events: len(events) >= 1,
    )
    assert referenced[0].resource.id == upstream_key
