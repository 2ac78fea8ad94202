"""A local ingestion collector: a real HTTP server for tests, benchmarks and ``mpsender collect``.

It accepts the three wire formats the sender speaks (the format is chosen by the
request path; ``Content-Encoding: gzip`` is honoured):

* Segment, ``POST /v1/batch``: ``{"batch": [...], "sentAt": ...}``, HTTP Basic auth
  with the write key as user and an empty password;
* PostHog, ``POST /batch/``: ``{"api_key": ..., "batch": [...], "sent_at": ...}``;
* generic JSON, ``POST /json`` (any path ending in ``/json``): Segment-shaped,
  ``Authorization: Bearer <key>``.

Every accepted event is stored in SQLite (schema in ``docs/collector.md``), every
request is recorded in memory and in SQLite, and :class:`Faults` make the server
misbehave on purpose (outages, slow or hung answers, rejections) while it runs.

The server runs in threads of the calling process: one accept thread and one
thread per connection. SQLite's JSON functions do the per-event work, in C with
the GIL released: one query validates a body (outside the store's lock, so in
parallel with the writes) and one statement splits it into rows. The events of a
batch never become Python objects, unless the body holds what SQLite cannot read
(NaN, say) or SQLite was built without JSON support; then Python does both.

``Collector(store="ids")`` is the lean mode, for throughput benchmarks: the same
checks (auth, gzip, JSON, the ``batch`` shape per format, the faults), the same
answers, but no SQLite at all. A body is parsed by orjson when it is importable
(by ``json`` otherwise) and only the message ids of accepted events are kept, in
memory; ``events()`` is not available in that mode.
"""

from __future__ import annotations

import base64
import binascii
import collections
import json
import logging
import math
import os
import random
import socket
import sqlite3
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, TypedDict, cast
from urllib.parse import urlsplit

_orjson: Any  # the lean store's parser; the json module does the same work, slower
try:
    import orjson as _orjson  # type: ignore[import-not-found,unused-ignore,no-redef]
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None

__all__ = ["Collector", "CollectorTotals", "Faults", "RequestRecord"]

logger = logging.getLogger(__name__)

SEGMENT: Final = "segment"
POSTHOG: Final = "posthog"
JSON: Final = "json"

#: ``Collector(store=...)``: every event in SQLite (the default), or only message ids in memory.
STORE_SQLITE: Final = "sqlite"
STORE_IDS: Final = "ids"
_STORES: Final = (STORE_SQLITE, STORE_IDS)

#: A body larger than this on the wire is refused with 413 before it is read.
MAX_WIRE_BYTES: Final = 64 * 1024 * 1024
#: A gzip body that inflates past this is refused with 413 (unless ``max_body_bytes`` says less).
MAX_BODY_BYTES: Final = 256 * 1024 * 1024

_HEALTH_PATH: Final = "/health"
_BATCH_METHODS: Final = frozenset({"POST"})


@dataclass(frozen=True, slots=True)
class Faults:
    """Ways to make the collector misbehave; swap them live with :meth:`Collector.set_faults`.

    ``hang`` and ``delay`` apply to every request but ``GET /health``; the others to
    batch requests (a POST to a format's path), in this order: ``status``,
    ``fail_first``, ``fail_rate``, then ``max_body_bytes`` and ``reject_event`` once
    the body is decoded. The full order is in ``docs/collector.md``.
    """

    fail_first: int = 0
    """Answer ``fail_status`` to the first N batch requests after these faults are set."""
    fail_rate: float = 0.0
    """Answer ``fail_status`` to this fraction of batch requests, drawn from ``random.Random(seed)``."""
    fail_status: int = 503
    status: int | None = None
    """Answer every batch request with this status, without looking at it."""
    retry_after: str | None = None
    """``Retry-After`` value sent with the failures above (``"2"`` or an HTTP-date)."""
    delay: float = 0.0
    """Seconds to wait, after reading a request, before handling and answering it."""
    hang: bool = False
    """Read the request and never answer; the connection is held until ``stop()``."""
    reject_event: str | None = None
    """A batch holding a track event of this name gets 400 naming it; nothing of it is stored."""
    max_body_bytes: int | None = None
    """A body larger than this once decompressed gets 413."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.fail_first < 0:
            raise ValueError(f"fail_first must be >= 0, got {self.fail_first!r}")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError(f"fail_rate must be within [0, 1], got {self.fail_rate!r}")
        if not 100 <= self.fail_status <= 599:
            raise ValueError(f"fail_status must be an HTTP status, got {self.fail_status!r}")
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP status or None, got {self.status!r}")
        if not (math.isfinite(self.delay) and self.delay >= 0.0):
            raise ValueError(f"delay must be a finite number of seconds >= 0, got {self.delay!r}")
        if self.max_body_bytes is not None and self.max_body_bytes < 0:
            raise ValueError(f"max_body_bytes must be >= 0 or None, got {self.max_body_bytes!r}")
        if self.retry_after is not None and ("\r" in self.retry_after or "\n" in self.retry_after):
            raise ValueError("retry_after must be a single header line")


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the collector saw it."""

    arrived_at: float
    """``time.monotonic()`` when the request line and headers had been read."""
    method: str
    path: str
    """Without the query string."""
    headers: dict[str, str]
    """Lower-case names; repeated headers joined with ``", "``."""
    status: int | None
    """The status answered; ``None`` when none was (``hang``, or stopped while delayed)."""
    events: int
    """Events stored from this request (0 unless the status is 200)."""
    body_bytes: int
    """Body size on the wire, before any decompression."""
    gzip: bool
    error: str | None
    """Why the request failed, as in the ``{"error": ...}`` answer; ``None`` on success."""
    format: str | None
    """``"segment"``, ``"posthog"`` or ``"json"``; ``None`` for other paths."""


