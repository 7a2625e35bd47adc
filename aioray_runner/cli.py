"""``aioray-runner``: the command line (``bench``, ``doctor``, ``demo``).

Like ``ray`` and ``prefect``: one command, a subcommand per job, ``--help`` on
each. Results go to stdout, progress and logs to stderr. Exit codes: 0 done, 1
something failed (a benchmark run, a problem ``doctor`` found), 2 bad arguments.
Needs only the core package; ``bench``'s Prefect scenarios and ``demo`` need the
``prefect`` extra, ``bench --plot`` the ``plot`` extra.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__


def _runner_list(text: str) -> tuple[str, ...]:
    from ._tools.bench.suite import CORE_RUNNERS

    known = [*CORE_RUNNERS, "ray", "threadpool", "dask", "gather"]
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in values if v not in known]
    if bad or not values:
        named = ", ".join(bad) if bad else repr(text)
        raise argparse.ArgumentTypeError(
            f"unknown runner(s) {named}; choose from {', '.join(known)}"
        )
    return values


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``aioray-runner`` argument parser, with its subcommands."""
    parser = argparse.ArgumentParser(
        prog="aioray-runner",
        description="Run async Python on Ray: benchmarks, a health check, the demo.",
    )
    parser.add_argument("--version", action="version", version=f"aioray-runner {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    bench = sub.add_parser(
        "bench",
        help="measure aioray against the other runners installed, in one run",
        description=(
            "Run the scenarios `core` (trivial calls, 0.1 s I/O calls, latency of one call:"
            " Runtime against a plain async Ray actor) and `prefect` (async I/O fan-out, a"
            " DAG with nested futures, sync CPU tasks: AioRayTaskRunner against prefect-ray,"
            " Prefect's thread pool, prefect-dask and asyncio.gather in the flow) on a"
            " temporary local Ray and a temporary Prefect API of its own. Prints a table of"
            " time per task and the ratio to aioray, taken in the same run."
        ),
    )
    size = bench.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_const", const="quick", dest="size", help="smaller sizes (~3 min)"
    )
    size.add_argument(
        "--size",
        choices=["tiny", "quick", "full"],
        default="full",
        help="how much each scenario does (tiny: a smoke test; default: %(default)s)",
    )
    bench.add_argument(
        "--scenario",
        choices=["core", "prefect"],
        action="append",
        help="run only this group of scenarios (repeatable; default: both)",
    )
    bench.add_argument(
        "--runners",
        type=_runner_list,
        help="comma-separated runners to run (default: every one installed), e.g. aioray,ray",
    )
    bench.add_argument(
        "--num-cpus", type=_positive, default=None, help="CPUs of the local Ray (default: all)"
    )
    bench.add_argument("--json", type=Path, metavar="FILE", help="write the figures as JSON")
    bench.add_argument(
        "--plot",
        type=Path,
        metavar="FILE.png",
        help="draw a bar chart per scenario (needs the `plot` extra: matplotlib)",
    )

    doctor = sub.add_parser(
        "doctor",
        help="versions, Ray and Prefect reachability, known-bad pins: paste it in a bug report",
        description=(
            "Check this environment: the versions that matter, whether Ray answers at the"
            " configured address (RAY_ADDRESS or --address) and with which authentication,"
            " whether Prefect's API answers (PREFECT_API_URL), and package combinations"
            " known not to work, each problem with its fix. Exits 1 when it finds a problem."
        ),
    )
    doctor.add_argument("--address", help="the Ray address to check (default: RAY_ADDRESS)")
    doctor.add_argument(
        "--connect",
        action="store_true",
        help="also connect to that Ray (in a child process) and report its nodes",
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")

    status = sub.add_parser(
        "status",
        help="what every runtime's supervisors on a Ray cluster are doing",
        description=(
            "Join the Ray cluster at --address (else RAY_ADDRESS, else the cluster `ray start`"
            " runs on this machine) and show, per runtime and supervisor: calls running,"
            " waiting for dependencies, waiting to start, finished and failed; the oldest"
            " running calls; the event loop's lag; memory. It only reads. Exits 1 when"
            " the cluster cannot be reached. See docs/observability.md."
        ),
    )
    status.add_argument("--address", help="the Ray cluster (default: RAY_ADDRESS)")
    status.add_argument(
        "--json", action="store_true", help="print JSON (schema in docs/observability.md)"
    )
    status.add_argument(
        "--watch",
        type=float,
        metavar="SECONDS",
        help="refresh every SECONDS until Ctrl-C (a terminal: in place)",
    )
    status.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for each supervisor's answer (default 10)",
    )

    demo = sub.add_parser(
        "demo",
        help="the README's main job: a Prefect flow on a temporary local Ray",
        description=(
            "Download pages (async tasks, all at once on a supervisor actor), parse some of"
            " them (sync tasks, in threads of the supervisor), summarise them; on a temporary"
            " Prefect API and a temporary local Ray. Needs the `prefect` extra."
        ),
    )
    demo.add_argument("--pages", type=_positive, default=500, help="pages to download")
    demo.add_argument("--parsed", type=_positive, default=20, help="pages to parse")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aioray-runner`` console script. Returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "bench":
        return _bench(args)
    if args.command == "doctor":
        return _doctor(args)
    if args.command == "status":
        return _status(args)
    return _demo(args)


def _bench(args: argparse.Namespace) -> int:
    from ._tools.bench.common import installed_version
    from ._tools.bench.suite import GROUPS, Options, failures, report, run_suite

    if args.plot is not None:
        from ._tools.bench.plot import require_matplotlib

        require_matplotlib()  # before minutes of work, not after
    groups = tuple(args.scenario or GROUPS)
    if "prefect" in (args.scenario or ()) and installed_version("prefect") is None:
        raise SystemExit(
            "the prefect scenarios need Prefect: python -m pip install '.[prefect]'"
            " in a clone of aioray-runner"
        )
    options = Options(size=args.size, groups=groups, runners=args.runners)
    if args.num_cpus:
        options.num_cpus = args.num_cpus
    result = run_suite(options)
    print(report(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"figures written to {args.json}", file=sys.stderr)
    if args.plot is not None:
        from ._tools.bench.plot import plot

        plot(result, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    failed = failures(result)
    for line in failed:
        print(f"FAILED {line}", file=sys.stderr)
    return 1 if failed else 0


def _doctor(args: argparse.Namespace) -> int:
    from ._tools.doctor import diagnose, render

    report = diagnose(args.address, connect=args.connect)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(render(report))
    return 1 if report.problems else 0


def _status(args: argparse.Namespace) -> int:
    import time

    from ._tools.status import StatusError, collect, render

    if args.watch is not None and args.watch <= 0:
        raise SystemExit(f"--watch takes seconds above 0, not {args.watch}")
    in_place = args.watch is not None and sys.stdout.isatty() and not args.json
    try:
        while True:
            status = collect(args.address, timeout=args.timeout)
            text = json.dumps(status, indent=2) if args.json else render(status)
            print(("\x1b[H\x1b[J" if in_place else "") + text, flush=True)
            if args.watch is None:
                return 0
            time.sleep(args.watch)
    except StatusError as exc:
        print(f"aioray-runner status: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def _demo(args: argparse.Namespace) -> int:
    from ._tools.bench.common import installed_version

    if installed_version("prefect") is None:
        raise SystemExit(
            "the demo is a Prefect flow: python -m pip install '.[prefect]'"
            " in a clone of aioray-runner"
        )
    from ._tools.demo import main as demo_main

    return demo_main(["--pages", str(args.pages), "--parsed", str(args.parsed)])


if __name__ == "__main__":
    sys.exit(main())
