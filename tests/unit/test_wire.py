"""Unit tests for the wire encoders in mpsender._wire."""

from __future__ import annotations

import base64
import json
import math
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import pytest

from mpsender._otlp import OtlpJsonEncoder, OtlpProtoEncoder
from mpsender._wire import (
    FORMATS,
    Encoder,
    JsonEncoder,
    PostHogEncoder,
    SegmentEncoder,
    WireRequest,
    format_message_id,
    format_timestamp,
    get_encoder,
)

MID = bytes(range(16))
MID_STR = "00010203-0405-0607-0809-0a0b0c0d0e0f"
TS = datetime(2026, 11, 23, 8, 7, 59, 123000, tzinfo=timezone.utc).timestamp()
TS_STR = "2026-11-23T08:07:59.123Z"
SENT = datetime(2026, 11, 23, 8, 8, 0, 500000, tzinfo=timezone.utc).timestamp()
SENT_STR = "2026-11-23T08:08:00.500Z"
LIB = {"name": "mpsender", "version": "9.9.9"}
#: the formats whose bodies are {"batch": [...]} (the OTLP ones: tests/unit/test_otlp_wire.py)
BATCH_FORMATS = ("segment", "posthog", "json")


def encoder(fmt: str, **kwargs: Any) -> Encoder:
    """An encoder with the test library name and key."""
    kwargs.setdefault("write_key", "KEY")
    return get_encoder(fmt, library_name="mpsender", library_version="9.9.9", **kwargs)


def rec(t: str, **fields: Any) -> dict[str, Any]:
    """An internal record with the common fields filled in."""
    base: dict[str, Any] = {"t": t, "m": MID, "ts": TS}
    base.update(fields)
    return base


def strict_loads(body: bytes) -> Any:
    """Parse a body as strict UTF-8 JSON (NaN/Infinity refused)."""

    def refuse(token: str) -> Any:
        raise AssertionError(f"invalid JSON constant {token}")

    return json.loads(body.decode("utf-8"), parse_constant=refuse)


# -- timestamps --------------------------------------------------------------------


def test_timestamp_exact_string() -> None:
    """A float epoch formats to the exact ISO-8601 UTC millisecond string."""
    assert format_timestamp(TS) == TS_STR


def test_timestamp_integer_and_whole_seconds() -> None:
    """Whole seconds get ".000"; an int is accepted."""
    assert format_timestamp(0) == "1970-01-01T00:00:00.000Z"
    assert format_timestamp(1_000_000_000.0) == "2001-09-09T01:46:40.000Z"


@pytest.mark.parametrize(
    "frac,expected",
    [(0.0004, ".000Z"), (0.0006, ".001Z"), (0.1234, ".123Z"), (0.1236, ".124Z"),
     (0.9994, ".999Z")],
)
def test_timestamp_rounds_to_nearest_ms(frac: float, expected: str) -> None:
    """Sub-millisecond parts round to the nearest millisecond."""
    assert format_timestamp(1_000_000_000 + frac) == "2001-09-09T01:46:40" + expected


def test_timestamp_rounding_carries_across_day() -> None:
    """Rounding up at 23:59:59.9996 carries into the next day."""
    midnight = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
    assert format_timestamp(midnight - 0.0004) == "2026-01-01T00:00:00.000Z"
    assert format_timestamp(midnight - 0.0006) == "2025-12-31T23:59:59.999Z"


def test_timestamp_before_epoch() -> None:
    """Negative epochs format correctly (floor, not truncation, of the second)."""
    assert format_timestamp(-0.5) == "1969-12-31T23:59:59.500Z"


def test_timestamp_cache_across_second_boundary(monkeypatch: pytest.MonkeyPatch) -> None:
    """The date and time are worked out once per whole second, and the cache follows second changes."""
    calls: list[float] = []
    real = time.gmtime

    def counting(t: Any = None) -> time.struct_time:
        calls.append(1)
        return real(t)

    monkeypatch.setattr(time, "gmtime", counting)
    base = 1_700_000_000.0
    assert format_timestamp(base + 0.25) == "2023-11-14T22:13:20.250Z"
    assert format_timestamp(base + 0.75) == "2023-11-14T22:13:20.750Z"
    assert len(calls) == 1
    assert format_timestamp(base + 1.001) == "2023-11-14T22:13:21.001Z"
    assert len(calls) == 2
    assert format_timestamp(base + 0.5) == "2023-11-14T22:13:20.500Z"
    assert format_timestamp(base + 0.9996) == "2023-11-14T22:13:21.000Z"
    assert len(calls) == 4


