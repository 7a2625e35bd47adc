"""Settings without Ray: one frozen object, checked once, shared by every room.

``Settings`` is what ``Runtime``, the pool, each supervisor and the Prefect
runner read. These tests never start Ray (no ``ray_session`` fixture): building
a ``Runtime`` or an ``AioRayTaskRunner`` does not connect to anything.
"""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from pathlib import Path

import pytest

from aioray_runner import Runtime, Settings
from aioray_runner._backends import make_host
from aioray_runner._backends._asyncio import AsyncioHost
from aioray_runner._common.settings import (
    BACKEND_NAMES,
    DEFAULT_BLOCKED_LOOP_THRESHOLD,
    DEFAULT_MAX_CONCURRENCY,
    SETTING_NAMES,
    check_settings,
)

ROOT = Path(__file__).resolve().parents[2]

EVERY_FIELD = {
    "address": "ray://127.0.0.1:10001",
    "supervisors": 3,
    "max_concurrency": 7,
    "backend": "trio",
    "threads": 5,
    "init_kwargs": {"namespace": "n", "num_cpus": 2},
    "actor_options": {"num_cpus": 0.5},
    "start_timeout": 9.0,
    "preload": ("json", "csv"),
    "blocked_loop_threshold": 0.25,
    "forward_logs": ("mypkg.events",),
    "name": "etl.nightly",
    "hold_results_above": 1024,
}


def _documented_args(cls: type) -> set[str]:
    doc = inspect.getdoc(cls) or ""
    args = doc.split("Args:", 1)[1]
    return {
        line.strip().split(":")[0]
        for line in args.splitlines()
        if line.startswith("    ") and not line.startswith("     ")
    }


def test_every_setting_is_listed_everywhere_it_must_be() -> None:
    """The fields of Settings are the one list: each front door takes and documents
    every one, check_settings checks only settings, docs/choosing-settings.md names
    each, and as_kwargs gives them all back."""
    pytest.importorskip("prefect")  # the runner is the Prefect extra
    from aioray_runner.task_runners import AioRayTaskRunner

    names = set(SETTING_NAMES)
    assert names == {f.name for f in dataclasses.fields(Settings)}
    assert names == set(EVERY_FIELD), "EVERY_FIELD (above) must list each setting"
    for front_door in (Runtime, AioRayTaskRunner):
        parameters = inspect.signature(front_door).parameters
        missing = names - set(parameters)
        assert not missing, f"{front_door.__name__} does not take {sorted(missing)}"
        undocumented = names - _documented_args(front_door)
        assert not undocumented, f"{front_door.__name__}'s docstring lacks {sorted(undocumented)}"
    assert set(inspect.signature(check_settings).parameters) <= names
    assert set(Settings().as_kwargs()) == names
    guide = (ROOT / "docs" / "choosing-settings.md").read_text()
    unnamed = sorted(name for name in names if f"`{name}`" not in guide)
    assert not unnamed, f"docs/choosing-settings.md does not name {unnamed}"


def test_defaults_are_the_documented_ones() -> None:
    settings = Settings()
    assert settings.max_concurrency == DEFAULT_MAX_CONCURRENCY == 10_000
    assert settings.blocked_loop_threshold == DEFAULT_BLOCKED_LOOP_THRESHOLD == 0.5
    assert settings.backend == "asyncio"
    assert settings.address is None and settings.supervisors is None
    assert settings.preload == () and dict(settings.init_kwargs) == {}
    assert settings.hold_results_above == 256 * 1024


def test_every_field_is_a_runtime_argument_and_a_runner_argument() -> None:
    """A new setting is written once, in Settings: both front doors take it by name."""
    pytest.importorskip("prefect")  # the runner is the Prefect extra
    from aioray_runner.task_runners import AioRayTaskRunner

    names = {f.name for f in dataclasses.fields(Settings)}
    assert names == set(EVERY_FIELD), "EVERY_FIELD must list each Settings field"
    runtime = Runtime(**EVERY_FIELD)  # type: ignore[arg-type]
    assert runtime.settings == Settings(**EVERY_FIELD)  # type: ignore[arg-type]
    asyncio_fields = {**EVERY_FIELD, "backend": "asyncio"}
    runner = AioRayTaskRunner(**asyncio_fields)  # type: ignore[arg-type]
    for name, value in asyncio_fields.items():
        if name == "init_kwargs":
            continue  # the runner adds Prefect's namespace default; checked below
        assert getattr(runner.settings, name) == value, name
    assert runner.settings.init_kwargs == {"namespace": "n", "num_cpus": 2}


