"""Ray metrics of one supervisor: what ``aioray-runner status`` shows, as time series.

Exported through Ray's own metrics API (``ray.util.metrics``), so they reach the
node's metrics export port, Ray's dashboard and its Prometheus and Grafana
set-up with no configuration (``docs/observability.md`` lists them). Names as
Prometheus shows them (Ray adds the ``ray_`` prefix):

* ``ray_aioray_calls_total{runtime, function, outcome}``: calls ended
  (``finished``, ``failed``, ``cancelled``), exact;
* ``ray_aioray_call_seconds{runtime, function}``: how long calls ran (a histogram;
  at most ``census.MAX_DURATIONS`` per update, the newest: a sample at high rates);
* ``ray_aioray_calls_in_phase{runtime, supervisor, phase}``: calls ``running``,
  waiting for ``dependencies``, waiting to ``start``, in the thread pool (``threads``);
* ``ray_aioray_loop_lag_seconds{runtime, supervisor, quantile}``: the loop's
  recent lag (p50, p99), when the watchdog is on.

Updated from the census every :data:`INTERVAL_S` seconds, not per call: a call
costs nothing more than the census's counting, and an update costs one metric
call per function and outcome. Function names are the only tag that grows with
the program: at most ``census.MAX_FUNCTIONS`` per supervisor, the rest as ``"other"``.
"""

from __future__ import annotations

import asyncio
import logging

from .census import Census

#: Seconds between updates (Ray reports them to its agent every few seconds anyway).
INTERVAL_S = 5.0
#: Histogram bucket bounds of a call's run time, in seconds.
BOUNDS = [0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0]

_log = logging.getLogger("aioray_runner.supervisor")


class Metrics:
    """Copies one supervisor's census into Ray metrics every few seconds."""

    def __init__(self, census: Census, runtime: str, supervisor: int) -> None:
        from ray.util import metrics

        self._census = census
        self._tags = {"runtime": runtime, "supervisor": str(supervisor)}
        self._runtime = runtime
        self._calls_total = metrics.Counter(
            "aioray_calls_total",
            "Calls that ended on aioray-runner supervisors, by outcome",
            tag_keys=("runtime", "function", "outcome"),
        )
        self._call_seconds = metrics.Histogram(
            "aioray_call_seconds",
            "How long calls ran on aioray-runner supervisors",
            boundaries=BOUNDS,
            tag_keys=("runtime", "function"),
        )
        self._calls = metrics.Gauge(
            "aioray_calls_in_phase",
            "Calls on an aioray-runner supervisor now, by phase",
            tag_keys=("runtime", "supervisor", "phase"),
        )
        self._loop_lag = metrics.Gauge(
            "aioray_loop_lag_seconds",
            "How late an aioray-runner supervisor's event loop turns (recent quantiles)",
            tag_keys=("runtime", "supervisor", "quantile"),
        )
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def started(cls, census: Census, runtime: str, supervisor: int) -> Metrics:
        """New metrics, updated every :data:`INTERVAL_S` seconds on the running loop."""
        metrics = cls(census, runtime, supervisor)
        metrics._task = asyncio.ensure_future(metrics._run())
        return metrics

    async def _run(self) -> None:
        while True:
            try:
                self.update()
            except Exception:  # metrics must never take the supervisor down
                _log.debug("updating Ray metrics failed", exc_info=True)
            await asyncio.sleep(INTERVAL_S)

    def update(self) -> None:
        """Copy what changed since the last update into the metrics."""
        ended, durations = self._census.take_ended()
        for function, seconds in durations:
            self._call_seconds.observe(seconds, {"runtime": self._runtime, "function": function})
        for (function, how), count in ended.items():
            tags = {"runtime": self._runtime, "function": function, "outcome": how}
            self._calls_total.inc(count, tags)
        for phase, value in self._census.phases().items():
            self._calls.set(value, {**self._tags, "phase": phase})
        watchdog = self._census.watchdog
        lag = watchdog.lag_quantiles() if watchdog is not None else None
        if lag is not None:
            for quantile in ("p50", "p99"):
                self._loop_lag.set(lag[quantile], {**self._tags, "quantile": quantile})
