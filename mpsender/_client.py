"""The Client: builds events in the calling process and hands them to the channel."""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from . import _platform
from ._enrich import enrichment
from ._error_event import SEVERITIES, error_properties
from ._events import (
    MessageIds,
    explain_unpackable,
    host_anonymous_id,
    identity,
    pack,
    require_name,
    to_timestamp,
)
from ._exceptions import EventTooLargeError, EventTypeError, InvalidEventError, MpsenderError
from ._options import Options, env_testing, resolve_options
from ._paths import Paths, prepare_paths
from ._session import Session, end_open, settle
from ._session import _current as _session_var
from ._session import _deferred as _deferred_sessions
from ._sink import SenderSink, Sink
from ._stats import ProcessStats, SenderStats, Stats
from ._testrun import outside_capture
from ._wire_records import encode_record, json_size, wire_encoder

if TYPE_CHECKING:
    from ._timed import Timed

logger = logging.getLogger(__name__)

__all__ = ["Client"]

_time = time.time
_getpid = os.getpid

_clients: weakref.WeakSet[Client] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_clients):
        client._forked()


_platform.at_fork_in_child(_after_fork_in_child)

#: short record keys -> the names a before_send hook sees (Segment's)
_LONG = {
    "t": "type", "m": "messageId", "ts": "timestamp", "u": "userId", "a": "anonymousId",
    "e": "event", "n": "name", "cat": "category", "p": "properties", "tr": "traits",
    "g": "groupId", "pv": "previousId", "c": "context", "i": "integrations", "s": "sessionId",
}
_SHORT = {v: k for k, v in _LONG.items()}


