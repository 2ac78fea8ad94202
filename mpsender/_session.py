"""Sessions: a block of work whose events all carry one id, opened and closed by events.

``with mpsender.session() as s:`` sends ``Session Started``, makes ``s`` the current
session of the block's context (a ``contextvars`` variable, so threads run in a copy of
the context and asyncio tasks made inside carry it too: every event they track carries
``s.session_id``), and sends ``Session Ended`` with ``duration`` and ``outcome`` when the
block is left. A session must end exactly once, whoever gets there first: the block's
``__exit__``, the uncaught-exception hook (``_uncaught.py``), ``Client.shutdown()`` or
the atexit handler. ``_open`` is that one claim: popping a session out of it (atomic
under the GIL, so safe from a signal handler, with no lock that the interrupted code
could hold) is the right to send its ``Session Ended``.

A block that raises while ``capture_uncaught`` is on is not ended at once: whether the
exception was caught ("error") or killed the process ("fatal") is known only later. Its
end is recorded (time, duration, the exception) in ``_deferred`` and sent by the first
of: the excepthook (``fatal`` when its exception is the block's or was raised from it),
the next event its thread tracks outside the handling of that exception (``error``), or
the exit path (``error``).
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._events import _id, require_name
from ._exceptions import EventTypeError, InvalidEventError, MpsenderError

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["OUTCOMES", "Session", "current", "end_open", "settle"]

logger = logging.getLogger(__name__)

#: the ``outcome`` of a ``Session Ended`` event
OUTCOMES = ("ok", "error", "fatal")

SESSION_STARTED = "Session Started"
SESSION_ENDED = "Session Ended"

_current: ContextVar[Session | None] = ContextVar("mpsender_session", default=None)
#: the session of the calling context, or None
current = _current.get

#: sessions begun in this process (or a parent, before a fork) and not ended, by id()
_open: dict[int, Session] = {}
#: sessions whose block raised while the uncaught hook is installed, by id(); ended by settle()
_deferred: dict[int, Session] = {}
_atexit_registered = False


class Session:
    """A session: use it as ``with`` (or ``async with``) block; made by
    :meth:`mpsender.Client.session` and :func:`mpsender.session`.

    ``session_id`` is the id every event inside carries; ``outcome`` is None until
    ``Session Ended`` was sent, then one of ``ok``, ``error``, ``fatal``.
    """

    __slots__ = ("_client", "_end_info", "_parent", "_pid", "_start", "_thread", "_token", "anonymous_id",
                 "outcome", "properties", "session_id", "user_id")

    def __init__(self, client: Client, session_id: str | None = None, *, user_id: str | None = None,
                 anonymous_id: str | None = None, properties: Mapping[str, Any] | None = None) -> None:
        if session_id is None:
            session_id = str(uuid.uuid4())
        self.session_id: str = require_name(session_id, "session_id")
        self.user_id: str | None = _id(user_id, "user_id")  # as track() takes them: str, int or UUID
        self.anonymous_id: str | None = _id(anonymous_id, "anonymous_id")
        if properties is None:
            properties = {}
        elif not isinstance(properties, Mapping):
            raise EventTypeError(f"session properties must be a dict, not {type(properties).__qualname__}")
        self.properties: dict[str, Any] = dict(properties)
        self.outcome: str | None = None
        self._client = client
        self._token: Any = None
        self._parent: Session | None = None
        self._pid = 0
        self._start = 0.0
        self._thread = 0
        self._end_info: tuple[BaseException, float, float] | None = None  # (exception, duration, epoch)

    def __repr__(self) -> str:
        return f"<mpsender.Session {self.session_id} outcome={self.outcome}>"

    # --- the block --------------------------------------------------------------------

    def __enter__(self) -> Session:
        if self._pid:
            raise InvalidEventError(f"session {self.session_id} was entered already; make a new one")
        self._pid = os.getpid()
        self._thread = threading.get_ident()
        self._start = time.monotonic()
        self._parent = parent = _current.get()
        if parent is not None and self.user_id is None and self.anonymous_id is None:
            self.user_id, self.anonymous_id = parent.user_id, parent.anonymous_id  # the same visitor
        self._token = _current.set(self)
        _open[id(self)] = self
        _register_atexit()
        props = dict(self.properties)
        if self._parent is not None:
            props["parent_session_id"] = self._parent.session_id
        try:
            self._client._session_event(SESSION_STARTED, self, props)
        except BaseException:
            _open.pop(id(self), None)
            self._leave()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._leave()
        if self._pid != os.getpid():
            return  # a fork child leaving its parent's block: the parent ends the session
        outcome = _outcome(exc)
        if outcome == "error" and isinstance(exc, Exception) and _hook_installed():
            self._end_info = (exc, time.monotonic() - self._start, time.time())
            _deferred[id(self)] = self
            return
        self._end(outcome)

    async def __aenter__(self) -> Session:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)

    def _leave(self) -> None:
        """Make the parent the current session again, in the context that entered."""
        token, self._token = self._token, None
        if token is None:
            return
        try:
            _current.reset(token)
        except ValueError:  # left from another context (a generator closed elsewhere, an async with across tasks)
            if _current.get() is self:
                _current.set(self._parent)

    # --- the end ------------------------------------------------------------------------

    def _end(self, outcome: str, *, at_exit: bool = False) -> bool:
        """Send ``Session Ended`` unless it was sent (by any path); True if this call sent
        it. Never raises: it runs in ``__exit__``, hooks and atexit, where an error of
        ours must not replace the application's."""
        if _open.pop(id(self), None) is None:
            return False
        _deferred.pop(id(self), None)
        info = self._end_info
        if info is not None:
            duration, timestamp = info[1], info[2]
        else:
            duration, timestamp = time.monotonic() - self._start, None
        self.outcome = outcome
        props = {**self.properties, "duration": duration, "outcome": outcome}
        if at_exit:
            props["at_exit"] = True
        try:
            self._client._session_event(SESSION_ENDED, self, props, timestamp)
        except MpsenderError as exc:  # counted as rejected where it was raised
            logger.warning("session %s: Session Ended could not be sent: %s", self.session_id, exc)
        except Exception:  # see the docstring
            logger.exception("session %s: Session Ended could not be sent", self.session_id)
        return True

    def _raised_from(self, exc: BaseException | None) -> bool:
        """True when ``exc`` is the exception that left this session's block, or was
        raised (directly or not) while handling it."""
        info = self._end_info
        return info is not None and exc is not None and _in_chain(info[0], exc)


