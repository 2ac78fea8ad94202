"""``timed()``: one track event per call of a function, or per pass through a block, with
how long it took and whether it raised.

What can be wrong with the event (its name, the ids, a property value, a property named
like one the event sets itself) is refused when ``timed()`` is called -- at decoration,
usually at import -- where a typed error points at the line that is wrong. The event is
sent after the timed code has finished, so sending it can change neither what that code
returns nor what it raises: a failure then (no client yet, an event over the size limit)
is logged once per ``timed()`` and the event is dropped.

The clock is ``time.perf_counter()``: monotonic, unaffected by changes to the wall clock.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from . import _api
from ._error_event import error_type_name
from ._events import _checked, host_anonymous_id, identity, require_name
from ._exceptions import EventTypeError, InvalidEventError

if TYPE_CHECKING:
    from ._client import Client

logger = logging.getLogger(__name__)

__all__ = ["RESERVED_PROPERTIES", "Timed", "timed"]

P = ParamSpec("P")
R = TypeVar("R")

#: properties the timed event sets itself; passing one to timed() is an InvalidEventError
RESERVED_PROPERTIES = frozenset({"duration", "outcome", "error_type"})

_clock = time.perf_counter

#: The blocks being timed in this thread or task, innermost last, as (Timed, start): one
#: ``timed()`` object may be entered by several threads or tasks at once (a module-level
#: ``IMPORT = mpsender.timed("Import")`` used in ``with IMPORT:`` everywhere), so a start
#: time cannot live on the object. One variable for the whole module: context variables
#: made per object would never be freed (every Context keeps its variables).
_open: contextvars.ContextVar[tuple[tuple[Timed, float], ...]] = contextvars.ContextVar(
    "mpsender_timed_open", default=())


class Timed:
    """A decorator and a (sync or async) context manager that sends one track event per
    call or per block: the given properties plus ``duration`` (float seconds) and
    ``outcome`` (``"ok"``, or ``"error"`` with ``error_type``, the exception's class).
    Made by :func:`mpsender.timed` or :meth:`mpsender.Client.timed`. The timed code's
    return value and exception pass through unchanged."""

    __slots__ = ("_anonymous_id", "_client", "_event", "_failed", "_properties", "_user_id")

    def __init__(self, client: Client | None, event: str, user_id: str | None, anonymous_id: str | None,
                 properties: Mapping[str, Any]) -> None:
        self._event = require_name(event, "event")
        if user_id is not None or anonymous_id is not None:
            user_id, anonymous_id = identity(user_id, anonymous_id)
        clash = sorted(RESERVED_PROPERTIES & properties.keys())
        if clash:
            raise InvalidEventError(
                f"timed({event!r}): {', '.join(clash)} is set by timed() itself; give the property another name")
        _checked({"p": properties})  # UnserializableError naming properties.<key>, here rather than at each call
        self._client = client
        self._user_id = user_id
        self._anonymous_id = anonymous_id
        self._properties = dict(properties)
        self._failed = False  # a send failed and was logged: later failures are not

    def __repr__(self) -> str:
        return f"<mpsender.timed {self._event!r}>"

    # --- as a decorator -----------------------------------------------------------------

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise EventTypeError(
                f"timed({self._event!r}) cannot decorate the generator function {_name(fn)}: its body runs "
                "while the generator is iterated, not when it is called; time the loop that consumes it "
                f"with `with mpsender.timed({self._event!r}):`")
        if isinstance(fn, (staticmethod, classmethod)):
            raise EventTypeError(f"timed({self._event!r}) goes below @{type(fn).__name__}, not above it")
        if not callable(fn):
            raise EventTypeError(f"timed({self._event!r}) decorates a function, not {type(fn).__qualname__}")
        if inspect.iscoroutinefunction(fn):
            run = cast(Callable[..., Any], fn)

            @functools.wraps(fn)
            async def timed_coroutine(*args: Any, **kwargs: Any) -> Any:
                start = _clock()
                try:
                    result = await run(*args, **kwargs)
                except BaseException as exc:
                    self._send(_clock() - start, type(exc))
                    raise
                self._send(_clock() - start, None)
                return result

            return cast(Callable[P, R], timed_coroutine)

        @functools.wraps(fn)
        def timed_call(*args: P.args, **kwargs: P.kwargs) -> R:
            start = _clock()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                self._send(_clock() - start, type(exc))
                raise
            self._send(_clock() - start, None)
            return result

        return timed_call

    # --- as a context manager -----------------------------------------------------------

    def __enter__(self) -> Timed:
        _open.set((*_open.get(), (self, _clock())))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        end = _clock()
        stack = _open.get()
        for i in range(len(stack) - 1, -1, -1):
            if stack[i][0] is self:
                _open.set(stack[:i] + stack[i + 1:])
                self._send(end - stack[i][1], exc_type)
                return
        # left in another thread or task than it was entered in: no start time to measure from
        self._log_failure("the block was left in another thread or task than it was entered in")

    async def __aenter__(self) -> Timed:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)

    # --- the event ----------------------------------------------------------------------

    def _send(self, duration: float, error: type[BaseException] | None) -> None:
        """Track the event. Never raises: it runs where the timed code's own result or
        exception is on its way out."""
        props = {**self._properties, "duration": duration, "outcome": "ok" if error is None else "error"}
        if error is not None:
            props["error_type"] = error_type_name(error)
        user_id, anonymous_id = self._user_id, self._anonymous_id
        if user_id is None and anonymous_id is None:
            anonymous_id = host_anonymous_id()  # as capture_error() attributes an event
        try:
            client = self._client if self._client is not None else _api.get_client()
            client.track(self._event, user_id=user_id, anonymous_id=anonymous_id, properties=props)
        except Exception as exc:  # noqa: BLE001 - the timed code's outcome must reach its caller as it was
            self._log_failure(f"{type(exc).__name__}: {exc}")

    def _log_failure(self, why: str) -> None:
        if not self._failed:
            self._failed = True
            logger.warning("timed(%r): the event was not sent (%s); logged once", self._event, why)


def _name(fn: object) -> str:
    return str(getattr(fn, "__qualname__", None) or repr(fn))


def timed(event: str, /, *, user_id: str | None = None, anonymous_id: str | None = None,
          **properties: Any) -> Timed:
    """Time a function (sync or ``async def``) or a block (``with`` / ``async with``): one
    track event ``event`` per call or pass, with ``properties`` plus ``duration`` (float
    seconds), ``outcome`` (``"ok"`` or ``"error"``) and, on error, ``error_type``. The
    exception propagates unchanged. Without ``user_id``/``anonymous_id`` the event goes to
    ``anonymous_id="host:<hostname>"``. The process's client is looked up when the event
    is sent, so decorating at import, before ``init()``, is fine. Bad input raises here::

        @mpsender.timed("Report Built", kind="monthly")
        def build_report(): ...

        with mpsender.timed("Import Done", source="s3"):
            run_import()
    """
    return Timed(None, event, user_id, anonymous_id, properties)
