"""``aioray-runner doctor``: what to paste into a bug report, and what to fix first.

Versions, where Ray is and whether it answers (and with which authentication),
whether Prefect's API answers, and known-bad combinations of packages, each
problem with its fix. Nothing here starts Ray or a Prefect server; ``--connect``
connects to the configured Ray in a child process and disconnects.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._prefect.compat import OLDEST_SUPPORTED
from .bench.common import installed_version

#: Distributions whose versions a bug report needs.
DISTRIBUTIONS = (
    "ray",
    "prefect",
    "prefect-ray",
    "prefect-dask",
    "anyio",
    "trio",
    "cloudpickle",
    "fastapi",
    "pydantic",
    "matplotlib",
)


@dataclass
class Finding:
    """One problem found, and what to do about it."""

    problem: str
    fix: str


@dataclass
class Report:
    """What ``doctor`` found: sections of ``(label, text)`` lines, problems and notes."""

    versions: dict[str, str | None] = field(default_factory=dict)
    ray: dict[str, Any] = field(default_factory=dict)
    prefect: dict[str, Any] = field(default_factory=dict)
    problems: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The report as JSON-ready data (``doctor --json``)."""
        return {
            "versions": self.versions,
            "ray": self.ray,
            "prefect": self.prefect,
            "problems": [{"problem": f.problem, "fix": f.fix} for f in self.problems],
            "notes": self.notes,
        }


def prefect_problems(prefect: str, fastapi: str | None) -> list[Finding]:
    """What is wrong with this Prefect release, and its fastapi, for AioRayTaskRunner."""
    problems = []
    version = _version_tuple(prefect)
    if version < _version_tuple(OLDEST_SUPPORTED) or version >= (4,):
        problems.append(
            Finding(
                f"prefect {prefect} is outside the range AioRayTaskRunner supports"
                f" (Prefect {OLDEST_SUPPORTED} to 3.x, what CI tests)",
                f'pip install "prefect>={OLDEST_SUPPORTED},<4"',
            )
        )
    # Prefect's server (the temporary one a flow starts too) and fastapi releases
    # it predates; each cap measured (README.md, "Supported versions").
    if version < (3, 6, 19) and _version_tuple(fastapi) >= (0, 132):
        problems.append(
            Finding(
                f"fastapi {fastapi} with prefect {prefect}: Prefect's server (also the"
                " temporary one a flow starts) refuses the client's task runs with 422"
                " Unprocessable Entity (a subflow fails at once)",
                'pip install "fastapi<0.132"',
            )
        )
    elif version < (3, 7, 8) and _version_tuple(fastapi) >= (0, 137):
        problems.append(
            Finding(
                f"fastapi {fastapi} with prefect {prefect}: Prefect's server (also the"
                " temporary one a flow starts) answers every call with 500 Internal Server"
                " Error (`'PrefectRouter' object has no attribute 'routes'`)",
                'pip install "fastapi<0.137"',
            )
        )
    elif version < (3, 9) and _version_tuple(fastapi) >= (0, 155):
        problems.append(
            Finding(
                f"fastapi {fastapi} with prefect {prefect}: Prefect's server (also the"
                " temporary one a flow starts) fails to start with `TypeError: Body() got"
                " an unexpected keyword argument 'min_items'`",
                'pip install "fastapi<0.155"',
            )
        )
    return problems


def _version_tuple(text: str | None) -> tuple[int, ...]:
    parts = []
    for piece in (text or "0").split(".")[:3]:
        # The leading digits only: "18rc1" is 18 (a pre-release of 3.6.18), not 181.
        digits = re.match(r"\d*", piece)
        parts.append(int(digits.group() or 0) if digits else 0)
    return tuple(parts)


def check_versions(report: Report) -> None:
    """Versions, and the combinations known not to work."""
    import aioray_runner

    report.versions = {
        "aioray-runner": aioray_runner.__version__,
        "python": f"{platform.python_version()} ({platform.python_implementation()},"
        f" {platform.system()} {platform.machine()})",
        **{name: installed_version(name) for name in DISTRIBUTIONS},
    }
    v = report.versions
    if _version_tuple(v["ray"]) < (2, 10):
        report.problems.append(
            Finding(
                f"ray {v['ray']} is older than 2.10, the oldest release aioray-runner supports",
                'pip install "ray[default]>=2.10"',
            )
        )
    prefect = v["prefect"]
    if prefect is not None:
        report.problems.extend(prefect_problems(prefect, v["fastapi"]))
    else:
        report.notes.append(
            "Prefect is not installed: AioRayTaskRunner needs it"
            " (python -m pip install '.[prefect]' in a clone of aioray-runner)"
        )
    if v["trio"] is None:
        report.notes.append(
            "trio is not installed: Runtime(backend='trio') and anyio.run(main,"
            " backend='trio') need it (python -m pip install '.[trio]' in a clone of aioray-runner)"
        )
    if not _has_dashboard_deps():
        report.notes.append(
            "Ray's dashboard is not installed (Ray without its `default` extra): no"
            " `The Ray UI is available at ...` (pip install 'ray[default]', or the"
            " `prefect` extra)"
        )


