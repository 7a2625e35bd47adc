"""The same flows under Prefect's ThreadPoolTaskRunner and under AioRayTaskRunner.

Every scenario in ``tests/_differential_scenarios.py`` runs once per runner, in a
directory of its own, against the session's Ray and Prefect API. The harness
compares what a user sees:

* the flow's final state (type, name, message) and its return value (or the
  exception it raised);
* every flow run and task run the API records (subflows included): name, final
  state type and name, tags;
* the logs the API holds for those runs;
* the artifacts the runs created;
* the files that tasks and hooks wrote;
* whatever the scenario reads from the API itself (events, assets).

It normalises only what legitimately differs from run to run: ids, the random
flow run names, the scenario's own directory. A scenario with a documented
difference (docs/migrating-from-ray-task-runner.md) asserts that difference
exactly instead.

``python -m tests.test_differential ray [NAME...]`` runs the scenarios under
prefect-ray's RayTaskRunner too and prints where it differs from the thread
pool (by hand: it is too slow for CI).
"""

from __future__ import annotations

import asyncio
import difflib
import os
import re
import sys
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from tests._differential_scenarios import SCENARIOS, Scenario

pytestmark = [pytest.mark.differential, pytest.mark.usefixtures("ray_session", "prefect_api")]

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_DEFAULT_NAME_SUFFIX = re.compile(r"-[0-9a-f]{3}$")
_SKIPPED_DIRS = {"storage", "locks"}


def run_flow(scenario: Scenario, kind: str, root: Path) -> Any:
    """Run the scenario's flow under this runner; return its final State."""
    from prefect import flow
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    from tests._differential_scenarios import make_runner

    root.mkdir(parents=True)
    pipeline = flow(
        name=f"diff-{scenario.name}", task_runner=make_runner(kind), **scenario.flow_options
    )(scenario.body)
    with temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: root / "storage"}):
        state = pipeline(kind, str(root), return_state=True)
        if asyncio.iscoroutine(state):
            state = asyncio.run(state)
    return state


def api_view(flow_run_id: UUID) -> dict[str, Any]:
    """Flow runs (the flow's and its subflows'), task runs, logs and artifacts in the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
        TaskRunFilter,
    )
    from prefect.client.schemas.sorting import ArtifactSort, FlowRunSort, LogSort, TaskRunSort

    with get_client(sync_client=True) as client:
        flow_runs = {flow_run_id: client.read_flow_run(flow_run_id)}
        frontier = [flow_run_id]
        while frontier:
            children = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=frontier)
                ),
                sort=FlowRunSort.ID_DESC,
                limit=200,
            )
            frontier = [run.id for run in children if run.id not in flow_runs]
            flow_runs.update({run.id: run for run in children})
        ids = list(flow_runs)
        flow_names = {run.id: client.read_flow(run.flow_id).name for run in flow_runs.values()}
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)),
            sort=TaskRunSort.ID_DESC,
            limit=200,
        )
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)),
            limit=200,
            sort=LogSort.TIMESTAMP_ASC,
            offset=0,
        )
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids)),
            flow_run_filter=FlowRunFilter(),
            task_run_filter=TaskRunFilter(),
            sort=ArtifactSort.ID_DESC,
            limit=200,
            offset=0,
        )
    # Default task run names end in three random hex digits.
    task_names = {run.id: _DEFAULT_NAME_SUFFIX.sub("-<n>", run.name) for run in task_runs}
    return {
        "flow_runs": sorted(
            (flow_names[run.id], _state(run.state), sorted(run.tags))
            for run in flow_runs.values()
            if run.id != flow_run_id
        ),
        "task_runs": sorted(
            (
                flow_names.get(run.flow_run_id, "?"),
                task_names[run.id],
                _state(run.state),
                sorted(run.tags),
            )
            for run in task_runs
        ),
        # Each run's logs in order; runs sorted (their interleaving is timing).
        "logs": sorted(
            (
                task_names.get(log.task_run_id, "?") if log.task_run_id else "flow",
                _level(log.level),
                log.message,
            )
            for log in logs
        ),
        "artifacts": sorted(
            (
                task_names.get(a.task_run_id, "flow") if a.task_run_id else "flow",
                a.key or "",
                a.type or "",
                str(a.data),
                a.description or "",
            )
            for a in artifacts
        ),
        "flow_run_names": sorted(run.name for run in flow_runs.values()),
    }


def _state(state: Any) -> tuple[str, str]:
    # A run the API has just created from its first event may have no state yet:
    # it must still sort beside the others (settled_api_view then waits for it).
    return (state.type.value, state.name) if state is not None else ("NONE", "")


def _level(level: int) -> str:
    import logging

    return logging.getLevelName(level)


def settled_api_view(flow_run_id: UUID, within: float = 60.0) -> dict[str, Any]:
    """The API's view once it stops changing (Prefect records task runs and logs
    from events and queues, a little after they happen)."""
    deadline = time.monotonic() + within
    previous = api_view(flow_run_id)
    while True:
        # Logs reach the API every 0.25 s here (conftest), and the flow's
        # events were drained before: half a second unchanged is settled.
        time.sleep(0.5)
        current = api_view(flow_run_id)
        if current == previous or time.monotonic() > deadline:
            return current
        previous = current


def files_under(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_file() and relative.parts[0] not in _SKIPPED_DIRS:
            out[str(relative)] = path.read_text(errors="replace")
    return out


# A traceback frame of the runner's own future or machinery (the flow's
# `future.result()` raising the task's exception shows it), with its code lines.
_RUNNER_FRAME = re.compile(
    r'^  File "[^"]*(?:/prefect/futures\.py|/aioray_runner/[^"]*)", line \d+, in .*\n'
    r"(?:    .*\n)*",
    re.MULTILINE,
)


# Timing: whether a concurrent future had finished when `result()` was called.
_CALLS_LINE = re.compile(r'(/prefect/_internal/concurrency/calls\.py", line )\d+')
_CANCEL_SCOPE = re.compile(r"cancel scope [0-9a-f]+")

# A task's exception re-raised in the flow (`future.result()`): under the thread
# pool its traceback goes on into the task's own frames; across a process
# boundary tracebacks do not travel (docs/migrating-from-ray-task-runner.md).
_REraised = re.compile(r"(    raise await aget_state_exception\(state\)\n)((?:  .*\n)+)")


def drop_task_frames(text: str) -> str:
    """The flow's log of a task's exception, without the task's frames."""
    return _REraised.sub(r"\1", text)


