"""Flows that tests/test_differential.py runs under several task runners.

Each scenario is a module-level function ``body(kind, root)`` that becomes a
flow's function (the harness wraps it with ``flow(name=..., task_runner=...)``):
``kind`` names the task runner (``"threadpool"``, ``"aioray"``, and ``"ray"``
for prefect-ray, run by hand), ``root`` is a directory of its own where tasks and
hooks write their side effects. Everything here is module level, so Ray workers
and supervisors import it by reference (``tests`` is a package on their path);
keep the module free of side effects.

The harness compares what a user sees (see tests/test_differential.py). A
scenario that differs on purpose names the difference in ``difference=``: a
function that asserts the exact difference, so it fails if the behaviour
changes, and ``docs/migrating-from-ray-task-runner.md`` explains it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import prefect
import pydantic
from prefect import flow, get_run_logger, runtime, tags, task
from prefect.artifacts import (
    acreate_markdown_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import INPUTS, NO_CACHE
from prefect.context import TaskRunContext
from prefect.events import emit_event
from prefect.futures import PrefectFuture, as_completed, wait
from prefect.states import Completed, Failed
from prefect.transactions import CommitMode, IsolationLevel, get_transaction, transaction
from prefect.utilities.annotations import allow_failure, quote, unmapped
from prefect.variables import Variable

#: The runners every scenario runs under; the first is the reference.
RUNNERS = ("threadpool", "aioray")
#: Also run for scenarios with sync tasks (``sync_ray=True``): sync tasks as Ray
#: tasks, as under RayTaskRunner, instead of in supervisor threads.
SYNC_RAY = "aioray-sync-ray"


def make_runner(kind: str) -> Any:
    """A fresh task runner of this kind."""
    if kind == "threadpool":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner()
    if kind == "aioray":
        from aioray_runner import AioRayTaskRunner

        return AioRayTaskRunner()
    if kind == SYNC_RAY:
        from aioray_runner import AioRayTaskRunner

        return AioRayTaskRunner(sync_tasks="ray")
    if kind == "ray":
        from prefect_ray import RayTaskRunner

        return RayTaskRunner()
    raise ValueError(f"unknown runner kind {kind!r}")


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One flow to run under each runner, and what may legitimately differ."""

    name: str
    body: Callable[..., Any]
    #: Reads more from the API after the flow: ``extra(kind, root, flow_run_id)``.
    extra: Callable[..., Any] | None = None
    #: ``difference(threadpool_observation, other_observation, other_kind)``
    #: asserts the exact, documented difference; ``None``: they must be equal.
    difference: Callable[[dict[str, Any], dict[str, Any], str], None] | None = None
    flow_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: ``expect(observation)`` asserts what every runner must show (not only
    #: that they agree), for the behaviours issue 10 fixed.
    expect: Callable[[dict[str, Any]], None] | None = None
    #: Also compare AioRayTaskRunner(sync_tasks="ray") (the scenario has sync tasks).
    sync_ray: bool = False

    @property
    def runners(self) -> tuple[str, ...]:
        return (*RUNNERS, SYNC_RAY) if self.sync_ray else RUNNERS


SCENARIOS: dict[str, Scenario] = {}


def scenario(
    *,
    extra: Callable[..., Any] | None = None,
    difference: Callable[[dict[str, Any], dict[str, Any], str], None] | None = None,
    expect: Callable[[dict[str, Any]], None] | None = None,
    sync_ray: bool = False,
    **flow_options: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(body: Callable[..., Any]) -> Callable[..., Any]:
        name = body.__name__.removeprefix("s_")
        SCENARIOS[name] = Scenario(name, body, extra, difference, flow_options, expect, sync_ray)
        return body

    return register


def log_difference(
    replace: list[tuple[str, str]] = (),  # type: ignore[assignment]
    drop: Callable[[tuple[str, str, str]], bool] | None = None,
    missing: Callable[[tuple[str, str, str]], bool] | None = None,
    kinds: tuple[str, ...] = ("aioray", SYNC_RAY),
    dropped_at_least: int = 1,
) -> Callable[[dict[str, Any], dict[str, Any], str], None]:
    """An expected difference in the API's logs only, asserted exactly.

    ``replace``: ``(text in AioRayTaskRunner's log, text the thread pool logs
    instead)``, applied to every log message (``{prefect}`` stands for Prefect's
    package directory); each must occur. ``drop``: logs only
    AioRayTaskRunner writes; at least ``dropped_at_least``. ``missing``: logs only
    the thread pool writes; at least one. Everything else must be equal.
    Runners not in ``kinds`` must show no difference at all.
    """
    import prefect

    package = str(Path(prefect.__file__).parent)
    pairs = [(a.replace("{prefect}", package), b.replace("{prefect}", package)) for a, b in replace]

    def check(threadpool: dict[str, Any], aioray: dict[str, Any], kind: str) -> None:
        if kind not in kinds:
            assert aioray == threadpool
            return
        logs = list(aioray["logs"])
        if drop is not None:
            dropped = [log for log in logs if drop(log)]
            assert len(dropped) >= dropped_at_least, "expected logs only AioRayTaskRunner writes"
            logs = [log for log in logs if not drop(log)]
        for ours, theirs in pairs:
            assert any(ours in log[2] for log in logs), f"expected {ours!r} in a log"
            logs = [(run, level, text.replace(ours, theirs)) for run, level, text in logs]
        theirs = list(threadpool["logs"])
        if missing is not None:
            assert any(missing(log) for log in theirs), "expected logs only the thread pool writes"
            theirs = [log for log in theirs if not missing(log)]
        logs = sorted(logs)
        only_ours = [log for log in logs if log not in theirs]
        only_theirs = [log for log in theirs if log not in logs]
        assert logs == theirs, f"only ours: {only_ours}\nonly theirs: {only_theirs}"
        assert {**aioray, "logs": None} == {**threadpool, "logs": None}

    return check


def blocked_loop_warning(task_name: str) -> Callable[[tuple[str, str, str]], bool]:
    """The runner's warning that an async task blocked its supervisor's loop."""

    def matches(log: tuple[str, str, str]) -> bool:
        run, level, text = log
        return (
            run.startswith(f"{task_name}-")
            and level == "WARNING"
            and text.startswith("supervisor ")
            and "its event loop was blocked for" in text
        )

    return matches


# A future Prefect leaves alone (quote(), an object of a plain class) reaches the
# task as a future under both runners; its cache key cannot be computed from it
# under either, and the logged error names the runner's own future class.
FUTURE_IN_CACHE_KEY = [
    (
        "<class 'aioray_runner._prefect.settled.SettledPrefectFuture'>",
        "<class 'prefect.futures.PrefectConcurrentFuture'>",
    ),
    ("cannot pickle 'SettledPrefectFuture' object", "cannot pickle '_thread.RLock' object"),
]


def note(root: str, name: str, line: str) -> None:
    """Append a line to ``root/name`` (a side effect the harness compares)."""
    with open(Path(root) / name, "a") as f:
        f.write(line + "\n")


def lines(root: str, name: str) -> list[str]:
    path = Path(root) / name
    return path.read_text().splitlines() if path.exists() else []


def summary(state: Any) -> tuple[str, str | None]:
    return (state.type.value, state.name)


# -- plain submission, mapping, dependencies --------------------------------------------------


@task
def add(x: int, y: int) -> int:
    return x + y


@task
async def aadd(x: int, y: int) -> int:
    await asyncio.sleep(0.01)
    return x + y


@scenario(sync_ray=True)
def s_submit_sync_and_async(kind: str, root: str) -> Any:
    return [add.submit(1, 2).result(), aadd.submit(3, 4).result(), add(5, 6)]


@scenario()
async def s_async_flow(kind: str, root: str) -> Any:
    first = aadd.submit(1, 2)
    second = add.submit(first, 10)
    return [first.result(), second.result(), await aadd(2, 2)]


@scenario()
def s_map_unmapped(kind: str, root: str) -> Any:
    sync = add.map([1, 2, 3], unmapped(10))
    async_ = aadd.map([1, 2, 3], y=unmapped(100))
    return [sync.result(), async_.result()]


@scenario()
def s_future_chain(kind: str, root: str) -> Any:
    a = add.submit(1, 1)
    b = aadd.submit(a, 1)
    c = add.submit(b, a)
    d = aadd.submit({"nested": [c]}["nested"][0], 0)
    return d.result()


@task
def write_then(root: str, name: str) -> str:
    time.sleep(0.3)
    note(root, "order.txt", name)
    return name


@task
async def read_order(root: str) -> list[str]:
    note(root, "order.txt", "reader")
    return lines(root, "order.txt")


@scenario()
def s_wait_for(kind: str, root: str) -> Any:
    first = write_then.submit(root, "first")
    reader = read_order.submit(root, wait_for=[first])
    return reader.result()


# -- failures ---------------------------------------------------------------------------------


@task
def boom(message: str = "boom") -> int:
    raise ValueError(message)


@task
async def aboom(message: str = "boom") -> int:
    raise ValueError(message)


@task
def describe(x: Any) -> str:
    return f"{type(x).__name__}: {x}"


@scenario(sync_ray=True)
def s_not_ready_and_allow_failure(kind: str, root: str) -> Any:
    bad = boom.submit("upstream failed")
    abad = aboom.submit("async upstream failed")
    downstream = add.submit(bad, 1)
    adownstream = aadd.submit(abad, 1)
    allowed = describe.submit(allow_failure(bad))
    aallowed = describe.submit(allow_failure(abad))
    wait([downstream, adownstream, allowed, aallowed])
    return {
        "states": [summary(f.state) for f in (bad, abad, downstream, adownstream)],
        "allowed": [allowed.result(), aallowed.result()],
    }


@scenario()
def s_flow_fails_with_task(kind: str, root: str) -> Any:
    add.submit(1, 2).result()
    return boom.submit("the flow fails").result()


@scenario()
async def s_async_flow_fails_with_task(kind: str, root: str) -> Any:
    return aboom.submit("the async flow fails").result()


@task
def returns_failed_state() -> Any:
    return Failed(message="I chose to fail")


@task
async def areturns_completed_state() -> Any:
    return Completed(message="done my way", data=42)


@scenario()
def s_task_returns_state(kind: str, root: str) -> Any:
    failed = returns_failed_state.submit()
    completed = areturns_completed_state.submit()
    wait([failed, completed])
    return {
        "failed": (summary(failed.state), failed.state.message),
        "completed": (summary(completed.state), completed.result()),
    }


@scenario()
def s_return_state(kind: str, root: str) -> Any:
    direct = add(1, 2, return_state=True)
    direct_failed = boom("direct", return_state=True)
    submitted = boom.submit("submitted")
    submitted.wait()
    return {
        "direct": (summary(direct), direct.result()),
        "direct_failed": (summary(direct_failed), direct_failed.message),
        "submitted": (summary(submitted.state), submitted.state.message),
        "submitted_result": describe(submitted.result(raise_on_failure=False)),
    }


# -- retries and timeouts ---------------------------------------------------------------------


@task(retries=2, retry_delay_seconds=[0.1, 0.2])
def flaky(root: str, name: str, fail_times: int) -> int:
    note(root, name, f"attempt {TaskRunContext.get().task_run.run_count}")
    if len(lines(root, name)) <= fail_times:
        raise RuntimeError(f"attempt {len(lines(root, name))} failed")
    return len(lines(root, name))


@task(retries=3, retry_delay_seconds=0.1)
async def aflaky(root: str, name: str, fail_times: int) -> int:
    note(root, name, "attempt")
    if len(lines(root, name)) <= fail_times:
        raise RuntimeError(f"attempt {len(lines(root, name))} failed")
    return len(lines(root, name))


@scenario(sync_ray=True)
def s_retries_with_delays(kind: str, root: str) -> Any:
    ok = flaky.submit(root, "sync.txt", 2)
    aok = aflaky.submit(root, "async.txt", 1)
    out_of_retries = flaky.submit(root, "never.txt", 5)
    wait([ok, aok, out_of_retries])
    return {
        "ok": ok.result(),
        "aok": aok.result(),
        "out_of_retries": summary(out_of_retries.state),
        "attempts": lines(root, "never.txt"),
    }


def retry_on_value_error(task: Any, task_run: Any, state: Any) -> bool:
    # From the message: in an async task's engine `state.result()` is a coroutine.
    return "ValueError" in (state.message or "")


@task(retries=3, retry_condition_fn=retry_on_value_error)
def picky(root: str, name: str, error: str) -> int:
    note(root, name, "attempt")
    if len(lines(root, name)) < 3:
        raise {"value": ValueError, "type": TypeError}[error](error)
    return len(lines(root, name))


@task(retries=2, retry_condition_fn=retry_on_value_error)
async def apicky(root: str, name: str, error: str) -> int:
    note(root, name, "attempt")
    raise {"value": ValueError, "type": TypeError}[error](error)


def retried_on_value_errors_only(observation: dict[str, Any]) -> None:
    completed, failed = ("COMPLETED", "Completed"), ("FAILED", "Failed")
    assert observation["result"] == [(completed, 3), (failed, 1), (failed, 3), (failed, 1)]


@scenario(expect=retried_on_value_errors_only)
def s_retry_condition_fn(kind: str, root: str) -> Any:
    runs = [
        picky.submit(root, "value.txt", "value"),
        picky.submit(root, "type.txt", "type"),
        apicky.submit(root, "avalue.txt", "value"),
        apicky.submit(root, "atype.txt", "type"),
    ]
    wait(runs)
    names = ("value.txt", "type.txt", "avalue.txt", "atype.txt")
    return [(summary(f.state), len(lines(root, n))) for f, n in zip(runs, names)]


@task(timeout_seconds=0.5)
async def slow_async() -> str:
    await asyncio.sleep(10)
    return "not reached"


@scenario()
def s_timeout_async(kind: str, root: str) -> Any:
    future = slow_async.submit()
    future.wait()
    return (summary(future.state), future.state.message)


@task(timeout_seconds=0.5)
def slow_sync(root: str) -> str:
    for _ in range(30):
        time.sleep(0.1)
    note(root, "slow_sync.txt", "ran to the end")
    return "done"


@scenario(
    # A sync task runs in a Ray worker's main thread, where Prefect's timeout
    # interrupts it with SIGALRM; in the thread pool's worker thread it injects
    # the error (and warns that it may not interrupt blocking calls). Same
    # outcome: one more frame in the logged traceback, no warning. In a
    # supervisor's thread (the default) it is as in the thread pool.
    sync_ray=True,
    difference=log_difference(
        kinds=(SYNC_RAY,),
        missing=lambda log: (
            log[1] == "WARNING"
            and log[2].startswith(
                "Timeout of 0.5 seconds configured for this task, but the task is"
                " running in a worker thread."
            )
        ),
        replace=[
            (
                '  File "{prefect}/_internal/concurrency/cancellation.py", line 370,'
                " in _sigalarm_to_error\n    raise CancelledError()\n",
                "",
            )
        ],
    ),
)
def s_timeout_sync(kind: str, root: str) -> Any:
    future = slow_sync.submit(root)
    future.wait()
    return (summary(future.state), future.state.message)


# -- names, tags, logs, runtime context -------------------------------------------------------


@task(tags=["from-task"])
def my_tags() -> list[str]:
    return sorted(TaskRunContext.get().task_run.tags)


@task(tags=["from-async-task"])
async def amy_tags() -> list[str]:
    return sorted(runtime.task_run.tags)


@scenario()
def s_tags(kind: str, root: str) -> Any:
    with tags("outer"):
        with tags("inner"):
            futures = [my_tags.submit(), amy_tags.submit()]
        plain = my_tags.submit()
    return [f.result() for f in futures] + [plain.result()]


def name_from_parameters() -> str:
    parameters = runtime.task_run.parameters
    return f"computed-{parameters['x']}"


@task(task_run_name="item-{x}-of-{label}")
def named(x: int, label: str) -> str:
    return runtime.task_run.name


@task(task_run_name=name_from_parameters)
async def anamed(x: int) -> str:
    return TaskRunContext.get().task_run.name


@scenario()
def s_task_run_names(kind: str, root: str) -> Any:
    futures = [named.submit(1, "a"), anamed.submit(2), *list(named.map([3, 4], unmapped("m")))]
    return [f.result() for f in futures]


@task(log_prints=True)
def printer(x: int) -> int:
    print(f"sync task prints {x}")
    return x


@task(log_prints=True)
async def aprinter(x: int) -> int:
    print(f"async task prints {x}")
    return x


@task
def quiet_printer(x: int) -> int:
    print(f"not sent to the API {x}")
    return x


@scenario(log_prints=False)
def s_log_prints(kind: str, root: str) -> Any:
    return [
        printer.submit(1).result(),
        aprinter.submit(2).result(),
        quiet_printer.submit(3).result(),
    ]


@task
def logs_sync(x: int) -> int:
    logger = get_run_logger()
    logger.info("info from sync %s", x)
    logger.warning("warning from sync %s", x)
    logger.debug("debug from sync %s", x)
    return x


@task
async def logs_async(x: int) -> int:
    logger = get_run_logger()
    logger.info("info from async %s", x)
    logger.error("error from async %s", x)
    return x


@scenario()
def s_run_logger(kind: str, root: str) -> Any:
    get_run_logger().info("flow says hello")
    return [logs_sync.submit(1).result(), logs_async.submit(2).result()]


@task
def runtime_view(flow_run_id: str, x: int) -> dict[str, Any]:
    return {
        "task_name": runtime.task_run.task_name,
        # Default task run names end in three random hex digits.
        "task_run_name": runtime.task_run.name.rsplit("-", 1)[0],
        "parameters": runtime.task_run.parameters,
        "run_count": runtime.task_run.run_count,
        "same_flow_run": str(runtime.flow_run.id) == flow_run_id,
        "flow_name": runtime.flow_run.flow_name,
        "context_flow_run": str(TaskRunContext.get().task_run.flow_run_id) == flow_run_id,
    }


@task
async def aruntime_view(flow_run_id: str, x: int) -> dict[str, Any]:
    return runtime_view.fn(flow_run_id, x)


@scenario()
def s_runtime_context(kind: str, root: str) -> Any:
    flow_run_id = str(runtime.flow_run.id)
    return [
        runtime_view.submit(flow_run_id, 1).result(),
        aruntime_view.submit(flow_run_id, 2).result(),
    ]


@task
def read_variable(name: str) -> Any:
    return Variable.get(name)


@task
async def aread_variable(name: str) -> Any:
    return await Variable.aget(name)


@scenario()
def s_variables(kind: str, root: str) -> Any:
    name = f"diff_{kind}_{hashlib.sha1(root.encode()).hexdigest()[:8]}"
    Variable.set(name, {"answer": 42, "list": [1, 2]}, overwrite=True)
    try:
        return [read_variable.submit(name).result(), aread_variable.submit(name).result()]
    finally:
        Variable.unset(name)


# -- caching and results ----------------------------------------------------------------------


@task(cache_policy=INPUTS, persist_result=True)
def cached_sync(root: str, x: int) -> int:
    note(root, "cached_sync.txt", f"ran {x}")
    return x * 10


@task(cache_policy=INPUTS, persist_result=True)
async def cached_async(root: str, x: int) -> int:
    note(root, "cached_async.txt", f"ran {x}")
    return x * 100


@scenario()
def s_cache_inputs(kind: str, root: str) -> Any:
    out = []
    for fn in (cached_sync, cached_async):
        for x in (1, 1, 2):
            future = fn.submit(root, x)
            future.wait()
            out.append((summary(future.state), future.result()))
    return out


@scenario()
def s_refresh_cache(kind: str, root: str) -> Any:
    out = []
    for fn in (cached_sync, cached_async):
        first = fn.submit(root, 7)
        first.wait()
        refreshed = fn.with_options(refresh_cache=True).submit(root, 7)
        refreshed.wait()
        again = fn.submit(root, 7)
        again.wait()
        out.append([summary(f.state) for f in (first, refreshed, again)])
    return out


@task(cache_policy=INPUTS, persist_result=True, cache_expiration=datetime.timedelta(seconds=1))
def expiring(root: str, x: int) -> int:
    note(root, "expiring.txt", f"ran {x}")
    return x


@scenario()
def s_cache_expiration(kind: str, root: str) -> Any:
    states = []
    for pause in (0, 0, 2.0):
        time.sleep(pause)
        future = expiring.submit(root, 3)
        future.wait()
        states.append(summary(future.state))
    return states


def key_from_first_letter(context: Any, parameters: dict[str, Any]) -> str:
    return f"letter-{parameters['word'][0]}"


@task(cache_key_fn=key_from_first_letter, persist_result=True)
async def by_letter(root: str, word: str) -> str:
    note(root, "by_letter.txt", word)
    return word.upper()


@scenario()
def s_cache_key_fn(kind: str, root: str) -> Any:
    return [by_letter.submit(root, w).result() for w in ("apple", "avocado", "banana")]


@task(
    persist_result=True,
    result_serializer="json",
    result_storage_key="diff-{parameters[x]}.json",
    cache_policy=NO_CACHE,
)
def stored_json(x: int) -> dict[str, Any]:
    return {"x": x, "items": list(range(x))}


@task(persist_result=True, result_serializer="compressed/pickle", cache_policy=NO_CACHE)
async def stored_pickle(x: int) -> set[int]:
    return set(range(x))


@scenario()
def s_result_storage_and_serializers(kind: str, root: str) -> Any:
    json_state = stored_json.submit(3)
    pickle_state = stored_pickle.submit(4)
    wait([json_state, pickle_state])
    storage = Path(root) / "storage"
    stored = sorted(p.name for p in storage.iterdir()) if storage.exists() else []
    return {
        "json": json_state.result(),
        "pickle": sorted(pickle_state.result()),
        "json_file": [n for n in stored if n.endswith(".json")],
        "json_file_result": (
            __import__("json").loads((storage / "diff-3.json").read_text())["result"]
            if (storage / "diff-3.json").exists()
            else None
        ),
        "state_results_persisted": [
            type(f.state.data).__name__ for f in (json_state, pickle_state)
        ],
    }


@task
def big(n: int) -> bytes:
    return bytes(range(256)) * (n // 256)


@task
async def abig_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@scenario()
def s_large_results(kind: str, root: str) -> Any:
    data = big.submit(32 * 1024 * 1024)
    digest = abig_digest.submit(data)
    return [len(data.result()), digest.result()]


# -- hooks, artifacts, events, assets ---------------------------------------------------------


def on_done_hook(task: Any, task_run: Any, state: Any) -> None:
    note(task_run.parameters["root"], "hooks.txt", f"{task.name} {state.type.value} {state.name}")


@task(on_completion=[on_done_hook], on_failure=[on_done_hook])
def hooked(root: str, fail: bool) -> int:
    if fail:
        raise ValueError("hooked failed")
    return 1


@task(on_completion=[on_done_hook], on_failure=[on_done_hook], retries=1)
async def ahooked(root: str, fail: bool) -> int:
    if fail:
        raise ValueError("ahooked failed")
    return 1


@scenario(sync_ray=True)
def s_state_hooks(kind: str, root: str) -> Any:
    out = []
    for fn in (hooked, ahooked):
        for fail in (False, True):
            future = fn.submit(root, fail)
            future.wait()
            out.append(summary(future.state))
    return {"states": out, "hooks": lines(root, "hooks.txt")}


@task
def make_artifacts(x: int) -> int:
    create_markdown_artifact(markdown=f"# Report {x}", key=f"diff-report-{x}", description="md")
    create_table_artifact(table=[{"a": 1, "b": x}], key=f"diff-table-{x}")
    return x


@task
async def amake_artifacts(x: int) -> int:
    await acreate_markdown_artifact(markdown=f"# Async report {x}", description="async md")
    return x


@scenario()
def s_artifacts(kind: str, root: str) -> Any:
    return [make_artifacts.submit(1).result(), amake_artifacts.submit(2).result()]


def read_custom_events(kind: str, root: str, flow_run_id: Any) -> Any:
    from tests._prefect_support import poll, read_events

    resource = f"diff.{hashlib.sha1(root.encode()).hexdigest()[:12]}"
    events = poll(lambda: read_events("diff.custom.happened", resource), lambda e: len(e) >= 2)
    return sorted(
        (
            e.payload["x"],
            sorted(r.role for r in e.related),
            str(e.resource.get("prefect.resource.id")) == resource,
        )
        for e in events
    )


@task
def emits(root: str, x: int) -> int:
    resource = f"diff.{hashlib.sha1(root.encode()).hexdigest()[:12]}"
    emit_event("diff.custom.happened", resource={"prefect.resource.id": resource}, payload={"x": x})
    return x


@task
async def aemits(root: str, x: int) -> int:
    return emits.fn(root, x)


@scenario(extra=read_custom_events)
def s_events(kind: str, root: str) -> Any:
    return [emits.submit(root, 1).result(), aemits.submit(root, 2).result()]


def read_asset_events(kind: str, root: str, flow_run_id: Any) -> Any:
    from tests._prefect_support import poll, read_events

    key = Path(root, "asset.txt").as_uri()
    events = poll(
        lambda: read_events("prefect.asset.materialization.succeeded", key), lambda e: len(e) >= 1
    )
    return sorted((e.event, sorted(r.role for r in e.related)) for e in events)


def _materialize_asset(root: str) -> Any:
    from prefect.assets import materialize

    @materialize(Path(root, "asset.txt").as_uri())
    def write_asset(root: str) -> str:
        Path(root, "asset.txt").write_text("materialized")
        return "ok"

    return write_asset


@task
def upstream_of_asset(root: str) -> str:
    return "input"


@scenario(extra=read_asset_events)
def s_assets(kind: str, root: str) -> Any:
    write_asset = _materialize_asset(root)
    return write_asset.submit(root, wait_for=[upstream_of_asset.submit(root)]).result()


# -- subflows and nested tasks ----------------------------------------------------------------


@flow
def child_flow(x: int) -> int:
    return add(x, 1) + add.submit(x, 2).result()


@task
def calls_a_flow(x: int) -> int:
    return child_flow(x)


@task
async def acalls_a_flow(x: int) -> int:
    return child_flow(x)


@scenario(
    # An async task that calls a flow runs that flow on its supervisor's event
    # loop, which it blocks meanwhile: the runner says so in the task's logs.
    # (As in task_in_task, the warning may not reach the flow before it ends.)
    difference=log_difference(
        drop=blocked_loop_warning("acalls_a_flow"), kinds=("aioray",), dropped_at_least=0
    )
)
def s_subflow_in_task(kind: str, root: str) -> Any:
    return [calls_a_flow.submit(1).result(), acalls_a_flow.submit(10).result()]


@flow
def subflow_with_tasks(x: int) -> list[int]:
    return [
        add.submit(x, 1).result(),
        aadd.submit(x, 2).result(),
        *aadd.map([x, x], unmapped(3)).result(),
    ]


@scenario()
def s_tasks_in_subflow(kind: str, root: str) -> Any:
    sub = subflow_with_tasks.with_options(task_runner=make_runner(kind))
    return [sub(1), add.submit(2, 2).result()]


@task
def submits_inside(x: int) -> int:
    return add.submit(x, 1).result() + add(x, 2)


@task
async def asubmits_inside(x: int) -> int:
    return aadd.submit(x, 1).result() + await aadd(x, 2)


@scenario(
    # An async task that blocks on a child's result() holds its supervisor's
    # loop meanwhile (the child runs in a thread of its own: docs/guide.md).
    # The warning travels with the supervisor's next outcomes: when the flow
    # ends right after, it may not reach the flow before the runner closes.
    difference=log_difference(
        drop=blocked_loop_warning("asubmits_inside"), kinds=("aioray",), dropped_at_least=0
    )
)
def s_task_in_task(kind: str, root: str) -> Any:
    return [submits_inside.submit(1).result(), asubmits_inside.submit(10).result()]


@scenario()
def s_as_completed_and_wait(kind: str, root: str) -> Any:
    futures = [aadd.submit(i, 0) for i in range(5)] + [add.submit(i, 0) for i in range(5, 8)]
    done = sorted(f.result() for f in as_completed(futures))
    finished, not_finished = wait(futures)
    return [done, len(finished), len(not_finished)]


# -- futures inside other values --------------------------------------------------------------


@task
def peek(x: int, payload: dict[str, Any]) -> Any:
    future = payload["f"]
    return {
        "x": x,
        "is_future": isinstance(future, PrefectFuture),
        "result": future.result(),
        "state": summary(future.state) if (future.wait() is None) else None,
        "task_run_id_matches": str(future.task_run_id) == payload["id"],
    }


@task
async def apeek(x: int, payload: dict[str, Any]) -> Any:
    return peek.fn(x, payload)


def peeked_at_a_future(observation: dict[str, Any]) -> None:
    seen = {"is_future": True, "result": 21, "state": ("COMPLETED", "Completed")}
    expected = [[{"x": x, **seen, "task_run_id_matches": True} for x in xs] for xs in ([1, 2], [3])]
    assert observation["result"] == expected


@scenario(
    difference=log_difference(replace=FUTURE_IN_CACHE_KEY), expect=peeked_at_a_future, sync_ray=True
)
def s_quote_future(kind: str, root: str) -> Any:
    up = add.submit(20, 1)
    payload = {"f": up, "id": str(up.task_run_id)}
    return [
        peek.map([1, 2], unmapped(quote(payload))).result(),
        apeek.map([3], unmapped(quote(payload))).result(),
    ]


@dataclasses.dataclass
class Box:
    value: Any
    label: str


class Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)
    value: Any
    label: str


class Opaque:
    """Prefect does not look inside instances of plain classes."""

    def __init__(self, value: Any) -> None:
        self.value = value


@task
def what_arrived(box: Box, model: Model, items: set[Any], opaque: Opaque, quoted: Any) -> Any:
    def kind_of(v: Any) -> Any:
        if isinstance(v, PrefectFuture):
            return ("future", v.result())
        return ("value", v)

    return {
        "box": kind_of(box.value),
        "model": kind_of(model.value),
        "set": sorted(kind_of(v) for v in items),
        "opaque": kind_of(opaque.value),
        "quoted": [kind_of(v) for v in quoted],
    }


@task
async def awhat_arrived(
    box: Box, model: Model, items: set[Any], opaque: Opaque, quoted: Any
) -> Any:
    return what_arrived.fn(box, model, items, opaque, quoted)


def futures_where_prefect_leaves_them(observation: dict[str, Any]) -> None:
    arrived = {
        "box": ("value", 1),
        "model": ("value", 2),
        "set": [("value", 1), ("value", 2)],
        "opaque": ("future", 1),
        "quoted": [("future", 1), ("future", 2)],
    }
    assert observation["result"] == [arrived, arrived]


@scenario(
    difference=log_difference(replace=FUTURE_IN_CACHE_KEY[1:]),
    expect=futures_where_prefect_leaves_them,
    sync_ray=True,
)
def s_futures_nested_in_values(kind: str, root: str) -> Any:
    one, two = add.submit(1, 0), aadd.submit(2, 0)
    out = []
    for fn in (what_arrived, awhat_arrived):
        out.append(
            fn.submit(
                Box(one, "box"),
                Model(value=two, label="m"),
                {one, two},
                Opaque(one),
                quote([one, two]),
            ).result()
        )
    return out


# -- transactions -----------------------------------------------------------------------------


def record_rollback(txn: Any) -> None:
    note(txn.get("root"), "transaction.txt", f"rollback {txn.get('task')}")


def record_commit(txn: Any) -> None:
    note(txn.get("root"), "transaction.txt", f"commit {txn.get('task')}")


def _txn_task(name: str, is_async: bool, fail: bool = False, return_failed: bool = False) -> Any:
    def body(root: str) -> Any:
        get_transaction().set("task", name)
        if fail:
            raise ValueError(f"{name} failed")
        note(root, "transaction.txt", f"ran {name}")
        return Failed(message=f"{name} returned Failed") if return_failed else name

    async def abody(root: str) -> str:
        return body(root)

    fn = abody if is_async else body
    fn.__name__ = fn.__qualname__ = name
    made = task(name=name)(fn)
    made.on_rollback(record_rollback)
    made.on_commit(record_commit)
    return made


txn_a = _txn_task("txn_a", is_async=False)
txn_b_fails = _txn_task("txn_b_fails", is_async=False, fail=True)
txn_c = _txn_task("txn_c", is_async=False)
atxn_a = _txn_task("atxn_a", is_async=True)
atxn_b_fails = _txn_task("atxn_b_fails", is_async=True, fail=True)
atxn_c = _txn_task("atxn_c", is_async=True)


def _rollback_body(root: str, first: Any, second: Any, failing: Any) -> Any:
    with transaction() as txn:
        txn.set("root", root)
        first.submit(root).result()
        second.submit(root).result()
        failing.submit(root).result()


def rolled_back(first: str, second: str, failing: str) -> Callable[[dict[str, Any]], None]:
    """The failing task rolled the flow's transaction back: the others' rollback
    hooks ran (last in, first out) and the API shows them ``RolledBack``."""

    def check(observation: dict[str, Any]) -> None:
        assert observation["files"] == {
            "transaction.txt": f"ran {first}\nran {second}\nrollback {second}\nrollback {first}\n"
        }
        states = {run[1].rsplit("-", 1)[0]: run[2] for run in observation["task_runs"]}
        assert states == {
            first: ("COMPLETED", "RolledBack"),
            second: ("COMPLETED", "RolledBack"),
            failing: ("FAILED", "Failed"),
        }
        assert observation["flow_state"][:2] == ("FAILED", "Failed")

    return check


txn_returns_failed = _txn_task("txn_returns_failed", is_async=False, return_failed=True)
atxn_returns_failed = _txn_task("atxn_returns_failed", is_async=True, return_failed=True)

# Prefect 3.9 rolls a transaction back when a task in it *returns* Failed, as it
# always did for a raised error; older releases commit. The suite compares with
# the thread pool of the Prefect under test; this checks which of the two it saw.
RETURNED_FAILED_ROLLS_BACK = tuple(int(p) for p in prefect.__version__.split(".")[:2]) >= (3, 9)


def returned_failed(first: str, failing: str) -> Callable[[dict[str, Any]], None]:
    def check(observation: dict[str, Any]) -> None:
        states = {run[1].rsplit("-", 1)[0]: run[2] for run in observation["task_runs"]}
        assert states[failing] == ("FAILED", "Failed"), states
        if RETURNED_FAILED_ROLLS_BACK:
            # Its own rollback hook runs too, then the earlier task's (last in, first out).
            assert observation["files"] == {
                "transaction.txt": (
                    f"ran {first}\nran {failing}\nrollback {failing}\nrollback {first}\n"
                )
            }
            assert states[first] == ("COMPLETED", "RolledBack"), states
        else:
            assert "rollback" not in observation["files"]["transaction.txt"], observation
            assert states[first] == ("COMPLETED", "Completed"), states

    return check


def _returns_failed_body(root: str, first: Any, failing: Any) -> Any:
    with transaction() as txn:
        txn.set("root", root)
        first.submit(root).result()
        failed = failing.submit(root)
        failed.wait()
    return {"state": summary(failed.state), "transaction": txn.state.name}


@scenario(expect=returned_failed("txn_a", "txn_returns_failed"), sync_ray=True)
def s_transaction_task_returns_failed_sync(kind: str, root: str) -> Any:
    return _returns_failed_body(root, txn_a, txn_returns_failed)


@scenario(expect=returned_failed("atxn_a", "atxn_returns_failed"))
def s_transaction_task_returns_failed_async(kind: str, root: str) -> Any:
    return _returns_failed_body(root, atxn_a, atxn_returns_failed)


@scenario(expect=rolled_back("atxn_a", "atxn_c", "atxn_b_fails"))
def s_transaction_rollback_async(kind: str, root: str) -> Any:
    return _rollback_body(root, atxn_a, atxn_c, atxn_b_fails)


@scenario(expect=rolled_back("txn_a", "txn_c", "txn_b_fails"), sync_ray=True)
def s_transaction_rollback_sync(kind: str, root: str) -> Any:
    return _rollback_body(root, txn_a, txn_c, txn_b_fails)


@scenario()
def s_transaction_rollback_caught(kind: str, root: str) -> Any:
    with transaction() as txn:
        txn.set("root", root)
        a = atxn_a.submit(root)
        a.wait()
        failing = txn_b_fails.submit(root)
        failing.wait()
        state = txn.state.name
    return {
        "inside": state,
        "after": txn.state.name,
        "a": summary(a.state),
        "failing": summary(failing.state),
    }


@scenario()
def s_transaction_commit(kind: str, root: str) -> Any:
    with transaction(key=f"diff-commit-{hashlib.sha1(root.encode()).hexdigest()[:8]}") as txn:
        txn.set("root", root)
        results = [txn_a.submit(root).result(), atxn_a.submit(root).result()]
        before_commit = lines(root, "transaction.txt")
    return {"results": results, "before_commit": before_commit, "state": txn.state.name}


@scenario()
def s_transaction_nested(kind: str, root: str) -> Any:
    with transaction() as outer:
        outer.set("root", root)
        txn_a.submit(root).result()
        with transaction() as inner:
            atxn_c.submit(root).result()
        inner_state = inner.state.name
        atxn_b_fails.submit(root).result()
    return inner_state


@scenario(sync_ray=True)
def s_transaction_commit_modes(kind: str, root: str) -> Any:
    out = {}
    for mode in (CommitMode.EAGER, CommitMode.LAZY, CommitMode.OFF):
        with transaction(commit_mode=mode) as txn:
            txn.set("root", root)
            note(root, "transaction.txt", f"-- {mode.name}")
            atxn_a.submit(root).result()
            txn_c.submit(root).result()
            note(root, "transaction.txt", f"-- leaving {mode.name}")
        out[mode.name] = txn.state.name
    return out


@task
def reads_transaction_values() -> Any:
    txn = get_transaction()
    return {
        "own": txn.get("missing", "default"),
        "parent": txn.get("shared"),
        "has_key": txn.key is not None,
        "parent_state": txn.get_parent().state.name,
    }


@task
async def areads_transaction_values() -> Any:
    return reads_transaction_values.fn()


@scenario()
def s_transaction_values(kind: str, root: str) -> Any:
    with transaction() as txn:
        txn.set("shared", {"from": "flow"})
        return [
            reads_transaction_values.submit().result(),
            areads_transaction_values.submit().result(),
        ]


@scenario()
def s_transaction_serializable_file_lock(kind: str, root: str) -> Any:
    from prefect.locking.filesystem import FileSystemLockManager
    from prefect.results import ResultStore, get_result_store

    store = get_result_store().model_copy(
        update={"lock_manager": FileSystemLockManager(lock_files_directory=Path(root) / "locks")}
    )
    key = f"diff-serializable-{hashlib.sha1(root.encode()).hexdigest()[:8]}"
    with transaction(key=key, store=store, isolation_level=IsolationLevel.SERIALIZABLE) as txn:
        txn.set("root", root)
        results = [
            cached_sync.submit(root, 5).result(),
            # Not 5: the same cache key's lock is held until the transaction ends.
            cached_async.submit(root, 6).result(),
        ]
        locked_inside = store.is_locked(key)
    assert isinstance(store, ResultStore)
    return {
        "results": results,
        "locked_inside": locked_inside,
        "locked_after": store.is_locked(key),
        "state": txn.state.name,
    }


@scenario(expect=rolled_back("atxn_a", "txn_c", "atxn_b_fails"))
async def s_async_transaction_rollback(kind: str, root: str) -> Any:
    from prefect.transactions import atransaction

    async with atransaction() as txn:
        txn.set("root", root)
        atxn_a.submit(root).result()
        txn_c.submit(root).result()
        atxn_b_fails.submit(root).result()


def memory_lock_refused(threadpool: dict[str, Any], aioray: dict[str, Any], kind: str) -> None:
    """SERIALIZABLE with Prefect's in-process MemoryLockManager: the thread pool
    locks within its one process; AioRayTaskRunner refuses the task run, saying why."""
    assert threadpool["result"] == (("COMPLETED", "Completed"), None, ["ran 8"])
    (state, message, ran) = aioray["result"]
    assert (state, ran) == (("FAILED", "Failed"), [])
    assert message.startswith(
        "Task run 'cached_sync' cannot run: The transaction 'diff-memory-lock' is"
        " SERIALIZABLE with Prefect's MemoryLockManager"
    ), message
    assert ("flow", "ERROR", message) in aioray["logs"]
    assert [run[2] for run in aioray["task_runs"]] == [("FAILED", "Failed")], aioray["task_runs"]


@scenario(difference=memory_lock_refused)
def s_transaction_serializable_memory_lock(kind: str, root: str) -> Any:
    from prefect.locking.memory import MemoryLockManager
    from prefect.results import get_result_store

    store = get_result_store().model_copy(update={"lock_manager": MemoryLockManager()})
    with transaction(
        key="diff-memory-lock", store=store, isolation_level=IsolationLevel.SERIALIZABLE
    ) as txn:
        txn.set("root", root)
        future = cached_sync.submit(root, 8)
        future.wait()
    return (summary(future.state), future.state.message, lines(root, "cached_sync.txt"))
