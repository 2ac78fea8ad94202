"""See what your code tracks, in your own test suite; nothing is sent.

::

    import mpsender.testing

    def test_signup_is_tracked():
        with mpsender.testing.capture() as events:
            signup("ada@example.com", plan="pro")      # your code calls mpsender.track()
        [event] = events.named("Signup")
        assert event["properties"]["plan"] == "pro"

Inside a :func:`capture` block every call on this process's client (the one
``mpsender.init()`` returned, or a fresh one if none was made) goes through the
same event building and validation as in production -- ``before_send``, super
properties and context, ``enrich``, id and type checks, the size limit, the
msgpack conversions (datetime, Decimal, UUID, set, Enum) -- and then, instead of
being written for the sender, is encoded exactly as the sender would encode it and
recorded. A call that would raise in production raises here. Nothing is written to
disk, no sender is started, no connection is made. The client is given back as it
was when the block ends.

With pytest, the ``mpsender_events`` fixture (the ``mpsender`` plugin, loaded
automatically once mpsender is installed) wraps a test in :func:`capture`. With
``unittest`` or Django's test cases, :func:`captured` (on a test method or a whole
``TestCase`` class) and :class:`CaptureMixin` do, and put the events in
``self.mpsender_events``.

A test run sends nothing: the pytest plugin sets ``MPSENDER_TESTING=1`` for the session
(``--mpsender-send`` or the ini option ``mpsender_send = true`` opt out), which disables
every client, whatever the shell exports or ``init()`` is given; set it yourself for
``python -m unittest`` or ``manage.py test``. A call outside a capture block then logs,
once, how to capture it. See docs/testing.md.

Events are recorded in Segment's shape (``type``, ``event``, ``userId``,
``properties``, ``context``, ``messageId``, ``timestamp`` ...), whatever wire
``format`` is configured: the names your code passes are the names you assert on.
Only the calling process is captured: events tracked in a fork child or another
process go to that process's own client.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import logging
import threading
import unittest
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, overload

from . import _api
from ._client import Client
from ._events import unpack
from ._exceptions import ConfigurationError
from ._options import Options, resolve_options
from ._sink import SinkCounters
from ._version import __version__
from ._wire import format_message_id, get_encoder

logger = logging.getLogger(__name__)

__all__ = ["CaptureMixin", "CapturedEvents", "capture", "captured"]

_OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(Options))

Event = dict[str, Any]


class CapturedEvents(Sequence[Event]):
    """The events tracked inside a :func:`capture` block, oldest first.

    A read-only sequence of dicts in Segment's wire shape, as the endpoint would
    receive them (JSON types only: timestamps are ISO-8601 strings, message ids
    UUID strings, tuples lists). Compares equal to a list of the same dicts.
    """

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._lock = threading.Lock()
        self._dropped: dict[str, int] = {}
        self._hook_count: Callable[[], int] = lambda: 0
        self._hook_base = 0

    # --- what tests ask -----------------------------------------------------------

    def named(self, event: str) -> list[Event]:
        """The ``track`` events called ``event``, oldest first."""
        return [e for e in self._snapshot() if e.get("type") == "track" and e.get("event") == event]

    def of_type(self, kind: str) -> list[Event]:
        """The events of one call type: ``"track"``, ``"identify"``, ``"group"``,
        ``"alias"``, ``"page"`` or ``"screen"``."""
        return [e for e in self._snapshot() if e.get("type") == kind]

    def names(self) -> list[str]:
        """The names of the ``track`` events, in order: ``["Signup", "Login"]``."""
        return [e["event"] for e in self._snapshot() if e.get("type") == "track"]

    def clear(self) -> None:
        """Forget what was captured so far (the drop counts too); capturing goes on."""
        with self._lock:
            self._events.clear()
            self._dropped.clear()
            base = self._hook_count()
        self._hook_base = base

    @property
    def dropped(self) -> dict[str, int]:
        """Events that would not have reached the endpoint, by reason:
        ``dropped_by_hook`` (``before_send`` returned None), ``oversize`` (over
        ``max_message_bytes`` as JSON: the sender would dead-letter it),
        ``unencodable`` (the sender could not encode it)."""
        out = dict(self._dropped)
        hooked = self._hook_count() - self._hook_base
        if hooked:
            out["dropped_by_hook"] = hooked
        return out

    # --- Sequence ---------------------------------------------------------------------

    @overload
    def __getitem__(self, index: int) -> Event: ...

    @overload
    def __getitem__(self, index: slice) -> list[Event]: ...

    def __getitem__(self, index: int | slice) -> Event | list[Event]:
        with self._lock:
            return self._events[index]

    def __len__(self) -> int:
        return len(self._events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self._snapshot())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (CapturedEvents, list, tuple)):
            return self._snapshot() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by content

    def __repr__(self) -> str:
        return f"CapturedEvents({self._snapshot()!r})"

    # --- filled by the capture channel ---------------------------------------------

    def _snapshot(self) -> list[Event]:
        with self._lock:
            return list(self._events)

    def _add(self, event: Event) -> None:
        with self._lock:
            self._events.append(event)

    def _drop(self, reason: str) -> None:
        with self._lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + 1


class CaptureSink:
    """A sink (``mpsender._sink.Sink``) that records instead of sending.

    It takes the packed record the client produced, unpacks it as the sender does,
    and encodes it with the sender's Segment encoder, so what is recorded is what
    production would send. A later ``init()`` keeps it (``survives_init``): an app
    that initialises inside a capture block stays captured, with its options.
    """

    survives_init = True

    def __init__(self, events: CapturedEvents, options: Options) -> None:
        self.events = events
        self._max = options.max_message_bytes
        self._encoder = get_encoder("segment", write_key="", library_name="mpsender",
                                    library_version=__version__)
        self._counts = SinkCounters()

    def write(self, payload: bytes, now: float) -> None:
        try:
            # decoded and encoded as the sender does (_sender/_uploader.py, _decode)
            record = unpack(payload)
            format_message_id(record.get("m", b""))
            wire = self._encoder.encode(record)
        except Exception as exc:  # noqa: BLE001 - counted below, as the sender's dead letter
            # The sender would dead-letter it; production track() does not raise for
            # it, so neither does this: it is counted and logged.
            self.events._drop("unencodable")
            logger.warning("the sender could not encode this event and would dead-letter it: %s", exc)
            return
        if len(wire) > self._max:
            self.events._drop("oversize")
            logger.warning("event is %d bytes as JSON, over max_message_bytes (%d): the sender "
                           "would dead-letter it", len(wire), self._max)
            return
        self._counts.handed += 1
        self.events._add(json.loads(wire))

    # --- the rest of the interface: nothing to do --------------------------------------

    def start(self, wait: float) -> bool:
        return True  # there is no sender to start

    def flush(self, timeout: float) -> bool:
        return True  # captured events are "delivered" as they are tracked

    def close(self) -> bool:
        return True  # nothing was opened

    def sender_stats(self, timeout: float) -> dict[str, Any] | None:
        return None  # there is no sender

    def counters(self) -> SinkCounters:
        return self._counts

    def after_fork(self) -> None:
        pass  # a fork child records into its own copy, which the test does not see


@contextlib.contextmanager
def capture(client: Client | None = None, **options: Any) -> Iterator[CapturedEvents]:
    """Record what is tracked inside the block instead of sending it.

    Runs in the calling process. Without ``client``, captures the process's client
    (what ``mpsender.track()`` and the client ``mpsender.init()`` returned use),
    with its own options; if ``init()`` was never called, a client with the default
    options (and ``MPSENDER_*`` variables) is installed for the block, so no
    ``init()`` is needed in tests. With ``client``, captures that ``Client``
    instance. ``options`` override the client's options for the block, e.g.
    ``capture(before_send=scrub)``; a bad one raises :class:`ConfigurationError`.

    On exit the client gets its own sink, options and counters back, and the
    process's client is what it was. Blocks can nest.
    """
    unknown = sorted(set(options) - _OPTION_NAMES)
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(_OPTION_NAMES))}"
        )
    events = CapturedEvents()
    installed: Client | None = None
    with _api._lock:
        target = client if client is not None else _api._client
        if target is None:
            opts = resolve_options({**options, "disabled": True})
            installed = target = Client.from_options(opts)
            _api._client = installed
        else:
            opts = dataclasses.replace(target.options, **options) if options else target.options
        give_back = target._use(opts, CaptureSink(events, opts))
    captured = target
    events._hook_count = lambda: captured._hook_dropped
    try:
        yield events
    finally:
        final = events._hook_count()
        events._hook_count = lambda: final
        give_back()
        if installed is not None:
            with _api._lock:
                if _api._client is installed:
                    _api._client = None


# --- unittest and Django -----------------------------------------------------------------

_T = TypeVar("_T")

#: the attribute of a test case that holds its events
EVENTS_ATTRIBUTE = "mpsender_events"
#: set on a test case while one capture is running for it, so a decorated method of a
#: decorated class (or of a CaptureMixin) does not start a second, nested one
_ACTIVE_ATTRIBUTE = "_mpsender_capturing"


def _start(test: object, options: dict[str, Any]) -> Callable[[], None]:
    """Start capturing for ``test`` (its events in ``test.mpsender_events``); the function
    that ends it. A no-op when a capture already runs for this test."""
    if getattr(test, _ACTIVE_ATTRIBUTE, False):
        return lambda: None
    stack = contextlib.ExitStack()
    setattr(test, EVENTS_ATTRIBUTE, stack.enter_context(capture(**options)))
    setattr(test, _ACTIVE_ATTRIBUTE, True)

    def stop() -> None:
        setattr(test, _ACTIVE_ATTRIBUTE, False)
        stack.close()

    return stop


@overload
def captured(target: _T, /) -> _T: ...


@overload
def captured(target: None = None, /, **options: Any) -> Callable[[_T], _T]: ...


def captured(target: Any = None, /, **options: Any) -> Any:
    """Run a ``unittest``/Django test inside :func:`capture`; its events are in
    ``self.mpsender_events``.

    On a test method (sync or ``async``), the method's body is captured. On a
    ``unittest.TestCase`` class (Django's ``SimpleTestCase`` and ``TestCase`` included),
    every test is captured from the start of ``setUp`` to the end of its cleanups, so
    what ``setUp`` tracks is recorded too; a subclass that overrides ``setUp`` must call
    ``super().setUp()``, as unittest expects. ``@captured(before_send=...)`` passes
    options to :func:`capture`. One capture per test: a decorated method of a decorated
    class is captured once, by the class.
    """
    if target is None:
        return lambda t: _decorate(t, options)
    return _decorate(target, options)


def _decorate(target: Any, options: dict[str, Any]) -> Any:
    if isinstance(target, type):
        if not issubclass(target, unittest.TestCase):
            raise TypeError(f"@captured on a class needs a unittest.TestCase subclass, not {target.__qualname__}; "
                            "with pytest, use the mpsender_events fixture")
        own_setup = target.setUp

        @functools.wraps(own_setup)
        def setUp(self: unittest.TestCase) -> None:
            self.addCleanup(_start(self, options))
            own_setup(self)

        target.setUp = setUp  # type: ignore[method-assign]
        return target
    if not callable(target):
        raise TypeError(f"@captured goes on a test method or a TestCase class, not {target!r}")
    method = target
    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def run_async(self: object, *args: Any, **kwargs: Any) -> Any:
            stop = _start(self, options)
            try:
                return await method(self, *args, **kwargs)
            finally:
                stop()

        return run_async

    @functools.wraps(method)
    def run(self: object, *args: Any, **kwargs: Any) -> Any:
        stop = _start(self, options)
        try:
            return method(self, *args, **kwargs)
        finally:
            stop()

    return run


if TYPE_CHECKING:
    _MixinBase = unittest.TestCase
else:
    _MixinBase = object


class CaptureMixin(_MixinBase):
    """Capture every test of a ``unittest.TestCase`` (or Django ``SimpleTestCase``,
    ``TestCase``...) from ``setUp`` to the end of its cleanups::

        class SignupTests(mpsender.testing.CaptureMixin, unittest.TestCase):
            def test_signup(self):
                signup("ada@example.com", plan="pro")
                self.assertEqual(self.mpsender_events.names(), ["Signup"])

    Put it before the ``TestCase`` class in the bases. A ``setUp`` of your own must
    call ``super().setUp()`` (capturing starts there). :attr:`mpsender_capture_options`
    is passed to :func:`capture`.
    """

    #: the events of the running test (a fresh :class:`CapturedEvents` per test)
    mpsender_events: CapturedEvents
    #: options for :func:`capture`, e.g. ``{"before_send": scrub}``
    mpsender_capture_options: dict[str, Any] = {}  # noqa: RUF012 - read only, replaced by subclasses

    def setUp(self) -> None:
        self.addCleanup(_start(self, dict(self.mpsender_capture_options)))
        super().setUp()
