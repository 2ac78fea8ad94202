"""The local ingestion collector (mpsender._collector) alone: a real server on 127.0.0.1, httpx as the client."""

from __future__ import annotations

import base64
import contextlib
import gzip
import importlib.util
import json
import math
import random
import socket
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mpsender._collector import Collector, Faults, SqliteStore

# The benchmarks' lean store (only message ids, in memory), plugged in through
# Collector(store=...): the seam's real second user, and its figures rely on it
# answering exactly as the shipped SQLite store does.
_spec = importlib.util.spec_from_file_location(
    "_lean_store", Path(__file__).resolve().parents[2] / "benchmarks" / "_lean_store.py")
assert _spec is not None and _spec.loader is not None
lean_store = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lean_store)
IdStore = lean_store.IdStore

KEY = "test-key"
PATHS = {"segment": "/v1/batch", "posthog": "/batch/", "json": "/json"}


# -- helpers -------------------------------------------------------------------


def segment_event(i: int, name: str = "Signed Up") -> dict[str, Any]:
    return {"type": "track", "event": name, "userId": f"u{i}", "messageId": f"seg-{i}",
            "timestamp": "2026-11-23T08:00:00.000Z", "properties": {"i": i, "ratio": 0.1 + 0.2, "é": "ü"},
            "context": {"library": {"name": "mpsender", "version": "0"}}}


def posthog_event(i: int, name: str = "Signed Up") -> dict[str, Any]:
    return {"event": name, "distinct_id": f"d{i}", "properties": {"i": i, "$lib": "mpsender"},
            "timestamp": "2026-11-23T08:00:00.000Z", "uuid": f"ph-{i}"}


def make_events(fmt: str, n: int, name: str = "Signed Up") -> list[dict[str, Any]]:
    make = posthog_event if fmt == "posthog" else segment_event
    return [make(i, name) for i in range(n)]


def make_body(fmt: str, events: list[dict[str, Any]], key: str | None = KEY) -> dict[str, Any]:
    if fmt == "posthog":
        body: dict[str, Any] = {"batch": events, "sent_at": "2026-11-23T08:00:01.000Z"}
        if key is not None:
            body["api_key"] = key
        return body
    return {"batch": events, "sentAt": "2026-11-23T08:00:01.000Z"}


def auth_headers(fmt: str, key: str | None = KEY) -> dict[str, str]:
    if key is None or fmt == "posthog":
        return {}
    if fmt == "segment":
        return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}
    return {"Authorization": f"Bearer {key}"}


def post(http: httpx.Client, fmt: str, events: list[dict[str, Any]], *, key: str | None = KEY,
         use_gzip: bool = False, path: str | None = None) -> httpx.Response:
    data = json.dumps(make_body(fmt, events, key)).encode()
    headers = {"Content-Type": "application/json", **auth_headers(fmt, key)}
    if use_gzip:
        data = gzip.compress(data)
        headers["Content-Encoding"] = "gzip"
    return http.post(path or PATHS[fmt], content=data, headers=headers)


def raw_exchange(collector: Collector, data: bytes) -> bytes:
    """Send raw bytes on a fresh connection, end the sending side, read until the server closes it."""
    with socket.create_connection(("127.0.0.1", collector.port), timeout=5) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def collector() -> Iterator[Collector]:
    """A started collector without a write key."""
    c = Collector().start()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def keyed() -> Iterator[Collector]:
    """A started collector that checks the write key."""
    c = Collector(write_key=KEY).start()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def http(collector: Collector) -> Iterator[httpx.Client]:
    """An httpx client pointed at ``collector``."""
    with httpx.Client(base_url=collector.url, timeout=5) as client:
        yield client


# -- formats -------------------------------------------------------------------


