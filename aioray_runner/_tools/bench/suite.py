"""``aioray-runner bench``: every scenario against every runner installed, in one run.

Scenarios (one table, one chart each):

* ``core.trivial``, ``core.io``, ``core.latency``: ``Runtime`` against a plain
  async Ray actor called once per coroutine;
* ``prefect.fanout``, ``prefect.dag``, ``prefect.cpu``: ``AioRayTaskRunner``
  against prefect-ray's ``RayTaskRunner``, Prefect's ``ThreadPoolTaskRunner``,
  prefect-dask's ``DaskTaskRunner`` (when installed) and no runner at all.

For each scenario and runner the result holds the time per task and its ratio
to ``aioray`` (``2.0``: the runner took twice as long per task as aioray), taken
in the same run: these machines are noisy, ratios in one run are what to compare.
"""

from __future__ import annotations

import asyncio
import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from .common import Progress, log, quiet_environment, table

#: Scenario groups, the scenarios in each, and what a "task" is in each.
GROUPS = ("core", "prefect")

SCENARIOS: dict[str, str] = {
    "core.trivial": "{core_n} trivial calls (`async def noop(i): return i`), all at once",
    "core.io": "{core_n} calls of `await asyncio.sleep({delay})`, all at once",
    "core.latency": "one trivial call at a time, {latency_n} times: median round trip",
    "prefect.fanout": "{fanout} async Prefect tasks of `await asyncio.sleep({delay})`",
    "prefect.dag": "a DAG: {dag_leaves} sleeps, combined by tasks given nested futures",
    "prefect.cpu": "{cpu_n} sync CPU-bound Prefect tasks (pure Python, {cpu_loops:,} loops)",
}

#: Runner names per group, and what each is (the table's and the chart's labels).
CORE_RUNNERS = {
    "aioray": "aioray Runtime",
    "ray-actor": "plain async Ray actor, a call per coroutine",
}


@dataclass(frozen=True)
class Sizes:
    """How much each scenario does; ``caps`` limits slow runners' task counts."""

    core_n: int
    latency_n: int
    fanout: int
    dag_leaves: int
    dag_fan_in: int
    cpu_n: int
    cpu_loops: int
    delay: float = 0.1
    caps: dict[str, int] = field(default_factory=dict)


SIZES: dict[str, Sizes] = {
    # For the tests: every scenario and runner, in about a minute.
    "tiny": Sizes(
        core_n=50,
        latency_n=5,
        fanout=10,
        dag_leaves=6,
        dag_fan_in=3,
        cpu_n=2,
        cpu_loops=20_000,
        caps={"ray": 6, "dask": 6},
    ),
    # `--quick`: about three minutes on a 2-core machine (190 s and 209 s measured on a
    # shared one; most of it is the Prefect API's and Ray's start and four flow runs).
    "quick": Sizes(
        core_n=2_000,
        latency_n=50,
        fanout=200,
        dag_leaves=40,
        dag_fan_in=5,
        cpu_n=4,
        cpu_loops=2_000_000,
        caps={"ray": 40, "dask": 40},
    ),
    # The figures on docs/benchmarks.md.
    "full": Sizes(
        core_n=10_000,
        latency_n=200,
        fanout=1_000,
        dag_leaves=200,
        dag_fan_in=10,
        cpu_n=8,
        cpu_loops=4_000_000,
        caps={"ray": 200, "dask": 200},
    ),
}


@dataclass
class Options:
    """What ``aioray-runner bench`` was asked for."""

    size: str = "full"
    groups: tuple[str, ...] = GROUPS
    runners: tuple[str, ...] | None = None  # None: every runner installed
    num_cpus: int = field(default_factory=lambda: os.cpu_count() or 2)
    server_grace: float = 3.0


def prefect_installed() -> bool:
    """Whether Prefect can be imported (the ``prefect`` extra)."""
    from .common import installed_version

    return installed_version("prefect") is not None


