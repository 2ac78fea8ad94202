"""Protobuf for the few OTLP messages mpsender speaks, without a protobuf runtime.

mpsender's runtime dependencies stay httpx, msgpack and psutil, so ``format="otlp-proto"``
cannot import the generated classes of opentelemetry-proto. It needs little of them: the
messages of an ``ExportLogsServiceRequest`` (and its response, and ``google.rpc.Status``),
whose fields are strings, bytes, varints, doubles, fixed64 timestamps and nested messages.
Each message is a table (field number -> name, kind, nested table); one encoder and one
decoder walk the tables. Both speak the messages in OTLP's JSON form (lowerCamelCase names,
64-bit integers as decimal strings, enums as numbers, bytes as base64, trace and span ids as
hex), so the JSON and the protobuf encodings share one mapping from events
(``_otlp.py``). The tests decode what this writes with opentelemetry-proto's own classes.

Decoding (the dev collector, the dead-letter file) skips fields it does not know, as
protobuf does, and raises ``ValueError`` on anything malformed: a truncated field, a wire
type that contradicts the table, invalid UTF-8, nesting deeper than :data:`MAX_NESTING`.
"""

from __future__ import annotations

import base64
import struct
from typing import Any, Final

#: deepest message nesting decode() follows (protobuf's own default limit is 100)
MAX_NESTING: Final = 100

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_U64: Final = (1 << 64) - 1

# (JSON name, kind, nested table or None, repeated); a table lists its fields by number, the
# order protobuf's own serializers write them in
Field = tuple[str, str, "dict[int, Field] | None", bool]
Table = dict[int, Field]

#: the wire type of each kind
_WIRE: Final = {
    "string": _LEN, "bytes": _LEN, "hex": _LEN, "message": _LEN,
    "int64": _VARINT, "uint32": _VARINT, "int32": _VARINT, "enum": _VARINT, "bool": _VARINT,
    "double": _I64, "fixed64": _I64, "fixed32": _I32,
}

ANY_VALUE: Table = {}
KEY_VALUE: Table = {1: ("key", "string", None, False), 2: ("value", "message", ANY_VALUE, False)}
ARRAY_VALUE: Table = {1: ("values", "message", ANY_VALUE, True)}
KEY_VALUE_LIST: Table = {1: ("values", "message", KEY_VALUE, True)}
ANY_VALUE.update({
    1: ("stringValue", "string", None, False),
    2: ("boolValue", "bool", None, False),
    3: ("intValue", "int64", None, False),
    4: ("doubleValue", "double", None, False),
    5: ("arrayValue", "message", ARRAY_VALUE, False),
    6: ("kvlistValue", "message", KEY_VALUE_LIST, False),
    7: ("bytesValue", "bytes", None, False),
})
RESOURCE: Table = {
    1: ("attributes", "message", KEY_VALUE, True),
    2: ("droppedAttributesCount", "uint32", None, False),
}
SCOPE: Table = {
    1: ("name", "string", None, False),
    2: ("version", "string", None, False),
    3: ("attributes", "message", KEY_VALUE, True),
    4: ("droppedAttributesCount", "uint32", None, False),
}
LOG_RECORD: Table = {
    1: ("timeUnixNano", "fixed64", None, False),
    2: ("severityNumber", "enum", None, False),
    3: ("severityText", "string", None, False),
    5: ("body", "message", ANY_VALUE, False),
    6: ("attributes", "message", KEY_VALUE, True),
    7: ("droppedAttributesCount", "uint32", None, False),
    8: ("flags", "fixed32", None, False),
    9: ("traceId", "hex", None, False),
    10: ("spanId", "hex", None, False),
    11: ("observedTimeUnixNano", "fixed64", None, False),
    12: ("eventName", "string", None, False),
}
SCOPE_LOGS: Table = {
    1: ("scope", "message", SCOPE, False),
    2: ("logRecords", "message", LOG_RECORD, True),
    3: ("schemaUrl", "string", None, False),
}
RESOURCE_LOGS: Table = {
    1: ("resource", "message", RESOURCE, False),
    2: ("scopeLogs", "message", SCOPE_LOGS, True),
    3: ("schemaUrl", "string", None, False),
}
EXPORT_REQUEST: Table = {1: ("resourceLogs", "message", RESOURCE_LOGS, True)}
PARTIAL_SUCCESS: Table = {
    1: ("rejectedLogRecords", "int64", None, False),
    2: ("errorMessage", "string", None, False),
}
EXPORT_RESPONSE: Table = {1: ("partialSuccess", "message", PARTIAL_SUCCESS, False)}
#: google.rpc.Status, the body of an OTLP error answer (its ``details`` are skipped)
STATUS: Table = {1: ("code", "int32", None, False), 2: ("message", "string", None, False)}


