"""Records written as the wire's JSON, and packed records with their properties as JSON
(issue 15): byte for byte what the sender would have made of the packed record, or None
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
    encode_record,
    is_wire,
    json_properties_ready,
    json_size,
    pack_json_properties,
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


# -- packed records with their properties as JSON (the default, _wire_records.pack_json_properties)

def _expected(encoder: SegmentEncoder, record: dict[str, Any]) -> bytes:
    return encoder.encode(unpack(pack(dict(record))))


@pytest.mark.parametrize("fmt", ["segment", "json"])
@pytest.mark.parametrize("record", [_clean(r) for r in RECORDS], ids=range(len(RECORDS)))
def test_json_properties_give_the_bytes_of_the_packed_record(fmt: str, record: dict[str, Any]) -> None:
    encoder = get_encoder(fmt, write_key="", library_name="mpsender", library_version="1")
    assert isinstance(encoder, SegmentEncoder)
    given = dict(record)
    payload = pack_json_properties(given, NOW)
    assert given == record  # the caller's record is left as it was
    if not record.get("p"):
        assert payload is None  # nothing to gain: packed as usual
        return
    assert payload is not None and record_kind(payload) == "json-properties"
    written_at, mid, packed = read_record(payload)
    assert (written_at, mid) == (NOW, None)
    as_text = unpack(packed, json_text=True)
    assert isinstance(as_text["p"], JsonText)
    assert encoder.encode(as_text) == _expected(encoder, record)
    # a reader that wants values (spool show, mpsender.testing, a sender without orjson)
    # gets the properties decoded, the session's id merged in as the encoder merges it
    decoded = unpack(packed)
    assert isinstance(decoded["p"], dict)
    assert encoder.encode(decoded) == _expected(encoder, record)


@pytest.mark.parametrize("props", [
    {"raw": b"bytes"},
    {1: "int key"},
    {"huge": 2**64},
    {"bad": "\ud800"},
    {"obj": object()},
])
def test_properties_orjson_refuses_are_packed_as_usual(props: dict[Any, Any]) -> None:
    record = _rec(p=props)
    assert pack_json_properties(record, NOW) is None
    assert record["p"] is props


def test_a_record_msgpack_refuses_elsewhere_is_left_to_the_packed_path() -> None:
    """A context with an int key: ormsgpack refuses it, and the packed path, which makes
    such keys strings, decides."""
    record = _rec(p={"a": 1}, c={1: "one"})
    assert pack_json_properties(record, NOW) is None
    encoder = get_encoder("segment", write_key="", library_name="mpsender", library_version="1")
    assert b'"context":{"1":"one"' in encoder.encode(unpack(pack(record)))


def test_another_field_orjson_refuses_takes_the_slow_path_with_the_same_bytes() -> None:
    """bytes in the context are packed as they are and sent as text by the json module's
    path; the properties written as JSON go through it too."""
    encoder = get_encoder("segment", write_key="", library_name="mpsender", library_version="1")
    assert isinstance(encoder, SegmentEncoder)
    record = _rec(p={"a": [1, 2], "b": "é"}, c={"raw": b"bytes"})
    payload = pack_json_properties(dict(record), NOW)
    assert payload is not None
    assert encoder.encode(unpack(read_record(payload)[2], json_text=True)) == _expected(encoder, record)


def test_an_unknown_extension_type_is_a_value_error() -> None:
    import msgpack

    payload = msgpack.packb({"t": "track", "p": msgpack.ExtType(9, b"{}")})
    for json_text in (False, True):
        with pytest.raises(ValueError, match="extension type 9"):
            unpack(payload, json_text=json_text)


@pytest.mark.parametrize(("fmt", "ready"), [("segment", True), ("json", True), ("posthog", False), ("otlp", False),
                                            ("otlp-proto", False)])
def test_only_the_segment_shaped_formats_write_json_properties(fmt: str, ready: bool) -> None:
    """PostHog's and OTLP's events are built from the properties' values in the sender."""
    options = Options(write_key="k", endpoint="http://127.0.0.1:9", format=fmt)
    assert json_properties_ready(options) is ready


def _read_record_of_the_version_before(payload: bytes) -> tuple[float, str, bytes]:
    """What a sender that reads wire records but not JSON properties did with a record
    starting 0xC1 (mpsender/_wire_records.py before JSON properties), for the test below."""
    try:
        mark, written_at, n = struct.unpack_from("<BdH", payload)
    except struct.error as exc:
        raise ValueError(str(exc)) from None
    start = 11 + n
    if mark != 0xC1 or len(payload) <= start:
        raise ValueError("not a whole wire record")
    return written_at, payload[11:start].decode(), payload[start:]


@pytest.mark.parametrize("blob", [10, 70_000])  # under and over the u16 tag's 65,535 bytes
def test_a_sender_of_the_version_before_refuses_json_properties(blob: int) -> None:
    """Only a sender that lists "json-properties" is sent these; if one that does not meets
    one all the same (it took over the spool of a newer sender that was killed), it
    dead-letters it as undecodable, counted, rather than sending the extension's bytes."""
    payload = pack_json_properties(_rec(p={"blob": "x" * blob, "n": 1}), NOW)
    assert payload is not None
    with pytest.raises(ValueError):
        _read_record_of_the_version_before(payload)