@pytest.mark.parametrize("use_gzip", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("fmt", ["segment", "posthog", "json"])
def test_each_format_is_stored_and_decoded(keyed: Collector, fmt: str, use_gzip: bool) -> None:
    """A batch in each format, plain or gzip, with the right key: 200 and every event stored as sent."""
    events = make_events(fmt, 25)
    with httpx.Client(base_url=keyed.url, timeout=5) as http:
        response = post(http, fmt, events, use_gzip=use_gzip)
    assert response.status_code == 200 and response.json() == {"success": True}
    assert response.headers["content-length"] == str(len(response.content))
    assert keyed.events() == events
    prefix = "ph" if fmt == "posthog" else "seg"
    assert keyed.message_ids() == [f"{prefix}-{i}" for i in range(25)]
    assert keyed.count() == 25
    (record,) = keyed.requests()
    assert (record.status, record.events, record.gzip, record.format) == (200, 25, use_gzip, fmt)


@pytest.mark.parametrize("fmt", ["segment", "posthog", "json"])
def test_columns_are_filled_per_format(tmp_path: Path, fmt: str) -> None:
    """Every column is filled per format, and the message_id index exists once the collector stops."""
    db = tmp_path / "c.db"
    with Collector(db) as c, httpx.Client(base_url=c.url, timeout=5) as http:
        assert post(http, fmt, make_events(fmt, 2)).status_code == 200
        with contextlib.closing(sqlite3.connect(db)) as conn:  # random ids would make it costly
            assert not conn.execute("PRAGMA index_list(events)").fetchall(), "no index while serving"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT format, type, message_id, event, user_id, timestamp, sent_at, payload,"
                            " request_id FROM events ORDER BY id").fetchall()
        (request,) = conn.execute("SELECT path, status, events, gzip, error FROM requests").fetchall()
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(events)")}
    c.close()
    user, typ, mid = ("d1", "capture", "ph-1") if fmt == "posthog" else ("u1", "track", "seg-1")
    assert rows[1][:7] == (fmt, typ, mid, "Signed Up", user, "2026-11-23T08:00:00.000Z",
                           "2026-11-23T08:00:01.000Z")
    assert json.loads(rows[1][7]) == make_events(fmt, 2)[1]
    assert request == (PATHS[fmt], 200, 2, 0, None)
    assert mode == "wal" and "events_message_id" in indexes


def test_message_ids_keep_duplicates_and_skip_events_without_one(collector: Collector, http: httpx.Client) -> None:
    """message_ids() lists every stored id in arrival order, a redelivered one twice, and no None."""
    events = make_events("segment", 2)
    assert post(http, "segment", events).status_code == 200
    assert post(http, "segment", [events[1], {"type": "track", "event": "no id", "userId": "u"}]).status_code == 200
    assert collector.message_ids() == ["seg-0", "seg-1", "seg-1"]
    assert collector.count() == 4


def test_json_format_is_served_at_any_path_ending_in_json(collector: Collector, http: httpx.Client) -> None:
    """``POST /ingest/v2/json`` is the generic JSON format too."""
    assert post(http, "json", make_events("json", 3), path="/ingest/v2/json").status_code == 200
    assert collector.count() == 3 and collector.requests()[0].format == "json"


def test_segment_identify_and_anonymous_events_keep_their_type_and_user(tmp_path: Path) -> None:
    """An identify with only an anonymousId is stored with type identify and that id as user."""
    db = tmp_path / "c.db"
    event = {"type": "identify", "anonymousId": "anon-1", "messageId": "m1", "traits": {"plan": "pro"}}
    with Collector(db) as c, httpx.Client(base_url=c.url, timeout=5) as http:
        assert post(http, "segment", [event]).status_code == 200
    c.close()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT type, user_id, event FROM events").fetchall() == [("identify", "anon-1", None)]


def test_nan_is_stored_through_the_python_path(collector: Collector, http: httpx.Client) -> None:
    """A body with NaN, which Python's json reads and SQLite's may not, is still stored."""
    event = {**segment_event(0), "properties": {"x": float("nan")}}
    response = http.post("/v1/batch", content=json.dumps({"batch": [event]}))
    assert response.status_code == 200
    (stored,) = collector.events()
    assert stored["messageId"] == "seg-0"
    assert stored["properties"]["x"] is None or math.isnan(stored["properties"]["x"])


