"""Fixtures for tests/ (asyncio).

``ray_session`` (one Ray per pytest session) and ``runtime`` (a shared default
Runtime) come from ``tests/_support.py``; any module under tests/ can use them.
A Runtime created inside a test uses the session's Ray and leaves it running.
``prefect_api`` (one temporary Prefect server per session) is for the Prefect
integration tests (``tests/test_prefect_*.py``).
"""

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # before Prefect is imported
# Task runs' logs reach the API in batches, every 2 s by default: tests that read
# them back (tests/test_differential.py) wait for less. Ray workers inherit it.
os.environ.setdefault("PREFECT_LOGGING_TO_API_BATCH_INTERVAL", "0.25")

from collections.abc import Iterator

import pytest

# Hard bounds on every test and on the run (tests/_bounds.py): hooks, found by name.
from tests._bounds import pytest_configure, pytest_runtest_protocol
from tests._support import ray_session, runtime

__all__ = [
    "anyio_backend",
    "prefect_api",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_runtest_protocol",
    "ray_session",
    "runtime",
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A temporary Prefect server (SQLite) for the whole session; yields its API URL.

    Prefect is imported here, not at the top, so the core tests do not pay for it.
    """
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


# The chaos tests leave the session's Prefect API recording hundreds of task runs'
# events for a while after they end; a test after them that reads the API back
# then sees runs half-recorded, or an API too busy to answer in a second (CI,
# Ray 2.60). They run last, so no other test meets that backlog.
_LAST = ("tests/test_chaos.py",)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put the chaos tests (see ``_LAST``) at the end, keeping every other order."""
    items.sort(key=lambda item: item.nodeid.startswith(_LAST))