def normalize(value: Any, root: Path, names: list[str]) -> Any:
    """Replace what legitimately differs between two runs: ids, flow run names, root,
    and traceback frames of the runner's own code."""
    if isinstance(value, str):
        value = _RUNNER_FRAME.sub("", value)
        value = _CALLS_LINE.sub(r"\1<n>", value)
        value = _CANCEL_SCOPE.sub("cancel scope <id>", value)
        value = value.replace(str(root), "<ROOT>").replace(Path(root).as_uri(), "<ROOT-URI>")
        for name in names:
            value = value.replace(name, "<FLOW_RUN>")
        return _UUID.sub("<ID>", value)
    if isinstance(value, UUID):
        return "<ID>"
    if isinstance(value, dict):
        return {normalize(k, root, names): normalize(v, root, names) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(normalize(v, root, names) for v in value)
    if isinstance(value, set | frozenset):
        return sorted(repr(normalize(v, root, names)) for v in value)
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {normalize(str(value), root, names)}"
    return value


def observe(scenario: Scenario, kind: str, root: Path) -> dict[str, Any]:
    """Everything a user of this runner sees of the scenario, normalised."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    state = run_flow(scenario, kind, root)
    flow_run_id = state.state_details.flow_run_id
    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)
    view = settled_api_view(flow_run_id)
    try:
        result = state.result(raise_on_failure=False)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
    except BaseException as exc:  # the result itself could not be read
        result = exc
    observation = {
        "flow_state": (*_state(state), state.message),
        "result": result,
        "flow_runs": view["flow_runs"],
        "task_runs": view["task_runs"],
        "logs": view["logs"],
        "artifacts": view["artifacts"],
        "files": files_under(root),
    }
    if scenario.extra is not None:
        observation["extra"] = scenario.extra(kind, str(root), flow_run_id)
    return normalize(observation, root, view["flow_run_names"])


def describe_difference(expected: dict[str, Any], got: dict[str, Any]) -> str:
    parts = []
    for key in sorted(set(expected) | set(got)):
        if expected.get(key) != got.get(key):
            e, g = expected.get(key), got.get(key)
            if isinstance(e, list) and isinstance(g, list):
                only_e = [x for x in e if x not in g]
                only_g = [x for x in g if x not in e]
                parts.append(f"{key}:\n  only threadpool: {only_e}\n  only other: {only_g}")
                for x, y in zip(only_e, only_g):
                    if isinstance(x, tuple) and isinstance(y, tuple) and x[:-1] == y[:-1]:
                        diff = difflib.unified_diff(
                            str(x[-1]).splitlines(), str(y[-1]).splitlines(), lineterm="", n=1
                        )
                        parts.append("\n".join(diff))
            else:
                parts.append(f"{key}:\n  threadpool: {e!r}\n  other:      {g!r}")
    return "\n".join(parts)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_same_as_thread_pool(name: str, tmp_path: Path) -> None:
    scenario = SCENARIOS[name]
    reference, *others = scenario.runners
    observations = {kind: observe(scenario, kind, tmp_path / kind) for kind in scenario.runners}
    threadpool = observations[reference]
    # The one difference every scenario may show, asserted exactly: the flow's
    # log of a task's exception has no frames of the task under AioRayTaskRunner.
    threadpool["logs"] = sorted(
        (run, level, drop_task_frames(text)) for run, level, text in threadpool["logs"]
    )
    for kind in others:
        assert all(drop_task_frames(text) == text for _, _, text in observations[kind]["logs"])
    for kind, observation in observations.items():
        if scenario.expect is not None:
            scenario.expect(observation)
        if kind == reference:
            continue
        if scenario.difference is not None:
            scenario.difference(threadpool, observation, kind)
        else:
            assert observation == threadpool, f"[{kind}] " + describe_difference(
                threadpool, observation
            )


def main(argv: list[str]) -> None:  # pragma: no cover - run by hand
    """Compare other runners with the thread pool and print the differences."""
    import tempfile

    import ray
    from prefect.testing.utilities import prefect_test_harness

    kinds = [argv[1]] if len(argv) > 1 else ["aioray"]
    names = argv[2:] or sorted(SCENARIOS)
    ray.init(num_cpus=2, include_dashboard=False)
    with prefect_test_harness(server_startup_timeout=120):
        for name in names:
            base = Path(tempfile.mkdtemp(prefix=f"diff-{name}-"))
            started = time.monotonic()
            threadpool = observe(SCENARIOS[name], "threadpool", base / "threadpool")
            for kind in kinds:
                other = observe(SCENARIOS[name], kind, base / kind)
                verdict = "same" if other == threadpool else "DIFFERENT"
                print(f"== {name} [{kind}] {verdict} ({time.monotonic() - started:.1f} s)")
                if other != threadpool:
                    print(describe_difference(threadpool, other))
            sys.stdout.flush()
    ray.shutdown()


if __name__ == "__main__":
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    main(sys.argv)
