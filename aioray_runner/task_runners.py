"""``AioRayTaskRunner``: a Prefect 3 task runner that runs async tasks on supervisors.

The public home of the Prefect names (as ``prefect_ray.task_runners`` is
prefect-ray's): they are built in ``aioray_runner/_prefect/`` and re-exported
here, and they say they live here (``__module__``), so reprs, pickles and the
docs keep naming this path. See :class:`AioRayTaskRunner`.
"""

from __future__ import annotations

from ._prefect.runner import AioRayTaskRunner, PrefectAioRayFuture, aresult, aresults

__all__ = ["AioRayTaskRunner", "PrefectAioRayFuture", "aresult", "aresults"]

for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
