"""Connecting to Ray: start or join it, say which, and advise about addresses.

:class:`RayConnection` is what :class:`Runtime` hands connecting to: ``connect()``
starts a temporary local Ray or joins a cluster (``address=None`` never joins one
by accident), probing an address first so that one where nothing listens fails
in moments, naming it, instead of after Ray's 20-30 s wait; ``disconnect()``
shuts down a Ray it started or joined, and stops what a lost local Ray left
running. It probes with ``raywatch.probe_address``, the one TCP probe of a Ray
address, which ``aioray-runner doctor`` and the Ray watch use too.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray

from .._common.settings import Settings, split_host_port
from .placement import live_node_count
from .raywatch import PROBE_TIMEOUT_S, probe_address, processes_of_local_ray, stop_leftovers


class RayConnection:
    """The Ray a runtime uses: started, joined, or the one already initialized."""

    def __init__(self, settings: Settings, logger: logging.Logger) -> None:
        self._settings = settings
        self.logger = logger
        self._owns_ray = False
        # The local Ray this runtime started, as (pid, start time): see disconnect.
        self._ray_processes: set[tuple[int, str]] = set()

    @property
    def owns_ray(self) -> bool:
        """Whether ``connect`` called ``ray.init`` (and so ``disconnect`` shuts it down)."""
        return self._owns_ray

    def connect(self) -> None:
        """Start or join Ray, and say exactly which (see ``docs/choosing-settings.md``).

        ``address=None`` never joins a cluster by accident: it uses the Ray this
        process already initialized, else the cluster ``RAY_ADDRESS`` names (Ray's
        own convention), else it starts a temporary local instance of its own,
        even when ``ray start`` runs a cluster on this machine (``"auto"`` joins
        that one).
        """
        if ray.is_initialized():
            self._owns_ray = False
            self.logger.info(
                "Using the Ray instance this process already initialized (%s)",
                _describe_cluster(None),
            )
            return
        address = self._settings.address or self._settings.init_kwargs.get("address")
        from_env = os.environ.get("RAY_ADDRESS") or None
        kwargs = {"namespace": "aioray", **self._settings.init_kwargs}
        # Ray's own None means "join the last cluster started on this machine,
        # if any": "local" makes the temporary instance we promise.
        kwargs["address"] = address or from_env or "local"
        where = address or from_env
        if address is None and from_env:
            self.logger.info("Joining the Ray cluster at %s (from RAY_ADDRESS)", from_env)
        elif where:
            self.logger.info("Connecting to Ray at %s", where)
        endpoint = endpoint_of(where)
        if endpoint is not None:
            # ray.init waits 20-30 s for an address where nothing listens, then
            # fails without naming it: a plain TCP connect answers in moments.
            _probe_or_fail(where or "", *endpoint)
            self._warn_if_no_token(where or "")
        context = self._init_ray(kwargs, where, probed=endpoint is not None)
        self._owns_ray = True
        self._ray_processes = processes_of_local_ray()
        dashboard = getattr(context, "dashboard_url", None) or None
        started = kwargs["address"] == "local"
        self.logger.info(
            "%s (%s)%s",
            "Started a temporary local Ray instance; it stops when this runtime closes"
            if started
            else f"Joined the Ray cluster at {where}",
            _describe_cluster(context),
            f"; Ray dashboard: http://{dashboard}" if dashboard else "",
        )

    def _warn_if_no_token(self, where: str) -> None:
        """Say up front why the connection may hang for half a minute."""
        if _has_token_auth() and os.environ.get(_AUTH_MODE_VAR) is None:
            self.logger.warning(
                "%s is not set in this process, so Ray will not send an authentication"
                " token to %s. If that cluster uses token authentication (clusters"
                " started by Ray 2.60 do by default), it will not answer and connecting"
                " fails after 20-30 s: set %s=token. For a cluster without it, set"
                " %s=disabled to silence this warning.",
                _AUTH_MODE_VAR,
                where,
                _AUTH_MODE_VAR,
                _AUTH_MODE_VAR,
            )

    def _init_ray(self, kwargs: dict[str, Any], where: str | None, *, probed: bool = False) -> Any:
        """``ray.init``, tried twice when a Ray client server fails to start a session.

        Ray's client proxy forks a server process per client and sometimes loses
        it (ray-project/ray#63202: gRPC's fork handlers race with its threads;
        seen often on Ray 2.10 and 2.40). The next attempt forks a new one.

        ``probed``: something listens at ``where`` (see ``_probe_or_fail``); if Ray still
        cannot connect, the likely cause is a missing or wrong auth token.
        """
        is_client = bool(where) and str(where).startswith("ray://")
        for attempt in (1, 2):
            try:
                return ray.init(**kwargs)
            except ConnectionAbortedError as exc:
                if not (is_client and _client_server_start_failed(exc)):
                    raise
                if attempt == 2:
                    raise ConnectionError(
                        f"The Ray client server at {where} failed twice to start a "
                        "session for this client. Its log is ray_client_server_<port>.err "
                        "in the head node's Ray log directory. If that log is empty, "
                        "the proxy lost the process it forked (ray-project/ray#63202): "
                        "start the head with GRPC_ENABLE_FORK_SUPPORT=0 in its "
                        "environment to avoid it."
                    ) from exc
                self.logger.warning(
                    "The Ray client server at %s failed to start a session for this "
                    "client (a known intermittent Ray client problem, "
                    "ray-project/ray#63202); trying once more",
                    where,
                )
            except ConnectionError as exc:
                if not (probed and _ray_did_not_answer(exc)):
                    raise
                # Ray's own error names neither the address nor a cause, and its
                # chain is gRPC internals: replace it.
                raise ConnectionError(_refused_message(str(where), exc)) from None
        raise AssertionError("unreachable")

    def disconnect(self, ray_lost: str | None = None) -> None:
        """Disconnect from Ray if this connection started or joined it (see ``connect``).

        ``ray_lost``: Ray went away; stop what our local Ray left running.
        """
        if self._owns_ray:
            self._owns_ray = False
            # With part of Ray dead, its shutdown leaves the raylet's agents
            # running: note every process of our local Ray (as at the start, when
            # the raylet was alive to be their parent, and now), stop the rest.
            ours = (self._ray_processes | processes_of_local_ray()) if ray_lost else set()
            ray.shutdown()
            if stopped := stop_leftovers(ours):
                self.logger.info("Stopped %d process(es) the lost Ray left behind", len(stopped))


def _describe_cluster(context: Any) -> str:
    """``"GCS 127.0.0.1:6379, 1 node, 2 CPUs"``: what a log line needs to place Ray."""
    gcs = None
    info = getattr(context, "address_info", None)
    if isinstance(info, dict):
        gcs = info.get("gcs_address")
    if gcs is None:
        try:
            gcs = ray.get_runtime_context().gcs_address
        except Exception:
            gcs = None
    nodes = live_node_count(ray.nodes())
    cpus = ray.cluster_resources().get("CPU", 0)
    parts = [f"GCS {gcs}"] if gcs else []
    parts += [f"{nodes} node{'s' if nodes != 1 else ''}", f"{cpus:g} CPU{'s' if cpus != 1 else ''}"]
    return ", ".join(parts)


_AUTH_MODE_VAR = "RAY_AUTH_MODE"


def endpoint_of(where: str | None) -> tuple[str, int] | None:
    """The host and port a ``ray://host:port`` or ``host:port`` address names."""
    if not where:
        return None
    scheme, sep, rest = where.partition("://")
    if sep:
        return split_host_port(rest) if scheme == "ray" else None
    return split_host_port(where)


