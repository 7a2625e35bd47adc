"""Secrets stay secret: task parameters and results, Prefect settings, runtime_env values.

None of them may appear in logs at INFO or above, in error messages, in actor or
task names, or in what Ray's dashboard shows (its actor and task tables, runtime
envs), apart from what the user's own code prints. Errors about a value name the
parameter and its type, never the value.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import ray

from aioray_runner import Runtime, SerializationError

pytestmark = pytest.mark.anyio


# -- values that hold secrets (module level: pickled by reference) --------------------------


class Credentials:
    """Picklable; its repr shows the token, as many settings objects' reprs do."""

    def __init__(self, token: str) -> None:
        self.token = token

    def __repr__(self) -> str:
        return f"Credentials(token={self.token!r})"


class LiveConnection:
    """Cannot be pickled, and says so quoting itself (token included)."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LiveConnection(token={self.token!r})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError(f"cannot pickle {self!r}: it holds a live socket")


def new_secret(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex}"


async def echo(value: Any) -> Any:
    return value


async def open_connection(token: str) -> LiveConnection:
    return LiveConnection(token)


async def env_var_matches(name: str, digest: str) -> bool:
    """Whether the supervisor's env var has this sha256, without sending the value back."""
    return hashlib.sha256(os.environ.get(name, "").encode()).hexdigest() == digest


def _everything_said(exc: BaseException) -> str:
    """An error as a user or a log sees it: message, notes, traceback and chain."""
    return "".join(traceback.format_exception(exc))


# -- what Ray shows ------------------------------------------------------------------------


def ray_shown() -> dict[str, list[str]]:
    """What Ray's dashboard shows about actors and tasks: names and runtime envs.

    Read from the GCS, where the dashboard reads it too (the session's Ray runs
    without a dashboard, so ``ray.util.state`` cannot answer here). The task
    table includes actor-creation tasks with their runtime env.
    """
    from ray._private import state  # no public API without the dashboard

    actors = state.actors().values()
    names = [a["Name"] for a in actors] + [a["ActorClassName"] for a in actors]
    runtime_envs: list[str] = []
    task_events = getattr(state.state, "_get_all_task_events", None)  # Ray 2.60; not 2.10
    if task_events is not None:
        for event in task_events():
            info = event.task_info
            names += [info.name, info.func_or_class_name]
            runtime_envs.append(str(info.runtime_env_info))
    return {"names": names, "runtime_envs": runtime_envs, "has_tasks": [str(bool(task_events))]}


def ray_log_text() -> str:
    """Everything in this Ray session's log files (workers' stdout and stderr included)."""
    session = ray._private.worker.global_worker.node.get_session_dir_path()
    texts = []
    for path in Path(session, "logs").rglob("*"):
        if path.is_file():
            texts.append(path.read_text(errors="replace"))
    return "\n".join(texts)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))  # message, and traceback if any


@contextmanager
def logs_at_info() -> Iterator[_Records]:
    """Every record at INFO or above, of every logger (Prefect's do not propagate)."""
    handler = _Records()
    names = ["", "aioray_runner", "prefect", "ray"]
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
    logging.getLogger("aioray_runner").setLevel(logging.INFO)
    try:
        yield handler
    finally:
        for logger, level in zip(loggers, levels):
            logger.removeHandler(handler)
            logger.setLevel(level)


# -- the runtime ---------------------------------------------------------------------------


async def test_unpicklable_argument_error_names_parameter_and_type_not_value(
    runtime: Runtime,
) -> None:
    secret = new_secret("arg")
    with pytest.raises(SerializationError) as info:
        runtime.submit(echo, value=LiveConnection(secret))
    said = _everything_said(info.value)
    assert "argument 'value'" in said and "LiveConnection" in said
    assert secret not in said
    with pytest.raises(SerializationError) as info:
        runtime.submit(echo, LiveConnection(secret))
    assert "positional argument 0" in str(info.value)
    assert secret not in _everything_said(info.value)


async def test_unpicklable_result_error_names_type_not_value(runtime: Runtime) -> None:
    secret = new_secret("result")
    future = runtime.submit(open_connection, secret)
    with pytest.raises(SerializationError) as info:
        await future
    said = _everything_said(info.value)
    assert future.label in said and "LiveConnection" in said
    assert secret not in said


async def test_runtime_env_values_stay_out_of_logs_and_names(ray_session: None) -> None:
    secret = new_secret("env")
    digest = hashlib.sha256(secret.encode()).hexdigest()
    with logs_at_info() as records:
        async with Runtime() as rt:
            group = rt.options(runtime_env={"env_vars": {"API_TOKEN": secret}})
            # Non-vacuous: the value did reach the supervisor's environment.
            assert await group.submit(env_var_matches, "API_TOKEN", digest)
            shown = ray_shown()
    said = "\n".join(records.lines)
    assert "Starting a supervisor with Ray actor options" in said
    assert "'API_TOKEN': '<redacted>'" in said
    assert secret not in said
    # Names only: the runtime env itself holds the value because the user put it
    # there, and Ray shows runtime envs as they are.
    assert [name for name in shown["names"] if name.startswith("aioray-supervisor")]
    assert not [name for name in shown["names"] if secret in name]