def _has_dashboard_deps() -> bool:
    # ray[default] is what brings the dashboard's server (aiohttp) and its metrics.
    return all(installed_version(name) for name in ("aiohttp", "aiohttp-cors", "colorful"))


def _token_sources() -> list[str]:
    found = []
    if os.environ.get("RAY_AUTH_TOKEN"):
        found.append("RAY_AUTH_TOKEN")
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path and Path(path).expanduser().is_file():
        found.append(f"RAY_AUTH_TOKEN_PATH ({path})")
    default = Path.home() / ".ray" / "auth_token"
    if default.is_file():
        found.append(str(default).replace(str(Path.home()), "~", 1))
    return found


def local_cluster_address() -> str | None:
    """The address of the cluster that `ray start` runs on this machine, if any."""
    try:
        from ray._private.utils import read_ray_address

        address = read_ray_address(None)
    except Exception:
        return None
    return str(address) if address else None


def check_ray(report: Report, address: str | None, *, connect: bool) -> None:
    """Where Ray is, whether something answers there, and which authentication applies."""
    from .._caller.connection import address_advice, endpoint_of
    from .._caller.raywatch import PROBE_TIMEOUT_S, probe_address

    source = "--address" if address else ("RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") else None)
    address = address or os.environ.get("RAY_ADDRESS") or None
    local = local_cluster_address()
    info: dict[str, Any] = {"address": address, "address_from": source, "local_cluster": local}
    report.ray = info
    if address is None:
        info["summary"] = (
            "no address configured (RAY_ADDRESS unset, no --address): Runtime() and"
            " AioRayTaskRunner() start a temporary local Ray of their own"
        )
        if local:
            report.notes.append(
                f"a Ray cluster runs on this machine ({local}, started by `ray start`);"
                " address='auto' joins it"
            )
    target = address
    if address == "auto":
        target = local
        if local is None:
            report.problems.append(
                Finding(
                    f"address 'auto' (from {source}) but no `ray start` cluster runs on"
                    " this machine",
                    "start one (`ray start --head --node-ip-address=127.0.0.1`), or unset"
                    " RAY_ADDRESS to let the runtime start a temporary local Ray",
                )
            )
    endpoint = endpoint_of(target) if target and target != "local" else None
    if endpoint is not None:
        host, port = endpoint
        exc = probe_address(host, port, PROBE_TIMEOUT_S)
        if exc is None:
            info["reachable"] = True
            info["summary"] = f"{target}: something accepts connections there"
        else:
            info["reachable"] = False
            reason = exc.strerror or type(exc).__name__
            info["summary"] = f"{target}: not reachable ({reason})"
            report.problems.append(
                Finding(f"nothing answers at {target} ({reason})", address_advice(str(target)))
            )
    _check_auth(report, info, remote=endpoint is not None)
    if connect and target:
        _connect(report, info, address or "")


def _check_auth(report: Report, info: dict[str, Any], *, remote: bool) -> None:
    mode = os.environ.get("RAY_AUTH_MODE")
    tokens = _token_sources()
    try:
        import ray.exceptions

        has_token_auth = hasattr(ray.exceptions, "AuthenticationError")
    except ImportError:
        has_token_auth = False
    if not has_token_auth:
        info["auth"] = "none (this Ray has no token authentication: it came in Ray 2.52)"
        return
    if mode is None:
        described = (
            "RAY_AUTH_MODE unset: a new local Ray turns token authentication on"
            " (Ray's default since 2.52); a driver joining a cluster sends a token only"
            " with RAY_AUTH_MODE=token"
        )
    else:
        described = f"RAY_AUTH_MODE={mode}"
    info["auth"] = described
    info["auth_mode"] = mode
    info["token_sources"] = tokens
    if remote and (mode or "").lower() != "token":
        report.problems.append(
            Finding(
                "this process will send no authentication token to the cluster"
                f" (RAY_AUTH_MODE {'unset' if mode is None else '=' + mode}); a cluster"
                " started by Ray 2.60 requires one and does not answer without it"
                " (ray.init fails after 20-30 s)",
                "export RAY_AUTH_MODE=token, with the cluster's token in"
                " ~/.ray/auth_token (copy it from the head node) or RAY_AUTH_TOKEN;"
                " for a cluster without token authentication, export RAY_AUTH_MODE=disabled",
            )
        )
    if (mode or "").lower() == "token" and not tokens:
        report.problems.append(
            Finding(
                "RAY_AUTH_MODE=token but no token is available to send",
                "put the cluster's token in ~/.ray/auth_token (`ray start --head` saves it"
                " there on the head node), or set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH",
            )
        )


