"""OTLP/HTTP logs end to end: a real Client and sender posting format="otlp" and
"otlp-proto" to the real collector on 127.0.0.1, the request bodies as they crossed the
wire decoded with opentelemetry-proto's own classes (strict: an unknown field fails), and
the collector storing the LogRecords as the events the other formats store."""

from __future__ import annotations

import datetime as dt
import gzip
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

import mpsender
from mpsender._collector import Collector, Faults
from mpsender._version import __version__

KEY = "test-key"
T0 = dt.datetime(2026, 11, 23, 8, 7, 59, 123000, tzinfo=dt.timezone.utc)
T0_NANOS = 1795421279123000000
FAST = {"retry_base": 0.02, "retry_cap": 0.2}
OTLP_FORMATS = ["otlp", "otlp-proto"]


def mid(n: int) -> str:
    """The message id of the n-th call."""
    return str(uuid.UUID(int=0xABCD_0000_0000_4000_8000_0000_0000_0000 + n))


def every_call(client: mpsender.Client) -> None:
    """One call of each type and two $error events, with fixed ids and timestamps."""
    client.track("Signup", user_id="u1", properties={"plan": "pro", "seats": 3, "price": 9.5, "trial": False,
                                                     "tags": ["a", "b"], "billing": {"cycle": "monthly"},
                                                     "coupon": None},
                 context={"ip": "10.1.2.3", "page": {"path": "/signup"}}, timestamp=T0, message_id=mid(1))
    client.identify("u1", anonymous_id="a1", traits={"email": "a@example.com"}, timestamp=T0, message_id=mid(2))
    client.group("acme", user_id="u1", traits={"name": "Acme"}, timestamp=T0, message_id=mid(3))
    client.alias("a1", user_id="u1", timestamp=T0, message_id=mid(4))
    client.page("Pricing", category="Docs", user_id="u1", properties={"url": "https://x.test/p"},
                timestamp=T0, message_id=mid(5))
    client.screen("Home", anonymous_id="a2", timestamp=T0, message_id=mid(6))
    client.track("$error", user_id="u1", properties={"severity": "warning", "error_type": "Slow"},
                 timestamp=T0, message_id=mid(7))
    try:
        raise KeyError("boom")
    except KeyError as exc:
        client.capture_error(exc, user_id="u1")


@pytest.fixture
def wire_collector(tmp_path: Path) -> Iterator[Collector]:
    """A collector that keeps every request body as it came, and checks the key (Bearer)."""
    c = Collector(tmp_path / "otlp.db", write_key=KEY, keep_bodies=True)
    c.start()
    try:
        yield c
    finally:
        c.close()


def decoded(collector: Collector, fmt: str) -> ExportLogsServiceRequest:
    """Every request's body, gunzipped and parsed strictly with the official schema, merged."""
    merged = ExportLogsServiceRequest()
    for request in collector.requests():
        assert request.status == 200 and request.path == "/v1/logs", request
        assert request.headers["content-encoding"] == "gzip" and request.body is not None
        body = gzip.decompress(request.body)
        message = ExportLogsServiceRequest()
        if fmt == "otlp":
            assert request.headers["content-type"] == "application/json"
            json_format.Parse(body, message)  # no ignore_unknown_fields: every name must be OTLP's
        else:
            assert request.headers["content-type"] == "application/x-protobuf"
            message.ParseFromString(body)
            assert message.SerializeToString() == body, "fields out of protobuf's canonical order"
        merged.MergeFrom(message)
    return merged


def attributes(record: LogRecord) -> dict[str, Any]:
    """A LogRecord's attributes as Python values (asserting each key appears once)."""
    keys = [kv.key for kv in record.attributes]
    assert len(keys) == len(set(keys)), keys
    return {kv.key: python(kv.value) for kv in record.attributes}