def test_timestamp_years_before_1000_have_four_digits() -> None:
    """The earliest timestamp track() takes prints as ISO-8601 does, 0001-01-01 (strftime gives 1-01-01)."""
    assert format_timestamp(-62135596800.0) == "0001-01-01T00:00:00.000Z"
    assert format_timestamp(-59011459200.0) == "0100-01-01T00:00:00.000Z"
    assert format_timestamp(253402300799.999) == "9999-12-31T23:59:59.999Z"


def test_timestamp_matches_datetime_for_many_values() -> None:
    """Across a range of epochs the result equals datetime's millisecond isoformat."""
    for i in range(2000):
        ts = 1_600_000_000 + i * 7919.123
        ms = round(ts * 1000)
        dt = datetime.fromtimestamp(ms // 1000, tz=timezone.utc)
        expected = dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"
        assert format_timestamp(ts) == expected


# -- message ids ---------------------------------------------------------------------


def test_message_id_round_trips_through_uuid() -> None:
    """16 bytes format as the canonical UUID string of those bytes."""
    for _ in range(200):
        raw = uuid.uuid4().bytes
        text = format_message_id(raw)
        assert text == str(uuid.UUID(bytes=raw))
        assert uuid.UUID(text).bytes == raw
    assert format_message_id(MID) == MID_STR


def test_message_id_str_passes_through() -> None:
    """A user-given string id is used as is."""
    assert format_message_id("order-42") == "order-42"


def test_message_id_wrong_length_raises() -> None:
    """Bytes that are not 16 long raise ValueError."""
    with pytest.raises(ValueError, match="16 bytes"):
        format_message_id(b"short")


# -- get_encoder -----------------------------------------------------------------------


def test_unknown_format_names_valid_ones() -> None:
    """An unknown format raises ValueError listing the valid formats."""
    with pytest.raises(ValueError, match="'mixpanel'.*json, otlp, otlp-proto, posthog, segment"):
        encoder("mixpanel")


def test_formats_and_defaults() -> None:
    """Each format has its name, class and default path."""
    assert sorted(FORMATS) == ["json", "otlp", "otlp-proto", "posthog", "segment"]
    expected = {"segment": (SegmentEncoder, "/v1/batch"), "posthog": (PostHogEncoder, "/batch/"),
                "json": (JsonEncoder, "/json"), "otlp": (OtlpJsonEncoder, "/v1/logs"),
                "otlp-proto": (OtlpProtoEncoder, "/v1/logs")}
    for fmt, (cls, path) in expected.items():
        enc = encoder(fmt)
        assert type(enc) is cls
        assert enc.name == fmt
        assert enc.default_path == path
        assert enc.request([], sent_at=SENT).path == path


@pytest.mark.parametrize("fmt", FORMATS)
def test_custom_path(fmt: str) -> None:
    """A custom path replaces the default in the request."""
    assert encoder(fmt, path="/ingest/v2").request([], sent_at=SENT).path == "/ingest/v2"
    assert encoder(fmt, path="").request([], sent_at=SENT).path == ""


def test_bad_path_raises() -> None:
    """A path not starting with '/' or '?' raises ValueError naming the path."""
    with pytest.raises(ValueError, match="path"):
        encoder("segment", path="v1/batch")


# -- Segment events ---------------------------------------------------------------------


def test_segment_track_fields() -> None:
    """track carries every Segment field, context merged with library."""
    ev = encoder("segment").event(rec(
        "track", u="u1", a="a1", e="Signed Up", p={"plan": "pro"},
        c={"ip": "1.2.3.4"}, i={"All": False},
    ))
    assert ev == {
        "type": "track", "messageId": MID_STR, "timestamp": TS_STR,
        "userId": "u1", "anonymousId": "a1",
        "context": {"ip": "1.2.3.4", "library": LIB},
        "integrations": {"All": False},
        "event": "Signed Up", "properties": {"plan": "pro"},
    }


def test_segment_track_minimal() -> None:
    """Absent optional keys are omitted; properties default to {}."""
    ev = encoder("segment").event({"t": "track", "a": "anon", "e": "X"})
    assert ev == {"type": "track", "anonymousId": "anon", "context": {"library": LIB},
                  "event": "X", "properties": {}}


def test_segment_identify_fields() -> None:
    """identify carries traits."""
    ev = encoder("segment").event(rec("identify", u="u1", tr={"email": "a@b.c"}))
    assert ev == {"type": "identify", "messageId": MID_STR, "timestamp": TS_STR,
                  "userId": "u1", "context": {"library": LIB}, "traits": {"email": "a@b.c"}}


def test_segment_group_fields() -> None:
    """group carries groupId and traits."""
    ev = encoder("segment").event(rec("group", u="u1", g="acme", tr={"size": 5}))
    assert ev == {"type": "group", "messageId": MID_STR, "timestamp": TS_STR,
                  "userId": "u1", "context": {"library": LIB},
                  "groupId": "acme", "traits": {"size": 5}}


def test_segment_alias_fields() -> None:
    """alias carries previousId and userId."""
    ev = encoder("segment").event(rec("alias", u="new", pv="old"))
    assert ev == {"type": "alias", "messageId": MID_STR, "timestamp": TS_STR,
                  "userId": "new", "context": {"library": LIB}, "previousId": "old"}


def test_segment_page_fields() -> None:
    """page carries name, category and properties."""
    ev = encoder("segment").event(rec("page", a="anon", n="Pricing", cat="Docs",
                                      p={"url": "https://x/p"}))
    assert ev == {"type": "page", "messageId": MID_STR, "timestamp": TS_STR,
                  "anonymousId": "anon", "context": {"library": LIB},
                  "name": "Pricing", "category": "Docs", "properties": {"url": "https://x/p"}}


def test_segment_screen_fields() -> None:
    """screen carries name and properties."""
    ev = encoder("segment").event(rec("screen", u="u1", n="Home"))
    assert ev == {"type": "screen", "messageId": MID_STR, "timestamp": TS_STR,
                  "userId": "u1", "context": {"library": LIB},
                  "name": "Home", "properties": {}}


def test_segment_library_wins_and_context_not_mutated() -> None:
    """A user-given context.library is replaced; the record's context is left alone."""
    ctx = {"library": {"name": "other"}, "locale": "fr"}
    ev = encoder("segment").event(rec("track", u="u", e="E", c=ctx))
    assert ev["context"] == {"library": LIB, "locale": "fr"}
    assert ctx == {"library": {"name": "other"}, "locale": "fr"}


def test_segment_string_id_and_timestamp_pass_through() -> None:
    """A user-given message id string is kept, and so is a string timestamp in a record
    written by a version that stored them (track() now stores epoch seconds)."""
    ev = encoder("segment").event(rec("track", u="u", e="E", m="my-id",
                                      ts="2020-01-01T00:00:00+02:00"))
    assert ev["messageId"] == "my-id"
    assert ev["timestamp"] == "2020-01-01T00:00:00+02:00"


@pytest.mark.parametrize(
    "record,match",
    [
        ({"t": "launch", "u": "u"}, "unknown call type"),
        ({"u": "u", "e": "E"}, "cannot encode"),
        ({"t": "track", "u": "u"}, "'e'"),
        ({"t": "track", "e": "E"}, "'u' or 'a'"),
        ({"t": "group", "u": "u"}, "'g'"),
        ({"t": "alias", "u": "u"}, "'pv'"),
        ({"t": "alias", "pv": "p"}, "'u'"),
        ({"t": "track", "u": "u", "e": "E", "m": b"xx"}, "16 bytes"),
        ({"t": "track", "u": "u", "e": "E", "ts": math.inf}, "cannot encode"),
        ({"t": "track", "u": "u", "e": "E", "ts": math.nan}, "NaN"),
        ({"t": "track", "u": "u", "e": "E", "c": ["not", "a", "dict"]}, "cannot encode"),
    ],
)
@pytest.mark.parametrize("fmt", FORMATS)
def test_malformed_record_raises_value_error(fmt: str, record: dict[str, Any], match: str) -> None:
    """Every way a record can be malformed surfaces as ValueError."""
    with pytest.raises(ValueError, match=match):
        encoder(fmt).event(record)


# -- Segment / JSON requests ----------------------------------------------------------------


def test_segment_request_auth_and_body() -> None:
    """Basic auth with the key as user and empty password; body is batch + sentAt."""
    enc = encoder("segment", write_key="wk_123")
    ev = enc.event(rec("track", u="u", e="E"))
    req = enc.request([ev], sent_at=SENT)
    assert isinstance(req, WireRequest)
    assert req.path == "/v1/batch"
    assert req.headers == {"Authorization": "Basic " + base64.b64encode(b"wk_123:").decode(),
                           "Content-Type": "application/json"}
    assert base64.b64decode(req.headers["Authorization"][6:]) == b"wk_123:"
    assert strict_loads(req.body) == {"batch": [ev], "sentAt": SENT_STR}


@pytest.mark.parametrize("fmt", FORMATS)
def test_body_is_compact_utf8(fmt: str) -> None:
    """Bodies carry no whitespace separators and non-ASCII as raw UTF-8."""
    enc = encoder(fmt)
    req = enc.request([enc.event(rec("track", u="zoë", e="Café ☕", p={"a": [1, 2]}))],
                      sent_at=SENT)
    assert b", " not in req.body and b": " not in req.body
    assert "Café ☕".encode() in req.body
    assert b"\\u" not in req.body
    assert "Content-Encoding" not in req.headers


@pytest.mark.parametrize("fmt", FORMATS)
def test_request_headers_are_a_fresh_copy(fmt: str) -> None:
    """Mutating one request's headers does not leak into the next."""
    enc = encoder(fmt)
    first = enc.request([], sent_at=SENT)
    first.headers["Content-Encoding"] = "gzip"
    assert "Content-Encoding" not in enc.request([], sent_at=SENT).headers


def test_json_format_bearer_and_segment_events() -> None:
    """json sends Segment-shaped events to /json with Bearer auth."""
    enc = encoder("json", write_key="secret")
    ev = enc.event(rec("track", u="u", e="E", p={"k": 1}))
    assert ev == encoder("segment").event(rec("track", u="u", e="E", p={"k": 1}))
    req = enc.request([ev], sent_at=SENT)
    assert req.path == "/json"
    assert req.headers == {"Content-Type": "application/json", "Authorization": "Bearer secret"}
    assert strict_loads(req.body) == {"batch": [ev], "sentAt": SENT_STR}


def test_json_custom_headers_merge_and_override() -> None:
    """Custom headers are added and override built-ins case-insensitively."""
    enc = encoder("json", headers={"X-Team": "data", "authorization": "Token abc"})
    headers = enc.request([], sent_at=SENT).headers
    assert headers == {"Content-Type": "application/json", "X-Team": "data",
                       "authorization": "Token abc"}


def test_json_without_key_sends_no_authorization() -> None:
    """An empty key means no Authorization header for the json format."""
    assert encoder("json", write_key="").request([], sent_at=SENT).headers == {
        "Content-Type": "application/json"}


@pytest.mark.parametrize("fmt", ["segment", "posthog"])
def test_custom_headers_apply_to_every_format(fmt: str) -> None:
    """Custom headers reach segment and posthog requests too."""
    headers = encoder(fmt, headers={"X-Proxy": "1"}).request([], sent_at=SENT).headers
    assert headers["X-Proxy"] == "1"
    assert headers["Content-Type"] == "application/json"


# -- NaN and other values JSON cannot hold ----------------------------------------------


@pytest.mark.parametrize("fmt", BATCH_FORMATS)
def test_nan_and_infinity_become_null(fmt: str) -> None:
    """NaN, Infinity and -Infinity are sent as null, leaving the events untouched."""
    enc = encoder(fmt)
    props = {"a": math.nan, "b": math.inf, "c": [-math.inf, 1.5], "d": {"e": math.nan}}
    ev = enc.event(rec("track", u="u", e="E", p=props))
    body = strict_loads(enc.request([ev], sent_at=SENT).body)
    sent = body["batch"][0]["properties"]
    assert sent["a"] is None and sent["b"] is None
    assert sent["c"] == [None, 1.5] and sent["d"] == {"e": None}
    assert math.isnan(ev["properties"]["a"])


def test_bytes_odd_keys_and_objects_are_made_json() -> None:
    """bytes become text, non-str keys strings, unknown objects their str()."""
    enc = encoder("segment")
    props = {"raw": b"caf\xc3\xa9", b"bkey": 1, 7: "int", "t": (1, 2), "o": uuid.UUID(int=0)}
    body = strict_loads(enc.request([enc.event(rec("track", u="u", e="E", p=props))],
                                    sent_at=SENT).body)
    assert body["batch"][0]["properties"] == {
        "raw": "café", "bkey": 1, "7": "int", "t": [1, 2], "o": str(uuid.UUID(int=0))}


def test_lone_surrogate_does_not_break_the_body() -> None:
    """A lone surrogate is replaced so the body is still valid UTF-8."""
    enc = encoder("segment")
    req = enc.request([enc.event(rec("track", u="u", e="E", p={"s": "a\ud800b"}))],
                      sent_at=SENT)
    assert strict_loads(req.body)["batch"][0]["properties"]["s"] == "a?b"


# -- PostHog ------------------------------------------------------------------------------


def ph_props(**extra: Any) -> dict[str, Any]:
    """The properties every PostHog event gets, plus ``extra``."""
    return {**extra, "$lib": "mpsender", "$lib_version": "9.9.9", "$geoip_disable": True}


def test_posthog_track_fields() -> None:
    """track: event name, distinct_id, properties with $lib, timestamp, uuid."""
    ev = encoder("posthog").event(rec("track", u="u1", a="a1", e="Signed Up",
                                      p={"plan": "pro"}, i={"All": False}))
    assert ev == {"event": "Signed Up", "distinct_id": "u1",
                  "properties": ph_props(plan="pro"), "timestamp": TS_STR, "uuid": MID_STR}


def test_posthog_anonymous_distinct_id() -> None:
    """Without a userId the anonymousId is the distinct_id."""
    ev = encoder("posthog").event({"t": "track", "a": "anon", "e": "E"})
    assert ev == {"event": "E", "distinct_id": "anon", "properties": ph_props()}


def test_posthog_identify_fields() -> None:
    """identify: $identify with $set = traits and $anon_distinct_id."""
    ev = encoder("posthog").event(rec("identify", u="u1", a="a1", tr={"email": "x@y"}))
    assert ev == {"event": "$identify", "distinct_id": "u1",
                  "properties": ph_props(**{"$set": {"email": "x@y"}, "$anon_distinct_id": "a1"}),
                  "timestamp": TS_STR, "uuid": MID_STR}


def test_posthog_identify_without_anonymous_id() -> None:
    """identify with only a userId has no $anon_distinct_id and $set defaults to {}."""
    ev = encoder("posthog").event({"t": "identify", "u": "u1"})
    assert ev["properties"] == ph_props(**{"$set": {}})


def test_posthog_group_fields() -> None:
    """group: $groupidentify with type from traits, key and the remaining traits."""
    traits = {"group_type": "team", "name": "Core"}
    ev = encoder("posthog").event(rec("group", u="u1", g="t-1", tr=traits))
    assert ev == {"event": "$groupidentify", "distinct_id": "u1",
                  "properties": ph_props(**{"$group_type": "team", "$group_key": "t-1",
                                            "$group_set": {"name": "Core"}}),
                  "timestamp": TS_STR, "uuid": MID_STR}
    assert traits == {"group_type": "team", "name": "Core"}


def test_posthog_group_defaults() -> None:
    """Without group_type the type is "company"; without a user, $type_key is the id."""
    ev = encoder("posthog").event({"t": "group", "g": "acme"})
    assert ev["distinct_id"] == "$company_acme"
    assert ev["properties"]["$group_type"] == "company"
    assert ev["properties"]["$group_set"] == {}


def test_posthog_alias_fields() -> None:
    """alias: $create_alias from previousId with alias = userId."""
    ev = encoder("posthog").event(rec("alias", u="new", pv="old"))
    assert ev == {"event": "$create_alias", "distinct_id": "old",
                  "properties": ph_props(distinct_id="old", alias="new"),
                  "timestamp": TS_STR, "uuid": MID_STR}


def test_posthog_page_fields() -> None:
    """page: $pageview with $current_url/$pathname/$referrer from properties, name, category."""
    p = {"url": "https://x.io/a?b", "path": "/a", "referrer": "https://r", "title": "T"}
    ev = encoder("posthog").event(rec("page", u="u1", n="Pricing", cat="Docs", p=p))
    assert ev["event"] == "$pageview"
    assert ev["properties"] == ph_props(
        **p, **{"$current_url": "https://x.io/a?b", "$pathname": "/a", "$referrer": "https://r"},
        name="Pricing", category="Docs")


def test_posthog_page_keeps_explicit_current_url() -> None:
    """An explicit $current_url property is not replaced by url."""
    ev = encoder("posthog").event({"t": "page", "u": "u", "p": {"url": "a", "$current_url": "b"}})
    assert ev["properties"]["$current_url"] == "b"


def test_posthog_screen_fields() -> None:
    """screen: $screen with $screen_name."""
    ev = encoder("posthog").event(rec("screen", a="a1", n="Home", p={"tab": 2}))
    assert ev == {"event": "$screen", "distinct_id": "a1",
                  "properties": ph_props(tab=2, **{"$screen_name": "Home"}, name="Home"),
                  "timestamp": TS_STR, "uuid": MID_STR}


def test_posthog_context_mapping() -> None:
    """Known context fields become PostHog properties; the rest are not sent."""
    ctx = {
        "ip": "9.9.9.9", "userAgent": "UA/1", "locale": "fr-FR",
        "page": {"url": "https://x", "path": "/p", "referrer": "https://r", "title": "t"},
        "os": {"name": "Linux"}, "screen": {"width": 10, "height": 20},
        "device": {"type": "mobile"}, "campaign": {"name": "spring", "source": "news"},
        "groups": {"company": "acme"}, "library": {"name": "x"}, "traits": {"a": 1},
    }
    ev = encoder("posthog").event({"t": "track", "u": "u", "e": "E", "c": ctx})
    assert ev["properties"] == {
        "$ip": "9.9.9.9", "$raw_user_agent": "UA/1", "$user_agent": "UA/1",
        "$browser_language": "fr-FR", "$current_url": "https://x", "$pathname": "/p",
        "$referrer": "https://r", "$os": "Linux", "$screen_width": 10, "$screen_height": 20,
        "$device_type": "mobile", "utm_campaign": "spring", "utm_source": "news",
        "$groups": {"company": "acme"}, "$lib": "mpsender", "$lib_version": "9.9.9",
    }


def test_posthog_properties_win_over_context_and_lib_wins_over_properties() -> None:
    """Event properties override context-derived ones; $lib is always ours."""
    ev = encoder("posthog").event({"t": "track", "u": "u", "e": "E", "c": {"ip": "1.1.1.1"},
                                   "p": {"$ip": "2.2.2.2", "$lib": "evil"}})
    assert ev["properties"]["$ip"] == "2.2.2.2"
    assert ev["properties"]["$lib"] == "mpsender"
    assert "$geoip_disable" not in ev["properties"]


def test_posthog_explicit_geoip_disable_kept() -> None:
    """A user-given $geoip_disable is not overridden."""
    ev = encoder("posthog").event({"t": "track", "u": "u", "e": "E",
                                   "p": {"$geoip_disable": False}})
    assert ev["properties"]["$geoip_disable"] is False


def test_posthog_record_properties_not_mutated() -> None:
    """Encoding does not write into the record's properties."""
    p = {"url": "https://x"}
    encoder("posthog").event({"t": "page", "u": "u", "p": p})
    assert p == {"url": "https://x"}


def test_posthog_uuid_from_strings() -> None:
    """A UUID string is normalised; any other string maps to a stable UUIDv5."""
    enc = encoder("posthog")
    upper = enc.event({"t": "track", "u": "u", "e": "E", "m": MID_STR.upper()})
    assert upper["uuid"] == MID_STR
    first = enc.event({"t": "track", "u": "u", "e": "E", "m": "order-42"})["uuid"]
    again = enc.event({"t": "track", "u": "u", "e": "E", "m": "order-42"})["uuid"]
    other = enc.event({"t": "track", "u": "u", "e": "E", "m": "order-43"})["uuid"]
    assert first == again != other
    assert uuid.UUID(first).version == 5


def test_posthog_request_body_and_headers() -> None:
    """The key travels in the body as api_key; no Authorization header."""
    enc = encoder("posthog", write_key="phc_abc")
    ev = enc.event(rec("track", u="u", e="E"))
    req = enc.request([ev], sent_at=SENT)
    assert req.path == "/batch/"
    assert req.headers == {"Content-Type": "application/json"}
    assert strict_loads(req.body) == {"api_key": "phc_abc", "batch": [ev], "sent_at": SENT_STR}


def test_wire_request_is_frozen() -> None:
    """WireRequest cannot be reassigned."""
    req = WireRequest("/x", {}, b"")
    with pytest.raises(AttributeError):
        req.path = "/y"  # type: ignore[misc]


# -- gzip ----------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", ["installed", "zlib"])
def test_gzip_compress_gives_one_standard_gzip_member(implementation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever deflates (ISA-L from the fast extra, or zlib), any gzip reader gets the
    body back, and a batch of similar events shrinks as it should."""
    import gzip
    import zlib

    from mpsender import _wire

    if implementation == "zlib":
        monkeypatch.setattr(_wire, "_gzip_compressobj", zlib.compressobj)
    events = [{"type": "track", "messageId": str(uuid.UUID(int=i)), "event": "Order Completed",
               "properties": {"i": i, "sku": f"sku-{i % 7}"}} for i in range(1000)]
    body = json.dumps({"batch": events}).encode()
    packed = _wire.gzip_compress(body)
    assert packed[:2] == b"\x1f\x8b"  # a gzip member, not a zlib stream
    assert gzip.decompress(packed) == body
    d = zlib.decompressobj(wbits=31)
    assert d.decompress(packed) == body and d.eof and d.unused_data == b""
    assert len(packed) < len(body) / 5
    assert _wire.gzip_compress(b"") and gzip.decompress(_wire.gzip_compress(b"")) == b""


def test_the_fast_extra_deflates_with_isal() -> None:
    isal_zlib = pytest.importorskip("isal.isal_zlib")
    from mpsender import _wire

    assert _wire._gzip_compressobj is isal_zlib.compressobj


def test_message_ids_format_as_uuids_whether_they_share_a_prefix_or_not() -> None:
    """The formatted prefix is cached: ids of one process, and of others, interleaved."""
    import os
    import uuid

    from mpsender._events import MessageIds
    from mpsender._wire import format_message_id

    a, b = MessageIds(), MessageIds()
    ids = [a.next(), a.next(), b.next(), a.next(), os.urandom(16), b.next(), b.next()]
    assert [format_message_id(m) for m in ids] == [str(uuid.UUID(bytes=m)) for m in ids]


@pytest.mark.parametrize("fmt", ["segment", "json", "posthog", "otlp", "otlp-proto"])
@pytest.mark.parametrize("sizes", [[1], [30] * 5, [127, 128, 129], [16_383, 16_384, 40], [200_000, 90_000, 300]])
def test_a_request_never_outgrows_its_envelope_and_per_event_bound(fmt: str, sizes: list[int]) -> None:
    """envelope_bytes + Σ(event + per_event_bytes) bounds the body whatever the events'
    sizes (protobuf's lengths grow a byte at 128, 16,384, 2,097,152), and is tight for a
    JSON format: the uploader cuts batches by it, so batch_bytes holds for the whole body."""
    enc = get_encoder(fmt, write_key="phc_" + "k" * 40, library_name="mpsender", library_version="1.2.3",
                      service_name="svc")
    record = {"t": "track", "e": "E", "u": "u", "m": b"\x01" * 16, "ts": 1.0}
    base = len(enc.encode({**record, "p": {}}))
    parts = [enc.encode({**record, "p": {"x": "y" * max(0, size - base)}}) for size in sizes]
    batch_bytes = 500_000
    bound = enc.envelope_bytes(batch_bytes) + sum(len(p) + enc.per_event_bytes(batch_bytes) for p in parts)
    body = enc.request_parts(parts, sent_at=time.time()).body
    assert len(body) <= bound
    if fmt not in ("otlp-proto",):
        assert len(body) == bound - 1  # the first event has no comma before it
