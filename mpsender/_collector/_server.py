"""The HTTP side: the request handler, the threaded server, and the Collector itself."""

from __future__ import annotations

import base64
import binascii
import collections
import gc
import json
import logging
import os
import random
import socket
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import urlsplit

from . import _otlp
from ._body import _gunzip, _route, _text
from ._model import (
    _BATCH_METHODS,
    _HEALTH_PATH,
    MAX_BODY_BYTES,
    MAX_WIRE_BYTES,
    OTLP_JSON,
    OTLP_PROTO,
    POSTHOG,
    SEGMENT,
    CollectorTotals,
    Faults,
    RequestRecord,
    _Batch,
    _Incomplete,
    _Reject,
)
from ._store import SqliteStore, Store

logger = logging.getLogger(__name__)


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
        if collector._keep_bodies:
            req.raw = body

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

    def _answer(self, status: int, payload: dict[str, object] | bytes,
                headers: Iterable[tuple[str, str]] = ()) -> None:
        """``payload``: a dict, sent as JSON, or bytes (an OTLP protobuf answer)."""
        if isinstance(payload, bytes):
            data, content_type = payload, "application/x-protobuf"
        else:
            data, content_type = json.dumps(payload, separators=(",", ":")).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
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

    def __init__(self, address: tuple[str, int], collector: Collector,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.collector = collector
        self.ssl_context = ssl_context
        self.stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._conns_changed = threading.Condition()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        if self.ssl_context is None:
            return sock, addr
        # the handshake happens on the first read, in the request's thread: a client
        # that never completes it holds up only its own thread, not the accept loop
        return self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

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
    raw: bytes | None = None


# -- the collector ---------------------------------------------------------------


class Collector:
    """An HTTP ingestion server on 127.0.0.1, storing what it receives in SQLite.

    It runs in threads of the process that starts it. ``stop()`` closes every
    connection; ``start()`` again serves on the same port with the same store, so
    a test can make an outage. The store stays readable after ``stop()`` and
    until :meth:`close`. A file ``db_path`` that already holds tables is appended to.
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        write_key: str | None = None,
        faults: Faults | None = None,
        max_records: int | None = 100_000,
        store: Store | None = None,
        ssl_context: ssl.SSLContext | None = None,
        keep_bodies: bool = False,
    ) -> None:
        """``max_records`` bounds the in-memory :meth:`requests` list (oldest dropped first).

        ``keep_bodies``: each :class:`RequestRecord` keeps its body as it came (``body``,
        still gzipped), for tests that check the bytes on the wire.

        ``ssl_context``: a server context (certificate loaded) to serve HTTPS instead.

        ``db_path``: the SQLite database (``":memory:"`` when not given). ``store``:
        somewhere else to keep accepted events, instead of SQLite (a :class:`Store`;
        ``db_path`` must then be left out). The collector closes it.
        """
        if store is not None and db_path is not None:
            raise ValueError("give db_path or store, not both")
        if isinstance(store, (str, bytes, os.PathLike)):
            raise TypeError(f"store must be a store object (see docs/collector.md), got {store!r}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be within [0, 65535], got {port!r}")
        if max_records is not None and max_records < 1:
            raise ValueError(f"max_records must be >= 1 or None, got {max_records!r}")
        self._host = host
        self._port = port
        self._ssl_context = ssl_context
        self._write_key = write_key
        self._keep_bodies = keep_bodies
        self._store: Store = store if store is not None else SqliteStore(":memory:" if db_path is None else db_path)
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
            server = cls((self._host, self._port), self, self._ssl_context)
            try:
                self._store.before_serving()
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
            self._after_serving()
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
        self._after_serving()  # for a collector that never served
        self._store.close()

    def _after_serving(self) -> None:
        try:
            self._store.after_serving()
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
        """``http://127.0.0.1:PORT`` (``https://`` with an ``ssl_context``)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        scheme = "http" if self._ssl_context is None else "https"
        return f"{scheme}://{host}:{self._port}"

    @property
    def store(self) -> Store:
        """Where accepted events go: the :class:`Store` given, or the SQLite one."""
        return self._store

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
        """Every stored event, decoded, in arrival order (``RuntimeError`` from a store that keeps none)."""
        return self._store.events()

    def message_ids(self) -> list[str]:
        """The messageId (Segment, JSON), uuid (PostHog) or log.record.uid (OTLP) of each stored
        event, duplicates kept.

        In arrival order; an event stored without one is left out.
        """
        return self._store.message_ids()

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

    def _handle(self, req: _Incoming, body: bytes) -> tuple[int, dict[str, object] | bytes, list[tuple[str, str]]]:
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
        if batch.fmt == OTLP_PROTO:
            return 200, b"", []  # an empty ExportLogsServiceResponse: all taken
        if batch.fmt == OTLP_JSON:
            return 200, {}, []
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

        if fmt == OTLP_JSON:
            protobuf = _otlp.is_protobuf(req.headers.get("content-type", ""))
            if protobuf:
                fmt = req.format = OTLP_PROTO
            # stored as the Segment-shaped events the other formats store
            events = _otlp.read_request(body, protobuf)
            text = json.dumps({"batch": events}, separators=(",", ":"), ensure_ascii=False)
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate ("\ud800" in the JSON): SQLite takes UTF-8 only
                text = text.encode("utf-8", "replace").decode("utf-8")
        else:
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                raise _Reject(400, "body is not UTF-8") from None
        shape = self._store.shape(text, fmt, faults.reject_event)
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
            format=req.format, body=req.raw,
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


#: the garbage collector's first threshold in a process that serves a collector
SERVING_GC_THRESHOLD = 10_000


def tune_gc_for_serving() -> None:
    """Collect garbage less often, in a process that mostly serves a collector.

    Parsing a batch builds about 7,000 dicts and lists that live until the request is
    answered; with CPython's default threshold (700) each batch starts about ten young
    collections that walk them, and older collections that also walk every request
    record kept: at 10,000 or above the handler's CPU per event falls by more than half
    (benchmarks/README.md, "The collector"). Only for a process of its own (``mpsender collect``, the
    benchmarks' collector): the threshold is the whole process's.
    """
    gc.set_threshold(SERVING_GC_THRESHOLD, *gc.get_threshold()[1:])
