"""Checking a request: its route, its gzip, its JSON and the shape of its batch."""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from ._model import JSON, OTLP_JSON, OTLP_PROTO, POSTHOG, SEGMENT, _Reject


def _route(path: str) -> str | None:
    """The wire format served at ``path``, or ``None`` when no format is."""
    p = path.rstrip("/")
    if p.endswith("/v1/batch"):
        return SEGMENT
    if p.endswith("/batch"):
        return POSTHOG
    if p.endswith("/json"):
        return JSON
    if p.endswith("/v1/logs"):
        return OTLP_JSON  # OTLP_PROTO once its Content-Type says protobuf
    return None


def _text(value: object) -> str | None:
    """A JSON value as an SQLite TEXT column holds it (as ``json_extract`` gives it)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


_fast_decompressobj: Callable[..., Any] | None
try:  # optional (mpsender's ``fast`` extra): ISA-L inflates several times faster than zlib
    from isal import isal_zlib  # type: ignore[import-not-found,unused-ignore]

    _fast_decompressobj = isal_zlib.decompressobj
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    _fast_decompressobj = None


def _gunzip(data: bytes, limit: int) -> bytes:
    """Inflate a (possibly multi-member) gzip body, refusing to grow past ``limit`` bytes.

    A single well-formed member (what every sender here posts) is inflated by ISA-L when
    python-isal is installed, several times faster than zlib (benchmarks/README.md).
    Anything else (several members, a truncated or invalid body, a body over the limit)
    goes through zlib, which decides the answer and its message.
    """
    if _fast_decompressobj is not None:
        d = _fast_decompressobj(wbits=31)
        try:
            chunk = d.decompress(data, limit + 1)
        except Exception:  # noqa: BLE001 - zlib below gives the verdict
            pass
        else:
            if d.eof and len(chunk) <= limit and not d.unused_data.strip(b"\0"):
                return chunk  # type: ignore[no-any-return]
    return _gunzip_zlib(data, limit)


def _gunzip_zlib(data: bytes, limit: int) -> bytes:
    out: list[bytes] = []
    size = 0
    rest = data
    while True:
        d = zlib.decompressobj(wbits=31)
        try:
            chunk = d.decompress(rest, limit + 1 - size)
        except zlib.error as exc:
            raise _Reject(400, f"invalid gzip body: {exc}") from exc
        size += len(chunk)
        out.append(chunk)
        if size > limit:
            raise _Reject(413, f"decompressed body exceeds {limit} bytes")
        if not d.eof:
            raise _Reject(400, "invalid gzip body: truncated")
        rest = d.unused_data
        if not rest.strip(b"\0"):
            return b"".join(out)


# -- reading bodies --------------------------------------------------------------


@dataclass(slots=True)
class _Shape:
    """What validating a body needs to know about it."""

    top: str | None
    """JSON type of the body: ``"object"``, ``"array"``, ``"text"``, ..."""
    batch: str | None
    """JSON type of its ``batch`` member, ``None`` when there is none."""
    count: int
    not_object: int | None
    """Index of the first batch element that is not an object."""
    rejected: int | None
    """Index of the first track event named ``Faults.reject_event``."""
    api_key: object
    sent_at: object
    events: list[dict[str, Any]] | None = None


# One pass of SQLite's JSON parser (C, GIL released) answers every question the
# validation asks, so the 1000 events of a batch never become Python objects.
_SHAPE_SQL: Final = """
SELECT json_type(:body), json_type(:body, '$.batch'), json_extract(:body, '$.api_key'),
       json_extract(:body, :sent), e.n, e.not_object, e.rejected
FROM (SELECT count(*) AS n,
             min(CASE WHEN type != 'object' THEN key END) AS not_object,
             min(CASE WHEN :reject IS NOT NULL AND type = 'object' THEN
                   CASE WHEN json_extract(value, '$.event') = :reject
                         AND coalesce(json_extract(value, '$.type'), :default_type)
                             IN ('track', 'capture')
                        THEN key END
                 END) AS rejected
      FROM json_each(:body, '$.batch')) AS e
"""

# The type of an event that has an ``event`` name and no ``type``: PostHog's
# events are captures, Segment-shaped ones tracks.
_DEFAULT_TYPE: Final[dict[str, str]] = {SEGMENT: "track", JSON: "track", POSTHOG: "capture",
                                         OTLP_JSON: "track", OTLP_PROTO: "track"}


def _event_type(fmt: str, event: dict[str, Any]) -> object:
    typ = event.get("type")
    if typ is None and event.get("event") is not None:
        return _DEFAULT_TYPE[fmt]
    return typ


def _is_rejected(fmt: str, event: dict[str, Any], name: str) -> bool:
    return event.get("event") == name and _event_type(fmt, event) in ("track", "capture")


def _json_type(value: object) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "other"


def _shape_python(text: str, fmt: str, reject: str | None) -> _Shape:
    """The slow path, for what SQLite cannot read (NaN, infinities) or an SQLite without JSON."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        raise _Reject(400, "body is not valid JSON") from None
    return _shape_doc(doc, fmt, reject)


def _shape_doc(doc: object, fmt: str, reject: str | None) -> _Shape:
    """What validation needs to know about a body already decoded by Python (json or orjson)."""
    if not isinstance(doc, dict):
        return _Shape(_json_type(doc), None, 0, None, None, None, None)
    events = doc.get("batch")
    sent_at = doc.get("sent_at" if fmt == POSTHOG else "sentAt")
    if not isinstance(events, list):
        return _Shape("object", None if events is None else _json_type(events), 0, None, None,
                      doc.get("api_key"), sent_at)
    not_object = next((i for i, ev in enumerate(events) if not isinstance(ev, dict)), None)
    rejected = None
    if reject is not None and not_object is None:
        rejected = next((i for i, ev in enumerate(events) if _is_rejected(fmt, ev, reject)), None)
    return _Shape("object", "array", len(events), not_object, rejected, doc.get("api_key"), sent_at,
                  events)