def plan_runners(options: Options) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The runners to run per group, and the ones left out with the reason."""
    from .common import installed_version

    skipped: dict[str, str] = {}
    plan: dict[str, list[str]] = {}
    if "core" in options.groups:
        plan["core"] = [r for r in CORE_RUNNERS if _wanted(r, options)]
    if "prefect" in options.groups:
        if installed_version("prefect") is None:
            skipped["prefect"] = (
                "Prefect is not installed (python -m pip install '.[prefect]'"
                " in a clone of aioray-runner)"
            )
        else:
            from .flows import RUNNERS, missing_runners

            names = [r for r in RUNNERS if _wanted(r, options)]
            missing = missing_runners(names)
            skipped.update(missing)
            plan["prefect"] = [r for r in names if r not in missing]
    return {group: names for group, names in plan.items() if names}, skipped


def _wanted(runner: str, options: Options) -> bool:
    return options.runners is None or runner in options.runners


def run_suite(options: Options) -> dict[str, Any]:
    """Run the benchmark; return what ``--json`` writes (see :func:`figures_json`)."""
    quiet_environment()
    sizes = SIZES[options.size]
    plan, skipped = plan_runners(options)
    for line in left_out_lines(left_out(skipped)):
        log(f"   {line}")
    if not plan:
        raise SystemExit("nothing to run: no scenario has a runner installed")

    raw: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    steps = sum(len(names) for names in plan.values())
    with prefect_api("prefect" in plan, grace=options.server_grace):
        from .common import local_ray

        # log_to_driver=False: the workers' output would scroll the progress bar away;
        # failures still reach the caller as exceptions.
        with local_ray(options.num_cpus, log_to_driver=False), Progress(steps) as progress:
            raw = asyncio.run(_run(plan, sizes, options, progress))
    return figures_json(options, sizes, raw, skipped, time.perf_counter() - started)


class prefect_api:
    """A temporary Prefect API of the benchmark's own (a temporary database).

    ``grace``: seconds to let it record the last events before it stops.
    """

    def __init__(self, wanted: bool, grace: float = 3.0) -> None:
        self.wanted = wanted
        self.grace = grace
        self._harness: Any = None

    def __enter__(self) -> None:
        if not self.wanted:
            return
        log("== starting a temporary Prefect API")
        started = time.perf_counter()
        from prefect.settings import PREFECT_API_URL
        from prefect.testing.utilities import prefect_test_harness

        self._harness = prefect_test_harness(server_startup_timeout=120)
        self._harness.__enter__()
        url = PREFECT_API_URL.value()
        # Ray workers inherit the environment: they reach this API too.
        os.environ["PREFECT_API_URL"] = url
        log(f"   Prefect API at {url} in {time.perf_counter() - started:.1f} s")

    def __exit__(self, *exc: Any) -> None:
        if self._harness is not None:
            time.sleep(self.grace)
            os.environ.pop("PREFECT_API_URL", None)
            self._harness.__exit__(*exc)


async def _run(
    plan: dict[str, list[str]], sizes: Sizes, options: Options, progress: Progress
) -> dict[str, dict[str, Any]]:
    """scenario -> runner -> figures (or {"error": text})."""
    raw: dict[str, dict[str, Any]] = {}
    for runner in plan.get("core", []):
        progress.start_step(f"core · {runner}", 2 * sizes.core_n + sizes.latency_n)
        try:
            figures = await _core_runner(runner, sizes)
        except Exception as exc:
            figures = {s: _error(exc) for s in SCENARIOS if s.startswith("core.")}
        for scenario, value in figures.items():
            raw.setdefault(scenario, {})[runner] = value
        progress.end_step(_summary(figures))
    for runner in plan.get("prefect", []):
        runner_plan = _prefect_plan(runner, sizes)
        from .flows import dag_tasks

        n = runner_plan["fanout"] + dag_tasks(*runner_plan["dag"]) + runner_plan["cpu"][0] + 4
        progress.start_step(f"prefect · {runner}", n)
        try:
            from .flows import run_runner

            result = await run_runner(runner, runner_plan, num_cpus=options.num_cpus)
            figures = {f"prefect.{w}": result[w] for w in ("fanout", "dag", "cpu")}
            for value in figures.values():
                value["flow_wall_s"] = result["flow_wall_s"]
        except Exception as exc:
            figures = {s: _error(exc) for s in SCENARIOS if s.startswith("prefect.")}
        for scenario, value in figures.items():
            raw.setdefault(scenario, {})[runner] = value
        progress.end_step(_summary(figures))
    return raw


def _error(exc: BaseException) -> dict[str, Any]:
    traceback.print_exc()
    return {"error": f"{type(exc).__name__}: {exc}"}


def _summary(figures: dict[str, Any]) -> str:
    parts = []
    for scenario, value in figures.items():
        short = scenario.split(".", 1)[1]
        if "error" in value:
            parts.append(f"{short} FAILED ({value['error'][:80]})")
        else:
            parts.append(f"{short} {_ms(value['per_task_ms'])}/task")
    return ", ".join(parts)


def _prefect_plan(runner: str, sizes: Sizes) -> dict[str, Any]:
    cap = sizes.caps.get(runner)
    fanout = min(sizes.fanout, cap) if cap else sizes.fanout
    leaves = min(sizes.dag_leaves, cap) if cap else sizes.dag_leaves
    return {
        "delay": sizes.delay,
        "fanout": fanout,
        "dag": (leaves, sizes.dag_fan_in),
        "cpu": (sizes.cpu_n, sizes.cpu_loops),
    }


async def _core_runner(runner: str, sizes: Sizes) -> dict[str, Any]:
    from . import core

    n = sizes.core_n
    if runner == "aioray":
        from ..._caller.runtime import Runtime

        async with Runtime(supervisors=1) as rt:
            await core.warm_up(rt, 100)
            return {
                "core.trivial": await core.runtime_run(rt, n, None, "aioray trivial"),
                "core.io": await core.runtime_run(rt, n, sizes.delay, "aioray io"),
                "core.latency": await core.runtime_latency(rt, sizes.latency_n),
            }
    if runner == "ray-actor":
        import ray

        actor = core.plain_actor()
        try:
            return {
                "core.trivial": await core.actor_run(actor, n, None, "actor trivial"),
                "core.io": await core.actor_run(actor, n, sizes.delay, "actor io"),
                "core.latency": await core.actor_latency(actor, sizes.latency_n),
            }
        finally:
            ray.kill(actor)
    raise ValueError(f"unknown core runner {runner!r}")


# -- results --------------------------------------------------------------------------------


def runner_label(scenario: str, runner: str) -> str:
    """What the runner called ``runner`` is, in words."""
    if scenario.startswith("core."):
        return CORE_RUNNERS[runner]
    from .flows import RUNNERS

    return RUNNERS[runner][0]


def figures_json(
    options: Options,
    sizes: Sizes,
    raw: dict[str, dict[str, Any]],
    skipped: dict[str, str],
    elapsed: float,
) -> dict[str, Any]:
    """The benchmark's JSON: per scenario and runner, ``per_task_ms`` and ``ratio``."""
    import aioray_runner

    from .common import versions

    scenarios: dict[str, Any] = {}
    for scenario, template in SCENARIOS.items():
        if scenario not in raw:
            continue
        runners = raw[scenario]
        base = runners.get("aioray", {}).get("per_task_ms")
        entries = {}
        for runner, value in runners.items():
            entry = {"label": runner_label(scenario, runner), **value}
            if "per_task_ms" in value:
                entry["ratio"] = value["per_task_ms"] / base if base else None
            entries[runner] = entry
        scenarios[scenario] = {
            "title": template.format(**vars(sizes)),
            "per_task": "median round trip of one call"
            if scenario == "core.latency"
            else "time from the first submit to the last result, divided by N",
            "runners": entries,
        }
    return {
        "benchmark": "aioray-runner bench",
        "size": options.size,
        "versions": {
            "aioray-runner": aioray_runner.__version__,
            **versions("ray", "prefect", "prefect-ray", "prefect-dask", "anyio"),
        },
        "cpus": os.cpu_count(),
        "num_cpus": options.num_cpus,
        "elapsed_s": round(elapsed, 1),
        "ratio": "the runner's time per task over aioray's, in this run (2.0: half as fast)",
        "scenarios": scenarios,
        "skipped": left_out(skipped),
    }


