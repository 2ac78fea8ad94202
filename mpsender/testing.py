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
automatically once mpsender is installed) wraps a test in :func:`capture`.

Events are recorded in Segment's shape (``type``, ``event``, ``userId``,
``properties``, ``context``, ``messageId``, ``timestamp`` ...), whatever wire
``format`` is configured: the names your code passes are the names you assert on.
Only the calling process is captured: events tracked in a fork child or another
process go to that process's own client.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, overload

from . import _api
from ._client import Client
from ._events import unpack
from ._exceptions import ConfigurationError
from ._options import Options, resolve_options
from ._sink import SinkCounters
from ._version import __version__
from ._wire import format_message_id, get_encoder

logger = logging.getLogger(__name__)

__all__ = ["CapturedEvents", "capture"]

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
