"""``remote_options``: Ray options for the Prefect task runs submitted inside it.

Same meaning as ``prefect_ray.context.remote_options``, so flows written for
``RayTaskRunner`` keep working (the options are described in
``aioray_runner/_prefect/options.py``, where they are built).
"""

from __future__ import annotations

from ._prefect.options import ACTOR_PLACEMENT_OPTIONS, current_remote_options, remote_options

__all__ = ["ACTOR_PLACEMENT_OPTIONS", "current_remote_options", "remote_options"]

remote_options.__module__ = __name__
current_remote_options.__module__ = __name__
