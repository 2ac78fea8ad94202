"""The OTLP formats without a server: values to AnyValues (edge cases), the JSON and protobuf
encodings checked against opentelemetry-proto's own classes, the small protobuf codec, OTLP's
partial success in the uploader, the service_name option, and the collector's OTLP answers."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import time
import uuid
from collections.abc import Iterator
from enum import IntEnum
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsPartialSuccess,
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from mpsender import _otlp_proto as pb
from mpsender._collector import Collector
from mpsender._exceptions import ConfigurationError
from mpsender._options import Options, resolve_options
from mpsender._otlp import MAX_VALUE_DEPTH, OtlpJsonEncoder, any_value, default_service_name
from mpsender._paths import destination_id
from mpsender._sender._spool import Counters, Entry, Spool
from mpsender._sender._uploader import Uploader
from mpsender._wire import get_encoder

MID = bytes(range(16))
MID_STR = "00010203-0405-0607-0809-0a0b0c0d0e0f"
TS = 1795421279.123  # 2026-11-23T08:07:59.123Z
TS_NANOS = "1795421279123000000"


def encoder(fmt: str = "otlp", **kwargs: Any) -> OtlpJsonEncoder:
    enc = get_encoder(fmt, write_key=kwargs.pop("write_key", ""), library_name="mpsender",
                      library_version="9.9.9", service_name=kwargs.pop("service_name", "svc"), **kwargs)
    assert isinstance(enc, OtlpJsonEncoder)
    return enc


def rec(t: str = "track", **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"t": t, "m": MID, "ts": TS, "u": "u1"}
    if t == "track":
        base["e"] = "E"
    base.update(fields)
    return base


def official(fmt: str, body: bytes) -> ExportLogsServiceRequest:
    """``body`` parsed strictly by opentelemetry-proto."""
    message = ExportLogsServiceRequest()
    if fmt == "otlp":
        json_format.Parse(body, message)
    else:
        message.ParseFromString(body)
    return message


def attrs(log_record: dict[str, Any]) -> dict[str, Any]:
    return {kv["key"]: kv["value"] for kv in log_record["attributes"]}


# -- values ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("s", {"stringValue": "s"}),
    ("", {"stringValue": ""}),
    (True, {"boolValue": True}),
    (0, {"intValue": "0"}),
    (2**63 - 1, {"intValue": "9223372036854775807"}),
    (-(2**63), {"intValue": "-9223372036854775808"}),
    (2**63, {"stringValue": "9223372036854775808"}),      # past int64: exact, as text
    (2**64 - 1, {"stringValue": "18446744073709551615"}),  # msgpack's largest
    (-(2**63) - 1, {"stringValue": "-9223372036854775809"}),
    (1.5, {"doubleValue": 1.5}),
    (math.nan, {}),                                         # the JSON formats' null
    (math.inf, {}),
    (-math.inf, {}),
    (None, {}),
    (b"\x00\xff", {"bytesValue": "AP8="}),
    ({}, {"kvlistValue": {"values": []}}),
    ([], {"arrayValue": {"values": []}}),
    ((1, "a"), {"arrayValue": {"values": [{"intValue": "1"}, {"stringValue": "a"}]}}),
    ({"k": None}, {"kvlistValue": {"values": [{"key": "k", "value": {}}]}}),
    (uuid.UUID(int=0), {"stringValue": "00000000-0000-0000-0000-000000000000"}),
])
def test_value_mapping(value: Any, expected: dict[str, Any]) -> None:
    """Each kind of value becomes its AnyValue; what int64 or a finite double cannot hold is
    text or empty, never a refused batch."""
    assert any_value(value) == expected


def test_subclasses_map_as_their_plain_type() -> None:
    """An IntEnum member is an int, a str subclass a str (not their str())."""

    class Level(IntEnum):
        HIGH = 3

    class Name(str):
        pass

    assert any_value(Level.HIGH) == {"intValue": "3"}
    assert any_value(Name("x")) == {"stringValue": "x"}


def test_deep_nesting_becomes_json_text_past_the_limit() -> None:
    """Containers nested deeper than MAX_VALUE_DEPTH are sent as their JSON text, so the
    protobuf and JSON parsers of the receiver (recursion limits) take the batch."""
    value: Any = {"leaf": 1}
    for _ in range(200):
        value = {"d": value}
    av = any_value(value)
    for _ in range(MAX_VALUE_DEPTH):
        av = av["kvlistValue"]["values"][0]["value"]
    assert av["stringValue"].startswith('{"d":{"d":') and av["stringValue"].endswith('{"leaf":1}' + "}" * 184)
    for fmt in ("otlp", "otlp-proto"):
        enc = encoder(fmt)
        official(fmt, enc.request_parts([enc.encode(rec(p={"deep": value}))], sent_at=0).body)


@pytest.mark.parametrize("fmt", ["otlp", "otlp-proto"])
def test_json_and_protobuf_carry_the_same_message(fmt: str) -> None:
    """Both encodings of a batch holding every edge value parse strictly with the official
    schema into one and the same message."""
    records = [
        rec(p={"big": 2**64 - 1, "nan": math.nan, "none": None, "bytes": b"\xc3\xa9", "empty": {}, "list": [],
               "nested": {"a": [1, {"b": 2.5}]}, "neg": -1, "zero": 0, "false": False, "s": "zoë ☕"},
            c={"ip": "1.2.3.4", "library": {"name": "ignored"}}, i={"All": False}),
        rec("identify", a="anon", tr={"email": "x@y"}),
        rec("group", g="acme", tr={}),
        rec("alias", pv="old"),
        rec("page", n="Pricing", cat="Docs"),
        rec("screen", n="Home", u=None, a="a2"),
    ]
    enc = encoder(fmt)
    body = enc.request_parts([enc.encode(r) for r in records], sent_at=0).body
    json_enc = encoder("otlp")
    reference = official("otlp", json_enc.request_parts([json_enc.encode(r) for r in records], sent_at=0).body)
    assert official(fmt, body) == reference
    assert len(reference.resource_logs[0].scope_logs[0].log_records) == 6


def test_log_record_fields() -> None:
    """A track record's LogRecord: event name field and attribute, times, severity, ids,
    properties under their keys, context as context.*, no library, no integrations."""
    ev = encoder().event(rec(a="a1", p={"plan": "pro"}, c={"ip": "1.2.3.4", "library": {"x": 1}},
                             i={"All": False}, w=TS + 5))
    assert ev["eventName"] == "E"
    assert (ev["timeUnixNano"], ev["observedTimeUnixNano"]) == (TS_NANOS, "1795421284123000000")
    assert (ev["severityNumber"], ev["severityText"]) == (9, "INFO")
    assert attrs(ev) == {
        "plan": {"stringValue": "pro"}, "context.ip": {"stringValue": "1.2.3.4"},
        "event.name": {"stringValue": "E"}, "mpsender.type": {"stringValue": "track"},
        "log.record.uid": {"stringValue": MID_STR}, "user.id": {"stringValue": "u1"},
        "enduser.pseudo.id": {"stringValue": "a1"},
    }


def test_our_attributes_win_over_a_property_of_the_same_key() -> None:
    """A property named user.id or event.name cannot fake them: one key each, ours."""
    ev = encoder().event(rec(p={"user.id": "fake", "event.name": "fake", "plain": 1}))
    keys = [kv["key"] for kv in ev["attributes"]]
    assert len(keys) == len(set(keys))
    assert attrs(ev)["user.id"] == {"stringValue": "u1"} and attrs(ev)["event.name"] == {"stringValue": "E"}


@pytest.mark.parametrize(("props", "number", "text"), [
    ({}, 17, "ERROR"), ({"severity": "error"}, 17, "ERROR"), ({"severity": "FATAL"}, 21, "FATAL"),
    ({"severity": "critical"}, 21, "FATAL"), ({"severity": "warning"}, 13, "WARN"), ({"severity": "warn"}, 13, "WARN"),
    ({"severity": "info"}, 9, "INFO"), ({"severity": "debug"}, 5, "DEBUG"), ({"severity": "odd"}, 17, "ERROR"),
    ({"severity": 3}, 17, "ERROR"),
])
def test_error_event_severity(props: dict[str, Any], number: int, text: str) -> None:
    """$error is ERROR unless its severity property names another level."""
    ev = encoder().event(rec(e="$error", p=props))
    assert (ev["severityNumber"], ev["severityText"]) == (number, text)


def test_only_error_events_read_severity() -> None:
    """An ordinary event with a severity property stays INFO."""
    ev = encoder().event(rec(p={"severity": "fatal"}))
    assert (ev["severityNumber"], ev["severityText"]) == (9, "INFO")


def test_exception_attributes_from_capture_errors_properties() -> None:
    """A $error with capture_error()'s properties gets semconv's exception.* beside them; an
    ordinary event with the same properties, a $error of another shape, and a property the
    caller named exception.* are left alone."""
    stack = [{"filename": "/srv/app/views.py", "lineno": 12, "function": "checkout", "in_app": True},
             {"filename": "/srv/app/pay.py", "lineno": 40, "function": "charge", "in_app": True}]
    props = {"error_type": "pay.Declined", "error_message": "card declined", "stack": stack}
    got = attrs(encoder().event(rec(e="$error", p=props)))
    assert got["exception.type"] == {"stringValue": "pay.Declined"}
    assert got["exception.message"] == {"stringValue": "card declined"}
    assert got["exception.stacktrace"] == {"stringValue": (
        "Traceback (most recent call last):\n"
        '  File "/srv/app/views.py", line 12, in checkout\n'
        '  File "/srv/app/pay.py", line 40, in charge\n'
        "pay.Declined: card declined")}
    assert got["error_type"] == {"stringValue": "pay.Declined"}  # the properties stay
    assert not any(k.startswith("exception.") for k in attrs(encoder().event(rec(e="Paid", p=props))))
    assert not any(k.startswith("exception.") for k in attrs(encoder().event(rec(e="$error", p={"error_type": 3}))))
    mine = attrs(encoder().event(rec(e="$error", p={**props, "exception.type": "Mine"})))
    assert mine["exception.type"] == {"stringValue": "Mine"} and "exception.message" in mine
    bare = attrs(encoder().event(rec(e="$error", p={"error_type": "Timeout"})))
    assert bare["exception.type"] == {"stringValue": "Timeout"}
    assert "exception.message" not in bare and "exception.stacktrace" not in bare


def test_times_a_fixed64_cannot_hold_and_string_timestamps() -> None:
    """Before 1970 (or past 2554) timeUnixNano is left unset and the time goes in
    mpsender.timestamp; an ISO string of an older spool is parsed, a bad one kept as text."""
    old = encoder().event(rec(ts=-86400.0))
    assert "timeUnixNano" not in old and attrs(old)["mpsender.timestamp"] == {"stringValue": "1969-12-31T00:00:00.000Z"}
    parsed = encoder().event(rec(ts="2026-11-23T08:07:59.123Z"))
    assert parsed["timeUnixNano"] == TS_NANOS and "mpsender.timestamp" not in attrs(parsed)
    bad = encoder().event(rec(ts="yesterday"))
    assert "timeUnixNano" not in bad and attrs(bad)["mpsender.timestamp"] == {"stringValue": "yesterday"}


def test_headers_and_path() -> None:
    """No key: no Authorization; a key: Bearer; headers override by name; path replaces /v1/logs."""
    assert encoder().request_parts([], sent_at=0).headers == {"Content-Type": "application/json"}
    assert encoder("otlp-proto", write_key="k").request_parts([], sent_at=0).headers == {
        "Content-Type": "application/x-protobuf", "Authorization": "Bearer k"}
    req = encoder(write_key="k", headers={"authorization": "Api-Key z"}, path="/otlp/v1/logs").request_parts(
        [], sent_at=0)
    assert req.headers == {"Content-Type": "application/json", "authorization": "Api-Key z"}
    assert req.path == "/otlp/v1/logs"


# -- the protobuf codec ------------------------------------------------------------------------


def test_codec_round_trip_and_unknown_fields() -> None:
    """decode(encode(x)) == x for a LogRecord, and a field the tables do not know (a newer
    schema's) is skipped, as protobuf does."""
    ev = encoder().event(rec(p={"x": [1, 2.5, None, b"\x01"], "n": -3}))
    assert pb.decode(pb.LOG_RECORD, pb.encode(pb.LOG_RECORD, ev)) == ev
    newer = Resource()
    newer.attributes.add(key="k").value.string_value = "v"
    newer.entity_refs.add(type="service")  # not in our table
    assert pb.decode(pb.RESOURCE, newer.SerializeToString()) == {
        "attributes": [{"key": "k", "value": {"stringValue": "v"}}]}
    official_record = LogRecord(trace_id=b"\x01" * 16, flags=1)
    assert pb.decode(pb.LOG_RECORD, official_record.SerializeToString()) == {"traceId": "01" * 16, "flags": 1}


@pytest.mark.parametrize(("data", "match"), [
    (b"\x0a\x05ab", "truncated length-delimited"),
    (b"\x0a", "truncated varint"),
    (b"\x0a\x02\xff\xfe", "not valid UTF-8"),
    (b"\x08\x01", "wire type 0, expected 2"),
    (b"\x0b", "unsupported wire type 3"),
    (b"\x00", "field number 0"),
])
def test_codec_refuses_malformed_bytes(data: bytes, match: str) -> None:
    """Malformed protobuf raises ValueError naming the problem (the collector answers 400)."""
    with pytest.raises(ValueError, match=match):
        pb.decode(pb.KEY_VALUE, data)


def test_codec_refuses_nesting_past_its_limit() -> None:
    """A body nested deeper than MAX_NESTING is refused, not a RecursionError."""
    data = b""
    for _ in range(pb.MAX_NESTING + 5):
        data = pb.length_delimited(5, pb.length_delimited(1, data))  # arrayValue.values[0]
    with pytest.raises(ValueError, match="nested deeper"):
        pb.decode(pb.ANY_VALUE, data)


# -- partial success ---------------------------------------------------------------------------


def test_partial_success_is_read_from_json_and_protobuf_answers() -> None:
    """OTLP's partialSuccess, in either encoding: (refused, message); nothing else is one."""
    enc = encoder()
    answer = ExportLogsServiceResponse(partial_success=ExportLogsPartialSuccess(
        rejected_log_records=2, error_message="too old"))
    assert enc.partial_success(answer.SerializeToString(), "application/x-protobuf") == (2, "too old")
    as_json = json_format.MessageToJson(answer).encode()
    assert enc.partial_success(as_json, "application/json") == (2, "too old")
    assert enc.partial_success(b'{"partialSuccess":{"errorMessage":"slow down"}}', "application/json") == (
        0, "slow down")
    for whole in (b"", b"{}", b'{"partialSuccess":{}}', b"<html>", b'{"success":true}'):
        assert enc.partial_success(whole, "application/json") is None, whole
    assert enc.partial_success(b"", "application/x-protobuf") is None


@pytest.fixture
def otlp_uploader(tmp_path: Path) -> Iterator[tuple[Uploader, list[httpx.Request]]]:
    """An OTLP uploader whose endpoint answers a partial success refusing 2 events."""
    seen: list[httpx.Request] = []

    def endpoint(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"partialSuccess": {"rejectedLogRecords": "2", "errorMessage": "bad attr"}})

    opts = Options(endpoint="http://127.0.0.1:9", format="otlp", service_name="svc")
    counters = Counters()
    uploader = Uploader(opts, Spool(str(tmp_path), counters), counters, on_commit=lambda: None,
                        doorbell=bytearray(1), transport=httpx.MockTransport(endpoint))
    yield uploader, seen
    uploader._http.close()
    uploader.spool.close()


