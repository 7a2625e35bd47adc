"""How calls cross the wire between the caller and the supervisors.

* A function is pickled with cloudpickle once per caller and sent to each
  supervisor once, named by a digest of its bytes.
* Arguments are pickled at ``submit`` time, with every future of this runtime
  and every Ray ``ObjectRef`` lifted out of them (pickle's ``persistent_id``),
  wherever they are nested. The supervisor awaits those dependencies first and
  puts their values back while unpickling, so no structure walk is needed and
  any picklable container works.
* Results and exceptions are pickled one by one on the supervisor, so one bad
  result fails one call, not the message carrying many.
"""

from __future__ import annotations

import collections
import collections.abc
import functools
import hashlib
import inspect
import io
import pickle
import re
import threading
import traceback
import weakref
from collections.abc import Callable, Iterable, Sequence
from types import CodeType
from typing import Any, NamedTuple

import cloudpickle

from ..errors import InvalidCallError, RemoteError, SerializationError

# Outcome kinds, as they travel from supervisor to caller. RESEND: the call never
# started and cannot start there (an upstream's supervisor died); its payload is
# ``(dependency index, dead owner's actor id or None)``, and the caller sends the
# call again with fresh dependencies. HELD: the call returned, and its value (too
# big to ride the poll, see ``Settings.hold_results_above``) stays on the supervisor
# until someone asks for it (``Supervisor.results_of``); its payload is the pickled
# size in bytes, as 8 little-endian bytes, then the pickled summary the value gave
# of itself (``__aioray_summary__``), if it has one.
OK = 0
ERROR = 1
CANCELLED = 2
RESEND = 3
HELD = 4


def held_payload(size: int, summary: bytes) -> bytes:
    """A HELD outcome's payload: the value's size, then its pickled summary (or b"")."""
    return size.to_bytes(8, "little") + summary


def held_size(payload: bytes | None) -> int:
    """The size in bytes of a value a HELD outcome left on its supervisor."""
    return int.from_bytes(payload[:8], "little") if payload else 0


def held_summary(payload: bytes | None) -> bytes:
    """The pickled summary a HELD outcome carries, or b"" if its value gave none."""
    return payload[8:] if payload else b""


def summary_of(value: Any, label: str) -> bytes:
    """``value.__aioray_summary__()``, pickled; b"" if it has none or it fails.

    A value's summary is what the caller learns of it while the value itself
    stays on its supervisor (an integration's metadata: a state, a shape).
    """
    summarize = getattr(type(value), "__aioray_summary__", None)
    if summarize is None:
        return b""
    try:
        summary = summarize(value)
        if summary is None:
            return b""
        kind, payload = dumps_value(summary, label)
    except Exception:
        return b""
    return payload if kind == OK else b""


# A dependency as it travels: (CALL_DEP, owner actor handle, call id, label)
# or (REF_DEP, ObjectRef, 0, label) or (VALUE_DEP, pickled value, 0, label)
# or (FAILED_DEP, message, 0, label). The last two carry outcomes the caller
# already holds whose supervisor has died.
CALL_DEP = 0
REF_DEP = 1
VALUE_DEP = 2
FAILED_DEP = 3

Dep = tuple[int, Any, int, str]


def call_dep(owner: Any, call_id: int, label: str) -> Dep:
    """A dependency on call ``call_id`` of the supervisor behind actor handle ``owner``."""
    return (CALL_DEP, owner, call_id, label)


def ref_dep(ref: Any) -> Dep:
    """A dependency on a Ray ``ObjectRef``."""
    return (REF_DEP, ref, 0, f"ObjectRef {ref.hex()[:12]}")


def value_dep(payload: bytes, label: str) -> Dep:
    """An upstream's pickled value, held by the caller (its supervisor died)."""
    return (VALUE_DEP, payload, 0, label)


def failed_dep(message: str, label: str) -> Dep:
    """An upstream that failed, held by the caller (its supervisor died)."""
    return (FAILED_DEP, message, 0, label)


# -- the shapes of messages, outside the per-call hot path ----------------------------
# Per-call entries stay plain tuples (built in the pool, unpacked in the supervisor,
# both through the aliases below): a NamedTuple costs twice as much to build
# and pickles with its class name, 10,000 times per batch.

