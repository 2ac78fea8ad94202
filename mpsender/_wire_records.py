"""Records written as the wire's own JSON, so the sender need not decode them.

For the Segment-shaped formats (``segment``, ``json``) with orjson installed (the ``fast``
extra), ``track()`` writes the event as the endpoint will receive it: the sender only
frames it into a request. Decoding a packed record and encoding it again was most of the
sender's CPU per event (benchmarks/README.md, "Request-like rates"); the application had
the event in hand already, and orjson writes it in about the time msgpack packs it.

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

from ._events import convert
from ._options import Options
from ._version import __version__
from ._wire import SegmentEncoder, get_encoder

__all__ = ["FEATURE", "MARK", "encode_record", "is_wire", "json_size", "read_record", "wire_encoder"]

#: the first byte of a wire record: msgpack's one unused byte
MARK = 0xC1
#: what a sender lists in ``sender.json``'s ``"records"`` when it reads wire records
FEATURE = "wire-json"
_HEAD = struct.Struct("<BdH")

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
