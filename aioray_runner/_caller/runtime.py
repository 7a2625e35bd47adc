"""``Runtime``: the public face of the supervisors.

It connects to Ray (or starts a temporary local instance: ``connection.py``),
starts the supervisors, and turns ``submit(fn, *args)`` into an
:class:`AioRayFuture`. The machinery lives in ``pool.py`` and what it
coordinates (the caller's side) and in ``aioray_runner/_supervisor/`` (the actor's).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from types import TracebackType
from typing import (
    TYPE_CHECKING,
    Any,
    Literal,
    Self,
    TypeVar,
)

import anyio
import ray

from .._common.settings import (
    DEFAULT_BLOCKED_LOOP_THRESHOLD,
    DEFAULT_HOLD_RESULTS_ABOVE,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_START_TIMEOUT,
    DEFAULT_THREADS,
    Settings,
)
from .._common.watchdog import BlockedLoop
from ..errors import RuntimeNotRunningError
from .connection import RayConnection
from .futures import AioRayFuture, as_completed, await_all, wait_all
from .placement import DEFAULT_GROUP, GroupKey
from .pool import Pool
from .raywatch import probe_for_current_ray
from .submitting import Submitting

if TYPE_CHECKING:
    pass

T = TypeVar("T")


class Runtime(Submitting):
    """Run coroutines on supervisor actors in a Ray cluster.

    Args:
        address: ``None`` uses the Ray this process already initialized, else
            joins the cluster ``RAY_ADDRESS`` names (Ray's convention), else
            starts a temporary local Ray instance of its own, stopped on close.
            It never joins another program's cluster by accident: ``"auto"``
            joins the one ``ray start`` runs on this machine; ``"host:6379"``
            or ``"ray://host:10001"`` a given one. The log says which happened.
        supervisors: How many supervisor actors to start. ``None`` starts one per
            live Ray node with CPUs: on one machine a single supervisor is fastest (see
            ``docs/choosing-settings.md``); on a cluster they spread across nodes.
        max_concurrency: Calls running at once in each supervisor; more wait
            their turn inside the supervisor (they are never refused).
        backend: ``"asyncio"`` (default) or ``"trio"``: the library your
            coroutines are written for. With ``"trio"`` they run in a
            ``trio.run`` on a thread of each supervisor.
        threads: Size of each supervisor's thread pool, where plain functions run.
        init_kwargs: Extra keyword arguments for ``ray.init``.
        actor_options: Extra Ray actor options for the supervisors
            (``num_cpus``, ``resources``, ``runtime_env``, ...). By default a
            supervisor reserves no CPU: it spends its time waiting.
        start_timeout: Seconds to wait for the supervisors to start.
        preload: Modules each supervisor imports as it starts (first calls pay nothing).
        blocked_loop_threshold: Seconds a supervisor's event loop may go without
            turning before the runtime warns, naming the call that blocked it and
            where (see ``docs/failures.md``); a stall that was no call's doing
            (a supervisor that got no CPU) is mentioned at INFO level instead,
            at most once a minute. ``None`` or ``0`` switches the watchdog off.
        on_blocked_loop: Called with a :class:`BlockedLoop` for each such stall,
            on the runtime's I/O thread (keep it short), instead of the warning
            on ``logger`` (the Prefect runner puts it in the task run's logs).
        logger: Where to log what the runtime does (where Ray runs, how many
            supervisors started, supervisors that died). Defaults to the
            ``"aioray_runner"`` logger.
        settings: All the settings above as one :class:`Settings` (then those
            arguments are ignored): handy to keep one configuration and reuse it
            with :meth:`Settings.replace`. ``runtime.settings`` is the one in force.
        forward_logs: Names of loggers whose records, inside the supervisors,
            are sent to this process and emitted here under the same names
            (instead of printed by the supervisor, which Ray echoes with a
            ``(Supervisor pid=...)`` prefix). Say ``["mypkg"]`` to see your
            code's logs in your own console with your own formatting.
        on_log: Called with each forwarded ``logging.LogRecord`` (it has an
            ``aioray_supervisor`` attribute), on the runtime's I/O thread,
            instead of handing it to the logger of its name.
        name: Begins the supervisors' Ray actor names (up to 40 of ``A-Za-z0-9-_.``).
        hold_results_above: Bytes (pickled) above which a call's value stays on its supervisor
            until asked for (``await``, a dependent); ``None``: never (docs/scaling.md).

    Use it as ``async with Runtime() as rt:`` in async code (asyncio or trio), or
    ``with Runtime() as rt:`` in sync code.

    Bad settings raise ``ValueError`` or ``TypeError`` here, naming the setting
    and what is valid (see ``docs/failures.md``).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        supervisors: int | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        backend: Literal["asyncio", "trio"] = "asyncio",
        threads: int = DEFAULT_THREADS,
        init_kwargs: dict[str, Any] | None = None,
        actor_options: dict[str, Any] | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        preload: Iterable[str] = (),
        logger: logging.Logger | None = None,
        blocked_loop_threshold: float | None = DEFAULT_BLOCKED_LOOP_THRESHOLD,
        on_blocked_loop: Callable[[BlockedLoop], object] | None = None,
        settings: Settings | None = None,
        forward_logs: Iterable[str] = (),
        on_log: Callable[[logging.LogRecord], object] | None = None,
        name: str | None = None,
        hold_results_above: int | None = DEFAULT_HOLD_RESULTS_ABOVE,
    ) -> None:
        # Every keyword argument named in SETTING_NAMES (the one list of settings).
        settings = Settings.from_arguments(settings, locals())
        #: Every setting, checked (see :class:`Settings`).
        self.settings = settings
        self.logger = logger or logging.getLogger("aioray_runner")
        self.on_blocked_loop = on_blocked_loop
        self.on_log = on_log
        self._pool: Pool | None = None
        # Starting or joining Ray, and leaving it (see connection.py).
        self._ray = RayConnection(settings, self.logger)
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the runtime has started and not closed."""
        return self._pool is not None

    @property
    def owns_ray(self) -> bool:
        """Whether this runtime called ``ray.init`` (and so disconnects on close)."""
        return self._ray.owns_ray

    def start(self) -> Self:
        """Connect to Ray and start the supervisors (blocking). Returns ``self``.

        Raises:
            ConnectionError: nothing answers at ``address`` (within a few seconds),
                or Ray there does not let this process in (a missing auth token);
                the message names the address and what to do.
        """
        with self._lock:
            if self._pool is not None:
                raise RuntimeError("this runtime is already running")
            self._ray.connect()
            try:
                pool = Pool(
                    self.settings,
                    logger=self.logger,
                    on_blocked_loop=self.on_blocked_loop,
                    on_log=self.on_log,
                    ray_probe=probe_for_current_ray(self._ray.owns_ray),
                )
                try:
                    pool.start()
                except BaseException:
                    pool.close()
                    raise
            except BaseException:
                self._ray.disconnect()
                raise
            self._pool = pool
        return self

    def close(self, *, wait: bool = True, grace: float = 5.0) -> None:
        """Stop the supervisors and disconnect from Ray if this runtime connected.

        With ``wait`` (the default) calls still running finish first; else they are
        cancelled, with ``grace`` seconds in all to unwind (0: stop at once). Open streams
        close; values left on supervisors (``future.held``) go. Ray stops if it started it.
        """
        if self._pool is None:
            return
        self.drain(cancel=not wait, grace=grace)
        self._shutdown()

    def drain(self, *, cancel: bool = False, grace: float = 5.0) -> None:
        """Block until no call is in flight (sync code; :meth:`close` uses it).

        With ``cancel``, calls in flight are cancelled and given ``grace`` seconds in
        all to unwind (their ``finally`` blocks run); without it, they are waited for.
        Open streams are closed. Calls submitted while draining are not waited for.
        """
        streams, calls = self._require().inboxes.split(self.outstanding())
        wait_all(calls, cancel=cancel, grace=grace, close=streams)

    async def aclose(self, *, wait: bool = True) -> None:
        """Like :meth:`close`, but waits without blocking the event loop."""
        if self._pool is None:
            return
        streams, calls = self._require().inboxes.split(self.outstanding())
        await await_all(calls, cancel=not wait, grace=5.0, close=streams)
        await anyio.to_thread.run_sync(self._shutdown)

    def outstanding(self) -> list[AioRayFuture[Any]]:
        """Every call submitted and not finished yet (queued calls are sent first)."""
        return self._require().outstanding()

    def _shutdown(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            if pool is not None:
                pool.close()
            self._ray.disconnect(pool.ray_lost if pool is not None else None)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(wait=exc_type is None)

    async def __aenter__(self) -> Self:
        # ray.init and actor start-up block for seconds: keep the caller's loop free.
        await anyio.to_thread.run_sync(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose(wait=exc_type is None)

    # -- submitting (submit and map: see Submitting) -----------------------------------

    def _target(self) -> tuple[Pool, GroupKey]:
        return self._require(), DEFAULT_GROUP

    def submit_call(
        self,
        fn: Callable[..., Any],
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        label: str | None = None,
        actor_options: dict[str, Any] | None = None,
        reruns: int = 0,
    ) -> AioRayFuture[Any]:
        """``submit`` with every knob, for integrations (the Prefect runner uses it).

        Args:
            fn: The function to call, as ``fn(*args, **kwargs)``.
            args: Its positional arguments.
            kwargs: Its keyword arguments.
            label: The name in the call's label (``"<label>#<call id>"``) and in
                errors; defaults to the function's name.
            actor_options: Run on the group of supervisors started with these
                extra Ray actor options (as :meth:`options`).
            reruns: How many times to run the call again if its supervisor dies
                while it may have been running. By default such a call fails
                with :class:`SupervisorDiedError` (a call that had certainly not
                started is always sent elsewhere, whatever this says). Inside,
                :func:`current_attempt` tells which run it is.

        Raises:
            InvalidCallError: ``fn`` is not something a supervisor can run.
            SerializationError: ``fn`` or an argument cannot be pickled.
            TypeError, ValueError: ``reruns`` is not a whole number of 0 or more.
            RuntimeNotRunningError: the runtime is not running.
            RayLostError: Ray went away; the runtime cannot run more calls.
            SupervisorDiedError: supervisors for these options keep failing to start.
        """
        pool = self._require()
        return pool.submit(
            fn,
            tuple(args),
            kwargs or {},
            group=pool.group(actor_options or {}),
            label=label,
            reruns=reruns,
        )

    def broadcast(
        self, fn: Callable[..., Any], /, *args: Any, every_group: bool = False, **kwargs: Any
    ) -> list[AioRayFuture[Any]]:
        """Run ``fn`` once on every live supervisor (set-up, flushing).

        By default on the supervisors of the default group; with
        ``every_group``, also on those started by :meth:`options`.
        """
        return self._require().broadcast(fn, args, kwargs, every_group=every_group)

    def options(self, **actor_options: Any) -> RuntimeOptions:
        """A view of this runtime whose submissions run on a supervisor started with these
        extra Ray actor options (``num_gpus=1``, ``resources={...}``, ``runtime_env=``),
        on first use, shared by every submission with the same options."""
        pool = self._require()
        return RuntimeOptions(pool, pool.group(actor_options))

    async def as_completed(
        self, futures: Iterable[AioRayFuture[T]]
    ) -> AsyncIterator[AioRayFuture[T]]:
        """Yield the futures as they finish (asyncio or trio); each one once."""
        async for future in as_completed(futures):
            yield future

    # -- introspection -----------------------------------------------------------------

    def supervisor_info(self) -> list[dict[str, Any]]:
        """Where each live supervisor runs (index, pid, node) and its settings."""
        return [dict(s.info) for s in self._require().supervisors.every() if s.alive]

    async def stats(self, *, collect: bool = False) -> list[dict[str, Any]]:
        """Counters and memory of each live supervisor; ``collect`` runs their GC first.

        One dict per supervisor: ``index``, ``pid``, ``running`` (calls running now),
        ``calls_held`` (outcomes kept until their futures are dropped), ``held_bytes``
        (their pickled size), ``unpolled`` (finished, not yet sent), ``functions``,
        ``started_total``, ``polls`` (batches of results sent back), ``cpu_s`` (its
        CPU time so far), ``rss_bytes``, ``peak_rss_bytes``, ``streams`` (running).
        """
        pool = self._require()
        pool.flush_releases_soon()
        refs = [s.handle.stats.remote(collect) for s in pool.supervisors.live()]
        return await anyio.to_thread.run_sync(ray.get, refs)

    def _require(self) -> Pool:
        pool = self._pool
        if pool is None:
            raise RuntimeNotRunningError(
                "this runtime is not running: use `async with Runtime() as rt:`"
                " (or `with Runtime() as rt:`), or call rt.start() first"
            )
        return pool


class RuntimeOptions(Submitting):
    """Submissions to a group of supervisors started with particular actor options.

    Made by :meth:`Runtime.options`; ``submit`` and ``map`` work as the runtime's.
    """

    def __init__(self, pool: Pool, group: GroupKey) -> None:
        self._pool = pool
        self._group = group

    def _target(self) -> tuple[Pool, GroupKey]:
        return self._pool, self._group