#: A stream's bound on what its generator may run ahead of its consumer:
#: ``(values, bytes)`` made and not yet taken (see ``_supervisor/streams.py``).
StreamLimits = tuple[int, int]
#: One call as ``Supervisor.submit`` receives it: ``(call id, function digest,
#: pickled arguments, dependencies, label, rerun, stream limits)``; the limits
#: are None except for a stream (``Runtime.stream``).
CallEntry = tuple[int, bytes, bytes, list[Dep], str, "Rerun | None", "StreamLimits | None"]
#: One finished call as ``Supervisor.poll`` returns it: ``(call id, kind, payload)``.
Outcome = tuple[int, int, bytes | None]


class Rerun(NamedTuple):
    """Sent with a call that runs again after its supervisor died (see ``current_attempt``)."""

    attempt: int
    previous_loss: str
    #: When the caller learned of the loss (its ``time.time()``).
    lost_at: float = 0.0


class StallReport(NamedTuple):
    """A supervisor's loop was blocked (see ``watchdog.py``)."""

    seconds: float
    #: ``(call id, label)`` of the call whose code held the loop, if known.
    calls: tuple[tuple[int, str], ...]
    where: str
    #: What stalled it (``watchdog.classify``): only some causes name a call.
    cause: str


class PollReply(NamedTuple):
    """What one ``Supervisor.poll`` returns."""

    #: Up to ``max_items`` calls finished since the last poll.
    outcomes: list[Outcome]
    #: Calls about to start: they start when the next poll arrives.
    announced: list[int]
    stalls: list[StallReport]
    #: Log records of the loggers named in ``Settings.forward_logs`` (see ``log_entry``).
    logs: list[dict[str, Any]]
    #: Records dropped because the caller did not poll fast enough.
    logs_dropped: int
    #: Values streams made since the last poll, pickled one by one, in order:
    #: ``(call id, values)``; always sent before (or with) the stream's outcome.
    streamed: list[tuple[int, list[bytes]]]


# LogRecord attributes that do not travel: the message travels formatted, the
# exception as text (the objects may not unpickle, or may hold secrets' values
# in their frames).
_LOG_SKIP = frozenset({"args", "exc_info", "msg", "message", "stack_info"})
_LOG_VALUE_TYPES = (str, int, float, bool, type(None))


