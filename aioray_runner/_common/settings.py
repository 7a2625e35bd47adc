"""``Settings``: every setting of a runtime, checked once, written down once.

One frozen object is made where the user writes the settings (``Runtime(...)`` or
``AioRayTaskRunner(...)``) and handed, unchanged, to the pool, to every
supervisor (it travels to the actor as its constructor argument) and to each
copy of the Prefect runner. The fields of :class:`Settings` are the one list
of settings (:data:`SETTING_NAMES`): ``Runtime`` and ``AioRayTaskRunner`` take each
one as a keyword argument and build their ``Settings`` from that list, and
``tests/unit/test_settings.py`` fails when a setting is missing from either, from
their docstrings or from ``docs/choosing-settings.md``. A new setting is a new
field here, with its check in ``__post_init__``, and a keyword argument (with its
line in the docstring) of both constructors.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Default cap on calls running at once in one supervisor (see docs/choosing-settings.md).
DEFAULT_MAX_CONCURRENCY = 10_000
#: Default seconds a supervisor's loop may stall before the runtime warns: long
#: enough that ordinary work (unpickling a batch of 2,000 calls, Prefect entering
#: a flow run's context) stays quiet on a busy 2-core machine, short enough that
#: a stray ``time.sleep(1)`` is caught.
DEFAULT_BLOCKED_LOOP_THRESHOLD = 0.5
#: Default size of each supervisor's thread pool (plain functions run there).
DEFAULT_THREADS = 32
#: Default seconds to wait for supervisors to start.
DEFAULT_START_TIMEOUT = 120.0
#: Default size (bytes, pickled) above which a call's value stays on its supervisor
#: until asked for, instead of riding the next poll to the caller: below it, an
#: awaited value costs the caller less inline than a fetch's round trip
#: (benchmarks/bench_held.py, docs/measurements.md).
DEFAULT_HOLD_RESULTS_ABOVE = 256 * 1024

#: The backends (the async library coroutines are written for), in the order error
#: messages list them: name -> the extra that installs what it needs (None: nothing).
#: Each is the module ``aioray_runner._backends._<name>``, loaded by this name.
BACKENDS: dict[str, str | None] = {"asyncio": None, "trio": "trio"}
#: The valid backend names.
BACKEND_NAMES: tuple[str, ...] = tuple(BACKENDS)
# Names people write for the asyncio backend.
_BACKEND_ALIASES = {"anyio": "asyncio", "uvloop": "asyncio", "async": "asyncio", "aio": "asyncio"}


@dataclass(frozen=True, eq=True)
class Settings:
    """The settings of a :class:`Runtime` (and of :class:`AioRayTaskRunner`).

    Made once, checked once (bad values raise here, naming the setting and what
    is valid), then shared read-only. ``Runtime(**fields)`` and
    ``AioRayTaskRunner(**fields)`` take the same names; see :class:`Runtime` for
    what each one means. :meth:`replace` gives a copy with some fields changed.

    Raises:
        TypeError: a setting has the wrong type.
        ValueError: a setting has a value that cannot work.
        ImportError: ``backend="trio"`` without trio installed.
    """

    address: str | None = None
    supervisors: int | None = None
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    backend: str = "asyncio"
    threads: int = DEFAULT_THREADS
    init_kwargs: Mapping[str, Any] = field(default_factory=dict)
    actor_options: Mapping[str, Any] = field(default_factory=dict)
    start_timeout: float = DEFAULT_START_TIMEOUT
    preload: tuple[str, ...] = ()
    blocked_loop_threshold: float | None = DEFAULT_BLOCKED_LOOP_THRESHOLD
    forward_logs: tuple[str, ...] = ()
    name: str | None = None
    hold_results_above: int | None = DEFAULT_HOLD_RESULTS_ABOVE

    # Mutable mappings in a frozen object: compared by value, so not hashable.
    __hash__ = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        check_settings(
            address=self.address,
            supervisors=self.supervisors,
            max_concurrency=self.max_concurrency,
            threads=self.threads,
            start_timeout=self.start_timeout,
            backend=self.backend,
            blocked_loop_threshold=self.blocked_loop_threshold,
        )
        check_backend_installed(self.backend)
        _check_name(self.name)
        _check_hold(self.hold_results_above)
        # Own copies, so the caller's later changes to its dicts do not leak in.
        _set(self, "init_kwargs", _mapping("init_kwargs", self.init_kwargs))
        _set(self, "actor_options", _mapping("actor_options", self.actor_options))
        _set(self, "preload", _names("preload", self.preload))
        _set(self, "forward_logs", _names("forward_logs", self.forward_logs))
        _set(self, "blocked_loop_threshold", self.blocked_loop_threshold or None)  # 0 is off

    @classmethod
    def from_arguments(
        cls,
        settings: Settings | None,
        arguments: Mapping[str, Any] | None = None,
        /,
        **fields: Any,
    ) -> Settings:
        """``settings`` if one was given, else new settings (both checked).

        For constructors that take every field as a keyword argument, or a whole
        ``settings=`` object (``Runtime``, ``AioRayTaskRunner``): they pass their
        arguments (``locals()``), and the fields are picked from them by
        :data:`SETTING_NAMES`. ``fields`` as keyword arguments work too.
        """
        if settings is None:
            if arguments is not None:
                fields = {name: arguments[name] for name in SETTING_NAMES}
            return cls(**fields)
        if not isinstance(settings, Settings):
            raise TypeError(
                f"settings must be an aioray_runner.Settings, got {type(settings).__name__}"
            )
        return settings

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (and checked)."""
        return dataclasses.replace(self, **changes)

    def as_kwargs(self) -> dict[str, Any]:
        """The settings as keyword arguments of ``Runtime`` (copies of the mappings)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["init_kwargs"] = dict(self.init_kwargs)
        values["actor_options"] = dict(self.actor_options)
        return values


#: The settings, in the order of their fields: the one list (see the module docstring).
SETTING_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Settings))


def _set(settings: Settings, name: str, value: Any) -> None:
    object.__setattr__(settings, name, value)  # the one way to finish a frozen object


def _mapping(name: str, value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{name} must be a dict of keyword arguments, got an object of type"
            f" {type(value).__name__}"
        )
    return dict(value)


def _names(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(
            f"{name} must be a list of names (like ['pandas', 'mypkg.tasks']),"
            f" got {type(value).__name__}"
            + (f" {value!r}: wrap it in a list" if isinstance(value, str) else "")
        )
    names = tuple(value)
    for item in names:
        if not isinstance(item, str):
            raise TypeError(
                f"{name} must hold names as strings, got an object of type {type(item).__name__}"
            )
    return names


def check_backend_installed(name: str) -> None:
    """Raise :class:`ImportError` naming the extra to install if ``name`` cannot run here."""
    extra = BACKENDS[name]
    if extra is None:
        return
    try:
        importlib.import_module(extra)
    except ImportError as exc:
        raise ImportError(
            f"backend={name!r} needs {extra}: python -m pip install '.[{extra}]'"
            " in a clone of aioray-runner"
        ) from exc


def _check_hold(value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            "hold_results_above must be a number of bytes (or None to send every value"
            f" back with its poll), got an object of type {type(value).__name__}"
        )
    if value < 0:
        raise ValueError(f"hold_results_above must be 0 or more bytes (or None), not {value}")


# A runtime's name goes into its supervisors' Ray actor names: letters, digits, - _ .
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")


def _check_name(name: object) -> None:
    if name is None:
        return
    if not isinstance(name, str):
        raise TypeError(f"name must be a string (or None), got {type(name).__name__}")
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"name must be 1 to 40 letters, digits, '-', '_' or '.', starting with a letter"
            f" or digit (it goes into the supervisors' Ray actor names), not {name!r}"
        )


def check_settings(
    *,
    address: str | None = None,
    supervisors: int | None = None,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    threads: int = DEFAULT_THREADS,
    start_timeout: float = DEFAULT_START_TIMEOUT,
    backend: str = "asyncio",
    blocked_loop_threshold: float | None = None,
) -> None:
    """Refuse bad runtime settings at once, naming the setting and what is valid.

    :class:`Settings` calls it; it is public for integrations that check a few
    settings before they have all of them.

    Raises:
        TypeError: a setting has the wrong type.
        ValueError: a setting has a value that cannot work.
    """
    if backend not in BACKEND_NAMES:
        guess = _BACKEND_ALIASES.get(str(backend).lower()) or next(
            iter(difflib.get_close_matches(str(backend).lower(), BACKEND_NAMES, n=1, cutoff=0.5)),
            None,
        )
        hint = f"; did you mean {guess!r}?" if guess else ""
        valid = " or ".join(repr(name) for name in BACKEND_NAMES)
        raise ValueError(
            f"backend must be {valid} (the library your coroutines are"
            f" written for; anyio code runs on either), not {backend!r}{hint}"
        )
    if supervisors is not None:
        _check_count("supervisors", supervisors, " (or None for one per Ray node)")
    _check_count("max_concurrency", max_concurrency)
    _check_count("threads", threads)
    if isinstance(start_timeout, bool) or not isinstance(start_timeout, int | float):
        raise TypeError(
            "start_timeout must be a number of seconds, got an object of type"
            f" {type(start_timeout).__name__}"
        )
    if not (0 < start_timeout < math.inf):
        raise ValueError(f"start_timeout must be a number of seconds above 0, not {start_timeout}")
    if blocked_loop_threshold is not None:
        if isinstance(blocked_loop_threshold, bool) or not isinstance(
            blocked_loop_threshold, int | float
        ):
            raise TypeError(
                "blocked_loop_threshold must be a number of seconds (or None to switch the"
                f" watchdog off), got an object of type {type(blocked_loop_threshold).__name__}"
            )
        # Below 10 ms the heartbeat (every threshold/4) would itself load the loop.
        if blocked_loop_threshold != 0 and not 0.01 <= blocked_loop_threshold < math.inf:
            raise ValueError(
                "blocked_loop_threshold must be at least 0.01 s (or None or 0 to switch"
                f" the watchdog off), not {blocked_loop_threshold!r}"
            )
    check_address(address)


def _check_count(name: str, value: object, extra: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{name} must be a whole number of at least 1{extra}, got an object of type"
            f" {type(value).__name__}"
        )
    if value < 1:
        raise ValueError(f"{name} must be at least 1{extra}, not {value}")


_VALID_ADDRESSES = (
    "None (a temporary local Ray, or the one already initialized in this process),"
    " 'auto' or 'local' (the cluster `ray start` runs on this machine), 'host:port'"
    " (a cluster's GCS, port 6379 by default) or 'ray://host:port' (a Ray client"
    " server, port 10001 by default)"
)
_HOST = re.compile(r"[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]")


def check_address(address: object) -> None:
    """Refuse an address ``ray.init`` cannot use, saying which forms are valid.

    Other ``scheme://`` addresses are Ray client builders of other packages
    (``ray.init`` imports the module named by the scheme): they are passed on.
    """
    if address is None or address in ("auto", "local"):
        return
    if not isinstance(address, str):
        raise TypeError(
            f"address must be a string or None, got an object of type {type(address).__name__}."
            f" Valid: {_VALID_ADDRESSES}."
        )
    scheme, sep, rest = address.partition("://")
    if sep and scheme in ("http", "https"):
        raise ValueError(
            f"address {address!r} is a web address (the Ray dashboard's?), not one Ray"
            f" can connect to. Valid: {_VALID_ADDRESSES}."
        )
    if sep and scheme != "ray":
        return
    if split_host_port(rest if sep else address) is None:
        raise ValueError(f"address {address!r} is not valid. Valid: {_VALID_ADDRESSES}.")


def split_host_port(text: str) -> tuple[str, int] | None:
    """``("host", port)`` from ``"host:port"`` (IPv6 hosts in brackets), or ``None``."""
    host, sep, port = text.rpartition(":")
    if not sep or not _HOST.fullmatch(host) or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.strip("[]"), int(port)
