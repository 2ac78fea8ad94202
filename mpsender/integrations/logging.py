"""A ``logging.Handler`` that turns log records into track events.

::

    import logging
    from mpsender.integrations.logging import EventHandler

    logging.getLogger().addHandler(EventHandler())          # WARNING and above
    log.warning("quota low", extra={"account": "acme"})    # a "Log Record" event
    log.exception("import failed")                         # a "$error" event

or in ``logging.config.dictConfig``::

    "handlers": {"events": {"class": "mpsender.integrations.logging.EventHandler",
                            "level": "WARNING", "event": "Log Record"}}

It runs in the thread that logs and does what ``track()`` does there (build a dict, append
it to this process's spool file): no thread, no queue, no network. Nothing it meets is
raised into the code that logs: an event ``track()`` refuses goes to
``Handler.handleError`` (a traceback on stderr while ``logging.raiseExceptions`` is true,
as for any handler that fails), a value that cannot be sent is sent as its ``repr()``, and
a message that cannot be formatted is sent as a placeholder.

Records of mpsender's own loggers (``mpsender``, ``mpsender.*``) are never turned into
events, and a record logged while this thread is already inside the handler (by a
``before_send`` hook, by another handler's code) is dropped, so the handler cannot loop.
"""

# Absolute imports only: this module is mpsender.integrations.logging, and `import logging`
# here must be (and, without implicit relative imports, is) the standard library's.
from __future__ import annotations

import logging
import threading
from typing import Any

from mpsender import _api
from mpsender._client import Client
from mpsender._error_event import _text
from mpsender._events import _checked, host_anonymous_id, require_name
from mpsender._exceptions import EventTypeError, NotInitializedError

__all__ = ["EventHandler"]

#: what a LogRecord holds by itself; everything else on a record came from ``extra=``.
#: ``message`` and ``asctime`` are set on the record by Formatter.format().
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
#: ids taken from ``extra=`` for the event, not sent as properties
_IDS = ("user_id", "anonymous_id")
#: characters of the log message kept: a long message must not make the event too large to send
MAX_MESSAGE = 4000
_MAX_REPR = 1000

_inside = threading.local()  # .active: this thread is in emit() (re-entry is dropped)


def _severity(levelno: int) -> str:
    """The severity of a log level, in the words error trackers use."""
    if levelno >= logging.CRITICAL:
        return "fatal"
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    if levelno >= logging.INFO:
        return "info"
    return "debug"


def _own(name: str) -> bool:
    return name == "mpsender" or name.startswith("mpsender.")


class EventHandler(logging.Handler):
    """Sends each record at ``level`` or above as a track event ``event``.

    Properties: ``logger`` (the logger's name), ``level`` (``WARNING``...), ``message``
    (the formatted message), ``location`` (``{"pathname", "lineno", "function"}``) and
    every field given in ``extra=``; the handler's own keys win over an ``extra`` of the
    same name. ``extra={"user_id": ..., "anonymous_id": ...}`` sets the event's ids
    (they are not sent as properties); without them the event goes to
    ``anonymous_id="host:<hostname>"``, as ``capture_error()`` does.

    A record with ``exc_info`` (``log.exception(...)``, ``exc_info=True``) is sent with
    ``capture_error()`` as a ``$error`` event instead, with the same properties plus
    ``severity`` (``debug``, ``info``, ``warning``, ``error`` or ``fatal``, from the level).

    ``client``: the ``Client`` to send with; by default the process's client, looked up
    at each record as ``mpsender.track()`` does, so the handler may be configured before
    ``init()``. Until there is one (``track()`` would raise ``NotInitializedError``) the
    records are dropped, and the first is reported through ``handleError``.
    """

    def __init__(self, level: int | str = logging.WARNING, event: str = "Log Record",
                 client: Client | None = None) -> None:
        super().__init__(level)
        self.event = require_name(event, "event")
        if client is not None and not isinstance(client, Client):
            raise EventTypeError(f"client must be a mpsender.Client, not {type(client).__qualname__}")
        self.client = client
        self._told_uninitialised = False

    def emit(self, record: logging.LogRecord) -> None:
        if _own(record.name) or getattr(_inside, "active", False):
            return
        _inside.active = True
        try:
            self._send(record)
        except RecursionError:  # as the standard library's handlers do: a sign of a loop elsewhere
            raise
        except NotInitializedError:
            if not self._told_uninitialised:
                self._told_uninitialised = True
                self.handleError(record)
        except Exception:  # noqa: BLE001 - what track() refuses goes where logging puts a handler's failures
            self.handleError(record)
        finally:
            _inside.active = False

    def _send(self, record: logging.LogRecord) -> None:
        client = self.client if self.client is not None else _api.get_client()
        if client._off and not client._test_run:
            return  # disabled: nothing to build (a test run's client says where the event went)
        extra = {key: value for key, value in record.__dict__.items() if key not in _STANDARD}
        user_id = extra.pop("user_id", None)
        anonymous_id = extra.pop("anonymous_id", None)
        props: dict[str, Any] = {(key if key.__class__ is str else str(key)): _sendable(value)
                                 for key, value in extra.items()}
        props["logger"] = _text(record.name)
        props["level"] = _text(record.levelname)
        props["message"] = _message(record)
        props["location"] = {"pathname": _text(record.pathname), "lineno": record.lineno,
                             "function": _text(record.funcName) if record.funcName else record.funcName}
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BaseException):
            client.capture_error(exc, severity=_severity(record.levelno), user_id=user_id,
                                 anonymous_id=anonymous_id, properties=props)
            return
        if user_id is None and anonymous_id is None:
            anonymous_id = host_anonymous_id()
        client.track(self.event, user_id=user_id, anonymous_id=anonymous_id, properties=props)


def _message(record: logging.LogRecord) -> str:
    """``record.getMessage()``, or a placeholder when formatting it raises (``%d`` given a
    str, too few arguments): the event still tells that something was logged, and where."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - the app's format string is wrong; the record is still worth sending
        try:
            message = f"<unformattable message: {record.msg!s}>"
        except Exception:  # noqa: BLE001 - a msg whose __str__ raises as well
            message = f"<unformattable message of type {type(record.msg).__qualname__}>"
    return _text(message[:MAX_MESSAGE])


def _sendable(value: Any) -> Any:
    """``value`` if ``track()`` can carry it (with its documented conversions), else its
    ``repr()``: an odd object in ``extra=`` must not lose the event."""
    cls = value.__class__
    if cls is str:
        return _text(value)  # a lone surrogate (a file name) is escaped, not refused
    if cls is float or cls is bool or value is None or (cls is int and -(2**63) <= value < 2**64):
        return value
    try:
        _checked({"v": value})
    except Exception:  # noqa: BLE001 - UnserializableError, or a container whose iteration raises
        return _repr(value)
    return value


def _repr(value: Any) -> str:
    try:
        return _text(repr(value)[:_MAX_REPR])
    except Exception:  # noqa: BLE001 - a __repr__ that raises: the type is still worth knowing
        return f"<unrepresentable {type(value).__qualname__}>"