def test_a_partial_success_counts_the_refused_and_never_resends(otlp_uploader: tuple[Uploader, list[httpx.Request]]
                                                                ) -> None:
    """200 with partialSuccess refusing 2 of 5: 3 uploaded, 2 dropped as rejected, one request."""
    uploader, seen = otlp_uploader
    entries = []
    for i in range(5):
        mid = uuid.uuid4()
        wire = uploader.encoder.encode({"t": "track", "e": f"E{i}", "u": "u", "m": mid.bytes, "ts": time.time()})
        entries.append(Entry(None, i + 1, b"", wire=wire, ts=time.time(), mid=mid.bytes))
    assert uploader.deliver(entries)
    assert len(seen) == 1
    body = json.loads(gzip.decompress(seen[0].content))
    assert len(body["resourceLogs"][0]["scopeLogs"][0]["logRecords"]) == 5
    c = uploader.counters
    assert (c.uploaded, c.dropped, c.requests, c.retries) == (3, {"rejected": 2}, 1, 0)


# -- options -----------------------------------------------------------------------------------


def test_otlp_needs_no_write_key_the_others_do() -> None:
    """OTLP endpoints usually take no key: format otlp works without one; segment still needs it."""
    assert Options(endpoint="http://127.0.0.1:4318", format="otlp-proto").write_key == ""
    with pytest.raises(ConfigurationError, match="write_key is missing"):
        Options(endpoint="http://127.0.0.1:4318")