def _outcome(exc: BaseException | None) -> str:
    """``ok`` for a block left normally, by ``sys.exit()`` / ``sys.exit(0)``, or by a
    generator being closed; ``error`` for anything else it raised."""
    if exc is None or isinstance(exc, GeneratorExit):
        return "ok"
    if isinstance(exc, SystemExit) and exc.code in (None, 0):
        return "ok"
    return "error"


def _in_chain(target: BaseException, exc: BaseException) -> bool:
    """``target`` is ``exc`` or one of its causes/contexts (bounded, cycle-safe; False
    for a chain that cannot be read: this runs inside track() and the hooks)."""
    seen: set[int] = set()
    current: object = exc
    try:
        while isinstance(current, BaseException) and id(current) not in seen and len(seen) < 100:
            if current is target:
                return True
            seen.add(id(current))
            current = current.__cause__ or current.__context__
    except Exception:  # noqa: BLE001 - an exception class whose __cause__ raises
        return False
    return False


def _hook_installed() -> bool:
    from . import _uncaught

    return _uncaught.installed()


def settle() -> None:
    """End, as ``error``, the deferred sessions of this thread whose exception is not
    being handled any more (it was caught). Called before an event is tracked."""
    handled = sys.exc_info()[1]
    me = threading.get_ident()
    for key, session in list(_deferred.items()):
        if session._thread == me and not session._raised_from(handled) and _deferred.pop(key, None) is not None:
            session._end("error")


def take_deferred(exc: BaseException) -> list[Session]:
    """The deferred sessions of this process that ``exc`` ended (their exception, or
    raised from it), taken out of the deferred set."""
    pid = os.getpid()
    out = []
    for key, session in list(_deferred.items()):
        if session._pid == pid and session._raised_from(exc) and _deferred.pop(key, None) is not None:
            out.append(session)
    return out


def end_open(outcome: str, *, client: Client | None = None, at_exit: bool = False) -> int:
    """End every session this process began and has not ended (those of ``client``
    only, when given): deferred ones as ``error``, the others as ``outcome``. How many."""
    pid = os.getpid()
    ended = 0
    for session in list(_open.values()):
        if session._pid != pid or (client is not None and session._client is not client):
            continue
        deferred = _deferred.pop(id(session), None) is not None
        ended += session._end("error" if deferred else outcome, at_exit=at_exit)
    return ended


def _at_exit() -> None:
    end_open("ok", at_exit=True)


def _register_atexit() -> None:
    global _atexit_registered
    if not _atexit_registered:
        _atexit_registered = True
        atexit.register(_at_exit)