def _probe_or_fail(where: str, host: str, port: int) -> None:
    """Fail at once, naming the address, if nothing accepts a connection there."""
    exc = probe_address(host, port)
    if exc is not None:
        reason = (
            f"no answer within {PROBE_TIMEOUT_S:.0f} s"
            if isinstance(exc, TimeoutError)
            else (exc.strerror or type(exc).__name__).lower()
        )
        raise ConnectionError(
            f"Cannot reach Ray at {where} ({reason}). {address_advice(where)}"
        ) from None


def address_advice(where: str) -> str:
    """What to do when nothing answers at ``where``: start a cluster, or fix the port."""
    endpoint = endpoint_of(where)
    host = endpoint[0] if endpoint else ""
    # The node IP to start the head with is the host the address names.
    ip = "127.0.0.1" if host in ("localhost", "") else host.strip("[]")
    return (
        f"Start a cluster there (`ray start --head --node-ip-address={ip}` on that"
        f" machine), or correct the address: {_port_advice(where)}"
    )


def _port_advice(where: str) -> str:
    if where.startswith("ray://"):
        return (
            "a ray:// address takes the port of the cluster's Ray client server (10001"
            " unless `ray start` was given --ray-client-server-port), not its GCS port (6379)."
        )
    return (
        "host:port takes the cluster's GCS port (6379 unless `ray start` was given"
        " --port); to connect as a Ray client use ray://host:10001."
    )


def _has_token_auth() -> bool:
    """Whether this Ray has token authentication (Ray 2.52 and newer)."""
    return hasattr(ray.exceptions, "AuthenticationError")


def _ray_did_not_answer(exc: BaseException) -> bool:
    """What ``ray.init`` raises when the port answers but Ray will not talk: a Ray
    client times out, a driver cannot reach the GCS (seen with no auth token)."""
    text = str(exc)
    return text.startswith("ray client connection timeout") or text.startswith(
        "Failed to connect to Ray cluster"
    )


def _refused_message(where: str, exc: BaseException) -> str:
    said = f"Ray said: {type(exc).__name__}: {str(exc).splitlines()[0]}"
    if not _has_token_auth():
        return (
            f"Something listens at {where}, but Ray could not connect to it ({said})."
            f" Check the port: {_port_advice(where)}"
        )
    mode = os.environ.get(_AUTH_MODE_VAR)
    if mode is None or mode.lower() != "token":
        first = (
            f"{_AUTH_MODE_VAR} is {'not set' if mode is None else repr(mode)} in this process,"
            " so Ray sent no authentication token, which a cluster with token"
            " authentication (the default for clusters started by Ray 2.60) requires. Set"
        )
    else:
        first = "Check the token: it must be the cluster's. Also check that you set"
    return (
        f"Ray at {where} did not let this process in ({said}). {first}"
        f" {_AUTH_MODE_VAR}=token in this process's environment and make the cluster's"
        " token available: ~/.ray/auth_token on this machine (`ray start --head` saves it"
        " there; copy it from the head node), or the RAY_AUTH_TOKEN (or"
        " RAY_AUTH_TOKEN_PATH) environment variable. If the cluster has no token"
        f" authentication, check the port: {_port_advice(where)}"
    )


def _client_server_start_failed(exc: BaseException) -> bool:
    """Whether ``ray.init("ray://...")`` failed because the proxy could not start
    the client's server process (not a bad address, version or runtime_env).

    The proxy says so, or (when the process died between two of its checks) fails
    with psutil's ZombieProcess on it.
    """
    text = str(exc)
    return "Starting Ray client server failed" in text or (
        "start_specific_server" in text and "ZombieProcess" in text
    )
