"""Records written as the wire's JSON (issue 15): byte for byte what the sender would have
made of the packed record, or None where the packed path must decide."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import math
import uuid
from typing import Any

import pytest

from mpsender._events import MessageIds, pack, unpack
from mpsender._options import Options
from mpsender._wire import SegmentEncoder, get_encoder
from mpsender._wire_records import encode_record, is_wire, json_size, read_record, wire_encoder

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
