"""Records written as the wire's own JSON, so the sender need not decode them.

For the Segment-shaped formats (``segment``, ``json``) with orjson installed (the ``fast``
extra), ``track()`` writes the event as the endpoint will receive it: the sender only
frames it into a request. Decoding a packed record and encoding it again was most of the
sender's CPU per event (benchmarks/README.md, "Request-like rates"); the application had
the event in hand already, and orjson writes it in about the time msgpack packs it.

With ``wire_records`` off (the default), ``track()`` still writes its record with orjson when
the sender reads it so: a JSON record (:func:`encode_json_record`), whose properties the
sender embeds as they are, and the rest of which it reads back with one ``orjson.loads``.

A record is ``0xC1 <f64 written_at> <u16 n> <n bytes: the message id> <the event's JSON>``
(little-endian). 0xC1 is the one byte msgpack never uses, so no reader takes such a
record for a packed one. An application writes these only while connected to a sender
that says it reads them (``"records"`` in its ``sender.json``, see :data:`FEATURE`), so a
sender of an earlier version sharing the runtime directory never meets one; the JSON is
exactly what the sender would have made of the packed record (the same encoder, the
same conversions), and anything orjson refuses is packed as before.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any

from ._events import JsonText, convert
from ._options import Options
from ._version import __version__
from ._wire import SegmentEncoder, format_message_id, get_encoder

__all__ = [
    "FEATURE",
    "JSON_HEAD_SIZE",
    "JSON_RECORDS",
    "MARK",
    "encode_json_record",
    "encode_record",
    "is_wire",
    "json_records_ready",
    "json_size",
    "read_json_record",
    "read_record",
    "record_kind",
    "wire_encoder",
]

#: the first byte of a wire record: msgpack's one unused byte
MARK = 0xC1
#: what a sender lists in ``sender.json``'s ``"records"`` when it reads wire records
FEATURE = "wire-json"
#: what a sender lists there when it reads JSON records
JSON_RECORDS = "json-records"
_HEAD = struct.Struct("<BdH")
#: a JSON record's header: the mark, written_at, :data:`_JSON_TAG` where a wire record has
#: its id's length, and the length of the record's JSON without its properties
_JSON_HEAD = struct.Struct("<BdHI")
JSON_HEAD_SIZE = _JSON_HEAD.size
_JSON_TAG = 0xFFFE

_dumps: Callable[..., bytes] | None
_loads: Callable[[bytes], Any] = json.loads
_OPTIONS = 0
try:  # optional (the ``fast`` extra)
    import orjson  # type: ignore[import-not-found,unused-ignore]

    _dumps = orjson.dumps
    _loads = orjson.loads
    # What msgpack hands to ``convert`` goes to it here too (datetimes, dataclasses,
    # subclasses of str/int/dict/list), so the JSON is what the sender would have written
    # from the packed record; what ``convert`` refuses makes dumps raise, and the record is
    # packed instead.
    _OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS
except (ImportError, AttributeError):  # pragma: no cover - exercised where the extra is not installed
    _dumps = None


def wire_encoder(options: Options) -> SegmentEncoder | None:
    """The encoder whose events ``track()`` can write as they are, or None: another format
    (PostHog's and OTLP's events are built from the whole record in the sender), or no
    orjson."""
    if _dumps is None or options.format not in ("segment", "json"):
        return None
    encoder = get_encoder(options.format, write_key="", library_name="mpsender", library_version=__version__)
    return encoder if isinstance(encoder, SegmentEncoder) else None


def encode_record(encoder: SegmentEncoder, record: dict[str, Any], now: float) -> bytes | None:
    """``record`` as a wire record written at ``now``; None when it must be packed instead
    (orjson refuses a value, or the record is malformed: the packed path decides, and
    raises or dead-letters as it always has)."""
    try:
        event = encoder.event(record)
        body: bytes = _dumps(event, default=convert, option=_OPTIONS)  # type: ignore[misc]
        mid: bytes = event["messageId"].encode()
        head: bytes = _HEAD.pack(MARK, now, len(mid))
        return head + mid + body
    except (TypeError, ValueError, KeyError, OverflowError, struct.error):
        return None


def json_records_ready(options: Options) -> bool:
    """Can ``track()`` write JSON records for ``options``? For the Segment-shaped formats
    with orjson installed, whose encoder embeds the properties as they are; PostHog's and
    OTLP's events are built from the properties' values."""
    return _dumps is not None and options.format in ("segment", "json")


def encode_json_record(record: dict[str, Any], now: float) -> bytes | None:
    """``record`` written at ``now`` as a JSON record, or None when it must be packed: a
    value orjson refuses, or no orjson (the packed path then converts, sends or refuses as
    it always has). ``0xC1 <f64 written_at> <u16 0xFFFE> <u32 n> <n bytes: the record's
    JSON without its properties> <the properties' JSON, if any>`` (little-endian).

    The properties' JSON is exactly what the sender's encoder would write from the packed
    record: the same conversions, the session's id merged in as it merges it; the message
    id is formatted here, as the encoder would. One library writes the record, as one
    packs it otherwise: a call after a sleep, with cold caches, costs about the same as
    packing (touching orjson's code as well as ormsgpack's cost far more:
    benchmarks/README.md, "Tried and not kept"), and the sender never builds the
    properties' objects nor encodes them again.

    A sender that reads wire records but not these (the version before) finds no id
    65,534 bytes long in the record and dead-letters it as undecodable, counted, rather
    than sending a part of it as an event."""
    if _dumps is None:
        return None
    given = record.pop("p", None)  # (put back below: the caller's record is left as it was)
    mid = record.get("m")
    try:
        if mid is not None and mid.__class__ is not str:
            record["m"] = format_message_id(mid)
        head = _dumps(record, default=convert, option=_OPTIONS)
        if given is None:
            return _JSON_HEAD.pack(MARK, now, _JSON_TAG, len(head)) + head
        session = record.get("s")
        props = given if session is None or "session_id" in given else {"session_id": session, **given}
        return _JSON_HEAD.pack(MARK, now, _JSON_TAG, len(head)) + head + _dumps(props, default=convert, option=_OPTIONS)
    except (TypeError, ValueError, OverflowError, struct.error):  # orjson.JSONEncodeError is a TypeError
        return None
    finally:
        if mid is not None:
            record["m"] = mid
        if given is not None:
            record["p"] = given


def read_json_record(payload: bytes) -> tuple[float, dict[str, Any]] | None:
    """``(written_at, the record)`` of a JSON record, its properties as :class:`JsonText`;
    None if ``payload`` is not one; ValueError if it is a torn or malformed one."""
    if payload[9:11] != b"\xfe\xff" or payload[:1] != b"\xc1":
        return None
    try:
        _mark, written_at, _tag, n = _JSON_HEAD.unpack_from(payload)
    except struct.error as exc:
        raise ValueError(f"a JSON record too short for its header: {exc}") from None
    end = _JSON_HEAD.size + n
    if len(payload) < end:
        raise ValueError("not a whole JSON record")
    record = _loads(payload[_JSON_HEAD.size:end])
    if not isinstance(record, dict):
        raise ValueError(f"a JSON record is an object, not {type(record).__name__}")
    if len(payload) > end:
        record["p"] = JsonText(payload[end:])
    return written_at, record


def record_kind(payload: bytes) -> str:
    """How ``track()`` wrote a record: ``wire-json``, ``json`` or ``packed``."""
    if payload[:1] != b"\xc1":
        return "packed"
    return "json" if payload[9:11] == b"\xfe\xff" else "wire-json"


def is_wire(payload: bytes) -> bool:
    return payload[:1] == b"\xc1"


def read_record(payload: bytes) -> tuple[float, str, bytes]:
    """``(written_at, message id, the event's JSON)`` of a wire record; ValueError if it is
    not a whole one."""
    try:
        mark, written_at, n = _HEAD.unpack_from(payload)
    except struct.error as exc:
        raise ValueError(f"a wire record too short for its header: {exc}") from None
    start = _HEAD.size + n
    if mark != MARK or len(payload) <= start:
        raise ValueError("not a whole wire record")
    return written_at, payload[_HEAD.size:start].decode(), payload[start:]


def json_size(payload: bytes) -> int:
    """Bytes of the event's JSON in a wire record (what ``max_message_bytes`` bounds)."""
    n: int = _HEAD.unpack_from(payload)[2]
    return len(payload) - _HEAD.size - n