def test_service_name_default_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolved in the application for the OTLP formats only; OTEL_SERVICE_NAME first;
    MPSENDER_SERVICE_NAME sets it; an empty one is refused."""
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-otel")
    assert Options(endpoint="http://h", format="otlp").service_name == "from-otel"
    assert Options(endpoint="http://h", write_key="k").service_name is None
    assert resolve_options({"endpoint": "http://h", "format": "otlp"},
                           {"MPSENDER_SERVICE_NAME": "from-env"}).service_name == "from-env"
    with pytest.raises(ConfigurationError, match="service_name"):
        Options(endpoint="http://h", format="otlp", service_name=" ")


@pytest.mark.parametrize(("argv", "name"), [
    (["/srv/venv/bin/gunicorn", "app:wsgi"], "gunicorn"),
    (["/srv/app/manage.py", "runserver"], "manage"),
    (["/srv/shop/__main__.py"], "shop"),
    (["-c"], "unknown_service"),
    ([], "unknown_service"),
])
def test_default_service_name_is_the_program(argv: list[str], name: str) -> None:
    """The program's name, as an operator knows the service."""
    assert default_service_name({}, argv) == name


def test_service_name_is_part_of_otlp_destinations_only() -> None:
    """Two services get two OTLP senders; a Segment destination keeps the id it always had
    (its spool stays where it is)."""
    a = Options(endpoint="http://h", format="otlp", service_name="a")
    b = Options(endpoint="http://h", format="otlp", service_name="b")
    assert destination_id(a) != destination_id(b)
    seg = Options(endpoint="http://h", write_key="k", service_name="ignored")
    before = hashlib.sha256("\0".join(["http://h", "k", "segment", "", "", "[]"]).encode()).hexdigest()[:16]
    assert destination_id(seg) == before


