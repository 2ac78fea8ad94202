"""Where accepted events go: the :class:`Store` interface and the SQLite store behind it.

A collector reads and checks each body through its store (the store picks the parser
its writes want) and hands it every request. The SQLite store is the only one shipped;
the interface is the seam for others (the benchmarks' lean store keeps only message
ids in memory, so that the collector costs little next to what they measure).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import weakref
from typing import Any, Final, Protocol

from ._body import _DEFAULT_TYPE, _SHAPE_SQL, _event_type, _Shape, _shape_python, _text
from ._model import JSON, OTLP_JSON, OTLP_PROTO, POSTHOG, SEGMENT, _Batch

logger = logging.getLogger(__name__)


def _close_all(connections: list[sqlite3.Connection]) -> None:
    for conn in connections:
        conn.close()


class _JsonReader:
    """Reads bodies with SQLite's JSON functions, on a pool of connections of their own.

    Each request borrows a connection, so validation runs outside the store's
    lock and in parallel with the writes.
    """

    def __init__(self, json_functions: bool = True) -> None:
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._all: list[sqlite3.Connection] = []
        self._finalizer = weakref.finalize(self, _close_all, self._all)
        conn = self._connect()
        try:
            conn.execute("SELECT json_type('{}')").fetchone()
            self.sqlite = json_functions
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
    # OTLP LogRecords are stored as the Segment-shaped events _otlp.py makes of them
    OTLP_JSON: ("messageId", "userId", "anonymousId", "sentAt"),
    OTLP_PROTO: ("messageId", "userId", "anonymousId", "sentAt"),
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


class Store(Protocol):
    """What a :class:`Collector` needs of the place its accepted events go.

    ``shape`` runs in the connection threads, in parallel, outside any lock the store
    holds for writing; ``write`` is called once per request, answered or not, by those
    threads too. The collector calls ``before_serving`` when it starts listening and
    ``after_serving`` when it stops (and once more at ``close``, for a collector that
    never served).
    """

    #: events already held when the collector starts (a reused database file)
    initial_events: int

    def shape(self, text: str, fmt: str, reject: str | None) -> _Shape:
        """Read a body (UTF-8 text) enough to check it; ``events`` set if decoded."""
        ...

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
        """Record one request and keep its batch, if any; return the events kept."""
        ...

    def events(self) -> list[dict[str, Any]]:
        """Every kept event, decoded, in arrival order (``RuntimeError`` if it keeps none)."""
        ...

    def message_ids(self) -> list[str]:
        """The message id of each kept event, duplicates kept, in arrival order."""
        ...

    def before_serving(self) -> None: ...

    def after_serving(self) -> None: ...

    def close(self) -> None: ...


class SqliteStore:
    """The SQLite database: one connection, one lock, one transaction per request.

    Bodies are read by SQLite's JSON functions on connections of their own
    (:class:`_JsonReader`), so the events of a batch never become Python objects;
    ``json_functions=False`` has Python read and split them, as when SQLite lacks
    those functions (for tests).
    """

    def __init__(self, db_path: str | os.PathLike[str], *, json_functions: bool = True) -> None:
        self._reader = _JsonReader(json_functions)
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
        self._reader.close()
        with self._lock:
            self._finalizer()

    def shape(self, text: str, fmt: str, reject: str | None) -> _Shape:
        return self._reader.shape(text, fmt, reject)

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

    def _column(self, sql: str) -> list[Any]:
        with self._lock:
            return [row[0] for row in self._db.execute(sql)]

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(p) for p in self._column("SELECT payload FROM events ORDER BY id")]

    def message_ids(self) -> list[str]:
        return self._column("SELECT message_id FROM events WHERE message_id IS NOT NULL ORDER BY id")

    # Keeping an index on random message ids (uuid4, as Segment's and PostHog's
    # libraries make them) up to date costs more than the rest of a write, five
    # times more for a file database, whose every commit then rewrites pages all
    # over the index. So the index is dropped while serving and built, by one
    # sort, when serving stops.

    def before_serving(self) -> None:
        with self._lock:
            self._db.execute("DROP INDEX IF EXISTS events_message_id")

    def after_serving(self) -> None:
        with self._lock:
            self._db.execute(_INDEX)