def test_the_tests_ray_keeps_token_auth_on(runtime: Runtime) -> None:
    # On every version: the runtime is connected to the session's Ray.
    assert runtime.supervisor_info()
    version = tuple(int(part) for part in ray.__version__.split(".")[:2])
    # Ray 2.52 brought token authentication (on by default for a local Ray);
    # older versions have none to check. Tests must not turn it off.
    if version >= (2, 52):
        from ray._private.authentication.authentication_utils import is_token_auth_enabled

        assert is_token_auth_enabled()
        assert os.environ.get("RAY_AUTH_MODE", "").lower() == "token"


# -- Prefect --------------------------------------------------------------------------------


def _prefect_tasks() -> Any:
    from prefect import task

    @task
    async def use_async(creds: Credentials) -> Credentials:
        return Credentials(creds.token)  # the result holds the secret too

    @task
    def use_sync(creds: Credentials) -> Credentials:
        return Credentials(creds.token)

    @task
    async def api_key_digest() -> str:
        from prefect.settings import PREFECT_API_KEY

        return hashlib.sha256(str(PREFECT_API_KEY.value()).encode()).hexdigest()

    @task
    async def use_connection(conn: LiveConnection) -> None:
        return None

    return use_async, use_sync, api_key_digest, use_connection


@pytest.mark.usefixtures("ray_session")
async def test_prefect_flow_keeps_api_key_parameters_and_results_secret(
    prefect_api: str,
) -> None:
    from prefect import flow
    from prefect.runtime import flow_run as current_flow_run
    from prefect.settings import PREFECT_API_KEY, temporary_settings

    from aioray_runner import AioRayTaskRunner
    from tests._prefect_support import poll, read_logs

    api_key = new_secret("pnu")
    param_secret = new_secret("param")
    use_async, use_sync, api_key_digest, use_connection = _prefect_tasks()

    @flow(task_runner=AioRayTaskRunner())
    async def secret_flow() -> dict[str, Any]:
        creds = Credentials(param_secret)
        async_result = await use_async.submit(creds)
        sync_result = use_sync.submit(creds).result()
        bad = use_connection.submit(LiveConnection(param_secret))
        bad.wait()
        return {
            "flow_run_id": str(current_flow_run.id),
            "results_hold_the_secret": async_result.token == sync_result.token == param_secret,
            "api_key_digest": await api_key_digest.submit(),
            "bad_state": bad.state.type.value,
            "bad_message": bad.state.message,
        }

    with logs_at_info() as records:
        with temporary_settings(updates={PREFECT_API_KEY: api_key}):
            out = await secret_flow()
        # Workers send their task events to the GCS about once a second.
        shown = poll(
            ray_shown, lambda s: s["has_tasks"] == ["False"] or "Supervisor.submit" in s["names"]
        )

    # Non-vacuous: the secrets travelled (the key to the supervisor, the
    # parameter there and back), and a parameter failed to be sent.
    assert out["results_hold_the_secret"] is True
    assert out["api_key_digest"] == hashlib.sha256(api_key.encode()).hexdigest()
    assert out["bad_state"] == "FAILED"
    assert "'conn'" in out["bad_message"] and "LiveConnection" in out["bad_message"]

    secrets = (api_key, param_secret)
    said = "\n".join(records.lines)
    assert "could not be sent to a supervisor" in said  # the failed task run was logged
    assert not [s for s in secrets if s in said]
    assert not [s for s in secrets if s in out["bad_message"]]

    # Non-vacuous: the tables were read. (Not the sync task's own entry: in a
    # long session Ray drops task events beyond its buffer, this one included.)
    assert any(name.startswith("aioray-supervisor-") for name in shown["names"])
    if shown["has_tasks"] == ["True"]:  # Ray 2.60 has a task table to read
        assert "Supervisor.submit" in shown["names"], shown["names"][:20]
    everything_shown = "\n".join(shown["names"] + shown["runtime_envs"])
    assert not [s for s in secrets if s in everything_shown]

    flow_run_id = uuid.UUID(out["flow_run_id"])
    logs = poll(
        lambda: read_logs(flow_run_id),
        lambda logs: any("could not be sent to a supervisor" in log.message for log in logs),
    )
    api_said = "\n".join(log.message for log in logs)
    assert not [s for s in secrets if s in api_said]

    assert not [s for s in secrets if s in ray_log_text()]
