"""Logs from supervisors, forwarded to the caller's own loggers (``forward_logs``)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator

import pytest

from aioray_runner import Runtime
from tests._support import CollectRecords

LOGGER = "tests.forwarded"


def log_some(token: str) -> int:
    """Runs in a supervisor: one record of each kind."""
    logger = logging.getLogger(LOGGER)
    logger.setLevel(logging.INFO)
    logger.info("hello %s", token, extra={"token": token, "run_id": uuid.UUID(int=7)})
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed %s", token)
    logging.getLogger("tests.not_forwarded").warning("stays there %s", token)
    return 2


@pytest.fixture
def collected() -> Iterator[CollectRecords]:
    handler = CollectRecords()
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def test_records_arrive_under_their_own_logger_with_their_extras(
    ray_session: None, collected: CollectRecords
) -> None:
    token = uuid.uuid4().hex
    with Runtime(supervisors=1, forward_logs=[LOGGER]) as rt:
        assert rt.submit(log_some, token).result(timeout=60) == 2
        start = time.monotonic()
        while len([r for r in collected.records if token in r.getMessage()]) < 2:
            assert time.monotonic() - start < 30, collected.records
            time.sleep(0.05)
    mine = [r for r in collected.records if token in r.getMessage()]
    info, error = mine
    assert (info.levelname, info.getMessage()) == ("INFO", f"hello {token}")
    assert info.token == token and info.run_id == uuid.UUID(int=7)  # type: ignore[attr-defined]
    assert info.aioray_supervisor == 0  # type: ignore[attr-defined]
    assert info.name == LOGGER
    assert error.levelname == "ERROR"
    assert "ValueError: boom" in (error.exc_text or "")
    # Only the named loggers travel.
    assert not [r for r in collected.records if "stays there" in r.getMessage()]


def test_a_callback_takes_the_records_instead(ray_session: None) -> None:
    token = uuid.uuid4().hex
    seen: list[logging.LogRecord] = []
    with Runtime(supervisors=1, forward_logs=[LOGGER], on_log=seen.append) as rt:
        rt.submit(log_some, token).result(timeout=60)
        start = time.monotonic()
        while len(seen) < 2:
            assert time.monotonic() - start < 30, seen
            time.sleep(0.05)
    assert [r.levelname for r in seen] == ["INFO", "ERROR"]
