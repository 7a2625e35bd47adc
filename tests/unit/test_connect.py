"""Which ``ray.init("ray://...")`` failures the runtime retries.

The texts are what Ray 2.10's client raised in CI and locally when its proxy lost
the server process it forked (ray-project/ray#63202); the end-to-end ``ray://``
run is ``tests/test_prefect_cluster.py``.
"""

from __future__ import annotations

from aioray_runner._caller.connection import _client_server_start_failed

PROXY_SAID_SO = """Initialization failure from server:
Traceback (most recent call last):
  File ".../ray/util/client/server/proxier.py", line 711, in Datapath
    raise RuntimeError(
RuntimeError: Starting Ray client server failed. See ray_client_server_23000.err for detailed logs.
"""

PROCESS_DIED_BETWEEN_CHECKS = """Initialization failure from server:
Traceback (most recent call last):
  File ".../ray/util/client/server/proxier.py", line 704, in Datapath
    if not self.proxy_manager.start_specific_server(
  File ".../ray/util/client/server/proxier.py", line 335, in start_specific_server
    cmd = psutil_proc.cmdline()
psutil.ZombieProcess: PID still exists but it's a zombie (pid=22389)
"""

RUNTIME_ENV_FAILED = """Initialization failure from server:
Traceback (most recent call last):
  File ".../ray/util/client/server/proxier.py", line 704, in Datapath
    if not self.proxy_manager.start_specific_server(
  File ".../ray/util/client/server/proxier.py", line 305, in start_specific_server
    serialized_runtime_env_context = self._create_runtime_env(
RuntimeError: Failed to create runtime_env for Ray client server, it is caused by:
"""


def test_a_lost_client_server_is_retried() -> None:
    assert _client_server_start_failed(ConnectionAbortedError(PROXY_SAID_SO))
    assert _client_server_start_failed(ConnectionAbortedError(PROCESS_DIED_BETWEEN_CHECKS))


def test_other_connection_failures_are_not_retried() -> None:
    # A bad runtime_env fails the same way every time: retrying only doubles the wait.
    assert not _client_server_start_failed(ConnectionAbortedError(RUNTIME_ENV_FAILED))
    assert not _client_server_start_failed(ConnectionAbortedError("Connection refused"))