class Client:
    """Sends events through the host's shared sender.

    Build one directly in tests; applications usually call :func:`mpsender.init`, which
    keeps one per process. Every method runs in the calling process and returns in
    microseconds: events are appended to this process's spool file, and the sender
    process uploads them.
    """

    def __init__(self, write_key: str | None = None, endpoint: str | None = None, **options: Any) -> None:
        self._configure(resolve_options({"write_key": write_key, "endpoint": endpoint, **options}))

    @classmethod
    def from_options(cls, options: Options, sink: Sink | None = None) -> Client:
        """A client for ``options`` (already resolved) whose records go to ``sink``."""
        client = cls.__new__(cls)
        client._configure(options, sink)
        return client

    def _configure(self, options: Options, sink: Sink | None = None) -> None:
        """Set the client up for ``options``, its records going to ``sink``: by default
        the host's sender for its destination (its directories made here, or
        ConfigurationError), none when ``options.disabled``. Every constructor, and
        ``mpsender.testing.capture()``, comes here."""
        self.options = options
        self._rejected = 0
        self._tracked = 0
        self._hook_dropped = 0
        self._hook_failed = False
        self._capture_failed = False  # capture_error() warned about its arguments
        self._hook = options.before_send
        self._max = options.max_message_bytes
        self._props = dict(options.properties)
        self._context = dict(options.context)
        self._enrich = options.enrich
        self._context_needed = bool(self._context) or self._enrich
        self._ids = MessageIds()
        self._fork_claims: dict[int, object] = {}
        if sink is None and not options.disabled:
            _platform.require_supported()  # Windows: one clear error naming MPSENDER_DISABLED
            sink = SenderSink(options, prepare_paths(options))
        self._sink: Sink | None = sink
        # asked for, and the production sink only: mpsender.testing's checks decode what it is given
        self._wire = wire_encoder(options) if options.wire_records and isinstance(sink, SenderSink) else None
        self._off = sink is None
        # a test run (MPSENDER_TESTING): a call that goes nowhere says how to capture it
        self._test_run = self._off and env_testing()
        _clients.add(self)

    def _use(self, options: Options, sink: Sink) -> Callable[[], None]:
        """Send to ``sink`` with ``options`` (counters from zero) until the returned
        function is called; it gives back the options, sink and counters the client had.
        How ``mpsender.testing.capture()`` takes a client over."""
        own_options, own_sink = self.options, self._sink
        counts = (self._tracked, self._rejected, self._hook_dropped)
        hook_failed = self._hook_failed
        self._configure(options, sink)

        def give_back() -> None:
            self._configure(own_options, own_sink)
            self._tracked, self._rejected, self._hook_dropped = counts
            self._hook_failed = hook_failed

        return give_back

    @property
    def paths(self) -> Paths:
        """The files of this client's destination (runtime directory, spool, socket)."""
        sink = self._sink
        if not isinstance(sink, SenderSink):
            raise AttributeError("this client sends to no sender: it is disabled or captured")
        return sink.paths

    def _forked(self) -> None:
        """In a fork child: the sink lets go of the parent's files, then new message ids.

        Once per child, by one thread. A child forked without Python's at-fork hooks
        (uWSGI's workers, a C extension's ``fork()``) finds out by its pid, perhaps in
        several threads at once: the first claims the reset (``dict.setdefault`` is
        atomic), the others wait the microseconds it takes. ``_ids.pid`` changes last,
        so no thread writes through a half-reset sink or reuses the parent's ids.
        """
        pid = _getpid()
        mine = object()
        claims = self._fork_claims
        if claims.setdefault(pid, mine) is not mine:
            while self._ids.pid != pid:
                time.sleep(0)  # another thread of this child is resetting
            return
        if self._sink is not None:
            self._sink.after_fork()
        self._ids.reset()
        self._fork_claims = {pid: mine}  # forget the parent's claims

    # --- lifecycle -------------------------------------------------------------------

    def start(self, wait: float | None = None) -> bool:
        """Connect to the host's sender, starting it if none runs; wait up to ``wait``
        seconds (default: the ``start_timeout`` option) for it to listen."""
        if self._sink is None:
            return True
        return self._sink.start(self.options.start_timeout if wait is None else wait)

    def flush(self, timeout: float = 5.0) -> bool:
        """True once the endpoint has accepted (2xx) every event this process tracked
        before the call, or the sender settled them for good (dropped events are counted
        in ``stats()``). False when ``timeout`` passes first. Never hangs."""
        return True if self._sink is None else self._sink.flush(timeout)

    def shutdown(self, timeout: float = 5.0) -> bool:
        """Flush, then close this process's file and connection. Idempotent; a later
        call to track() opens them again. False when the flush timed out, or when a
        signal handler calls it while the code it interrupted holds the file: then
        nothing is closed (the events are flushed all the same)."""
        end_open("ok", client=self, at_exit=True)  # this client's sessions still open
        if self._sink is None:
            return True
        ok = self._sink.flush(timeout)
        return self._sink.close() and ok

    close = shutdown

    async def aflush(self, timeout: float = 5.0) -> bool:
        """``flush()`` for async code: awaits the sender's answer without blocking the
        event loop (other tasks run meanwhile); the same result, by the same deadline.

        The blocking round trip runs in the loop's default executor: a request made while
        another thread holds this process's connection goes over a connection of its own,
        so it neither waits for that one nor mixes up their replies. Cancelling the await
        leaves that thread to finish by ``timeout``."""
        sink = self._sink
        if sink is None:
            return True
        import asyncio  # here, not at import: most processes never await a flush

        return await asyncio.get_running_loop().run_in_executor(None, sink.flush, timeout)

    async def ashutdown(self, timeout: float = 5.0) -> bool:
        """``shutdown()`` for async code: :meth:`aflush`, then close this process's file
        and connection (which takes no wait). Idempotent."""
        end_open("ok", client=self, at_exit=True)
        sink = self._sink
        if sink is None:
            return True
        ok = await self.aflush(timeout)
        return sink.close() and ok

    def stats(self, timeout: float = 1.0) -> Stats:
        """This process's counters and, if it answers within ``timeout``, the sender's."""
        sink = self._sink
        if sink is None:
            return Stats(ProcessStats(_getpid(), 0, 0, 0, 0, 0, {}), None)
        counts = sink.counters()
        dropped = dict(counts.dropped)
        if self._hook_dropped:
            dropped["dropped_by_hook"] = self._hook_dropped
        process = ProcessStats(
            pid=_getpid(), tracked=self._tracked, handed_to_sender=counts.handed, spilled=counts.spilled,
            sent_over_socket=counts.fallback, rejected=self._rejected, dropped=dropped,
        )
        raw = sink.sender_stats(timeout)
        return Stats(process, SenderStats.from_wire(raw) if raw else None)

    # --- calls -------------------------------------------------------------------------

    def track(
        self, event: str, *, user_id: str | None = None, anonymous_id: str | None = None,
        properties: Mapping[str, Any] | None = None, context: Mapping[str, Any] | None = None,
        timestamp: Any = None, message_id: str | None = None,
        integrations: Mapping[str, Any] | None = None,
    ) -> None:
        """Record that ``user_id`` (or ``anonymous_id``) did ``event``."""
        if self._off:
            if self._test_run:
                outside_capture(f"track({event!r})")
            return
        if event.__class__ is not str or not event:
            self._check(require_name, event, "event")
        rec: dict[str, Any]
        if properties.__class__ is dict and not self._props:
            rec = {"t": "track", "e": event, "p": properties}  # the common case, kept short
        else:
            rec = {"t": "track", "e": event}
            if properties is not None or self._props:
                rec["p"] = self._merge(properties, self._props, "properties")
        self._emit(rec, user_id, anonymous_id, context, timestamp, message_id, integrations)

    def identify(
        self, user_id: str | None = None, *, anonymous_id: str | None = None,
        traits: Mapping[str, Any] | None = None, context: Mapping[str, Any] | None = None,
        timestamp: Any = None, message_id: str | None = None,
        integrations: Mapping[str, Any] | None = None,
    ) -> None:
        """Tie ``user_id`` to ``traits``."""
        if self._off:
            if self._test_run:
                outside_capture("identify()")
            return
        rec: dict[str, Any] = {"t": "identify"}
        if traits is not None:
            rec["tr"] = self._merge(traits, None, "traits")
        self._emit(rec, user_id, anonymous_id, context, timestamp, message_id, integrations)

    def group(
        self, group_id: str, *, user_id: str | None = None, anonymous_id: str | None = None,
        traits: Mapping[str, Any] | None = None, context: Mapping[str, Any] | None = None,
        timestamp: Any = None, message_id: str | None = None,
        integrations: Mapping[str, Any] | None = None,
    ) -> None:
        """Associate the user with ``group_id`` (an account, a company)."""
        if self._off:
            if self._test_run:
                outside_capture("group()")
            return
        rec: dict[str, Any] = {"t": "group", "g": self._check(self._id_str, group_id, "group_id")}
        if traits is not None:
            rec["tr"] = self._merge(traits, None, "traits")
        self._emit(rec, user_id, anonymous_id, context, timestamp, message_id, integrations)

    def alias(
        self, previous_id: str, *, user_id: str, context: Mapping[str, Any] | None = None,
        timestamp: Any = None, message_id: str | None = None,
        integrations: Mapping[str, Any] | None = None,
    ) -> None:
        """Merge the identity ``previous_id`` into ``user_id``."""
        if self._off:
            if self._test_run:
                outside_capture("alias()")
            return
        rec: dict[str, Any] = {"t": "alias", "pv": self._check(self._id_str, previous_id, "previous_id")}
        self._emit(rec, self._check(self._id_str, user_id, "user_id"), None, context, timestamp,
                   message_id, integrations)

    def page(
        self, name: str | None = None, *, category: str | None = None, user_id: str | None = None,
        anonymous_id: str | None = None, properties: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None, timestamp: Any = None,
        message_id: str | None = None, integrations: Mapping[str, Any] | None = None,
    ) -> None:
        """Record a page view."""
        self._view("page", name, category, user_id, anonymous_id, properties, context,
                   timestamp, message_id, integrations)

    def screen(
        self, name: str | None = None, *, category: str | None = None, user_id: str | None = None,
        anonymous_id: str | None = None, properties: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None, timestamp: Any = None,
        message_id: str | None = None, integrations: Mapping[str, Any] | None = None,
    ) -> None:
        """Record a mobile screen view."""
        self._view("screen", name, category, user_id, anonymous_id, properties, context,
                   timestamp, message_id, integrations)

    def capture_error(
        self, exc: BaseException, *, severity: str = "error", user_id: str | None = None,
        anonymous_id: str | None = None, properties: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        """Send a ``$error`` track event: type, message, a bounded stack, a stable
        fingerprint (type + message shape + first in-app frame), ``severity`` (``debug``,
        ``info``, ``warning``, ``error`` or ``fatal``) and ``causes``, the chain of
        exceptions behind it. Without a user the event is attributed to the current
        session's ids, else to ``anonymous_id="host:<hostname>"``.

        Meant for ``except`` blocks, so it never replaces the exception being handled:
        an exception whose ``__str__`` raises or whose text is not UTF-8 is sent with a
        placeholder, and when ``properties``, ``context`` or the ids would make
        ``track()`` raise, the error event is sent without them (logged once, counted
        in ``stats().process.rejected``). Only a non-exception ``exc`` or a bad
        ``severity`` raises: mistakes in the call itself.
        """
        if severity not in SEVERITIES:
            self._check(_bad_severity, severity)
        if self._off:
            if self._test_run:
                outside_capture("capture_error()")
            return
        props = self._check(error_properties, exc)
        props["severity"] = severity
        host = host_anonymous_id()
        if user_id is None and anonymous_id is None:
            session = _session_var.get()
            if session is not None and (session.user_id or session.anonymous_id):
                user_id, anonymous_id = session.user_id, session.anonymous_id
            else:
                anonymous_id = host
        try:
            given = self._merge(properties, None, "properties") if properties is not None else {}
            self.track("$error", user_id=user_id, anonymous_id=anonymous_id,
                       properties={**props, **given}, context=context)
            return
        except MpsenderError as bad:  # already counted as rejected where it was raised
            problem = bad
        if not self._capture_failed:
            self._capture_failed = True
            logger.warning("capture_error(): %s; sending the $error event without the caller's "
                           "properties and context (logged once)", problem)
        try:
            identity(user_id, anonymous_id)
        except MpsenderError:  # the ids were the problem (or one of them)
            user_id, anonymous_id = None, host
        try:
            self.track("$error", user_id=user_id, anonymous_id=anonymous_id, properties=props)
        except MpsenderError:  # over a very small max_message_bytes: counted once more, and given up
            pass

    def timed(self, event: str, /, *, user_id: str | None = None, anonymous_id: str | None = None,
              **properties: Any) -> Timed:
        """:func:`mpsender.timed` on this client: a decorator and context manager that
        tracks ``event`` with ``duration``, ``outcome`` and ``properties``."""
        from ._timed import Timed  # here: _timed imports the module-level client's home

        return Timed(self, event, user_id, anonymous_id, properties)

    def session(
        self, session_id: str | None = None, *, user_id: str | None = None, anonymous_id: str | None = None,
        properties: Mapping[str, Any] | None = None,
    ) -> Session:
        """A session, for a ``with`` (or ``async with``) block: ``Session Started`` on
        entry, ``Session Ended`` (``duration``, ``outcome``) on exit, and every event
        tracked inside (in any thread or task that runs in the block's context) carries
        its ``session_id`` (a new UUID when None). Events inside that give no user get
        the session's ``user_id``/``anonymous_id``. A session still open when the process
        exits (or at ``shutdown()``) is ended then, once. Bad arguments raise here."""
        return Session(self, session_id, user_id=user_id, anonymous_id=anonymous_id, properties=properties)

    def _session_event(self, name: str, session: Session, properties: dict[str, Any],
                       timestamp: float | None = None) -> None:
        """``Session Started``/``Ended`` of ``session``, whatever session is current."""
        if self._off:
            return
        uid, aid = session.user_id, session.anonymous_id
        if uid is None and aid is None:
            aid = host_anonymous_id()
        rec: dict[str, Any] = {"t": "track", "e": name, "s": session.session_id,
                               "p": {**self._props, **properties} if self._props else properties}
        self._emit(rec, uid, aid, None, timestamp, None, None)

    # --- internals -----------------------------------------------------------------------

    def _view(self, kind: str, name: Any, category: Any, user_id: Any, anonymous_id: Any,
              properties: Any, context: Any, timestamp: Any, message_id: Any, integrations: Any) -> None:
        if self._off:
            if self._test_run:
                outside_capture(f"{kind}()")
            return
        rec: dict[str, Any] = {"t": kind}
        if name is not None:
            rec["n"] = self._check(require_name, name, "name")
        if category is not None:
            rec["cat"] = self._check(require_name, category, "category")
        if properties is not None or self._props:
            rec["p"] = self._merge(properties, self._props, "properties")
        self._emit(rec, user_id, anonymous_id, context, timestamp, message_id, integrations)

    def _emit(self, rec: dict[str, Any], user_id: Any, anonymous_id: Any, context: Any,
              timestamp: Any, message_id: Any, integrations: Any) -> None:
        if _deferred_sessions:
            settle()  # sessions whose block raised an exception that was caught since
        session = _session_var.get()
        if session is not None:
            if "s" not in rec:
                rec["s"] = session.session_id
            if user_id is None and anonymous_id is None:
                user_id, anonymous_id = session.user_id, session.anonymous_id
        if user_id.__class__ is str and user_id and anonymous_id is None:
            rec["u"] = user_id
        else:
            uid, aid = self._check(identity, user_id, anonymous_id)
            if uid is not None:
                rec["u"] = uid
            if aid is not None:
                rec["a"] = aid
        if context is not None or self._context_needed:
            rec["c"] = self._merge(context, self._base_context(), "context")
        if integrations is not None:
            rec["i"] = self._merge(integrations, None, "integrations")
        ids = self._ids
        if ids.pid != _getpid():
            self._forked()  # a fork the at-fork hook did not see: new ids, new file
        if message_id is None:
            rec["m"] = ids.prefix + next(ids.seq).to_bytes(8, "big")
        else:
            rec["m"] = self._check(require_name, message_id, "message_id")
        now = _time()
        rec["ts"] = now if timestamp is None else self._check(to_timestamp, timestamp)
        if self._hook is not None:
            hooked = self._run_hook(rec)
            if hooked is None:
                return
            rec = hooked
        if rec["ts"] != now:
            # A backfill (or a hook's timestamp): the sender ages the event from when it
            # was written, never from its own time, so a historical event is not expired.
            rec["w"] = now
        # With wire_records, while the sender reads them: the event as the endpoint will get
        # it (no work left for the sender but framing it into a request); else, or when
        # orjson refuses a value, packed (_wire_records).
        wire = self._wire
        payload = encode_record(wire, rec, now) if wire is not None and self._sink.wire_ready else None  # type: ignore[union-attr]
        if payload is None:
            try:
                payload = pack(rec)
            except (TypeError, ValueError, OverflowError) as exc:
                self._rejected += 1
                raise explain_unpackable(rec, exc) from None
            size, form = len(payload), "packed"
        else:
            size, form = json_size(payload), "as JSON"
        if size > self._max:
            self._rejected += 1
            raise EventTooLargeError(size, self._max, form)
        self._tracked += 1
        self._sink.write(payload, now)  # type: ignore[union-attr]  # None only when _off

    def _check(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except MpsenderError:
            self._rejected += 1
            raise

    @staticmethod
    def _id_str(value: Any, what: str) -> str:
        if value is None:
            raise InvalidEventError(f"{what} is required")
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise EventTypeError(f"{what} must be a str or int, not {type(value).__qualname__}")
        text = str(value)
        if not text:
            raise InvalidEventError(f"{what} must not be empty")
        return text

    def _merge(self, given: Any, base: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
        if given is None:
            return dict(base) if base else {}
        if given.__class__ is not dict:
            if not isinstance(given, Mapping):
                self._rejected += 1
                raise EventTypeError(f"{what} must be a dict, not {type(given).__qualname__}")
            given = dict(given)
        return {**base, **given} if base else given

    def _base_context(self) -> dict[str, Any]:
        if not self._enrich:
            return self._context
        return {**enrichment(), **self._context}

    def _run_hook(self, rec: dict[str, Any]) -> dict[str, Any] | None:
        # Top-level copies of properties/traits/context/integrations: a hook that scrubs
        # in place must not change the caller's dicts, nor the event sent when it raises.
        event = {_LONG[k]: (dict(v) if v.__class__ is dict else v) for k, v in rec.items()}
        mid = event.get("messageId")
        if isinstance(mid, bytes):
            import uuid

            event["messageId"] = str(uuid.UUID(bytes=mid))
        assert self._hook is not None
        try:
            result = self._hook(event)
        except Exception:  # noqa: BLE001 - a buggy hook must not lose the event
            self._hook_bug("before_send raised; sending the event unchanged (logged once)", exc_info=True)
            return rec
        if result is None:
            self._hook_dropped += 1
            return None
        if not isinstance(result, Mapping):
            self._hook_bug("before_send returned %s, not a dict or None; sending the event unchanged",
                           type(result).__qualname__)
            return rec
        out = {_SHORT[k]: v for k, v in result.items() if k in _SHORT}
        for key in ("t", "m", "ts"):  # the envelope: a hook need not copy it
            if out.get(key) is None:
                out[key] = rec[key]
        problem = _unsendable(out)
        if problem is None and out["ts"] is not rec["ts"]:
            try:  # a hook's timestamp is held to what track() takes, and stored as track() stores it
                out["ts"] = to_timestamp(out["ts"])
            except MpsenderError as exc:
                problem = str(exc)
        if problem is None:
            try:
                if len(pack(out)) > self._max:
                    problem = f"over max_message_bytes ({self._max}) packed"
            except (TypeError, ValueError, OverflowError) as exc:
                problem = f"a value cannot be sent: {exc}"
        if problem is not None:
            self._hook_bug("before_send returned an event that cannot be sent (%s); sending the "
                           "event unchanged", problem)
            return rec
        return out

    def _hook_bug(self, msg: str, *args: object, exc_info: bool = False) -> None:
        if not self._hook_failed:
            self._hook_failed = True
            logger.error(msg, *args, exc_info=exc_info)


def _bad_severity(severity: Any) -> None:
    if not isinstance(severity, str):
        raise EventTypeError(f"severity must be a str, not {type(severity).__qualname__}")
    raise InvalidEventError(f"severity must be one of {', '.join(SEVERITIES)}; got {severity!r}")


#: fields a record of each type needs besides an id (what the wire encoders require)
_NEEDS: dict[str, tuple[str, ...]] = {
    "track": ("e",), "identify": (), "group": ("g",), "alias": ("u", "pv"), "page": (), "screen": (),
}


def _unsendable(rec: Mapping[str, Any]) -> str | None:
    """Why the sender could not encode a record a before_send hook returned, or None."""
    t = rec["t"]
    if t not in _NEEDS:
        return f"unknown type {t!r}"
    if not isinstance(rec["m"], (str, bytes)) or not rec["m"]:
        return "messageId must be a non-empty str"
    if not (rec.get("u") or rec.get("a")):
        return "userId or anonymousId is required"
    for key in _NEEDS[t]:
        if rec.get(key) in (None, ""):
            return f"{_LONG[key]} is required for {t}"
    return None