def test_python_fallback_stores_the_same_columns(tmp_path: Path) -> None:
    """Without SQLite's JSON functions, validation and storage give the same rows."""
    rows = []
    for use_sqlite in (True, False):
        db = tmp_path / f"{use_sqlite}.db"
        c = Collector(store=SqliteStore(db, json_functions=use_sqlite), faults=Faults(reject_event="poison"))
        with c, httpx.Client(base_url=c.url, timeout=5) as http:
            for fmt in PATHS:
                assert post(http, fmt, make_events(fmt, 3)).status_code == 200
                assert post(http, fmt, make_events(fmt, 3, name="poison")).status_code == 400
            assert http.post("/json", content=b'{"batch": [1]}').json() == {"error": "batch[0] is not an object"}
        c.close()
        with contextlib.closing(sqlite3.connect(db)) as conn:
            found = conn.execute("SELECT request_id, format, type, message_id, event, user_id, timestamp,"
                                 " sent_at, payload FROM events ORDER BY id").fetchall()
        # The payload text may differ (SQLite keeps the sender's escapes), not its meaning.
        rows.append([(*row[:-1], json.loads(row[-1])) for row in found])
    assert len(rows[0]) == 9
    assert rows[0] == rows[1]


def test_chunked_body_is_read(collector: Collector, http: httpx.Client) -> None:
    """A body sent with Transfer-Encoding: chunked is accepted."""
    data = json.dumps(make_body("json", make_events("json", 4))).encode()
    response = http.post("/json", content=iter([data[:10], data[10:]]))
    assert response.status_code == 200 and collector.count() == 4
    assert collector.requests()[0].headers["transfer-encoding"] == "chunked"


def test_health_answers_ok(collector: Collector, http: httpx.Client) -> None:
    """``GET /health`` answers 200, whatever the faults."""
    collector.set_faults(Faults(status=500))
    response = http.get("/health")
    assert response.status_code == 200 and response.json() == {"ok": True}


# -- auth ----------------------------------------------------------------------


@pytest.mark.parametrize("store", ["sqlite", "ids"])
@pytest.mark.parametrize("fmt", ["segment", "posthog", "json"])
@pytest.mark.parametrize("key", ["wrong", None], ids=["wrong", "missing"])
def test_wrong_or_missing_key_gets_401(store: str, fmt: str, key: str | None) -> None:
    """Each format's auth is checked, in both stores: a wrong or missing key gets 401 with a
    reason and nothing is stored, not even an id; the right key is then accepted."""
    collector = Collector(write_key=KEY, store=make_store(store)).start()
    try:
        with httpx.Client(base_url=collector.url, timeout=5) as http:
            response = post(http, fmt, make_events(fmt, 2), key=key)
            assert response.status_code == 401
            reason = response.json()["error"]
            assert ("missing" if key is None else "wrong") in reason
            assert collector.count() == 0 and collector.requests()[0].error == reason
            assert collector.message_ids() == []
            assert post(http, fmt, make_events(fmt, 2)).status_code == 200
        assert collector.count() == 2
    finally:
        collector.close()


def test_segment_basic_auth_with_a_password_is_refused(keyed: Collector) -> None:
    """Segment's Basic auth is the write key as user and an empty password."""
    with httpx.Client(base_url=keyed.url, timeout=5) as http:
        response = http.post("/v1/batch", content=json.dumps(make_body("segment", [])),
                             auth=(KEY, "secret"))
    assert response.status_code == 401


def test_without_a_write_key_auth_is_not_checked_but_recorded(collector: Collector, http: httpx.Client) -> None:
    """No write key: any credentials pass, and the headers are kept with lower-case names."""
    assert post(http, "segment", make_events("segment", 1), key="anything").status_code == 200
    assert post(http, "posthog", make_events("posthog", 1), key=None).status_code == 200
    first = collector.requests()[0]
    assert first.headers["authorization"].startswith("Basic ")
    assert first.headers["content-type"] == "application/json"


# -- bad requests --------------------------------------------------------------


