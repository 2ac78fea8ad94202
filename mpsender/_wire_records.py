"""Records written as the wire's own JSON, so the sender need not decode them.

For the Segment-shaped formats (``segment``, ``json``) with orjson installed (the ``fast``
extra), ``track()`` writes the event as the endpoint will receive it: the sender only
frames it into a request. Decoding a packed record and encoding it again was most of the
sender's CPU per event (benchmarks/README.md, "Request-like rates"); the application had
the event in hand already, and orjson writes it in about the time msgpack packs it.

With ``wire_records`` off (the default), ``track()`` still writes the part of the event
that costs most to decode and encode again as JSON: the properties (see
:func:`pack_json_properties` and :data:`JSON_PROPERTIES`); the rest is packed as before.

A record is ``0xC1 <f64 written_at> <u16 n> <n bytes: the message id> <the event's JSON>``
(little-endian). 0xC1 is the one byte msgpack never uses, so no reader takes such a
record for a packed one. An application writes these only while connected to a sender
that says it reads them (``"records"`` in its ``sender.json``, see :data:`FEATURE`), so a
sender of an earlier version sharing the runtime directory never meets one; the JSON is
exactly what the sender would have made of the packed record (the same encoder, the
same conversions), and anything orjson refuses is packed as before.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from ._events import PROPERTIES_EXT, convert, pack
from ._options import Options
from ._version import __version__
from ._wire import SegmentEncoder, get_encoder

__all__ = [
    "FEATURE",
    "JSON_PROPERTIES",
    "MARK",
    "encode_record",
    "is_wire",
    "json_properties_ready",
    "json_size",
    "pack_json_properties",
    "read_record",
    "record_kind",
    "wire_encoder",
]

#: the first byte of a wire record: msgpack's one unused byte
MARK = 0xC1
#: what a sender lists in ``sender.json``'s ``"records"`` when it reads wire records
FEATURE = "wire-json"
#: what a sender lists there when it reads packed records whose properties are JSON
JSON_PROPERTIES = "json-properties"
_HEAD = struct.Struct("<BdH")
#: where a wire record has its id's length, the mark of a packed record with JSON properties
_PROPERTIES_TAG = 0xFFFF

_dumps: Callable[..., bytes] | None
_OPTIONS = 0
try:  # optional (the ``fast`` extra)
    import orjson  # type: ignore[import-not-found,unused-ignore]

    _dumps = orjson.dumps
    # What msgpack hands to ``convert`` goes to it here too (datetimes, dataclasses,
    # subclasses of str/int/dict/list), so the JSON is what the sender would have written
    # from the packed record; what ``convert`` refuses makes dumps raise, and the record is
    # packed instead.
    _OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS
except (ImportError, AttributeError):  # pragma: no cover - exercised where the extra is not installed
    _dumps = None

_Ext: Callable[[int, bytes], Any]
try:  # the same bytes from either library; ormsgpack packs only its own type
    import ormsgpack  # type: ignore[import-not-found,unused-ignore]

    _Ext = ormsgpack.Ext
except (ImportError, AttributeError):  # pragma: no cover - exercised where the extra is not installed
    import msgpack

    _Ext = msgpack.ExtType


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


def json_properties_ready(options: Options) -> bool:
    """Can ``track()`` write the properties of ``options``' events as JSON? For the
    Segment-shaped formats with orjson installed, whose encoder embeds them as they are;
    PostHog's and OTLP's events are built from the properties' values."""
    return _dumps is not None and options.format in ("segment", "json")


def pack_json_properties(record: dict[str, Any], now: float) -> bytes | None:
    """``record`` written at ``now``, packed with its properties as JSON (msgpack extension
    type ``PROPERTIES_EXT``), or None when it must be packed as usual: no properties, a
    value orjson refuses, or a record msgpack refuses (the usual path then raises as it
    always has). The JSON is exactly what the sender's encoder would write from the packed
    properties: the same conversions, and the session's id merged in as it merges it.

    The packed record follows a wire record's header whose id length is
    :data:`_PROPERTIES_TAG`: ``0xC1 <f64 written_at> <u16 0xFFFF> <the packed record>``. A
    sender that reads wire records but not these (the version before) finds no id that
    long in the record and dead-letters it as undecodable, counted, instead of sending the
    extension's bytes as if they were the properties.

    orjson writes the properties in about the time msgpack packs them, and a sender that
    reads the record then need neither decode them nor encode them again: most of what it
    spends on an event (benchmarks/README.md, "Request-like rates")."""
    props = record.get("p")
    if not props or _dumps is None:
        return None
    session = record.get("s")
    shown = {"session_id": session, **props} if session is not None and "session_id" not in props else props
    try:
        text = _dumps(shown, default=convert, option=_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError too
        return None
    record["p"] = _Ext(PROPERTIES_EXT, text)
    try:
        return _HEAD.pack(MARK, now, _PROPERTIES_TAG) + pack(record)
    except Exception:  # noqa: BLE001 - the usual path decides, and names what is wrong
        return None
    finally:
        record["p"] = props


def is_wire(payload: bytes) -> bool:
    return payload[:1] == b"\xc1"


def read_record(payload: bytes) -> tuple[float, str | None, bytes]:
    """``(written_at, message id, the event's JSON)`` of a wire record, or ``(written_at,
    None, the packed record)`` of one with JSON properties (:func:`pack_json_properties`);
    ValueError if it is not a whole one."""
    try:
        mark, written_at, n = _HEAD.unpack_from(payload)
    except struct.error as exc:
        raise ValueError(f"a wire record too short for its header: {exc}") from None
    if n == _PROPERTIES_TAG and mark == MARK:
        return written_at, None, payload[_HEAD.size:]
    start = _HEAD.size + n
    if mark != MARK or len(payload) <= start:
        raise ValueError("not a whole wire record")
    return written_at, payload[_HEAD.size:start].decode(), payload[start:]


def record_kind(payload: bytes) -> str:
    """How ``track()`` wrote a record: ``wire-json``, ``json-properties`` or ``packed``."""
    if payload[:1] != b"\xc1":
        return "packed"
    return "json-properties" if payload[9:11] == b"\xff\xff" else "wire-json"


def json_size(payload: bytes) -> int:
    """Bytes of the event's JSON in a wire record (what ``max_message_bytes`` bounds)."""
    n: int = _HEAD.unpack_from(payload)[2]
    return len(payload) - _HEAD.size - n
