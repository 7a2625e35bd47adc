"""Fixtures for tests/ (asyncio).

``ray_session`` (one Ray per pytest session) and ``runtime`` (a shared default
Runtime) come from ``tests/_support.py``; any module under tests/ can use them.
A Runtime created inside a test uses the session's Ray and leaves it running.
"""

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported

import pytest

from tests._support import ray_session, runtime

__all__ = ["anyio_backend", "ray_session", "runtime"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
