"""Fixtures for tests_trio/: the same session Ray and shared runtime, on trio."""

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported

import pytest

# Hard bounds on every test and on the run (tests/_bounds.py): hooks, found by name.
from tests._bounds import pytest_configure, pytest_runtest_protocol
from tests._support import ray_session, runtime

__all__ = ["anyio_backend", "pytest_configure", "pytest_runtest_protocol", "ray_session", "runtime"]


@pytest.fixture
def anyio_backend() -> str:
    return "trio"
