"""Building the compact record in the application process.

This is the hot path of ``track()``: no I/O, nothing allocated that is not sent.
Conversions happen inside msgpack's ``default`` hook, so values that need none cost
nothing; only when packing fails do we walk the event to name the offending key.
"""

from __future__ import annotations

import datetime as _dt
import enum
import hashlib
import itertools
import os
import re
import sys
import sysconfig
import threading
import traceback
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from types import TracebackType
from typing import Any

import msgpack

from ._exceptions import EventTypeError, InvalidEventError, UnserializableError

__all__ = ["FIELD_NAMES", "MessageIds", "convert", "error_properties", "explain_unpackable", "pack", "to_timestamp", "unpack",
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
        self.pid = os.getpid()
        prefix = bytearray(os.urandom(8))
        prefix[6] = (prefix[6] & 0x0F) | 0x40
        self.prefix = bytes(prefix)
        self.seq = itertools.count(0x8000_0000_0000_0000)

    def next(self) -> bytes:
        return self.prefix + next(self.seq).to_bytes(8, "big")


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
    """msgpack ``record``.

    With ormsgpack installed it packs (0.33 µs against 0.70 µs for msgpack's Packer on
    the benchmark's record); what it refuses (non-str map keys, subclasses of str or
    dict) goes to msgpack, which gives the bytes or raises the error it always did.
    Without it, one msgpack Packer per thread: half the cost of ``msgpack.packb``,
    which builds a new Packer on every call (0.77 µs against 1.57 µs).
    """
    if _fast_packb is not None:
        try:
            return _fast_packb(record, default=convert, option=_FAST_OPTIONS)
        except Exception:  # noqa: BLE001 - msgpack below decides: same bytes, or the error
            pass
    return _pack_msgpack(record)


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

    ormsgpack when installed (1.0 µs against 1.7 µs per benchmark record); msgpack for
    what it refuses (non-str map keys), with arrays as tuples so that an array used as
    a map key stays hashable. Raises ``ValueError`` (or a subclass) on a malformed record.
    """
    if _fast_unpackb is not None:
        try:
            return _fast_unpackb(payload)
        except Exception:  # noqa: BLE001 - msgpack below decides
            pass
    return msgpack.unpackb(payload, raw=False, strict_map_key=False, use_list=False)


def to_timestamp(value: Any) -> float | str:
    """A user-given timestamp: datetime (naive = UTC), epoch seconds, or an ISO string."""
    if isinstance(value, _dt.datetime):
        moment: _dt.datetime = value if value.tzinfo is not None else value.replace(tzinfo=_UTC)
        return moment.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value:
        return value
    raise EventTypeError(
        f"timestamp must be a datetime, epoch seconds or an ISO-8601 string, "
        f"not {type(value).__qualname__}"
    )


_NATIVE = (str, int, float, bool, type(None), bytes)


def explain_unpackable(record: Mapping[str, Any], exc: Exception) -> Exception:
    """Find the key path of the first value msgpack cannot carry."""
    for short, long_name in FIELD_NAMES.items():
        if short in record:
            found = _find_bad(record[short], long_name)
            if found is not None:
                path, value = found
                return UnserializableError(path, value)
    return UnserializableError("event", exc)


def _find_bad(value: Any, path: str) -> tuple[str, Any] | None:
    if isinstance(value, int) and not isinstance(value, bool):
        if not -(2**63) <= value < 2**64:
            return path, value
        return None
    if isinstance(value, _NATIVE):
        return None
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool)):
                return f"{path}[{key!r}] (key)", key
            found = _find_bad(item, f"{path}.{key}" if isinstance(key, str) else f"{path}[{key!r}]")
            if found is not None:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _find_bad(item, f"{path}[{index}]")
            if found is not None:
                return found
        return None
    try:
        converted = convert(value)
    except TypeError:
        return path, value
    return _find_bad(converted, path)


# --- capture_error ---------------------------------------------------------------

#: frames kept in an error event's stack (innermost last, as Python prints them)
MAX_STACK_FRAMES = 30
_MAX_MESSAGE = 1000
_SHAPE = re.compile(
    r"""0x[0-9a-fA-F]+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"""
    r"""|'[^']*'|"[^"]*"|\d+(?:\.\d+)?"""
)
_LIBRARY_DIRS = tuple(
    {os.path.realpath(p) for p in (sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")) if p}
)


def message_shape(message: str) -> str:
    """The message with numbers, hex, UUIDs and quoted strings replaced: stable across occurrences."""
    return _SHAPE.sub("<*>", message)[:200]


def _in_app(filename: str) -> bool:
    if filename.startswith("<"):
        return False
    real = os.path.realpath(filename)
    return not any(real.startswith(d + os.sep) for d in _LIBRARY_DIRS) and "site-packages" not in real


def error_properties(exc: BaseException) -> dict[str, Any]:
    """The properties of a ``$error`` event: type, message, bounded stack, fingerprint."""
    if not isinstance(exc, BaseException):
        raise EventTypeError(f"capture_error() takes an exception, not {type(exc).__qualname__}")
    etype = type(exc)
    type_name = etype.__qualname__ if etype.__module__ == "builtins" else f"{etype.__module__}.{etype.__qualname__}"
    message = str(exc)[:_MAX_MESSAGE]
    tb: TracebackType | None = exc.__traceback__
    frames = traceback.extract_tb(tb)[-MAX_STACK_FRAMES:] if tb is not None else []
    stack = [
        {"filename": f.filename, "lineno": f.lineno, "function": f.name, "in_app": _in_app(f.filename)}
        for f in frames
    ]
    anchor = next((f for f in reversed(stack) if f["in_app"]), stack[-1] if stack else None)
    anchor_text = f"{_module_of(str(anchor['filename']))}:{anchor['function']}" if anchor else ""
    fingerprint = hashlib.sha1(
        f"{type_name}\0{message_shape(message)}\0{anchor_text}".encode(), usedforsecurity=False
    ).hexdigest()[:16]
    return {
        "error_type": type_name,
        "error_message": message,
        "stack": stack,
        "fingerprint": fingerprint,
        "in_app_frame": anchor_text,
    }


def _module_of(filename: str) -> str:
    """A path-independent name for a file: the module name where sys.path knows it."""
    real = os.path.realpath(filename)
    best = ""
    for entry in sys.path:
        root = os.path.realpath(entry or os.getcwd())
        if real.startswith(root + os.sep) and len(root) > len(best):
            best = root
    rel = os.path.relpath(real, best) if best else os.path.basename(real)
    return rel[:-3].replace(os.sep, ".") if rel.endswith(".py") else rel


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