_CONNECT_SCRIPT = """
import json, sys, ray
ctx = ray.init(address=sys.argv[1], log_to_driver=False)
nodes = [n for n in ray.nodes() if n.get("Alive")]
print(json.dumps({
    "nodes": len(nodes),
    "cpus": ray.cluster_resources().get("CPU", 0),
    "ray_version": getattr(ctx, "ray_version", None),
    "dashboard_url": getattr(ctx, "dashboard_url", None) or None,
}))
ray.shutdown()
"""


def _connect(report: Report, info: dict[str, Any], address: str) -> None:
    """Connect for real, in a child process (so this one keeps no Ray state)."""
    try:
        out = subprocess.run(
            [sys.executable, "-c", _CONNECT_SCRIPT, address],
            capture_output=True,
            text=True,
            timeout=90,
        )
    except subprocess.TimeoutExpired:
        info["connected"] = False
        report.problems.append(
            Finding(
                f"connecting to Ray at {address} did not finish in 90 s",
                "check the address's port and the auth mode above",
            )
        )
        return
    if out.returncode != 0:
        info["connected"] = False
        last = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        report.problems.append(
            Finding(f"ray.init(address={address!r}) failed: {last}", "see the Ray section above")
        )
        return
    info["connected"] = True
    info["cluster"] = json.loads(out.stdout.strip().splitlines()[-1])


def check_prefect(report: Report) -> None:
    """Where Prefect's API is, and whether it answers."""
    if report.versions.get("prefect") is None:
        report.prefect = {"installed": False}
        return
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    info: dict[str, Any] = {"installed": True, "api_url": url}
    report.prefect = info
    if not url:
        info["summary"] = (
            "PREFECT_API_URL unset: each flow run starts a temporary local API"
            " (fine to try things; set PREFECT_API_URL to keep runs in a server)"
        )
        return
    import httpx

    try:
        response = httpx.get(f"{url.rstrip('/')}/health", timeout=5.0)
        info["reachable"] = response.status_code == 200
        info["summary"] = f"{url}: /health answered {response.status_code}"
    except httpx.HTTPError as exc:
        info["reachable"] = False
        info["summary"] = f"{url}: no answer ({type(exc).__name__}: {exc})"
    if not info["reachable"]:
        report.problems.append(
            Finding(
                f"Prefect's API at {url} does not answer ({info['summary']})",
                "start it (`prefect server start`), or correct PREFECT_API_URL"
                " (`prefect config view` shows where it is set); unset it to use a"
                " temporary local API",
            )
        )


def diagnose(address: str | None = None, *, connect: bool = False) -> Report:
    """Run every check; see the module docstring."""
    report = Report()
    check_versions(report)
    check_ray(report, address, connect=connect)
    check_prefect(report)
    return report


def render(report: Report) -> str:
    """The report as text for a terminal or a bug report."""
    out = ["aioray-runner doctor", "", "Versions"]
    width = max(len(k) for k in report.versions)
    for name, version in report.versions.items():
        out.append(f"  {name.ljust(width)}  {version or '(not installed)'}")
    out += ["", "Ray"]
    for key in ("summary", "auth"):
        if key in report.ray:
            out.append(f"  {key.ljust(8)}  {report.ray[key]}")
    if report.ray.get("token_sources") is not None:
        sources = ", ".join(report.ray["token_sources"]) or "none"
        out.append(f"  {'tokens'.ljust(8)}  {sources}")
    if "cluster" in report.ray:
        out.append(f"  {'cluster'.ljust(8)}  {json.dumps(report.ray['cluster'])}")
    out += ["", "Prefect"]
    if not report.prefect.get("installed"):
        out.append("  not installed")
    else:
        out.append(f"  api       {report.prefect.get('summary')}")
    if report.notes:
        out += ["", "Notes"]
        out += [f"  - {note}" for note in report.notes]
    out.append("")
    if report.problems:
        out.append(f"Problems ({len(report.problems)})")
        for finding in report.problems:
            out.append(f"  PROBLEM: {finding.problem}")
            out.append(f"      fix: {finding.fix}")
    else:
        out.append("No problems found.")
    return "\n".join(out)
