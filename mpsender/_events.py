"""Building the compact record in the application process.

This is the hot path of ``track()``: no I/O, nothing allocated that is not sent.
Conversions happen inside msgpack's ``default`` hook, so values that need none cost
nothing; only when packing fails do we walk the event to name the offending key.
"""

from __future__ import annotations

import datetime as _dt
import enum
import itertools
import math
import os
import re
import socket
import threading
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

import msgpack

from ._exceptions import EventTypeError, InvalidEventError, UnserializableError

__all__ = ["FIELD_NAMES", "MessageIds", "convert", "explain_unpackable", "pack", "to_timestamp", "unpack",
           "written_at"]

#: long names of the record's short keys, for error messages
FIELD_NAMES = {"p": "properties", "tr": "traits", "c": "context", "i": "integrations"}

_UTC = _dt.timezone.utc


def convert(value: Any) -> Any:
    """msgpack ``default`` hook: the documented conversions, or TypeError."""
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_UTC)
        return value.isoformat()
    if isinstance(value, _dt.date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise TypeError(f"can not serialize {type(value).__qualname__!r} object")


class MessageIds:
    """The message ids of one process: a random per-process prefix (UUIDv4 version bits
    set) and a counter (variant bits set), 16 bytes that the sender formats as a UUID.
    Far cheaper than ``uuid4()``, and unique across processes: a fork child takes a new
    prefix (:meth:`reset`) before its first event."""

    __slots__ = ("pid", "prefix", "seq")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        prefix = bytearray(os.urandom(8))
        prefix[6] = (prefix[6] & 0x0F) | 0x40
        self.prefix = bytes(prefix)
        self.seq = itertools.count(0x8000_0000_0000_0000)
        self.pid = os.getpid()  # last: a thread that sees the new pid sees the new ids

    def next(self) -> bytes:
        return self.prefix + next(self.seq).to_bytes(8, "big")


#: How deep dicts and lists may nest in a record, the record itself being level 1 (its
#: properties level 2): ormsgpack's limit, so what it packs needs no check. msgpack alone
#: would nest to 1024, deeper than the sender's JSON encoders take.
MAX_DEPTH = 255

#: what msgpack packs without ``convert`` (subclasses included)
_NATIVE = (str, int, float, bool, type(None), bytes, bytearray, memoryview)
_CONTAINERS = (dict, list, tuple)
#: exact classes that are neither containers nor need a look (the common values)
_LEAVES = frozenset({str, int, float, bool, type(None), bytes})


def _plain(record: Mapping[str, Any]) -> bool:
    """True when msgpack may pack ``record`` as it is: every map key an exact str,
    nothing nested past MAX_DEPTH. Walks containers only and copies nothing: after
    ormsgpack refused a record (a str subclass, say), the cheap way to the same bytes."""
    stack: list[tuple[Any, int]] = [(record, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        value, depth = pop()
        if isinstance(value, dict):
            for key in value:
                if key.__class__ is not str:
                    return False
            value = value.values()
        for item in value:
            cls = item.__class__
            if cls in _LEAVES:
                continue
            if cls is dict or cls is list or cls is tuple or isinstance(item, _CONTAINERS):
                if depth >= MAX_DEPTH:  # also where a cycle ends up
                    return False
                push((item, depth + 1))
    return True


def _checked(record: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``record`` as the wire will read it, or UnserializableError naming the
    first problem found by its key path.

    Map keys become the strings the wire sends (``json_key`` of the key as the sender
    unpacks it); values ``convert`` takes are converted. Refused: what ``convert``
    refuses, integers past 64 bits, strings with a lone surrogate (not UTF-8), two keys
    of one object that become the same string, a container inside itself, nesting past
    MAX_DEPTH. Iterative, so no input makes it raise RecursionError.
    """
    out: dict[str, Any] = {}
    # (value, path, depth of its container, the container's ancestors as a chain of
    # (id, parent) pairs, where the copy goes, under which key or index)
    stack: list[tuple[Any, str, int, Any, Any, Any]] = [
        (value, FIELD_NAMES.get(key, key), 1, (id(record), None), out, key) for key, value in record.items()
    ]
    stack.reverse()
    while stack:
        value, path, depth, chain, parent, slot = stack.pop()
        for _ in range(8):  # an Enum whose value is a datetime, and so on
            if isinstance(value, _NATIVE) or isinstance(value, _CONTAINERS):
                break
            try:
                value = convert(value)
            except TypeError:
                raise UnserializableError(path, value) from None
        if isinstance(value, str):
            _check_text(value, path)
        elif isinstance(value, int) and not isinstance(value, bool):
            if not -(2**63) <= value < 2**64:
                raise UnserializableError(path, value)
        elif isinstance(value, _CONTAINERS):
            link = chain
            while link is not None:
                if link[0] == id(value):
                    raise UnserializableError(path, value, "circular reference: the value contains itself")
                link = link[1]
            if depth >= MAX_DEPTH:
                raise UnserializableError(
                    path, value, f"nested deeper than {MAX_DEPTH - 1} levels of dicts and lists")
            chain = (id(value), chain)
            children: list[tuple[Any, str, int, Any, Any, Any]] = []
            if isinstance(value, dict):
                mapping: dict[str, Any] = {}
                origin: dict[str, Any] = {}
                for key, item in value.items():
                    text = _key_text(key, path)
                    key_path = f"{path}.{text}" if key.__class__ is str else f"{path}[{key!r}]"
                    if text in mapping:
                        raise UnserializableError(
                            key_path + " (key)", key,
                            f"becomes the JSON key {text!r}, as key {origin[text]!r} does; "
                            "keys are sent as strings, so one would overwrite the other")
                    origin[text] = key
                    mapping[text] = None  # keeps the order; filled when the child is done
                    children.append((item, key_path, depth + 1, chain, mapping, text))
                value = mapping
            else:
                array: list[Any] = [None] * len(value)
                children.extend((item, f"{path}[{i}]", depth + 1, chain, array, i) for i, item in enumerate(value))
                value = array
            children.reverse()
            stack.extend(children)
        parent[slot] = value
    return out


def _check_text(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UnserializableError(
            path, text, f"string is not valid UTF-8: lone surrogate {text[exc.start]!r} at index {exc.start}"
        ) from None


def _key_text(key: Any, path: str) -> str:
    """The JSON key the wire sends for the map key ``key``."""
    if isinstance(key, str):
        _check_text(key, f"{path}[{key!r}] (key)")
        return key
    try:  # what the sender will unpack: arrays as tuples, datetimes as strings ...
        unpacked = msgpack.unpackb(msgpack.packb(key, default=convert, use_bin_type=True, datetime=False),
                                   raw=False, strict_map_key=False, use_list=False)
    except UnicodeEncodeError:
        raise UnserializableError(f"{path}[{key!r}] (key)", key, "contains a string that is not valid UTF-8") from None
    except (TypeError, ValueError, OverflowError):
        raise UnserializableError(f"{path}[{key!r}] (key)", key) from None
    return json_key(unpacked)


def json_key(key: Any) -> str:
    """The JSON object key for a map key of an unpacked record: a str as it is, bytes
    as UTF-8 (invalid bytes replaced), anything else its ``str()`` (``1`` -> ``"1"``,
    ``True`` -> ``"True"``, ``(1, 2)`` -> ``"(1, 2)"``). ``track()`` turns keys into these
    strings before it writes a record; the sender applies it to records written by
    earlier versions."""
    if isinstance(key, str):
        return key
    if isinstance(key, (bytes, bytearray)):
        return bytes(key).decode("utf-8", "replace")
    return str(key)


def explain_unpackable(record: Mapping[str, Any], exc: Exception) -> Exception:
    """The UnserializableError naming the key path of what ``pack(record)`` refused."""
    if isinstance(exc, UnserializableError):
        return exc
    try:
        _checked(record)
    except UnserializableError as found:
        return found
    return UnserializableError("event", exc)


_local = threading.local()

_fast_packb: Callable[..., bytes] | None
_fast_unpackb: Callable[[bytes], Any] | None
_FAST_OPTIONS: int
try:  # optional (the ``fast`` extra): the same bytes as msgpack, in less time
    import ormsgpack  # type: ignore[import-not-found,unused-ignore]

    _fast_packb = ormsgpack.packb
    _fast_unpackb = ormsgpack.unpackb
    # Everything msgpack would hand to ``default`` goes to ``convert`` here too, so both
    # libraries give the same bytes or the same error: ormsgpack's own encodings of
    # datetimes, dataclasses, UUIDs, enums and subclasses of str/int/dict/list are off.
    _FAST_OPTIONS = (
        ormsgpack.OPT_PASSTHROUGH_DATETIME | ormsgpack.OPT_PASSTHROUGH_DATACLASS
        | ormsgpack.OPT_PASSTHROUGH_UUID | ormsgpack.OPT_PASSTHROUGH_ENUM
        | ormsgpack.OPT_PASSTHROUGH_SUBCLASS
    )
except (ImportError, AttributeError):  # pragma: no cover - not installed, or too old for the options
    _fast_packb = _fast_unpackb = None
    _FAST_OPTIONS = 0


def pack(record: dict[str, Any]) -> bytes:
    """msgpack ``record``, or raise (``explain_unpackable`` names the culprit).

    With ormsgpack installed it packs, in about half the time of msgpack's Packer
    (benchmarks/README.md, "The fast extra"). What it refuses (non-str map keys, subclasses of str or
    dict, nesting past MAX_DEPTH, lone surrogates, what ``convert`` refuses) goes to
    msgpack, after ``_checked`` has copied it with its keys made the strings the wire
    sends (two that become one raise) when it has other keys or nests too deep.

    Without ormsgpack, one msgpack Packer per thread: ``msgpack.packb`` builds a new
    Packer on every call, which doubles the cost (benchmarks/README.md). msgpack takes
    any map key and nests to 1024, and finding out whether a record needs ``_checked``
    would take a walk of every event (a large share of what
    ``track()`` costs); so such records are written as they are, and ``unpack`` makes their
    keys strings in the sender (or dead-letters one with two keys that collide).
    """
    if _fast_packb is None:
        return _pack_msgpack(record)
    try:
        return _fast_packb(record, default=convert, option=_FAST_OPTIONS)
    except Exception:  # noqa: BLE001 - msgpack below decides: same bytes, or the error
        pass
    return _pack_msgpack(record if _plain(record) else _checked(record))


def _pack_msgpack(record: dict[str, Any]) -> bytes:
    # The thread's packer is taken out while it packs and put back after: a signal
    # handler that tracks while ``convert`` runs (the only Python code inside ``pack``)
    # finds none and uses a packer of its own, instead of writing into the middle of
    # the interrupted record. A packer an error interrupted is never put back.
    packer = _local.__dict__.pop("packer", None)
    if packer is None:
        packer = msgpack.Packer(default=convert, use_bin_type=True, datetime=False)
    data: bytes = packer.pack(record)
    _local.packer = packer
    return data


def unpack(payload: bytes) -> Any:
    """A record as the sender reads it (and ``mpsender.testing``, and ``spool show``).

    ormsgpack when installed (faster than msgpack: benchmarks/README.md); msgpack for
    what it refuses (non-str map keys), with arrays as tuples so that an array used as
    a map key stays hashable, and then map keys made the strings the wire sends (as
    ``track()`` makes them when ormsgpack is installed). Raises ``ValueError`` (or a
    subclass) on a malformed record, or one with two keys that become one string.
    """
    if _fast_unpackb is not None:
        try:
            return _fast_unpackb(payload)
        except Exception:  # noqa: BLE001 - msgpack below decides
            pass
    try:
        return msgpack.unpackb(payload, raw=False, use_list=False)  # str (or bytes) keys only
    except ValueError:  # another key (or a malformed record: raised again below)
        record = msgpack.unpackb(payload, raw=False, strict_map_key=False, use_list=False)
    if not isinstance(record, dict):
        return record
    try:  # written without ormsgpack, or by an earlier version: keys made strings here
        return _checked(record)
    except UnserializableError as exc:
        raise ValueError(f"record cannot be sent: {exc}") from None


#: The timestamps an event may carry, in epoch seconds: 0001-01-01T00:00:00.000Z to
#: 9999-12-31T23:59:59.999Z, what ``datetime`` can represent and the wire's four-digit
#: years print (the upper bound is the last millisecond: the wire rounds to one).
MIN_TIMESTAMP = -62135596800.0
MAX_TIMESTAMP = 253402300799.999

# ISO-8601 date and time as people write it (RFC 3339 and the shapes of isoformat()):
# 'T', 't' or a space between date and time, seconds and a fraction optional, 'Z' or an
# offset (+05:30, +0530, +05) or nothing (UTC). A regex, not datetime.fromisoformat:
# that takes more shapes on 3.11+ than on 3.10, and no 'Z' on 3.10.
_ISO = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?"
    r"(?:[Zz]|([+-])(\d{2})(?::?(\d{2}))?)?",
    re.ASCII,
)


def to_timestamp(value: Any) -> float:
    """A user-given timestamp as epoch seconds, the way ``track()`` stores it.

    A datetime (naive = UTC), epoch seconds (int or float), or an ISO-8601 string
    (naive = UTC), between MIN_TIMESTAMP and MAX_TIMESTAMP. Anything else raises here,
    in the caller's process, naming ``timestamp`` and the value: the sender could only
    drop such an event, or send it as given.
    """
    if isinstance(value, _dt.datetime):
        moment: _dt.datetime = value if value.tzinfo is not None else value.replace(tzinfo=_UTC)
        seconds = moment.timestamp()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an int past the float range
            raise _bad_timestamp(value, "is out of range") from None
    elif isinstance(value, str):
        seconds = _parse_iso(value)
    else:
        raise EventTypeError(
            f"timestamp must be a datetime, epoch seconds or an ISO-8601 string, "
            f"not {type(value).__qualname__}"
        )
    if MIN_TIMESTAMP <= seconds <= MAX_TIMESTAMP:
        return seconds
    if math.isfinite(seconds):
        raise _bad_timestamp(value, "is out of range (years 1 to 9999, UTC)")
    raise _bad_timestamp(value, "is not a finite number")


def _parse_iso(text: str) -> float:
    match = _ISO.fullmatch(text)
    if match is None:
        raise _bad_timestamp(text, "is not an ISO-8601 date and time, such as 2026-03-04T05:06:07Z")
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = match.groups()
    try:
        tz = _UTC
        if sign is not None:
            offset = _dt.timedelta(hours=int(off_h), minutes=int(off_m or 0))
            tz = _dt.timezone(-offset if sign == "-" else offset)
        moment = _dt.datetime(int(year), int(month), int(day), int(hour), int(minute),
                              int(second or 0), tzinfo=tz)
    except ValueError as exc:  # month 13, hour 24, an offset of a day or more, ...
        raise _bad_timestamp(text, f"is not a valid date and time ({exc})") from None
    return moment.timestamp() + (float("0." + fraction) if fraction else 0.0)


def _bad_timestamp(value: object, why: str) -> InvalidEventError:
    shown = repr(value)  # repr: a lone surrogate or a control character stays printable
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return InvalidEventError(f"timestamp {shown} {why}")


def host_anonymous_id() -> str:
    """``host:<hostname>``: who an event with no user is attributed to (capture_error(), a
    session, timed() and the logging handler without ids)."""
    return f"host:{socket.gethostname()}"


def require_name(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise EventTypeError(f"{what} must be a str, not {type(value).__qualname__}")
    if not value:
        raise InvalidEventError(f"{what} must not be empty")
    return value


def identity(user_id: Any, anonymous_id: Any) -> tuple[str | None, str | None]:
    """Check the Segment rule: user_id or anonymous_id, strings (ints are converted)."""
    if user_id is None and anonymous_id is None:
        raise InvalidEventError("one of user_id or anonymous_id is required")
    return _id(user_id, "user_id"), _id(anonymous_id, "anonymous_id")


def _id(value: Any, what: str) -> str | None:
    if value is None or value.__class__ is str:
        if value == "":
            raise InvalidEventError(f"{what} must not be empty")
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, (str, uuid.UUID)):
        return str(value)
    raise EventTypeError(f"{what} must be a str or int, not {type(value).__qualname__}")


def written_at(record: Mapping[str, Any], default: float) -> float:
    """When ``track()`` wrote ``record``, in epoch seconds: what an event's age for
    ``max_event_age`` counts from, never the event's own (perhaps historical) timestamp.
    A record with a timestamp of its own (a backfill, or one a before_send hook set)
    carries the moment it was written as ``"w"``; otherwise its ``"ts"`` is that moment.
    ``default`` for a record that says neither (a string timestamp kept as given by an
    older version)."""
    w = record.get("w")
    if type(w) is float:
        return w
    ts = record.get("ts")
    return ts if type(ts) is float else default
