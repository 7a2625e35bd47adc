"""``remote_options``: Ray options for the Prefect task runs submitted inside it.

Same meaning as ``prefect_ray.context.remote_options``, so flows written for
``RayTaskRunner`` keep working. What applies differs by kind of task:

* **sync tasks** submitted inside it run as Ray tasks, exactly as under
  ``RayTaskRunner`` (outside it they run in threads of a supervisor until found
  CPU-bound, as the runner's ``sync_tasks`` says): every option is passed to
  ``ray.remote(...)`` (``num_cpus``, ``num_gpus``, ``memory``, ``resources``,
  ``runtime_env``, ``max_retries``, ...);
* **async tasks** run on a supervisor actor. The options that place an actor
  (:data:`ACTOR_PLACEMENT_OPTIONS`) select a supervisor started with them, shared
  by every async task submitted with the same options; the rest
  (``max_retries``, ``retry_exceptions``, ...) do not apply to async tasks: use
  Prefect's own ``retries`` instead.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .._caller.placement import ACTOR_PLACEMENT_OPTIONS

__all__ = ["ACTOR_PLACEMENT_OPTIONS", "current_remote_options", "remote_options"]

_current: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "aioray_remote_options", default=None
)


def current_remote_options() -> dict[str, Any]:
    """The options in force here (an empty dict outside any ``remote_options`` block)."""
    return dict(_current.get() or {})


@contextmanager
def remote_options(**options: Any) -> Iterator[dict[str, Any]]:
    """Add Ray options to the task runs submitted inside the block.

    Nested blocks merge with the outer ones; an inner key wins. Yields the
    merged options.

    Example::

        with remote_options(num_cpus=4, num_gpus=1):
            train.submit(data)   # a sync task: a Ray task with 4 CPUs and a GPU
    """
    merged = {**(_current.get() or {}), **options}
    token = _current.set(merged)
    try:
        yield merged
    finally:
        _current.reset(token)
