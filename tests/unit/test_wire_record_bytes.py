"""Records written as the wire's JSON, and JSON records (issue 15): byte for byte what the
sender would have made of the packed record, or None
where the packed path must decide."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import math
import struct
import uuid
from typing import Any

import pytest

from mpsender._events import JsonText, MessageIds, pack, unpack
from mpsender._options import Options
from mpsender._wire import SegmentEncoder, get_encoder
from mpsender._wire_records import (
    encode_json_record,
    encode_record,
    is_wire,
    json_records_ready,
    json_size,
    read_json_record,
    read_record,
    record_kind,
    wire_encoder,
)

pytest.importorskip("orjson")

NOW = 1_796_000_000.123


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


_ids = MessageIds()


def _rec(**fields: Any) -> dict[str, Any]:
    return {"t": "track", "e": "Order Completed", "u": "u1", "m": _ids.next(), "ts": NOW, **fields}


RECORDS = [
    _rec(p={"a": 1, "b": "x", "c": [1, 2.5, None, True], "d": {"e": {"f": "g"}}}),
    _rec(p={}),
    _rec(),
    _rec(p={"when": dt.datetime(2026, 1, 2, 3, 4, 5, 678000), "aware": dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc),
            "day": dt.date(2026, 1, 2)}),
    _rec(p={"price": decimal.Decimal("9.95"), "color": Color.RED, "level": Level.HIGH, "id": uuid.UUID(int=7),
            "tags": {"only"}, "pair": (1, "two")}),
    _rec(p={"nan": math.nan, "inf": math.inf, "big": 2**63, "neg": -(2**63), "text": "é 🎉 \u2028"}),
    _rec(p={"x": 1}, c={"ip": "10.0.0.1", "library": {"name": "theirs"}}, i={"All": False}),
    _rec(p={"x": 1}, s="session-1"),
    _rec(p={"session_id": "mine"}, s="session-1"),
    _rec(ts=NOW - 86400 * 365 * 5, w=NOW),
    _rec(m="my-own-id", a="anon-1", u=None),
    _rec(p={"x": "y"}, a="anon-2"),  # both ids
    _rec(p={"x": "y"}, ts="2026-01-02T03:04:05.000Z"),  # a time as text: files of early versions
    _rec(p={"x": "y"}, e='quote " and \\ and \u00e9'),  # a name JSON escapes
    {"t": "identify", "u": "u1", "m": _ids.next(), "ts": NOW, "tr": {"plan": "pro"}, "s": "s2"},
    {"t": "group", "u": "u1", "m": _ids.next(), "ts": NOW, "g": "acme", "tr": {"size": 3}},
    {"t": "alias", "u": "u1", "m": _ids.next(), "ts": NOW, "pv": "old"},
    {"t": "page", "a": "a1", "m": _ids.next(), "ts": NOW, "n": "Home", "cat": "Docs", "p": {"path": "/"}},
    {"t": "screen", "u": "u1", "m": _ids.next(), "ts": NOW, "n": "Settings"},
]


def _clean(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if v is not None}


@pytest.mark.parametrize("fmt", ["segment", "json"])
@pytest.mark.parametrize("record", [_clean(r) for r in RECORDS], ids=range(len(RECORDS)))
def test_the_json_is_what_the_sender_makes_of_the_packed_record(fmt: str, record: dict[str, Any]) -> None:
    encoder = get_encoder(fmt, write_key="", library_name="mpsender", library_version="1")
    assert isinstance(encoder, SegmentEncoder)
    payload = encode_record(encoder, dict(record), NOW)
    assert payload is not None and is_wire(payload)
    written_at, mid, body = read_record(payload)
    assert body == encoder.encode(unpack(pack(dict(record))))
    assert written_at == NOW
    assert mid == encoder.event(unpack(pack(dict(record))))["messageId"]
    assert json_size(payload) == len(body)


@pytest.mark.parametrize("props", [
    {"raw": b"bytes"},  # the packed path sends them as text
    {1: "int key"},  # keys are made strings by the packed path
    {"huge": 2**64},  # past 64 bits: refused, by the packed path, with its key path
    {"bad": "\ud800"},  # a lone surrogate: refused by the packed path
    {"obj": object()},  # what convert() refuses
])
def test_what_orjson_refuses_is_left_to_the_packed_path(props: dict[Any, Any]) -> None:
    encoder = get_encoder("segment", write_key="", library_name="mpsender", library_version="1")
    assert isinstance(encoder, SegmentEncoder)
    assert encode_record(encoder, _rec(p=props), NOW) is None


def test_a_malformed_record_is_left_to_the_packed_path() -> None:
    encoder = get_encoder("segment", write_key="", library_name="mpsender", library_version="1")
    assert isinstance(encoder, SegmentEncoder)
    assert encode_record(encoder, {"t": "track", "m": _ids.next(), "ts": NOW}, NOW) is None  # no user, no name


def test_a_torn_record_is_a_value_error() -> None:
    encoder = get_encoder("segment", write_key="", library_name="mpsender", library_version="1")
    assert isinstance(encoder, SegmentEncoder)
    payload = encode_record(encoder, _rec(p={"a": 1}), NOW)
    assert payload is not None
    for cut in (1, 5, 12, 40):
        with pytest.raises(ValueError):
            read_record(payload[:cut])


@pytest.mark.parametrize(("fmt", "wire"), [("segment", True), ("json", True), ("posthog", False), ("otlp", False)])
def test_only_the_segment_shaped_formats_write_wire_records(fmt: str, wire: bool) -> None:
    options = Options(write_key="k", endpoint="http://127.0.0.1:9", format=fmt)
    assert (wire_encoder(options) is not None) is wire


# -- JSON records (the default, _wire_records.encode_json_record)

def _expected(encoder: SegmentEncoder, record: dict[str, Any]) -> bytes:
    return encoder.encode(unpack(pack(dict(record))))


@pytest.mark.parametrize("fmt", ["segment", "json"])
@pytest.mark.parametrize("record", [_clean(r) for r in RECORDS], ids=range(len(RECORDS)))
def test_a_json_record_gives_the_bytes_of_the_packed_record(fmt: str, record: dict[str, Any]) -> None:
    encoder = get_encoder(fmt, write_key="", library_name="mpsender", library_version="1")
    assert isinstance(encoder, SegmentEncoder)
    given = dict(record)
    payload = encode_json_record(given, NOW)
    assert given == record  # the caller's record is left as it was
    assert payload is not None and record_kind(payload) == "json" and is_wire(payload)
    found = read_json_record(payload)
    assert found is not None
    written_at, read = found
    assert written_at == NOW
    assert isinstance(read.get("p"), JsonText) is ("p" in record)
    assert encoder.encode(read) == _expected(encoder, record)


@pytest.mark.parametrize("props", [
    {"raw": b"bytes"},
    {1: "int key"},
    {"huge": 2**64},
    {"bad": "\ud800"},
    {"obj": object()},
])
def test_what_orjson_refuses_in_the_properties_is_packed(props: dict[Any, Any]) -> None:
    record = _rec(p=props)
    mid = record["m"]
    assert encode_json_record(record, NOW) is None
    assert record["p"] is props and record["m"] == mid


def test_what_orjson_refuses_elsewhere_is_packed() -> None:
    """A context with an int key: the packed path, which makes such keys strings, decides."""
    record = _rec(p={"a": 1}, c={1: "one"})
    assert encode_json_record(record, NOW) is None
    encoder = get_encoder("segment", write_key="", library_name="mpsender", library_version="1")
    assert b'"context":{"1":"one"' in encoder.encode(unpack(pack(record)))


def test_a_torn_json_record_is_a_value_error() -> None:
    payload = encode_json_record(_rec(p={"a": 1}), NOW)
    assert payload is not None
    for cut in (12, 16, 30):
        with pytest.raises(ValueError):
            read_json_record(payload[:cut])


def test_a_wire_record_is_not_a_json_record() -> None:
    encoder = get_encoder("segment", write_key="", library_name="mpsender", library_version="1")
    assert isinstance(encoder, SegmentEncoder)
    payload = encode_record(encoder, _rec(p={"a": 1}), NOW)
    assert payload is not None and record_kind(payload) == "wire-json"
    assert read_json_record(payload) is None
    assert read_json_record(pack(_rec(p={"a": 1}))) is None


@pytest.mark.parametrize(("fmt", "ready"), [("segment", True), ("json", True), ("posthog", False), ("otlp", False),
                                            ("otlp-proto", False)])
def test_only_the_segment_shaped_formats_write_json_records(fmt: str, ready: bool) -> None:
    """PostHog's and OTLP's events are built from the properties' values in the sender."""
    options = Options(write_key="k", endpoint="http://127.0.0.1:9", format=fmt)
    assert json_records_ready(options) is ready


def _read_record_of_the_version_before(payload: bytes) -> tuple[float, str, bytes]:
    """What a sender that reads wire records but not JSON records did with a record
    starting 0xC1 (mpsender/_wire_records.py before JSON records), for the test below."""
    try:
        mark, written_at, n = struct.unpack_from("<BdH", payload)
    except struct.error as exc:
        raise ValueError(str(exc)) from None
    start = 11 + n
    if mark != 0xC1 or len(payload) <= start:
        raise ValueError("not a whole wire record")
    return written_at, payload[11:start].decode(), payload[start:]


def test_a_sender_of_the_version_before_refuses_a_json_record() -> None:
    """Only a sender that lists "json-records" is sent these; if one that does not meets
    one all the same (it took over the spool of a newer sender that was killed), it
    dead-letters it as undecodable, counted (an event under max_message_bytes, 32,000 by
    default, is shorter than the id it looks for)."""
    payload = encode_json_record(_rec(p={"blob": "x" * 31_000, "n": 1}), NOW)
    assert payload is not None
    with pytest.raises(ValueError):
        _read_record_of_the_version_before(payload)