def python(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "kvlist_value":
        return {kv.key: python(kv.value) for kv in value.kvlist_value.values}
    if kind == "array_value":
        return [python(v) for v in value.array_value.values]
    return getattr(value, kind)


@pytest.mark.parametrize("fmt", OTLP_FORMATS)
def test_every_call_decodes_with_the_official_schema(fmt: str, make_client: Callable[..., mpsender.Client],
                                                     wire_collector: Collector) -> None:
    """Each call becomes one LogRecord that opentelemetry-proto parses strictly: event name (field
    and attribute), ids, timestamps, severity, properties and context as attributes, the
    resource's service.name and host.name, the mpsender scope; gzip, and Bearer auth."""
    client = make_client(wire_collector.url, format=fmt, write_key=KEY, service_name="shop-api")
    before = time.time()
    every_call(client)
    assert client.flush(timeout=15)
    after = time.time()
    assert {r.headers.get("authorization") for r in wire_collector.requests()} == {f"Bearer {KEY}"}
    message = decoded(wire_collector, fmt)

    records: list[LogRecord] = []
    for resource_logs in message.resource_logs:
        resource = {kv.key: python(kv.value) for kv in resource_logs.resource.attributes}
        assert resource == {"service.name": "shop-api", "host.name": socket.gethostname()}
        for scope_logs in resource_logs.scope_logs:
            assert (scope_logs.scope.name, scope_logs.scope.version) == ("mpsender", __version__)
            records.extend(scope_logs.log_records)
    assert [r.event_name for r in records] == [
        "Signup", "identify", "group", "alias", "page", "screen", "$error", "$error"]
    attrs = [attributes(r) for r in records]
    assert [a["event.name"] for a in attrs] == [r.event_name for r in records]
    assert [a["mpsender.type"] for a in attrs] == ["track", "identify", "group", "alias", "page", "screen",
                                                   "track", "track"]
    assert [a["log.record.uid"] for a in attrs[:7]] == [mid(n) for n in range(1, 8)]
    uuid.UUID(attrs[7]["log.record.uid"])  # a generated id: a UUID too
    assert [a.get("user.id") for a in attrs] == ["u1", "u1", "u1", "u1", "u1", None, "u1", "u1"]
    assert [a.get("enduser.pseudo.id") for a in attrs] == [None, "a1", None, None, None, "a2", None, None]

    signup, identify, group, alias, page, screen, warning, error = attrs
    assert {k: v for k, v in signup.items() if "." not in k} == {
        "plan": "pro", "seats": 3, "price": 9.5, "trial": False, "tags": ["a", "b"],
        "billing": {"cycle": "monthly"}, "coupon": None}
    assert signup["context.ip"] == "10.1.2.3" and signup["context.page"] == {"path": "/signup"}
    assert not any(k.startswith("context.library") for a in attrs for k in a)  # the scope says it
    assert identify["email"] == "a@example.com"
    assert (group["mpsender.group_id"], group["name"]) == ("acme", "Acme")
    assert alias["mpsender.previous_id"] == "a1"
    assert (page["mpsender.name"], page["mpsender.category"], page["url"]) == ("Pricing", "Docs", "https://x.test/p")
    assert screen["mpsender.name"] == "Home"
    assert warning["error_type"] == "Slow" and error["error_type"] == "KeyError" and error["stack"]
    # semconv's exception attributes beside them (a hand-made $error without a message: the type alone)
    assert (error["exception.type"], error["exception.message"]) == ("KeyError", "'boom'")
    trace = error["exception.stacktrace"].splitlines()
    assert trace[0] == "Traceback (most recent call last):" and trace[-1] == "KeyError: 'boom'"
    assert trace[1] == f'  File "{__file__}", line {error["stack"][0]["lineno"]}, in every_call', trace
    assert (warning["exception.type"], "exception.message" in warning) == ("Slow", False)
    assert "stack" not in warning and "exception.stacktrace" not in warning

    given = records[:7]
    assert all(r.time_unix_nano == T0_NANOS for r in given)
    # observed = when track() wrote it, not the backdated timestamp
    assert all(before * 1e9 <= r.observed_time_unix_nano <= after * 1e9 for r in records)
    assert before * 1e9 <= records[7].time_unix_nano == records[7].observed_time_unix_nano <= after * 1e9
    assert [(r.severity_number, r.severity_text) for r in records] == [(9, "INFO")] * 6 + [(13, "WARN"), (17, "ERROR")]


@pytest.mark.parametrize("fmt", OTLP_FORMATS)
def test_the_collector_stores_otlp_events_as_it_stores_segment_ones(
        fmt: str, make_client: Callable[..., mpsender.Client], wire_collector: Collector, tmp_path: Path) -> None:
    """The dev collector turns each LogRecord back into the event the Segment format delivers for
    the same call (same type, ids, timestamp, properties, traits, context); message ids are
    listed, and so deduplicated, as for the other formats."""
    client = make_client(wire_collector.url, format=fmt, write_key=KEY)
    every_call(client)
    assert client.flush(timeout=15)
    with Collector(tmp_path / "segment.db") as segment:
        reference = make_client(segment.url, write_key=KEY)
        every_call(reference)
        assert reference.flush(timeout=15)
        expected = segment.events()
    got = wire_collector.events()
    assert [{k: v for k, v in ev.items() if k != "otlp"} for ev in got[:7]] == expected[:7]
    assert [ev["otlp"]["severityText"] for ev in got] == ["INFO"] * 6 + ["WARN", "ERROR"]
    # the exception.* attributes derived from capture_error()'s properties are kept apart
    assert (got[6]["otlp"]["exception.type"], got[7]["otlp"]["exception.type"]) == ("Slow", "KeyError")
    assert got[0]["otlp"]["resource"]["host.name"] == socket.gethostname()
    assert wire_collector.message_ids()[:7] == [mid(n) for n in range(1, 8)]
    assert {r.format for r in wire_collector.requests()} == {fmt}


@pytest.mark.parametrize("fmt", OTLP_FORMATS)
def test_no_key_no_authorization_and_custom_headers(fmt: str, make_client: Callable[..., mpsender.Client],
                                                   collector: Collector) -> None:
    """OTLP needs no write key: none sends no Authorization; headers= adds a vendor's own."""
    client = make_client(collector.url, format=fmt, headers={"X-Scope-OrgID": "tenant-1"})
    client.track("A", user_id="u")
    assert client.flush(timeout=15)
    [request] = collector.requests()
    assert request.status == 200 and "authorization" not in request.headers
    assert request.headers["x-scope-orgid"] == "tenant-1"
    assert [e["event"] for e in collector.events()] == ["A"]


@pytest.mark.parametrize("fmt", OTLP_FORMATS)
def test_an_otel_deployments_variables_are_enough(fmt: str, make_client: Callable[..., mpsender.Client],
                                                 collector: Collector, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no endpoint given, OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_EXPORTER_OTLP_HEADERS (as an
    OpenTelemetry operator or vendor guide exports them) are where and how the sender posts."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "X-Scope-OrgID=tenant%201,x-api-key=k1")
    client = make_client(None, format=fmt)
    client.track("A", user_id="u")
    assert client.flush(timeout=15)
    [request] = collector.requests()
    assert request.status == 200 and request.path == "/v1/logs"
    assert (request.headers["x-scope-orgid"], request.headers["x-api-key"]) == ("tenant 1", "k1")
    assert [e["event"] for e in collector.events()] == ["A"]


@pytest.mark.parametrize("fmt", OTLP_FORMATS)
def test_otel_resource_attributes_reach_the_resource(fmt: str, make_client: Callable[..., mpsender.Client],
                                                    wire_collector: Collector,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_RESOURCE_ATTRIBUTES, read in the application, is the resource the sender posts
    (parsed strictly by opentelemetry-proto), its service.name the service's name."""
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=checkout,deployment.environment=staging,"
                                                   "k8s.pod.name=checkout-5d%2C2")
    client = make_client(wire_collector.url, format=fmt, write_key=KEY)
    client.track("A", user_id="u")
    assert client.flush(timeout=15)
    [resource_logs] = decoded(wire_collector, fmt).resource_logs
    assert {kv.key: python(kv.value) for kv in resource_logs.resource.attributes} == {
        "service.name": "checkout", "host.name": socket.gethostname(), "deployment.environment": "staging",
        "k8s.pod.name": "checkout-5d,2"}


def test_a_400_drops_and_counts_a_429_retries(make_client: Callable[..., mpsender.Client],
                                              collector: Collector) -> None:
    """An OTLP endpoint's 429 with Retry-After is retried until taken; a 400 is refused for good:
    the events are dead-lettered and counted as rejected, never sent again."""
    collector.set_faults(Faults(fail_first=2, fail_status=429, retry_after="0"))
    client = make_client(collector.url, format="otlp", batch_size=10, **FAST)
    client.track("Kept", user_id="u")
    assert client.flush(timeout=15)
    assert [r.status for r in collector.requests()] == [429, 429, 200]
    collector.set_faults(Faults(status=400))
    for _ in range(3):
        client.track("Refused", user_id="u")
    assert client.flush(timeout=15)
    sender = client.stats().sender
    assert sender is not None and sender.dropped == {"rejected": 3}
    assert [e["event"] for e in collector.events()] == ["Kept"]
    dead = (Path(client.paths.spool) / "deadletter.jsonl").read_text().splitlines()
    assert len(dead) == 3 and all('"eventName": "Refused"' in line for line in dead)


def test_an_event_track_took_is_not_oversize_on_the_otlp_wire(make_client: Callable[..., mpsender.Client],
                                                             collector: Collector) -> None:
    """max_message_bytes bounds what track() packs; OTLP's attributes spell it out several times
    larger, and the sender still delivers it (OTLP has no per-event limit: only batch_bytes)."""
    client = make_client(collector.url, format="otlp-proto", max_message_bytes=4000, batch_bytes=200_000)
    props = {f"k{i}": i for i in range(400)}
    client.track("Wide", user_id="u", properties=props)
    assert client.flush(timeout=15)
    sender = client.stats().sender
    assert sender is not None and sender.dropped == {}
    [event] = collector.events()
    assert event["properties"] == props
    assert collector.requests()[0].body_bytes > 0