# -- the collector's answers ------------------------------------------------------------------


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    c.start()
    try:
        yield c
    finally:
        c.close()


def test_collector_answers_otlp_in_otlp_terms(collector: Collector) -> None:
    """An empty ExportLogsServiceResponse for protobuf, {} for JSON, 400 with a reason for
    what is not an ExportLogsServiceRequest; nothing of a refused body is stored."""
    enc = encoder("otlp-proto")
    body = enc.request_parts([enc.encode(rec())], sent_at=0).body
    with httpx.Client(base_url=collector.url, timeout=10) as http:
        r = http.post("/v1/logs", content=body, headers={"Content-Type": "application/x-protobuf"})
        assert (r.status_code, r.content, r.headers["content-type"]) == (200, b"", "application/x-protobuf")
        r = http.post("/v1/logs", json={"resourceLogs": []})
        assert (r.status_code, r.json()) == (200, {})
        r = http.post("/v1/logs", content=b"\x0a\x05ab", headers={"Content-Type": "application/x-protobuf"})
        assert r.status_code == 400 and "ExportLogsServiceRequest" in r.json()["error"]
        r = http.post("/v1/logs", content=b"{nope", headers={"Content-Type": "application/json"})
        assert (r.status_code, r.json()["error"]) == (400, "body is not valid JSON")
        r = http.post("/v1/logs", json={"resourceLogs": [{"scopeLogs": [{"logRecords": [{"attributes": 3}]}]}]})
        assert r.status_code == 400 and "ExportLogsServiceRequest" in r.json()["error"]
    assert [r.format for r in collector.requests()] == ["otlp-proto", "otlp", "otlp-proto", "otlp", "otlp"]
    assert collector.message_ids() == [MID_STR]


def test_collector_reads_log_records_of_other_otlp_senders(collector: Collector) -> None:
    """A LogRecord from another OTel SDK (no mpsender attributes; a body; NaN as OTLP's JSON
    writes it) is stored as a 'log' event with its attributes as properties."""
    foreign = {"resourceLogs": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "x"}}]},
                                 "scopeLogs": [{"logRecords": [{
                                     "timeUnixNano": "0", "severityNumber": 13, "body": {"stringValue": "disk low"},
                                     "attributes": [{"key": "free", "value": {"doubleValue": "NaN"}}]}]}]}]}
    with httpx.Client(base_url=collector.url, timeout=10) as http:
        assert http.post("/v1/logs", json=foreign).status_code == 200
    [event] = collector.events()
    assert event["type"] == "log" and event["timestamp"] is None and event["context"] == {}
    assert math.isnan(event["properties"]["free"])
    assert event["otlp"] == {"resource": {"service.name": "x"}, "severityNumber": 13, "body": "disk low"}


def test_a_blank_otel_service_name_is_ignored() -> None:
    """OTEL_SERVICE_NAME set but blank falls back to the program's name."""
    assert default_service_name({"OTEL_SERVICE_NAME": " "}, ["app.py"]) == "app"