def left_out(skipped: dict[str, str]) -> dict[str, dict[str, str]]:
    """What was left out, for the JSON: name -> ``{"label": what it is, "reason": why}``.

    ``name`` is a runner (``ray``: prefect-ray's ``RayTaskRunner``, not installed)
    or ``prefect`` (the Prefect scenarios, when Prefect is not installed).
    """
    out = {}
    for name, reason in skipped.items():
        if name == "prefect":
            label = "the prefect scenarios"
        else:
            from .flows import RUNNERS  # a runner was planned: Prefect is installed

            label = RUNNERS[name][0]
        out[name] = {"label": label, "reason": reason}
    return out


def left_out_lines(skipped: dict[str, dict[str, str]]) -> list[str]:
    """``left out prefect-ray RayTaskRunner (ray): prefect-ray is not installed (...)``."""
    return [
        f"left out {entry['label']} ({name}): {entry['reason']}" for name, entry in skipped.items()
    ]


def failures(result: dict[str, Any]) -> list[str]:
    """``scenario/runner: error`` for every run that failed."""
    return [
        f"{scenario}/{runner}: {entry['error']}"
        for scenario, data in result["scenarios"].items()
        for runner, entry in data["runners"].items()
        if "error" in entry
    ]


def _ms(value: float) -> str:
    return f"{value:.3f} ms" if value < 1 else f"{value:.1f} ms"


def report(result: dict[str, Any]) -> str:
    """The tables printed at the end: per scenario, per-task time and ratio per runner."""
    v = result["versions"]
    head = (
        f"aioray-runner bench ({result['size']}): aioray-runner {v['aioray-runner']},"
        f" Ray {v['ray']}, Prefect {v['prefect'] or '(not installed)'},"
        f" Python {v['python']}, {result['cpus']} CPUs; {result['elapsed_s']:.0f} s"
    )
    out = [
        head,
        "ratio: the runner's time per task over aioray's in this run (2.0x = aioray twice"
        " as fast). Runners with fewer tasks (N) were capped: they are too slow for more.",
    ]
    for scenario, data in result["scenarios"].items():
        rows = []
        for runner, entry in data["runners"].items():
            if "error" in entry:
                rows.append([entry["label"], "", "FAILED", "", entry["error"][:60]])
                continue
            ratio = entry.get("ratio")
            rows.append(
                [
                    entry["label"],
                    str(entry["n"]),
                    _ms(entry["per_task_ms"]),
                    f"{entry['total_s']:.2f}",
                    "-" if runner == "aioray" else (f"{ratio:.2f}x" if ratio else "n/a"),
                ]
            )
        out += ["", f"{scenario}: {data['title']} ({data['per_task']})"]
        out.append(table(["runner", "N", "per task", "total s", "ratio"], rows))
    if result["skipped"]:
        out.append("")
        out += left_out_lines(result["skipped"])
    return "\n".join(out)