class CollectorTotals(TypedDict):
    """Running totals, for a once-a-second progress line."""

    events: int
    requests: int
    errors: dict[int, int]
    """Requests answered with a status >= 400, by status."""
    unanswered: int
    """Requests never answered (``hang``, or stopped while delayed)."""


class _Reject(Exception):
    """A request is answered with an error status; carries what to send and record."""

    def __init__(
        self,
        status: int,
        reason: str,
        *,
        headers: Iterable[tuple[str, str]] = (),
        extra: dict[str, object] | None = None,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = list(headers)
        self.extra = extra or {}


class _Incomplete(Exception):
    """The client went away before sending the whole body."""


@dataclass(slots=True)
class _Batch:
    """A valid batch on its way to the store."""

    fmt: str
    text: str
    count: int
    sent_at: str | None
    events: list[dict[str, Any]] | None
    """The events decoded by Python, when SQLite could not read the text; else ``None``."""


def _route(path: str) -> str | None:
    """The wire format served at ``path``, or ``None`` when no format is."""
    p = path.rstrip("/")
    if p.endswith("/v1/batch"):
        return SEGMENT
    if p.endswith("/batch"):
        return POSTHOG
    if p.endswith("/json"):
        return JSON
    return None


def _text(value: object) -> str | None:
    """A JSON value as an SQLite TEXT column holds it (as ``json_extract`` gives it)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _gunzip(data: bytes, limit: int) -> bytes:
    """Inflate a (possibly multi-member) gzip body, refusing to grow past ``limit`` bytes."""
    out: list[bytes] = []
    size = 0
    rest = data
    while True:
        d = zlib.decompressobj(wbits=31)
        try:
            chunk = d.decompress(rest, limit + 1 - size)
        except zlib.error as exc:
            raise _Reject(400, f"invalid gzip body: {exc}") from exc
        size += len(chunk)
        out.append(chunk)
        if size > limit:
            raise _Reject(413, f"decompressed body exceeds {limit} bytes")
        if not d.eof:
            raise _Reject(400, "invalid gzip body: truncated")
        rest = d.unused_data
        if not rest.strip(b"\0"):
            return b"".join(out)


# -- reading bodies --------------------------------------------------------------


@dataclass(slots=True)
class _Shape:
    """What validating a body needs to know about it."""

    top: str | None
    """JSON type of the body: ``"object"``, ``"array"``, ``"text"``, ..."""
    batch: str | None
    """JSON type of its ``batch`` member, ``None`` when there is none."""
    count: int
    not_object: int | None
    """Index of the first batch element that is not an object."""
    rejected: int | None
    """Index of the first track event named ``Faults.reject_event``."""
    api_key: object
    sent_at: object
    events: list[dict[str, Any]] | None = None


# One pass of SQLite's JSON parser (C, GIL released) answers every question the
# validation asks, so the 1000 events of a batch never become Python objects.
_SHAPE_SQL: Final = """
SELECT json_type(:body), json_type(:body, '$.batch'), json_extract(:body, '$.api_key'),
       json_extract(:body, :sent), e.n, e.not_object, e.rejected
FROM (SELECT count(*) AS n,
             min(CASE WHEN type != 'object' THEN key END) AS not_object,
             min(CASE WHEN :reject IS NOT NULL AND type = 'object' THEN
                   CASE WHEN json_extract(value, '$.event') = :reject
                         AND coalesce(json_extract(value, '$.type'), :default_type)
                             IN ('track', 'capture')
                        THEN key END
                 END) AS rejected
      FROM json_each(:body, '$.batch')) AS e
"""

# The type of an event that has an ``event`` name and no ``type``: PostHog's
# events are captures, Segment-shaped ones tracks.
_DEFAULT_TYPE: Final[dict[str, str]] = {SEGMENT: "track", JSON: "track", POSTHOG: "capture"}


def _event_type(fmt: str, event: dict[str, Any]) -> object:
    typ = event.get("type")
    if typ is None and event.get("event") is not None:
        return _DEFAULT_TYPE[fmt]
    return typ


def _is_rejected(fmt: str, event: dict[str, Any], name: str) -> bool:
    return event.get("event") == name and _event_type(fmt, event) in ("track", "capture")


def _json_type(value: object) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "other"


def _shape_python(text: str, fmt: str, reject: str | None) -> _Shape:
    """The slow path, for what SQLite cannot read (NaN, infinities) or an SQLite without JSON."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        raise _Reject(400, "body is not valid JSON") from None
    return _shape_doc(doc, fmt, reject)


def _shape_doc(doc: object, fmt: str, reject: str | None) -> _Shape:
    """What validation needs to know about a body already decoded by Python (json or orjson)."""
    if not isinstance(doc, dict):
        return _Shape(_json_type(doc), None, 0, None, None, None, None)
    events = doc.get("batch")
    sent_at = doc.get("sent_at" if fmt == POSTHOG else "sentAt")
    if not isinstance(events, list):
        return _Shape("object", None if events is None else _json_type(events), 0, None, None,
                      doc.get("api_key"), sent_at)
    not_object = next((i for i, ev in enumerate(events) if not isinstance(ev, dict)), None)
    rejected = None
    if reject is not None and not_object is None:
        rejected = next((i for i, ev in enumerate(events) if _is_rejected(fmt, ev, reject)), None)
    return _Shape("object", "array", len(events), not_object, rejected, doc.get("api_key"), sent_at,
                  events)


def _close_all(connections: list[sqlite3.Connection]) -> None:
    for conn in connections:
        conn.close()


class _JsonReader:
    """Reads bodies with SQLite's JSON functions, on a pool of connections of their own.

    Each request borrows a connection, so validation runs outside the store's
    lock and in parallel with the writes.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._all: list[sqlite3.Connection] = []
        self._finalizer = weakref.finalize(self, _close_all, self._all)
        conn = self._connect()
        try:
            conn.execute("SELECT json_type('{}')").fetchone()
            self.sqlite = True
        except sqlite3.OperationalError:
            logger.info("SQLite has no JSON functions; batches are read and stored by Python")
            self.sqlite = False
        self._idle.append(conn)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(":memory:", check_same_thread=False)
        with self._lock:
            self._all.append(conn)
        return conn

    def shape(self, text: str, fmt: str, reject: str | None) -> _Shape:
        if not self.sqlite:
            return _shape_python(text, fmt, reject)
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect()
        try:
            row = conn.execute(_SHAPE_SQL, {
                "body": text, "sent": "$.sent_at" if fmt == POSTHOG else "$.sentAt",
                "reject": reject, "default_type": _DEFAULT_TYPE[fmt],
            }).fetchone()
        except sqlite3.OperationalError:  # malformed to SQLite; Python may still read it
            return _shape_python(text, fmt, reject)
        finally:
            with self._lock:
                self._idle.append(conn)
        top, batch, api_key, sent_at, count, not_object, rejected = row
        return _Shape(top, batch, count, not_object, rejected, api_key, sent_at)

    def close(self) -> None:
        with self._lock:
            self._finalizer()


class _ObjectReader:
    """Reads bodies into Python objects, for the lean store: orjson when importable, else json.

    What orjson refuses and the json module reads (NaN, infinities, lone surrogates,
    integers past 64 bits) goes through :func:`_shape_python`, so both stores accept
    and refuse the same bodies, for the same reasons.
    """

    def shape(self, text: str, fmt: str, reject: str | None) -> _Shape:
        if _orjson is None:
            return _shape_python(text, fmt, reject)
        try:
            doc = _orjson.loads(text)
        except _orjson.JSONDecodeError:
            return _shape_python(text, fmt, reject)
        return _shape_doc(doc, fmt, reject)

    def close(self) -> None:
        pass


# -- storage ---------------------------------------------------------------------

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    received_at REAL NOT NULL,
    path TEXT NOT NULL,
    status INTEGER,
    events INTEGER NOT NULL,
    body_bytes INTEGER NOT NULL,
    gzip INTEGER NOT NULL,
    error TEXT
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    request_id INTEGER NOT NULL REFERENCES requests(id),
    received_at REAL NOT NULL,
    format TEXT NOT NULL,
    type TEXT,
    message_id TEXT,
    event TEXT,
    user_id TEXT,
    timestamp TEXT,
    sent_at TEXT,
    payload TEXT NOT NULL
);
"""
_INDEX: Final = "CREATE INDEX IF NOT EXISTS events_message_id ON events(message_id)"

# Where each format keeps the columns' values inside one event: the message id,
# the user id, the fallback user id, the event's own sent-at.
_KEYS: Final[dict[str, tuple[str, str, str | None, str]]] = {
    SEGMENT: ("messageId", "userId", "anonymousId", "sentAt"),
    JSON: ("messageId", "userId", "anonymousId", "sentAt"),
    POSTHOG: ("uuid", "distinct_id", None, "sent_at"),
}

# One statement per request: SQLite splits the batch, picks the columns out and
# renders each event back to compact JSON, all in C with the GIL released.
_INSERT_FROM_JSON: Final = """
INSERT INTO events (request_id, received_at, format, type, message_id, event, user_id,
                    timestamp, sent_at, payload)
SELECT :rid, :at, :fmt,
       coalesce(json_extract(value, '$.type'),
                CASE WHEN json_extract(value, '$.event') IS NOT NULL THEN :default_type END),
       json_extract(value, :mid),
       json_extract(value, '$.event'),
       coalesce(json_extract(value, :uid), json_extract(value, :uid2)),
       json_extract(value, '$.timestamp'),
       coalesce(:sent_at, json_extract(value, :sent)),
       value
FROM json_each(:body, '$.batch')
ORDER BY key
"""

_INSERT_ROW: Final = """
INSERT INTO events (request_id, received_at, format, type, message_id, event, user_id,
                    timestamp, sent_at, payload)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


class _Store:
    """The SQLite database: one connection, one lock, one transaction per request."""

    def __init__(self, db_path: str | os.PathLike[str]) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        # Closed explicitly even when the owner is dropped unclosed: Python 3.13
        # warns about a connection left to the garbage collector.
        self._finalizer = weakref.finalize(self, self._db.close)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT count(*) FROM events").fetchone()
        self.initial_events: int = row[0]

    def close(self) -> None:
        with self._lock:
            self._finalizer()

    def write(
        self,
        *,
        received_at: float,
        path: str,
        status: int | None,
        body_bytes: int,
        gzip: bool,
        error: str | None,
        batch: _Batch | None,
    ) -> int:
        """Record one request and store its batch, if any; return the events stored."""
        n = batch.count if batch is not None else 0
        with self._lock:
            db = self._db
            db.execute("BEGIN")
            try:
                cur = db.execute(
                    "INSERT INTO requests (received_at, path, status, events, body_bytes, gzip, error)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (received_at, path, status, n, body_bytes, int(gzip), error),
                )
                if batch is not None and n:
                    self._insert_events(cur.lastrowid, received_at, batch)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return n

    def _insert_events(self, rid: int | None, received_at: float, batch: _Batch) -> None:
        mid, uid, uid2, sent = _KEYS[batch.fmt]
        if batch.events is None:
            try:
                self._db.execute(
                    _INSERT_FROM_JSON,
                    {"rid": rid, "at": received_at, "fmt": batch.fmt, "sent_at": batch.sent_at,
                     "default_type": _DEFAULT_TYPE[batch.fmt],
                     "body": batch.text, "mid": f"$.{mid}", "uid": f"$.{uid}",
                     "uid2": None if uid2 is None else f"$.{uid2}", "sent": f"$.{sent}"},
                )
                return
            except sqlite3.OperationalError:
                # Not expected: SQLite validated this text. The statement is undone,
                # so the batch can still be stored the slow way.
                logger.warning("SQLite could not split a batch; storing it through Python", exc_info=True)
                batch.events = json.loads(batch.text)["batch"]
        self._db.executemany(_INSERT_ROW, self._rows(rid, received_at, batch))

    @staticmethod
    def _rows(rid: int | None, received_at: float, batch: _Batch) -> list[tuple[object, ...]]:
        """The slow path: the same columns as ``_INSERT_FROM_JSON``, picked out in Python."""
        mid, uid, uid2, sent = _KEYS[batch.fmt]
        rows: list[tuple[object, ...]] = []
        for ev in batch.events or ():
            typ = _event_type(batch.fmt, ev)
            user = ev.get(uid)
            if user is None and uid2 is not None:
                user = ev.get(uid2)
            rows.append((
                rid, received_at, batch.fmt, _text(typ), _text(ev.get(mid)), _text(ev.get("event")),
                _text(user), _text(ev.get("timestamp")),
                batch.sent_at if batch.sent_at is not None else _text(ev.get(sent)),
                json.dumps(ev, separators=(",", ":"), ensure_ascii=False),
            ))
        return rows

    def column(self, sql: str) -> list[Any]:
        with self._lock:
            return [row[0] for row in self._db.execute(sql)]

    # Keeping an index on random message ids (uuid4, as Segment's and PostHog's
    # libraries make them) up to date costs more than the rest of a write, five
    # times more for a file database, whose every commit then rewrites pages all
    # over the index. So the index is dropped while serving and built, by one
    # sort, when serving stops.

    def drop_index(self) -> None:
        with self._lock:
            self._db.execute("DROP INDEX IF EXISTS events_message_id")

    def build_index(self) -> None:
        with self._lock:
            self._db.execute(_INDEX)


class _IdStore:
    """The lean store (``store="ids"``): the message ids of accepted events, in memory.

    Same interface as :class:`_Store` for the request path; nothing touches a disk.
    An id is kept as the SQLite store's ``message_id`` column would hold it (text).
    """

    initial_events: Final = 0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: list[object] = []

    def write(
        self,
        *,
        received_at: float,
        path: str,
        status: int | None,
        body_bytes: int,
        gzip: bool,
        error: str | None,
        batch: _Batch | None,
    ) -> int:
        """Keep the ids of the batch's events, if any; return the events accepted."""
        if batch is None or not batch.count:
            return 0
        events = batch.events
        if events is None:  # not expected: the lean reader always decodes
            events = json.loads(batch.text)["batch"]
        key = _KEYS[batch.fmt][0]
        ids = [m if type(m) is str else _text(m)
               for ev in events if (m := ev.get(key)) is not None]
        with self._lock:
            self._ids.extend(ids)
        return batch.count

    def message_ids(self) -> list[Any]:
        with self._lock:
            return list(self._ids)

    def close(self) -> None:
        pass

    def drop_index(self) -> None:
        pass

    def build_index(self) -> None:
        pass


# -- HTTP ------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """One connection; HTTP/1.1 keep-alive, every answer with a Content-Length."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without this, Nagle's algorithm and
    # the client's delayed ACK add ~40 ms to every answer on a kept-alive connection.
    disable_nagle_algorithm = True

    @property
    def _server(self) -> _Server:
        return cast(_Server, self.server)

    def do_POST(self) -> None:
        self._serve()

    do_GET = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = do_POST

    def _serve(self) -> None:
        arrived = time.monotonic()
        wall = time.time()
        server = self._server
        collector = server.collector
        path = urlsplit(self.path).path
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        req = _Incoming(
            arrived, wall, self.command, path, headers, format=_route(path),
            gzip=headers.get("content-encoding", "").strip().lower() == "gzip",
        )

        try:
            body = self._read_body()
        except _Incomplete:
            self.close_connection = True
            collector._record(req, status=None, error="incomplete body", body_bytes=0)
            return
        except _Reject as rej:
            self.close_connection = True
            collector._record(req, status=rej.status, error=rej.reason, body_bytes=0)
            self._answer(rej.status, {"error": rej.reason, **rej.extra}, rej.headers)
            return
        req.body_bytes = len(body)

        if path != _HEALTH_PATH:
            faults = collector.faults
            if faults.hang:
                collector._record(req, status=None, error="hang")
                server.stopping.wait()
                self.close_connection = True
                return
            if faults.delay and server.stopping.wait(faults.delay):
                collector._record(req, status=None, error="stopped during delay")
                self.close_connection = True
                return

        try:
            status, answer, extra_headers = collector._handle(req, body)
        except Exception:
            logger.exception("collector failed on %s %s", self.command, path)
            status, answer, extra_headers = 500, {"error": "internal error"}, []
            try:
                collector._record(req, status=500, error="internal error")
            except Exception:  # the store itself is failing; the 500 still goes out
                logger.exception("collector could not record a failed request")
        self._answer(status, answer, extra_headers)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            if self.command in ("POST", "PUT", "PATCH"):
                raise _Reject(411, "Content-Length required")
            return b""
        try:
            n = int(length)
            if n < 0:
                raise ValueError(length)
        except ValueError:
            raise _Reject(400, "invalid Content-Length") from None
        if n > MAX_WIRE_BYTES:
            raise _Reject(413, f"body exceeds {MAX_WIRE_BYTES} bytes")
        data = self.rfile.read(n)
        if len(data) < n:
            raise _Incomplete
        return data

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            line = self.rfile.readline(1024)
            if not line:
                raise _Incomplete
            try:
                n = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _Reject(400, "invalid chunked encoding") from None
            if n == 0:
                while self.rfile.readline(8192).strip():  # trailers, up to the blank line
                    pass
                return b"".join(parts)
            size += n
            if size > MAX_WIRE_BYTES:
                raise _Reject(413, f"body exceeds {MAX_WIRE_BYTES} bytes")
            chunk = self.rfile.read(n)
            if len(chunk) < n:
                raise _Incomplete
            parts.append(chunk)
            self.rfile.readline(8)  # the CRLF after the chunk

    def _answer(self, status: int, payload: dict[str, object], headers: Iterable[tuple[str, str]] = ()) -> None:
        data = json.dumps(payload, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol errors (bad request line, unknown method) answered in JSON too."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # an unparsable line defaults to 0.9: no status line
            self.request_version = self.protocol_version
        reason = message or self.responses.get(code, ("error",))[0]
        self._answer(code, {"error": reason})

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib's name)
        logger.debug("%s " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    """Tracks its connections so that ``stop()`` can close kept-alive and hung ones."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], collector: Collector) -> None:
        self.collector = collector
        self.stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._conns_changed = threading.Condition()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Registered here, in the accept thread, so that once serve_forever() has
        # returned every connection is in the set before stop() looks at it.
        with self._conns_changed:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        try:
            super().shutdown_request(request)
        finally:
            with self._conns_changed:
                self._conns.discard(request)
                self._conns_changed.notify_all()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Only I/O errors get here (a client hanging up, stop() cutting a
        # connection); the handler answers 500 to anything else itself.
        logger.debug("connection from %s ended with an error", client_address, exc_info=True)

    def close_connections(self, timeout: float) -> bool:
        """Cut every open connection and wait for their threads to finish."""
        with self._conns_changed:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed by the peer or by its thread; nothing to cut
                pass
        with self._conns_changed:
            return self._conns_changed.wait_for(lambda: not self._conns, timeout)


class _Server6(_Server):
    address_family = socket.AF_INET6


@dataclass(slots=True)
class _Incoming:
    """What is known about a request before its body is handled."""

    arrived_at: float
    wall: float
    method: str
    path: str
    headers: dict[str, str]
    body_bytes: int = 0
    gzip: bool = False
    format: str | None = None


# -- the collector ---------------------------------------------------------------


class Collector:
    """An HTTP ingestion server on 127.0.0.1, storing what it receives in SQLite.

    It runs in threads of the process that starts it. ``stop()`` closes every
    connection; ``start()`` again serves on the same port with the same store, so
    a test can make an outage. The store stays readable after ``stop()`` and
    until :meth:`close`. A file ``db_path`` that already holds tables is appended to.

    ``store="ids"`` keeps only the message ids of accepted events, in memory, and
    never opens ``db_path``: every check and answer is the same, at a fraction of
    the CPU per event (for throughput benchmarks). :meth:`events` then raises.
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str] = ":memory:",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        write_key: str | None = None,
        faults: Faults | None = None,
        max_records: int | None = 100_000,
        store: str = STORE_SQLITE,
    ) -> None:
        """``max_records`` bounds the in-memory :meth:`requests` list (oldest dropped first).

        ``store``: ``"sqlite"`` (every event in ``db_path``) or ``"ids"`` (the message
        ids only, in memory; ``db_path`` is not opened).
        """
        if store not in _STORES:
            raise ValueError(f"store must be one of {', '.join(map(repr, _STORES))}, got {store!r}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be within [0, 65535], got {port!r}")
        if max_records is not None and max_records < 1:
            raise ValueError(f"max_records must be >= 1 or None, got {max_records!r}")
        self._host = host
        self._port = port
        self._write_key = write_key
        self._store_kind = store
        self._store: _Store | _IdStore
        self._reader: _JsonReader | _ObjectReader
        if store == STORE_IDS:
            self._store, self._reader = _IdStore(), _ObjectReader()
        else:
            self._store, self._reader = _Store(db_path), _JsonReader()
        self._lifecycle = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

        self._faults_lock = threading.Lock()
        self._faults = Faults()
        self._rng = random.Random(0)
        self._batches_seen = 0
        self.set_faults(faults or Faults())

        # Guards the in-memory records and totals; notified after every request.
        self._changed = threading.Condition()
        self._records: collections.deque[RequestRecord] = collections.deque(maxlen=max_records)
        self._events = self._store.initial_events
        self._requests = 0
        self._errors: collections.Counter[int] = collections.Counter()
        self._unanswered = 0

    # -- lifecycle

    def start(self) -> Collector:
        """Listen and serve in a background thread; the port is bound when this returns."""
        with self._lifecycle:
            if self._closed:
                raise RuntimeError("collector is closed")
            if self._server is not None:
                return self
            cls = _Server6 if ":" in self._host else _Server
            server = cls((self._host, self._port), self)
            try:
                self._store.drop_index()
            except BaseException:
                server.server_close()
                raise
            self._port = server.server_address[1]
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05},
                name=f"mpsender-collector:{self._port}", daemon=True,
            )
            thread.start()
            self._server, self._thread = server, thread
        logger.info("collector listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving, close the listening socket and every connection; idempotent.

        Then builds the ``message_id`` index, which is left out while serving.
        """
        with self._lifecycle:
            server, thread = self._server, self._thread
            self._server = self._thread = None
            if server is None or thread is None:
                return
            server.stopping.set()  # releases hung and delayed requests
            server.shutdown()
            server.server_close()
            if not server.close_connections(timeout=5.0):
                logger.warning("collector connections still open 5 s after stop()")
            thread.join(5.0)
            self._build_index()
        with self._changed:
            self._changed.notify_all()
        logger.info("collector on port %d stopped", self._port)

    def close(self) -> None:
        """``stop()`` and close the database; idempotent. The collector cannot serve afterwards."""
        self.stop()
        with self._lifecycle:
            if self._closed:
                return
            self._closed = True
        self._reader.close()
        self._build_index()  # for a collector that never served
        self._store.close()

    def _build_index(self) -> None:
        try:
            self._store.build_index()
        except sqlite3.Error:  # a full disk, say: the events are stored, only the index is missing
            logger.warning("could not build the message_id index", exc_info=True)

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "serving" if self._server is not None else "stopped"
        return f"<Collector {self.url} {state}>"

    # -- configuration

    @property
    def port(self) -> int:
        """The port served (the one picked, once started with port 0)."""
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def store(self) -> str:
        """``"sqlite"`` or ``"ids"``, as given to the constructor."""
        return self._store_kind

    @property
    def faults(self) -> Faults:
        """The faults in force."""
        with self._faults_lock:
            return self._faults

    def set_faults(self, faults: Faults) -> None:
        """Replace the faults; ``fail_first`` counts and ``fail_rate`` draws start afresh."""
        with self._faults_lock:
            self._faults = faults
            self._rng = random.Random(faults.seed)
            self._batches_seen = 0

    # -- what was received

    def events(self) -> list[dict[str, Any]]:
        """Every stored event, decoded, in arrival order.

        Raises ``RuntimeError`` with ``store="ids"``, which keeps no events.
        """
        store = self._store
        if isinstance(store, _IdStore):
            raise RuntimeError("events() needs the SQLite store: this collector runs with store='ids' "
                               "and keeps only message ids (message_ids(), count(), requests())")
        return [json.loads(p) for p in store.column("SELECT payload FROM events ORDER BY id")]

    def message_ids(self) -> list[str]:
        """The messageId (Segment, JSON) or uuid (PostHog) of each stored event, duplicates kept.

        In arrival order; an event stored without one is left out.
        """
        store = self._store
        if isinstance(store, _IdStore):
            return store.message_ids()
        return store.column("SELECT message_id FROM events WHERE message_id IS NOT NULL ORDER BY id")

    def requests(self) -> list[RequestRecord]:
        """Every request (the last ``max_records``), by arrival time."""
        with self._changed:
            records = list(self._records)
        records.sort(key=lambda r: r.arrived_at)
        return records

    def count(self) -> int:
        """The number of stored events."""
        with self._changed:
            return self._events

    def totals(self) -> CollectorTotals:
        """Running totals; cheap (no database access)."""
        with self._changed:
            return CollectorTotals(
                events=self._events, requests=self._requests, errors=dict(self._errors),
                unanswered=self._unanswered,
            )

    def wait_for(self, predicate: Callable[[Collector], bool], timeout: float) -> bool:
        """Block until ``predicate(self)`` holds, re-checked after every request; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)

    # -- request handling (connection threads)

    def _handle(self, req: _Incoming, body: bytes) -> tuple[int, dict[str, object], list[tuple[str, str]]]:
        """Decide the answer to one request, record it and store its events."""
        try:
            batch = self._accept(req, body)
        except _Reject as rej:
            self._record(req, status=rej.status, error=rej.reason)
            return rej.status, {"error": rej.reason, **rej.extra}, rej.headers
        if batch is None:  # health check
            self._record(req, status=200, error=None)
            return 200, {"ok": True}, []
        self._record(req, status=200, error=None, batch=batch)
        return 200, {"success": True}, []

    def _accept(self, req: _Incoming, body: bytes) -> _Batch | None:
        """The batch to store, ``None`` for a health check, or ``_Reject``."""
        if req.path == _HEALTH_PATH and req.method in ("GET", "HEAD"):
            return None
        fmt = req.format
        if fmt is None:
            raise _Reject(404, f"unknown path {req.path!r}")
        if req.method not in _BATCH_METHODS:
            raise _Reject(405, f"method {req.method} not allowed", headers=[("Allow", "POST")])
        self._injected_failure()

        encoding = req.headers.get("content-encoding", "identity").strip().lower()
        faults = self.faults
        limit = MAX_BODY_BYTES if faults.max_body_bytes is None else faults.max_body_bytes
        if encoding == "gzip":
            body = _gunzip(body, limit)
        elif encoding != "identity":
            raise _Reject(415, f"unsupported Content-Encoding {encoding!r}")
        if len(body) > limit:
            raise _Reject(413, f"body of {len(body)} bytes exceeds {limit} bytes")
        if fmt != POSTHOG:
            self._check_header_auth(fmt, req.headers.get("authorization"))

        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise _Reject(400, "body is not UTF-8") from None
        shape = self._reader.shape(text, fmt, faults.reject_event)
        if shape.top != "object":
            raise _Reject(400, "body is not a JSON object")
        if shape.batch != "array":
            raise _Reject(400, "body has no 'batch' list")
        if shape.not_object is not None:
            raise _Reject(400, f"batch[{shape.not_object}] is not an object")
        if fmt == POSTHOG:
            self._check_api_key(shape.api_key)
        if shape.rejected is not None:
            name = faults.reject_event
            raise _Reject(400, f"event {name!r} rejected", extra={"event": name, "index": shape.rejected})
        return _Batch(fmt, text, shape.count, _text(shape.sent_at), shape.events)

    def _injected_failure(self) -> None:
        """``_Reject`` when ``status``, ``fail_first`` or ``fail_rate`` says this batch request fails."""
        with self._faults_lock:
            faults = self._faults
            self._batches_seen += 1
            if faults.status is not None:
                status, reason = faults.status, f"injected fault: status {faults.status}"
            elif self._batches_seen <= faults.fail_first:
                status, reason = faults.fail_status, "injected fault: fail_first"
            elif faults.fail_rate and self._rng.random() < faults.fail_rate:
                status, reason = faults.fail_status, "injected fault: fail_rate"
            else:
                return
        headers = [("Retry-After", faults.retry_after)] if faults.retry_after is not None else []
        raise _Reject(status, reason, headers=headers)

    def _check_header_auth(self, fmt: str, authorization: str | None) -> None:
        key = self._write_key
        if key is None:
            return
        if authorization is None:
            raise _Reject(401, "missing Authorization header")
        scheme, _, credentials = authorization.strip().partition(" ")
        if fmt == SEGMENT:
            if scheme.lower() != "basic":
                raise _Reject(401, "Authorization is not HTTP Basic")
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise _Reject(401, "Authorization is not valid HTTP Basic") from None
            if decoded != f"{key}:":
                raise _Reject(401, "wrong write key")
        else:
            if scheme.lower() != "bearer":
                raise _Reject(401, "Authorization is not a Bearer token")
            if credentials.strip() != key:
                raise _Reject(401, "wrong write key")

    def _check_api_key(self, api_key: object) -> None:
        if self._write_key is None:
            return
        if api_key is None:
            raise _Reject(401, "missing api_key")
        if api_key != self._write_key:
            raise _Reject(401, "wrong api_key")

    def _record(
        self,
        req: _Incoming,
        *,
        status: int | None,
        error: str | None,
        batch: _Batch | None = None,
        body_bytes: int | None = None,
    ) -> None:
        """Store the request (and its batch), then wake ``wait_for``."""
        size = req.body_bytes if body_bytes is None else body_bytes
        stored = self._store.write(
            received_at=req.wall, path=req.path, status=status, body_bytes=size,
            gzip=req.gzip, error=error, batch=batch,
        )
        record = RequestRecord(
            arrived_at=req.arrived_at, method=req.method, path=req.path, headers=req.headers,
            status=status, events=stored, body_bytes=size, gzip=req.gzip, error=error,
            format=req.format,
        )
        with self._changed:
            self._records.append(record)
            self._requests += 1
            self._events += stored
            if status is None:
                self._unanswered += 1
            elif status >= 400:
                self._errors[status] += 1
            self._changed.notify_all()