def test_it_is_frozen_and_replace_checks_again() -> None:
    settings = Settings(max_concurrency=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.max_concurrency = 6  # type: ignore[misc]
    changed = settings.replace(threads=4)
    assert (changed.threads, changed.max_concurrency, settings.threads) == (4, 5, 32)
    with pytest.raises(ValueError, match="threads must be at least 1, not 0"):
        settings.replace(threads=0)


def test_it_owns_copies_of_the_mappings_it_was_given() -> None:
    options = {"num_cpus": 1}
    settings = Settings(actor_options=options)
    options["num_cpus"] = 99
    assert settings.actor_options == {"num_cpus": 1}
    kwargs = settings.as_kwargs()
    kwargs["actor_options"]["num_cpus"] = 5
    assert settings.actor_options == {"num_cpus": 1}


def test_equal_by_value_not_hashable_and_picklable() -> None:
    """Supervisors receive it pickled; the runner compares runners by it."""
    a = Settings(**EVERY_FIELD)  # type: ignore[arg-type]
    b = pickle.loads(pickle.dumps(a))
    assert a == b and a is not b
    assert a != a.replace(threads=6)
    with pytest.raises(TypeError):
        hash(a)


@pytest.mark.parametrize(
    ("field", "value", "error", "message"),
    [
        ("preload", "pandas", TypeError, "wrap it in a list"),
        ("preload", ["ok", 3], TypeError, "must hold names as strings"),
        ("init_kwargs", [("num_cpus", 2)], TypeError, "init_kwargs must be a dict"),
        ("actor_options", "num_cpus=1", TypeError, "actor_options must be a dict"),
        ("start_timeout", 0, ValueError, "start_timeout must be a number of seconds above 0"),
        ("blocked_loop_threshold", 0.001, ValueError, "at least 0.01 s"),
        ("backend", "curio", ValueError, "backend must be 'asyncio' or 'trio'"),
        ("name", "my flow", ValueError, "name must be 1 to 40 letters"),
        ("name", "-x", ValueError, "starting with a letter or digit"),
        ("name", "x" * 41, ValueError, "name must be 1 to 40 letters"),
        ("name", 7, TypeError, "name must be a string"),
        ("hold_results_above", -1, ValueError, "hold_results_above must be 0 or more bytes"),
        ("hold_results_above", "1MB", TypeError, "hold_results_above must be a number of bytes"),
        ("hold_results_above", 2.5, TypeError, "hold_results_above must be a number of bytes"),
    ],
)
def test_bad_values_name_the_setting(
    field: str, value: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        Settings(**{field: value})  # type: ignore[arg-type]


def test_zero_threshold_switches_the_watchdog_off() -> None:
    assert Settings(blocked_loop_threshold=0).blocked_loop_threshold is None


def test_runtime_takes_a_settings_object_and_refuses_other_things() -> None:
    settings = Settings(supervisors=2)
    assert Runtime(settings=settings).settings is settings
    with pytest.raises(TypeError, match=r"settings must be an aioray_runner\.Settings, got dict"):
        Runtime(settings={"supervisors": 2})  # type: ignore[arg-type]


def test_the_runner_keeps_settings_through_duplicate_and_pickling() -> None:
    pytest.importorskip("prefect")
    from aioray_runner.task_runners import AioRayTaskRunner

    runner = AioRayTaskRunner(supervisors=2, preload=["json"], start_timeout=30)
    assert runner.duplicate() == runner
    assert runner.duplicate().settings == runner.settings
    copy = pickle.loads(pickle.dumps(runner))
    assert copy == runner and copy.settings.preload == ("json",)
    assert runner != AioRayTaskRunner(supervisors=3)
    # prefect-ray's attribute names still read the same values.
    assert runner.address is None and runner.init_kwargs == {"namespace": "prefect"}


def test_the_runner_refuses_trio_saying_why() -> None:
    pytest.importorskip("prefect")
    from aioray_runner.task_runners import AioRayTaskRunner

    with pytest.raises(ValueError, match="Prefect's task engine, which needs asyncio"):
        AioRayTaskRunner(backend="trio")


def test_backends_are_one_table() -> None:
    assert BACKEND_NAMES == ("asyncio", "trio")
    host = make_host("asyncio")
    assert isinstance(host, AsyncioHost)

    async def fn() -> int:
        return 1

    assert host.adapt(fn) is fn  # asyncio adds nothing per call
    trio_host = make_host("trio")
    assert type(trio_host).__name__ == "TrioHost" and trio_host.adapt(fn) is not fn