BAD_REQUESTS = {
    "not-json": ("POST", "/v1/batch", b"{nope", {}, 400, "not valid JSON"),
    "not-utf8": ("POST", "/v1/batch", b'{"batch": ["\xff"]}', {}, 400, "not UTF-8"),
    "bad-gzip": ("POST", "/v1/batch", b"not gzip", {"Content-Encoding": "gzip"}, 400, "invalid gzip"),
    "truncated-gzip": ("POST", "/batch/", gzip.compress(b'{"batch": []}')[:-8], {"Content-Encoding": "gzip"},
                       400, "invalid gzip"),
    "unknown-encoding": ("POST", "/json", b'{"batch": []}', {"Content-Encoding": "br"}, 415, "Content-Encoding"),
    "not-an-object": ("POST", "/json", b"[1, 2]", {}, 400, "not a JSON object"),
    "no-batch": ("POST", "/json", b'{"events": []}', {}, 400, "'batch' list"),
    "batch-not-a-list": ("POST", "/batch/", b'{"batch": {"a": 1}}', {}, 400, "'batch' list"),
    "event-not-an-object": ("POST", "/v1/batch", b'{"batch": [{}, {}, "x"]}', {}, 400, "batch[2] is not an object"),
    "wrong-method": ("GET", "/v1/batch", b"", {}, 405, "method GET"),
    "unknown-path": ("POST", "/v2/track", b'{"batch": []}', {}, 404, "unknown path"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_4xx_with_its_reason_and_the_server_keeps_serving(
        collector: Collector, http: httpx.Client, case: str) -> None:
    """Each kind of bad request is answered 4xx naming the reason; the next request on the connection succeeds."""
    method, path, content, headers, status, reason = BAD_REQUESTS[case]
    response = http.request(method, path, content=content, headers=headers)
    assert response.status_code == status
    assert reason in response.json()["error"]
    assert collector.requests()[0].status == status and reason in (collector.requests()[0].error or "")
    assert post(http, "segment", make_events("segment", 2)).status_code == 200
    assert collector.count() == 2
    assert collector.totals()["errors"] == {status: 1}


def test_wrong_method_names_the_allowed_one(http: httpx.Client) -> None:
    """405 comes with ``Allow: POST``."""
    assert http.put("/json", content=b"{}").headers["allow"] == "POST"


def test_missing_content_length_gets_411(collector: Collector) -> None:
    """A POST without Content-Length or chunked encoding is refused with 411 and the connection closed."""
    answer = raw_exchange(collector, b"POST /v1/batch HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 411 ")
    assert b"Content-Length required" in answer


def test_garbage_request_line_gets_a_json_400(collector: Collector, http: httpx.Client) -> None:
    """A request line that is not HTTP is answered 400 in JSON, and the server keeps serving."""
    answer = raw_exchange(collector, b"BLAH\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
    assert post(http, "json", make_events("json", 1)).status_code == 200


def test_incomplete_body_is_recorded_without_an_answer(collector: Collector) -> None:
    """A client that hangs up mid-body gets nothing; the request is recorded as incomplete."""
    answer = raw_exchange(collector, b"POST /json HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"bat")
    assert answer == b""
    assert collector.wait_for(lambda c: bool(c.requests()), timeout=5)
    (record,) = collector.requests()
    assert (record.status, record.error) == (None, "incomplete body")


# -- faults --------------------------------------------------------------------


def test_fail_first_fails_the_first_n_batches(collector: Collector, http: httpx.Client) -> None:
    """fail_first=3: three batch requests get fail_status, then they succeed; failed ones store nothing."""
    collector.set_faults(Faults(fail_first=3, fail_status=502))
    statuses = [post(http, "segment", make_events("segment", 1)).status_code for _ in range(5)]
    assert statuses == [502, 502, 502, 200, 200]
    assert collector.count() == 2
    assert collector.totals()["errors"] == {502: 3}


def test_fail_rate_is_reproducible_from_its_seed(collector: Collector, http: httpx.Client) -> None:
    """fail_rate=0.5, seed=7: the failures fall exactly where random.Random(7) puts them."""
    collector.set_faults(Faults(fail_rate=0.5, seed=7))
    statuses = [post(http, "json", make_events("json", 1)).status_code for _ in range(20)]
    rng = random.Random(7)
    assert statuses == [503 if rng.random() < 0.5 else 200 for _ in range(20)]
    assert 0 < statuses.count(503) < 20


def test_status_answers_every_request_with_it(collector: Collector, http: httpx.Client) -> None:
    """status=401 answers every batch 401 (even a valid one) and stores nothing."""
    collector.set_faults(Faults(status=401))
    for fmt in PATHS:
        assert post(http, fmt, make_events(fmt, 1)).status_code == 401
    assert collector.count() == 0
    collector.set_faults(Faults())
    assert post(http, "json", make_events("json", 1)).status_code == 200


@pytest.mark.parametrize("faults", [Faults(fail_first=1, fail_status=429, retry_after="2"),
                                    Faults(status=503, retry_after="Mon, 23 Nov 2026 08:00:00 GMT")],
                         ids=["fail_first", "status"])
def test_retry_after_is_sent_with_failures(collector: Collector, http: httpx.Client, faults: Faults) -> None:
    """retry_after is sent as the Retry-After header of injected failures, and not with successes."""
    collector.set_faults(faults)
    failed = post(http, "segment", make_events("segment", 1))
    assert failed.status_code >= 400 and failed.headers["retry-after"] == faults.retry_after
    collector.set_faults(Faults(retry_after="2"))
    assert "retry-after" not in post(http, "segment", make_events("segment", 1)).headers


def test_delay_holds_the_answer(collector: Collector, http: httpx.Client) -> None:
    """delay=0.3: the answer comes no sooner than 0.3 s after the request."""
    collector.set_faults(Faults(delay=0.3))
    started = time.monotonic()
    assert post(http, "json", make_events("json", 1)).status_code == 200
    assert time.monotonic() - started >= 0.3
    assert collector.count() == 1


def test_hang_holds_the_connection_and_stop_returns_promptly(collector: Collector) -> None:
    """hang: the client times out with no answer, nothing is stored, and stop() still returns at once."""
    collector.set_faults(Faults(hang=True))
    with httpx.Client(base_url=collector.url, timeout=0.3) as http, pytest.raises(httpx.ReadTimeout):
        post(http, "json", make_events("json", 1))
    with socket.create_connection(("127.0.0.1", collector.port), timeout=5) as held:
        held.sendall(b"POST /json HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n{\"batch\":[]}")
        assert collector.wait_for(lambda c: len(c.requests()) == 2, timeout=5)
        started = time.monotonic()
        collector.stop()
        assert time.monotonic() - started < 1.0
        assert held.recv(100) == b""  # closed without an answer
    assert [r.status for r in collector.requests()] == [None, None]
    assert collector.count() == 0 and collector.totals()["unanswered"] == 2


def test_reject_event_refuses_the_batch_naming_the_event(collector: Collector, http: httpx.Client) -> None:
    """reject_event: a batch holding that track event gets 400 naming it; other batches pass."""
    collector.set_faults(Faults(reject_event="poison"))
    events = make_events("segment", 5)
    events[3]["event"] = "poison"
    response = post(http, "segment", events)
    assert response.status_code == 400
    assert response.json() == {"error": "event 'poison' rejected", "event": "poison", "index": 3}
    assert post(http, "posthog", make_events("posthog", 2, name="poison")).status_code == 400
    identify = {"type": "identify", "userId": "u", "event": "poison", "messageId": "m"}
    assert post(http, "segment", [identify]).status_code == 200  # not a track event
    assert post(http, "segment", make_events("segment", 2)).status_code == 200
    assert collector.count() == 3


@pytest.mark.parametrize("use_gzip", [False, True], ids=["plain", "gzip"])
def test_max_body_bytes_gets_413(collector: Collector, http: httpx.Client, use_gzip: bool) -> None:
    """max_body_bytes: a body larger than that once decompressed gets 413; a smaller one passes."""
    collector.set_faults(Faults(max_body_bytes=2_000))
    big = post(http, "segment", make_events("segment", 30), use_gzip=use_gzip)
    assert big.status_code == 413 and "exceeds" in big.json()["error"]
    assert post(http, "segment", make_events("segment", 2), use_gzip=use_gzip).status_code == 200
    assert collector.count() == 2


@pytest.mark.parametrize("field, value", [("fail_first", -1), ("fail_rate", 1.5), ("fail_status", 42),
                                          ("status", 600), ("delay", -0.1), ("max_body_bytes", -1)])
def test_faults_validate_their_fields(field: str, value: object) -> None:
    """A nonsensical fault value raises ValueError naming the field."""
    with pytest.raises(ValueError, match=field):
        Faults(**{field: value})  # type: ignore[arg-type]


# -- lifecycle -----------------------------------------------------------------


def test_restart_on_the_same_port_keeps_the_data(collector: Collector) -> None:
    """After stop() the port refuses connections; start() serves on it again with the same store."""
    url = collector.url
    with httpx.Client(base_url=url, timeout=5) as http:
        assert post(http, "json", make_events("json", 2)).status_code == 200
        collector.stop()
        collector.stop()  # idempotent
        with pytest.raises(httpx.ConnectError):
            post(http, "json", make_events("json", 1))
        collector.start()
        assert collector.url == url
        assert post(http, "json", make_events("json", 3)).status_code == 200
    assert collector.count() == 5


def test_stop_closes_kept_alive_connections(collector: Collector) -> None:
    """An idle keep-alive connection is closed by stop()."""
    with socket.create_connection(("127.0.0.1", collector.port), timeout=5) as sock:
        body = json.dumps(make_body("json", make_events("json", 1))).encode()
        sock.sendall(b"POST /json HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        answer = b""
        while not answer.endswith(b'{"success":true}'):
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ") and b"Connection: close" not in answer
        collector.stop()
        assert sock.recv(100) == b""


def test_closed_collector_cannot_start(tmp_path: Path) -> None:
    """close() stops for good, and a second close() is harmless."""
    c = Collector(tmp_path / "c.db").start()
    c.close()
    c.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        c.start()


def test_never_started_collector_leaves_a_complete_schema(tmp_path: Path) -> None:
    """A collector closed without serving still leaves both tables and the message_id index."""
    Collector(tmp_path / "c.db").close()
    with contextlib.closing(sqlite3.connect(tmp_path / "c.db")) as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"requests", "events", "events_message_id"} <= names


def test_file_database_is_appended_to(tmp_path: Path) -> None:
    """A second collector on the same file sees the first one's events."""
    db = tmp_path / "c.db"
    for _ in range(2):
        with Collector(db) as c, httpx.Client(base_url=c.url, timeout=5) as http:
            assert post(http, "json", make_events("json", 2)).status_code == 200
        c.close()
    again = Collector(db)
    try:
        assert again.count() == 4 and len(again.events()) == 4
    finally:
        again.close()


# -- waiting and totals --------------------------------------------------------


def _wait_for_events_posted_by_another_thread(collector: Collector, n: int) -> bool:
    """Post ``n`` events from another thread and return what ``wait_for`` said."""
    def send() -> None:
        with httpx.Client(base_url=collector.url, timeout=5) as http:
            post(http, "json", make_events("json", n))

    sender = threading.Thread(target=send)
    sender.start()
    try:
        return collector.wait_for(lambda c: c.count() >= n, timeout=10)
    finally:
        sender.join(10)


def test_wait_for_wakes_when_events_arrive(collector: Collector) -> None:
    """wait_for returns True as soon as a request from another thread stores the events."""
    assert _wait_for_events_posted_by_another_thread(collector, 5)


def test_wait_for_returns_false_on_timeout(collector: Collector) -> None:
    """wait_for returns False once the timeout passes without the predicate holding."""
    started = time.monotonic()
    assert not collector.wait_for(lambda c: c.count() > 0, timeout=0.2)
    assert time.monotonic() - started >= 0.2


def test_totals_and_requests_describe_the_traffic(collector: Collector, http: httpx.Client) -> None:
    """totals() counts events, requests and errors by status; requests() keeps each one's details."""
    post(http, "segment", make_events("segment", 3), use_gzip=True)
    http.post("/nope", content=b"x")
    collector.set_faults(Faults(status=500))
    post(http, "json", make_events("json", 1))
    assert collector.totals() == {"events": 3, "requests": 3, "errors": {404: 1, 500: 1}, "unanswered": 0}
    first, second, third = collector.requests()
    assert first.arrived_at <= second.arrived_at <= third.arrived_at <= time.monotonic()
    assert (first.method, first.path, first.status, first.events, first.gzip) == ("POST", "/v1/batch", 200, 3, True)
    assert first.body_bytes == int(first.headers["content-length"])
    assert (second.status, second.format, second.error) == (404, None, "unknown path '/nope'")
    assert third.error == "injected fault: status 500"


def test_max_records_keeps_the_latest_requests() -> None:
    """The in-memory request list is bounded by max_records; totals still count everything."""
    with Collector(max_records=2) as c, httpx.Client(base_url=c.url, timeout=5) as http:
        for n in range(1, 4):
            post(http, "json", make_events("json", n))
    c.close()
    assert [r.events for r in c.requests()] == [2, 3]
    assert c.totals()["requests"] == 3


# -- a store of its own: the benchmarks' lean store ---------------------------


def make_store(kind: str, db: Path | None = None) -> Any:
    """The collector's store: SQLite (in ``db``, or in memory) or the lean IdStore."""
    return IdStore() if kind == "ids" else SqliteStore(":memory:" if db is None else db)


@pytest.fixture
def lean() -> Iterator[Collector]:
    """A started collector with the lean store that checks the write key."""
    c = Collector(write_key=KEY, store=IdStore()).start()
    try:
        yield c
    finally:
        c.close()


@pytest.mark.parametrize("use_gzip", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("fmt", ["segment", "posthog", "json"])
def test_ids_store_records_ids_and_counts_per_format(tmp_path: Path, fmt: str, use_gzip: bool) -> None:
    """The lean store: 200 for each format, the ids kept in arrival order, a count per request, no file."""
    c = Collector(write_key=KEY, store=IdStore())
    with c, httpx.Client(base_url=c.url, timeout=5) as http:
        for start in (0, 25):
            events = make_events(fmt, 25)
            for ev in events:
                ev["uuid" if fmt == "posthog" else "messageId"] += f"-{start}"
            response = post(http, fmt, events, use_gzip=use_gzip)
            assert response.status_code == 200 and response.json() == {"success": True}
    c.close()
    prefix = "ph" if fmt == "posthog" else "seg"
    assert c.message_ids() == [f"{prefix}-{i}-{start}" for start in (0, 25) for i in range(25)]
    assert c.count() == 50 and isinstance(c.store, IdStore)
    assert c.totals() == {"events": 50, "requests": 2, "errors": {}, "unanswered": 0}
    assert [(r.status, r.events, r.gzip, r.format) for r in c.requests()] == [(200, 25, use_gzip, fmt)] * 2
    assert list(tmp_path.iterdir()) == []


def test_ids_store_keeps_ids_as_the_sqlite_store_does(tmp_path: Path) -> None:
    """Duplicates kept, events without an id left out, a number kept as text: the same list in both stores."""
    batches = [[segment_event(0), segment_event(1)],
               [segment_event(1), {"type": "track", "event": "no id"}, {**segment_event(2), "messageId": 7}]]
    found = {}
    for store in ("sqlite", "ids"):
        with Collector(store=make_store(store, tmp_path / f"{store}.db")) as c, \
                httpx.Client(base_url=c.url, timeout=5) as http:
            for batch in batches:
                assert post(http, "segment", batch).status_code == 200
        found[store] = (c.message_ids(), c.count())
        c.close()
    assert found["ids"] == found["sqlite"] == (["seg-0", "seg-1", "seg-1", "7"], 5)


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_ids_store_refuses_bad_requests_as_the_sqlite_store_does(tmp_path: Path, case: str) -> None:
    """Each kind of bad request gets the same 4xx and reason from both stores, and nothing is kept."""
    method, path, content, headers, status, reason = BAD_REQUESTS[case]
    answers = {}
    for store in ("sqlite", "ids"):
        with Collector(store=make_store(store, tmp_path / f"{store}.db")) as c, \
                httpx.Client(base_url=c.url, timeout=5) as http:
            response = http.request(method, path, content=content, headers=headers)
            answers[store] = (response.status_code, response.json())
            assert c.count() == 0 and c.message_ids() == []
            assert c.requests()[0].status == status
            assert post(http, "segment", make_events("segment", 2)).status_code == 200  # still serving
        c.close()
    assert answers["ids"] == answers["sqlite"]
    assert answers["ids"][0] == status and reason in answers["ids"][1]["error"]


def test_ids_store_events_raises_a_clear_error(lean: Collector) -> None:
    """events() needs the SQLite store; with the lean store it raises RuntimeError saying so."""
    with pytest.raises(RuntimeError, match="SQLite store"):
        lean.events()


def test_ids_store_reads_what_orjson_refuses() -> None:
    """NaN and a lone surrogate, which the json module reads, are accepted by the lean store too."""
    c = Collector(store=IdStore()).start()
    try:
        with httpx.Client(base_url=c.url, timeout=5) as http:
            body = '{"batch": [{"messageId": "a", "x": NaN}, {"messageId": "b", "s": "\\ud800"}]}'
            assert http.post("/v1/batch", content=body).status_code == 200
    finally:
        c.close()
    assert c.message_ids() == ["a", "b"]


def test_ids_store_works_without_orjson(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without orjson the json module parses: the same answers and ids."""
    monkeypatch.setattr(lean_store, "_orjson", None)  # the store holds the parser
    c = Collector(write_key=KEY, store=IdStore()).start()
    try:
        with httpx.Client(base_url=c.url, timeout=5) as http:
            assert post(http, "posthog", make_events("posthog", 3)).status_code == 200
            assert http.post("/batch/", content=b"{nope").json() == {"error": "body is not valid JSON"}
    finally:
        c.close()
    assert c.message_ids() == ["ph-0", "ph-1", "ph-2"]


def test_ids_store_applies_the_faults(lean: Collector) -> None:
    """fail_first and reject_event act with the lean store as with the SQLite store."""
    lean.set_faults(Faults(fail_first=1, reject_event="poison"))
    with httpx.Client(base_url=lean.url, timeout=5) as http:
        assert post(http, "segment", make_events("segment", 1)).status_code == 503
        rejected = post(http, "posthog", make_events("posthog", 2, name="poison"))
        assert rejected.json() == {"error": "event 'poison' rejected", "event": "poison", "index": 0}
        assert post(http, "json", make_events("json", 2)).status_code == 200
    assert lean.totals()["errors"] == {503: 1, 400: 1} and lean.message_ids() == ["seg-0", "seg-1"]


def test_ids_store_wait_for_and_restart(lean: Collector) -> None:
    """wait_for wakes on a request from another thread; stop() and start() keep the ids."""
    assert _wait_for_events_posted_by_another_thread(lean, 5)
    lean.stop()
    lean.start()
    with httpx.Client(base_url=lean.url, timeout=5) as http:
        assert post(http, "json", make_events("json", 1)).status_code == 200
    assert lean.count() == 6 and len(lean.message_ids()) == 6


def test_a_store_name_or_two_stores_are_refused(tmp_path: Path) -> None:
    """store takes a store object, not a name; a db_path beside it is refused, not ignored."""
    with pytest.raises(TypeError, match="store object"):
        Collector(store="ids")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not both"):
        Collector(tmp_path / "x.db", store=IdStore())
    assert list(tmp_path.iterdir()) == []


# --- gunzip: the same answers with or without ISA-L ----------------------------------


def _gunzip_outcome(data: bytes, limit: int) -> object:
    from mpsender._collector._body import _gunzip
    from mpsender._collector._model import _Reject

    try:
        return _gunzip(data, limit)
    except _Reject as rej:
        return (rej.status, rej.reason)


_BODY = b'{"batch": [' + b",".join(b'{"type": "track", "event": "e%d"}' % i for i in range(200)) + b"]}"
_GZIP_CASES = {
    "one member": (gzip.compress(_BODY), 10_000),
    "two members": (gzip.compress(_BODY[:50]) + gzip.compress(_BODY[50:]), 10_000),
    "zero padding": (gzip.compress(_BODY) + b"\0" * 16, 10_000),
    "trailing garbage": (gzip.compress(_BODY) + b"xyz", 10_000),
    "truncated": (gzip.compress(_BODY)[:-8], 10_000),
    "not gzip": (b"not gzip at all", 10_000),
    "zlib stream": (zlib.compress(_BODY), 10_000),
    "over the limit": (gzip.compress(_BODY), len(_BODY) - 1),
    "exactly the limit": (gzip.compress(_BODY), len(_BODY)),
    "empty member": (gzip.compress(b""), 10_000),
}


@pytest.mark.parametrize("case", list(_GZIP_CASES))
def test_gunzip_answers_the_same_with_and_without_isal(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from mpsender._collector import _body

    data, limit = _GZIP_CASES[case]
    with_fast = _gunzip_outcome(data, limit)
    monkeypatch.setattr(_body, "_fast_decompressobj", None)
    assert _gunzip_outcome(data, limit) == with_fast
    if case in ("one member", "two members", "zero padding", "exactly the limit"):
        assert with_fast == _BODY