def log_entry(record: Any) -> dict[str, Any]:
    """A ``logging.LogRecord`` as plain data: ``logging.makeLogRecord`` rebuilds it.

    Extra attributes (Prefect's ``task_run_name``, ids) travel when they are
    plain values or UUIDs; the message is formatted here, with its arguments.
    """
    entry = {
        key: value
        for key, value in record.__dict__.items()
        if key not in _LOG_SKIP
        and (isinstance(value, _LOG_VALUE_TYPES) or type(value).__name__ == "UUID")
    }
    entry["msg"] = record.getMessage()
    entry["args"] = None
    if record.exc_info and not entry.get("exc_text"):
        entry["exc_text"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
    return entry


class ResendReason(NamedTuple):
    """The payload of a RESEND outcome: why the call could not start there."""

    #: Which of the call's dependencies could not be fetched.
    dep_index: int
    #: The actor id of that dependency's dead supervisor, or None if the
    #: upstream call was itself being sent again.
    dead_owner: str | None


# What the caller's lift function returns for an object that is a dependency:
# the dependency as it travels, and the caller's object behind it (its future;
# None for an ObjectRef). The wire only carries it back to the caller.
Lifted = tuple[Dep, Any]
Lift = Callable[[Any], "Lifted | None"]

# pickle asks persistent_id about every object it meets; these are never
# dependencies, and checking their type first keeps submit cheap.
PLAIN_TYPES = frozenset(
    {str, int, float, bool, bytes, type(None), tuple, list, dict, set, frozenset}
)


def callable_name(fn: Any) -> str:
    """A short human name for a callable, used in labels and errors."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None and hasattr(fn, "func"):  # functools.partial
        return callable_name(fn.func)
    return str(name or type(fn).__name__)


def check_callable(fn: Any) -> None:
    """Raise :class:`InvalidCallError` if ``fn`` is not something a supervisor can run.

    Called once per callable (by :class:`FunctionCache`, when it first meets
    one), not once per call: the checks below cost microseconds, ``submit``
    must cost less. Errors name the culprit by name or type, never by value:
    a value can hold a credential.
    """
    if isinstance(fn, collections.abc.Coroutine):
        name = getattr(fn, "__qualname__", None) or type(fn).__name__
        # Nobody will await it now: close it, so Python does not also warn
        # "coroutine ... was never awaited" about the caller's mistake.
        fn.close()
        raise InvalidCallError(
            f"submit was given a coroutine object ({name}(...) was already called), not a"
            f" function. Pass the function and its arguments: submit({name}, *args),"
            f" not submit({name}(*args))."
        )
    if inspect.isgenerator(fn):
        name = getattr(fn, "__qualname__", None) or type(fn).__name__
        raise InvalidCallError(
            f"submit was given a generator object ({name}(...) was already called), not a"
            " function. To receive its values as they are made, pass the generator"
            f" function to stream: `rt.stream({name}, *args)`; to get them all as one"
            f" result, submit a function that returns a list (`def collect(*args): return"
            f" list({name}(*args))`)."
        )
    if inspect.isasyncgen(fn):
        name = getattr(fn, "__qualname__", None) or type(fn).__name__
        raise InvalidCallError(
            f"submit was given an async generator object ({name}(...) was already called),"
            " not a function. To receive its values as they are made, pass the generator"
            f" function to stream: `rt.stream({name}, *args)`; to get them all as one"
            " result, collect them inside an async def and submit that (`async def"
            f" collect(*args): return [x async for x in {name}(*args)]`)."
        )
    if not callable(fn):
        hint = " (a name is not enough: pass the function itself)" if isinstance(fn, str) else ""
        raise InvalidCallError(
            "submit expects a function to run (async def or def), got an object of type"
            f" {type(fn).__qualname__}{hint}. Pass the function first, then its arguments:"
            " submit(fn, *args)."
        )
    if isinstance(fn, type):
        return  # a class: calling it builds an instance, which travels as one value
    generator, is_async = is_generator_function(fn)
    if not generator:
        return
    # An instance is named by its class (its __call__ is the generator function).
    name = callable_name(fn)
    if not (inspect.isroutine(fn) or isinstance(fn, functools.partial)):
        name = type(fn).__qualname__
    if is_async:
        raise InvalidCallError(
            f"{name} is an async generator function: submit runs a function for one"
            f" result. To receive its values as they are made, use"
            f" `rt.stream({name}, *args)`; to get them all at once, collect them inside an"
            f" async def and submit that:"
            f" `async def collect(*args): return [x async for x in {name}(*args)]`."
        )
    raise InvalidCallError(
        f"{name} is a generator function: submit runs a function for one result. To"
        f" receive its values as they are made, use `rt.stream({name}, *args)`; to get"
        f" them all at once, submit a function that returns a list:"
        f" `def collect(*args): return list({name}(*args))`."
    )


def is_generator_function(fn: Any) -> tuple[bool, bool]:
    """``(is a generator function, is async)``, seeing through partials and an
    instance's ``__call__``."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    call = None if inspect.isroutine(fn) or isinstance(fn, type) else type(fn).__call__
    for candidate in (fn, call):
        if candidate is None:
            continue
        if inspect.isasyncgenfunction(candidate):
            return True, True
        if inspect.isgeneratorfunction(candidate):
            return True, False
    return False, False


def check_stream_callable(fn: Any) -> None:
    """Raise :class:`InvalidCallError` unless ``fn`` is a generator function
    (``async def`` with ``yield``, or ``def`` with ``yield``) a stream can run."""
    if inspect.isasyncgen(fn) or inspect.isgenerator(fn):
        name = getattr(fn, "__qualname__", None) or type(fn).__name__
        raise InvalidCallError(
            f"stream was given a generator object ({name}(...) was already called), not"
            f" a function. Pass the generator function and its arguments:"
            f" stream({name}, *args), not stream({name}(*args))."
        )
    if isinstance(fn, collections.abc.Coroutine):
        name = getattr(fn, "__qualname__", None) or type(fn).__name__
        fn.close()  # nobody will await it: no "never awaited" warning on top
        raise InvalidCallError(
            f"stream was given a coroutine object ({name}(...)), not a generator function."
            " stream runs functions that yield values; submit runs one that returns one."
        )
    if not callable(fn):
        raise InvalidCallError(
            "stream expects a generator function (one that yields), got an object of type"
            f" {type(fn).__qualname__}. Pass the function first, then its arguments:"
            " stream(fn, *args)."
        )
    if not is_generator_function(fn)[0]:
        name = callable_name(fn)
        if is_coroutine_function(fn):
            raise InvalidCallError(
                f"{name} is a coroutine function, not a generator function: stream runs"
                f" functions that yield values one by one (`async def ...: yield x`). To"
                f" run {name} once and get its result, use submit({name}, ...)."
            )
        raise InvalidCallError(
            f"{name} is not a generator function (it has no `yield`): stream runs"
            " functions that yield values one by one. If it returns an iterator, wrap it"
            f" (`def values(*args): yield from {name}(*args)`); for one result, use"
            f" submit({name}, ...)."
        )


def is_coroutine_function(fn: Any) -> bool:
    """Whether calling ``fn`` gives a coroutine, seeing through partials and an
    instance's async ``__call__``."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - instances with async __call__
    return call is not None and inspect.iscoroutinefunction(call)


# Error texts that name only types, modules or code, never a value: these are
# kept in the errors the runtime raises. Any other text (a custom __reduce__'s
# message, pickle quoting an object's repr) may quote a value that holds a
# secret, so it is left out.
_SAFE_ERROR_TEXTS = (
    re.compile(r"cannot pickle '[\w.<>]+' object"),
    re.compile(r"Can't pickle local object '[\w.<>]+'"),
    re.compile(r"No module named '[\w.]+'"),
    re.compile(r"Can't get attribute '[\w.<>]+' on <module '[\w.]+'( from '[^']*')?>"),
)


def describe_error(exc: BaseException) -> str:
    """``"TypeError: cannot pickle '_thread.lock' object"``, or only the type
    name when the message could quote a value (see ``_SAFE_ERROR_TEXTS``)."""
    text = str(exc)
    if any(pattern.fullmatch(text) for pattern in _SAFE_ERROR_TEXTS):
        return f"{type(exc).__name__}: {text}"
    return (
        f"{type(exc).__name__} (its message is left out, as it may quote the value;"
        " call cloudpickle.dumps on the value yourself to see it)"
    )


class FunctionCache:
    """Pickles each callable once; keyed weakly so a dropped callable is forgotten.

    A callable is checked (:func:`check_callable`) when it is first met, so a
    bad one is refused before anything is pickled or sent.
    """

    def __init__(self) -> None:
        self._by_fn: weakref.WeakKeyDictionary[Any, tuple[bytes, bytes]] = (
            weakref.WeakKeyDictionary()
        )
        # Checked as generator functions: a function is checked for what it is
        # used for, so one streamed first is still refused by submit.
        self._streams: weakref.WeakKeyDictionary[Any, tuple[bytes, bytes]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def get(self, fn: Callable[..., Any]) -> tuple[bytes, bytes]:
        """Return ``(digest, pickled bytes)`` for ``fn``, to ``submit`` it."""
        return self._get(self._by_fn, fn, check_callable)

    def get_stream(self, fn: Callable[..., Any]) -> tuple[bytes, bytes]:
        """Return ``(digest, pickled bytes)`` for a generator function, to ``stream`` it."""
        return self._get(self._streams, fn, check_stream_callable)

    def _get(
        self,
        cache: weakref.WeakKeyDictionary[Any, tuple[bytes, bytes]],
        fn: Callable[..., Any],
        check: Callable[[Any], None],
    ) -> tuple[bytes, bytes]:
        try:
            cached = cache.get(fn)
        except TypeError:  # not weak-referenceable or not hashable: pickle every time
            check(fn)
            return _pickle_function(fn)
        if cached is None:
            check(fn)
            cached = _pickle_function(fn)
            with self._lock:
                try:
                    cache[fn] = cached
                except TypeError:
                    pass
        return cached


def _code_at(rebuild: Callable[..., CodeType], args: tuple[Any, ...], filename: str) -> CodeType:
    """Rebuild a code object pickled by :func:`_reduce_code`, with its own file name."""
    return rebuild(*args).replace(co_filename=filename)


def _reduce_code(code: CodeType) -> tuple[Any, ...]:
    # cloudpickle (3.0+) writes "<dynamic-code>" for the file name of every
    # function it ships by value (a Prefect task's function, a function of the
    # user's __main__), so a traceback or the watchdog on a supervisor could not
    # say which file a line is in. The line numbers travel; so does the name now.
    rebuild, args = _CLOUDPICKLE_CODE_REDUCE(code)
    return _code_at, (rebuild, args, code.co_filename)


_CLOUDPICKLE_CODE_REDUCE = cloudpickle.Pickler.dispatch_table.get(CodeType)


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle, keeping the file names of the code it ships by value."""

    if _CLOUDPICKLE_CODE_REDUCE is not None:
        dispatch_table = collections.ChainMap(
            {CodeType: _reduce_code}, cloudpickle.Pickler.dispatch_table
        )


def _dumps(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


def _pickle_function(fn: Callable[..., Any]) -> tuple[bytes, bytes]:
    try:
        blob = _dumps(fn)
    except Exception as exc:
        # `from None`: the pickling error's own text may quote a value the
        # function closes over (see describe_error).
        raise SerializationError(
            f"function {callable_name(fn)!r} cannot be pickled, so it cannot be sent to a"
            f" supervisor: {describe_error(exc)}. Define it at module level or"
            " make sure everything it closes over can be pickled."
        ) from None
    return hashlib.blake2b(blob, digest_size=16).digest(), blob


# Types whose instances arguments must be pickled in a way of their own; filled
# by integrations through register_reducer (the runtime knows no library).
_REDUCERS: dict[type, Callable[[Any], tuple[Any, ...]]] = {}


def register_reducer(cls: type, reduce: Callable[[Any], tuple[Any, ...]]) -> None:
    """Pickle instances of exactly ``cls`` in call arguments as ``reduce(obj)`` says.

    ``reduce`` returns what ``__reduce__`` would: ``(callable, args)``. For types
    whose default pickling does not do what a call needs, only inside call
    arguments; the Prefect runner registers its futures this way (each travels
    as the runtime future it wraps, which the supervisor awaits).
    """
    _REDUCERS[cls] = reduce


class _ArgPickler(_Pickler):
    """cloudpickle, with futures and ObjectRefs lifted out as dependencies."""

    def __init__(
        self,
        file: io.BytesIO,
        lift: Lift,
        deps: list[Dep],
        upstream: list[Any],
    ) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._lift = lift
        self._deps = deps
        self._upstream = upstream
        self._seen: dict[int, int] = {}

    def reducer_override(self, obj: Any) -> Any:
        reduce = _REDUCERS.get(type(obj)) if _REDUCERS else None
        if reduce is not None:
            return reduce(obj)
        return super().reducer_override(obj)

    def persistent_id(self, obj: Any) -> int | None:
        if type(obj) in PLAIN_TYPES:
            return None
        lifted = self._lift(obj)
        if lifted is None:
            return None
        key = id(obj)
        index = self._seen.get(key)
        if index is None:
            dep, future = lifted
            index = len(self._deps)
            self._seen[key] = index
            self._deps.append(dep)
            # Parallel to the deps: a call sent again re-lifts each dependency
            # from its future (its outcome may have moved since).
            self._upstream.append(future)
        return index


def dumps_arguments(
    fn_label: str,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    lift: Lift,
) -> tuple[bytes, list[Dep], list[Any]]:
    """Pickle ``(args, kwargs)`` with dependencies lifted out.

    Returns the bytes, the dependencies, and for each dependency the future
    behind it (``None`` for an ObjectRef). Raises :class:`SerializationError`
    naming the first argument that fails.
    """
    deps: list[Dep] = []
    upstream: list[Any] = []
    if not args and not kwargs:
        return b"", deps, upstream
    if type(kwargs) is dict and _all_scalars(args) and _all_scalars(kwargs.values()):
        # The common call (ids, numbers, URLs): nothing to lift, nothing
        # cloudpickle must do. Building a cloudpickle pickler per call was half
        # of the caller's time for 10,000 trivial calls (py-spy).
        return pickle.dumps((tuple(args), kwargs), protocol=pickle.HIGHEST_PROTOCOL), deps, upstream
    buffer = io.BytesIO()
    try:
        _ArgPickler(buffer, lift, deps, upstream).dump((tuple(args), kwargs))
    except Exception as exc:
        # `from None`: the pickling error may quote the argument's value.
        raise _name_bad_argument(fn_label, args, kwargs, lift, exc) from None
    return buffer.getvalue(), deps, upstream


# Exactly these types (not subclasses, which may pickle in their own way).
_SCALARS = frozenset({str, int, float, bool, bytes, type(None)})


def _all_scalars(values: Iterable[Any]) -> bool:
    scalars = _SCALARS
    return all(type(value) in scalars for value in values)


def _name_bad_argument(
    fn_label: str,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    lift: Lift,
    exc: Exception,
) -> SerializationError:
    """Find which argument failed, so the error can name it (slow path only).

    The error names the argument and its type, never its value: arguments may
    hold credentials, and errors end up in logs.
    """
    named: list[tuple[str, Any]] = [(f"positional argument {i}", a) for i, a in enumerate(args)]
    named += [(f"argument {k!r}", v) for k, v in kwargs.items()]
    for where, value in named:
        try:
            _ArgPickler(io.BytesIO(), lift, [], []).dump(value)
        except Exception as inner:
            return SerializationError(
                f"{where} of {fn_label} cannot be pickled ({type(value).__name__}):"
                f" {describe_error(inner)}. Arguments travel to a Ray actor, so"
                " they must be picklable; pass what the coroutine needs to rebuild the"
                " object instead (a path, a URL, settings)."
            )
    return SerializationError(
        f"the arguments of {fn_label} cannot be pickled: {describe_error(exc)}"
    )


class _DepUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, values: Sequence[Any]) -> None:
        super().__init__(file)
        self._values = values

    def persistent_load(self, pid: Any) -> Any:
        return self._values[pid]


def loads_arguments(blob: bytes, values: Sequence[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Inverse of :func:`dumps_arguments`, with dependency values filled in."""
    if not blob:
        return (), {}
    if not values:  # the common case: plain pickle is faster than the subclass
        args, kwargs = pickle.loads(blob)
    else:
        args, kwargs = _DepUnpickler(io.BytesIO(blob), values).load()
    return args, kwargs


def dumps_value(value: Any, label: str) -> tuple[int, bytes]:
    """Pickle a result; an unpicklable result becomes an error outcome."""
    try:
        # Plain pickle first: several times faster for plain data; cloudpickle
        # for what it cannot do (lambdas, classes defined in __main__, ...).
        return OK, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        pass
    try:
        return OK, cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        error = SerializationError(
            f"the result of {label} ({type(value).__name__}) cannot be pickled, so it"
            f" cannot be sent back: {describe_error(exc)}"
        )
        return ERROR, dumps_exception(error)


def dumps_exception(exc: BaseException) -> bytes:
    """Pickle an exception with its traceback text attached.

    The exception is checked to survive a round trip: many exception classes
    cannot be rebuilt from their ``args``; those travel as :class:`RemoteError`.
    So do ``SystemExit``, ``KeyboardInterrupt`` and other non-``Exception``
    errors: re-raised as themselves in the caller, a remote ``sys.exit()``
    would stop the caller's program.
    """
    tb_text = "".join(traceback.format_exception(exc))
    exc.__traceback__ = None  # the frames are not needed any more: free them
    try:
        if not isinstance(exc, Exception):
            raise TypeError("not an Exception")
        blob = cloudpickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(blob)
    except Exception:
        substitute = RemoteError(type(exc).__qualname__, _text_of(exc), tb_text)
        blob = cloudpickle.dumps(substitute, protocol=pickle.HIGHEST_PROTOCOL)
    return pickle.dumps((blob, tb_text), protocol=pickle.HIGHEST_PROTOCOL)


def _text_of(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception as broken:  # its __str__ raises: say so, keep going
        return f"<str() of the exception raised {type(broken).__name__}>"


def loads_exception(payload: bytes, label: str) -> BaseException:
    """Rebuild a remote exception, with the remote traceback as a note."""
    blob, tb_text = pickle.loads(payload)
    try:
        exc: BaseException = pickle.loads(blob)
    except Exception as load_error:
        last_line = tb_text.strip().splitlines()[-1] if tb_text.strip() else "unknown"
        type_name, _, message = last_line.partition(": ")
        return RemoteError(
            type_name,
            f"{message} (the exception could not be rebuilt here: {load_error}; install"
            " the module that defines it in this environment)",
            tb_text,
        )
    if tb_text and not isinstance(exc, RemoteError):
        exc.add_note(f"\nRemote traceback of {label} (raised in a supervisor):\n{tb_text}")
    return exc