# -- encoding ----------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    """``n`` (negative: as its 64-bit two's complement, as protobuf writes an int64)."""
    n &= _U64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def tag(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def length_delimited(number: int, data: bytes) -> bytes:
    """One length-delimited field: a nested message, a string, bytes."""
    return tag(number, _LEN) + varint(len(data)) + data


def encode(table: Table, message: dict[str, Any]) -> bytes:
    """``message``, in OTLP's JSON form, as protobuf bytes; fields in table order.

    Every field present in the dict is written, a default value too (a oneof member such
    as ``{"intValue": "0"}`` must be, to say which member is set).
    """
    out: list[bytes] = []
    for number, (name, kind, nested, repeated) in table.items():
        value = message.get(name)
        if value is None:
            continue
        for item in value if repeated else (value,):
            out.append(_field(number, kind, nested, item))
    return b"".join(out)


def _field(number: int, kind: str, nested: Table | None, value: Any) -> bytes:
    if kind == "message":
        assert nested is not None
        return length_delimited(number, encode(nested, value))
    if kind == "string":
        return length_delimited(number, value.encode("utf-8", "replace"))
    if kind == "bytes":
        return length_delimited(number, base64.b64decode(value))
    if kind == "hex":
        return length_delimited(number, bytes.fromhex(value))
    if kind == "double":
        return tag(number, _I64) + struct.pack("<d", float(value))
    if kind == "fixed64":
        return tag(number, _I64) + struct.pack("<Q", int(value))
    if kind == "fixed32":
        return tag(number, _I32) + struct.pack("<I", int(value))
    # int64 (a decimal string in JSON), uint32, int32, enum, bool
    return tag(number, _VARINT) + varint(int(value))


# -- decoding ----------------------------------------------------------------------------------


def decode(table: Table, data: bytes | memoryview, _depth: int = 0) -> dict[str, Any]:
    """Protobuf bytes of the message ``table`` describes, in OTLP's JSON form; ``ValueError``
    if malformed. Unknown fields are skipped."""
    if _depth > MAX_NESTING:
        raise ValueError(f"messages nested deeper than {MAX_NESTING}")
    view = memoryview(data)
    out: dict[str, Any] = {}
    pos, end = 0, len(view)
    while pos < end:
        key, pos = _read_varint(view, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == _VARINT:
            raw, pos = _read_varint(view, pos)
            value: Any = raw
        elif wire == _I64:
            if pos + 8 > end:
                raise ValueError("truncated 64-bit field")
            value = bytes(view[pos:pos + 8])
            pos += 8
        elif wire == _I32:
            if pos + 4 > end:
                raise ValueError("truncated 32-bit field")
            value = bytes(view[pos:pos + 4])
            pos += 4
        elif wire == _LEN:
            size, pos = _read_varint(view, pos)
            if pos + size > end:
                raise ValueError("truncated length-delimited field")
            value = view[pos:pos + size]
            pos += size
        else:
            raise ValueError(f"unsupported wire type {wire}")
        spec = table.get(number)
        if spec is None:
            continue  # a field of a newer schema: skipped, as protobuf does
        name, kind, nested, repeated = spec
        if _WIRE[kind] != wire:
            raise ValueError(f"field {name!r} has wire type {wire}, expected {_WIRE[kind]}")
        item = _value(kind, nested, value, _depth)
        if repeated:
            out.setdefault(name, []).append(item)
        else:
            out[name] = item  # the last one wins, as in protobuf
    return out


def _value(kind: str, nested: Table | None, value: Any, depth: int) -> Any:
    if kind == "message":
        assert nested is not None
        return decode(nested, value, depth + 1)
    if kind == "string":
        try:
            return str(value, "utf-8")
        except UnicodeDecodeError:
            raise ValueError("a string field is not valid UTF-8") from None
    if kind == "bytes":
        return base64.b64encode(value).decode("ascii")
    if kind == "hex":
        return bytes(value).hex()
    if kind == "double":
        return struct.unpack("<d", value)[0]
    if kind == "fixed64":
        return str(struct.unpack("<Q", value)[0])
    if kind == "fixed32":
        return struct.unpack("<I", value)[0]
    if kind == "int64":
        return str(value - (1 << 64) if value >> 63 else value)
    if kind == "int32":
        value &= 0xFFFFFFFF
        return value - (1 << 32) if value >> 31 else value
    if kind == "bool":
        return bool(value)
    return value  # uint32, enum


def _read_varint(view: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    end = len(view)
    while True:
        if pos >= end:
            raise ValueError("truncated varint")
        byte = view[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result & _U64, pos
        shift += 7
        if shift >= 70:
            raise ValueError("varint longer than 10 bytes")
