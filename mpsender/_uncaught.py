"""``capture_uncaught``: an exception nobody caught becomes a ``$error`` event.

``init(capture_uncaught=True)`` puts hooks in front of ``sys.excepthook`` (the main
thread: the process is about to die) and ``threading.excepthook`` (another thread: it
dies, the process lives on), each chaining to the hook that was there before, so the
traceback is printed and the exit code is what it would have been.

In the main thread: ``$error`` with severity ``fatal``, the sessions the exception left
and every other session still open end with outcome ``fatal``, the previous hook runs,
then a flush waits at most ``shutdown_timeout`` for the endpoint (the events are in the
spool file already: the wait only lets a short script see them delivered before it
exits). In another thread: ``$error`` with severity ``error`` and the ``thread`` name,
the sessions that thread's exception left end with ``error``; nothing waits.

``KeyboardInterrupt``, ``SystemExit`` and other exceptions that are not ``Exception``
are not errors: the previous hook alone sees them. A hook never raises: what fails in
ours is logged and the previous hook runs all the same.
"""

from __future__ import annotations

import logging
import sys
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import _session

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["install", "installed", "uninstall"]

logger = logging.getLogger(__name__)

_previous_sys: Any = None
_previous_thread: Any = None
_active = False  # False after uninstall(): a hook someone else chained to passes through
# Our hook is the installed one, or one installed over it still calls it: installing
# again must not chain ours to a hook that calls ours (each would call the other).
_sys_linked = False
_thread_linked = False


def installed() -> bool:
    """True while the hooks are installed in this process."""
    return _active


def install() -> None:
    """Put the hooks in place (idempotent), remembering the ones they chain to."""
    global _previous_sys, _previous_thread, _active, _sys_linked, _thread_linked
    if not _sys_linked:
        _previous_sys, sys.excepthook, _sys_linked = sys.excepthook, _sys_hook, True
    if not _thread_linked:
        _previous_thread, threading.excepthook, _thread_linked = threading.excepthook, _thread_hook, True
    _active = True


def uninstall() -> None:
    """Give back the previous hooks where ours are still the installed ones; a hook
    installed over ours keeps calling ours, which then only passes the call on."""
    global _active, _sys_linked, _thread_linked
    _active = False
    if sys.excepthook is _sys_hook:
        sys.excepthook, _sys_linked = _previous_sys, False
    if threading.excepthook is _thread_hook:
        threading.excepthook, _thread_linked = _previous_thread, False


def _sys_hook(etype: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    client = _report(value, "fatal", None) if _active else None
    try:
        (_previous_sys or sys.__excepthook__)(etype, value, tb)
    finally:
        if client is not None:
            try:
                client.flush(client.options.shutdown_timeout)
            except Exception:  # the process is dying: nothing to do about it
                logger.debug("flush after an uncaught exception failed", exc_info=True)


def _thread_hook(args: Any) -> None:
    if _active:
        _report(args.exc_value, "error", args.thread)
    (_previous_thread or threading.__excepthook__)(args)


def _report(exc: BaseException | None, severity: str, thread: threading.Thread | None) -> Client | None:
    """Send the ``$error`` and end the sessions; the client, or None when there is
    nothing to report or no client. Never raises."""
    if not isinstance(exc, Exception):
        return None  # KeyboardInterrupt, SystemExit, GeneratorExit: not errors
    try:
        from . import _api

        client = _api._client
        if client is None:
            return None
        left = _session.take_deferred(exc)
        props: dict[str, Any] = {"uncaught": True}
        if thread is not None:
            props["thread"] = thread.name
        token = _session._current.set(left[0]) if left else None  # the $error carries the session it left
        try:
            client.capture_error(exc, severity=severity, properties=props)
        finally:
            if token is not None:
                _session._current.reset(token)
        outcome = "fatal" if severity == "fatal" else "error"
        for session in left:
            session._end(outcome)
        if thread is None:
            _session.end_open("fatal")
        return client
    except Exception:  # the previous hook must run whatever happens here
        logger.exception("mpsender could not report an uncaught exception")
        return None
