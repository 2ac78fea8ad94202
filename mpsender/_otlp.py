"""OTLP/HTTP logs: every event one LogRecord, posted to ``<endpoint>/v1/logs``.

Runs in the sender process only (and in ``mpsender spool show``). Two encoders share one
mapping, from an internal record to a LogRecord in OTLP's JSON form:

* ``format="otlp"``: OTLP/HTTP's JSON encoding (``Content-Type: application/json``);
* ``format="otlp-proto"``: OTLP/HTTP's protobuf encoding (``application/x-protobuf``),
  written by ``_otlp_proto.py``'s small encoder: no protobuf runtime.

One request is one ``ExportLogsServiceRequest``: one ResourceLogs (``service.name``,
``host.name``) holding one ScopeLogs (``{"name": "mpsender", "version": ...}``) whose
LogRecords are the batch's events. The LogRecord of an event (docs/destinations.md,
"OTLP", has the table):

* ``eventName`` and the ``event.name`` attribute: the track event's name; for the other
  calls their Segment type (``identify``, ``group``, ``alias``, ``page``, ``screen``);
* ``timeUnixNano``: the event's timestamp; ``observedTimeUnixNano``: when ``track()``
  wrote it (the same instant unless the caller gave a timestamp);
* ``severityNumber``/``severityText``: INFO (9), except a ``$error`` event: ERROR (17),
  or what its ``severity`` property says;
* a ``$error`` event from ``capture_error()`` also carries ``exception.type``,
  ``exception.message`` and ``exception.stacktrace`` (semantic conventions), from its
  ``error_type``, ``error_message`` and ``stack`` properties;
* attributes: the properties (or traits) under their own keys, each context field as
  ``context.<key>``, then ``log.record.uid`` (the message id), ``user.id``,
  ``enduser.pseudo.id`` (the anonymous id), ``mpsender.type`` and, per type,
  ``mpsender.name``, ``mpsender.category``, ``mpsender.group_id``,
  ``mpsender.previous_id``. These last win over a property of the same key.

Values become AnyValues: str, bool, int (one outside int64 as its decimal string), float
(NaN and infinities, which the JSON formats send as null, as an empty AnyValue), None (an
empty AnyValue), bytes (``bytesValue``), dicts (``kvlistValue``), lists (``arrayValue``),
anything else its ``str()``. Containers nested deeper than :data:`MAX_VALUE_DEPTH` are
sent as their JSON text, so that no OTLP receiver's recursion limit refuses the batch.
"""

from __future__ import annotations

import base64
import json
import math
import os
import socket
import sys
from collections.abc import Mapping
from typing import Any, Final

from . import _otlp_proto as pb
from ._events import json_key, to_timestamp
from ._wire import (
    WireRequest,
    _check_path,
    _merge_headers,
    _require,
    _to_json_bytes,
    empty_body_bytes,
    format_message_id,
    format_timestamp,
)

__all__ = ["MAX_VALUE_DEPTH", "OtlpJsonEncoder", "OtlpProtoEncoder", "any_value", "default_service_name"]

#: dicts and lists nested deeper than this in a value are sent as their JSON text
MAX_VALUE_DEPTH: Final = 16
_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1
_MAX_NANOS: Final = (1 << 64) - 1

#: OTel severity numbers by level name, for a ``$error`` event's ``severity`` property
SEVERITY: Final[dict[str, tuple[int, str]]] = {
    "trace": (1, "TRACE"), "debug": (5, "DEBUG"), "info": (9, "INFO"),
    "warn": (13, "WARN"), "warning": (13, "WARN"), "error": (17, "ERROR"),
    "fatal": (21, "FATAL"), "critical": (21, "FATAL"),
}
_INFO: Final = SEVERITY["info"]
_ERROR: Final = SEVERITY["error"]
ERROR_EVENT: Final = "$error"

# The attributes the encoder sets itself (they win over a property of the same key).
UID, USER_ID, ANONYMOUS_ID, EVENT_NAME = "log.record.uid", "user.id", "enduser.pseudo.id", "event.name"
#: semantic conventions' session id: the mpsender.session() an event was tracked in
SESSION_ID = "session.id"
TYPE, NAME, CATEGORY, GROUP_ID, PREVIOUS_ID = (
    "mpsender.type", "mpsender.name", "mpsender.category", "mpsender.group_id", "mpsender.previous_id")
TIMESTAMP = "mpsender.timestamp"  # an event time no timeUnixNano can carry (before 1970, past 2554)
CONTEXT_PREFIX: Final = "context."
#: semantic conventions' exception attributes, on a ``$error`` event from capture_error()
EXCEPTION_TYPE, EXCEPTION_MESSAGE, EXCEPTION_STACKTRACE = "exception.type", "exception.message", "exception.stacktrace"


def default_service_name(environ: Mapping[str, str] | None = None, argv: list[str] | None = None,
                         fallback: str | None = None) -> str:
    """``OTEL_SERVICE_NAME``, else ``fallback`` (the resource attributes' ``service.name``,
    which OTEL_SERVICE_NAME overrides in OTel's SDKs too), else the program's name
    (``gunicorn``, ``celery``, ``app`` for ``app.py`` or ``python -m app``), else
    ``unknown_service`` (as OTel's SDKs say it)."""
    env = os.environ if environ is None else environ
    given = env.get("OTEL_SERVICE_NAME", "").strip()
    if given:
        return given
    if fallback:
        return fallback
    args = sys.argv if argv is None else argv
    program = args[0] if args else ""
    if program in ("", "-c", "-"):
        return "unknown_service"
    base = os.path.basename(program)
    if base in ("__main__.py", "__main__"):
        base = os.path.basename(os.path.dirname(program)) or base
    return base[:-3] if base.endswith(".py") else base


def exception_attributes(attrs: dict[str, Any]) -> None:
    """A ``$error`` event's ``exception.type``, ``exception.message`` and
    ``exception.stacktrace`` (OTel's semantic conventions for exceptions, which log backends
    group and show errors by), from what ``capture_error()`` puts in its properties, beside
    them. Properties of those names, or properties of another shape (a ``$error`` tracked by
    hand), are left as they are."""
    kind, message, stack = attrs.get("error_type"), attrs.get("error_message"), attrs.get("stack")
    if not isinstance(kind, str):
        return
    attrs.setdefault(EXCEPTION_TYPE, kind)
    if isinstance(message, str):
        attrs.setdefault(EXCEPTION_MESSAGE, message)
    if isinstance(stack, (list, tuple)) and stack:
        lines = ["Traceback (most recent call last):"]
        for frame in stack:
            if isinstance(frame, dict):
                lines.append(f'  File "{frame.get("filename")}", line {frame.get("lineno")}, '
                             f'in {frame.get("function")}')
        lines.append(f"{kind}: {message}" if message else kind)
        attrs.setdefault(EXCEPTION_STACKTRACE, "\n".join(lines))


def any_value(value: Any, depth: int = 0) -> dict[str, Any]:
    """A Python value as an OTLP AnyValue, in OTLP's JSON form."""
    cls = value.__class__
    if cls is str:
        return {"stringValue": value}
    if cls is bool:
        return {"boolValue": value}
    if cls is int:
        return {"intValue": str(value)} if _INT64_MIN <= value <= _INT64_MAX else {"stringValue": str(value)}
    if cls is float:
        return {"doubleValue": value} if math.isfinite(value) else {}
    if value is None:
        return {}
    if isinstance(value, dict):
        if depth >= MAX_VALUE_DEPTH:
            return {"stringValue": _to_json_bytes(value).decode("utf-8")}
        return {"kvlistValue": {"values": [{"key": json_key(k), "value": any_value(v, depth + 1)}
                                           for k, v in value.items()]}}
    if isinstance(value, (list, tuple)):
        if depth >= MAX_VALUE_DEPTH:
            return {"stringValue": _to_json_bytes(value).decode("utf-8")}
        return {"arrayValue": {"values": [any_value(v, depth + 1) for v in value]}}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"bytesValue": base64.b64encode(value).decode("ascii")}
    # subclasses of the plain types, then anything else
    for plain in (bool, str, int, float):
        if isinstance(value, plain):
            return any_value(plain(value), depth)
    return {"stringValue": str(value)}


def _nanos(ts: float) -> int | None:
    """Epoch seconds as the integer nanoseconds of a fixed64, to the microsecond (what a
    float of today's epoch seconds holds); None when a fixed64 cannot hold it."""
    nanos = round(ts * 1_000_000) * 1000
    return nanos if 0 <= nanos <= _MAX_NANOS else None


def _severity(record: Mapping[str, Any]) -> tuple[int, str]:
    if record.get("e") != ERROR_EVENT:
        return _INFO
    props = record.get("p")
    level = props.get("severity") if isinstance(props, dict) else None
    if isinstance(level, str):
        return SEVERITY.get(level.strip().lower(), _ERROR)
    return _ERROR


class OtlpJsonEncoder:
    """OTLP/HTTP JSON: ``POST /v1/logs``, ``{"resourceLogs": [...]}``, no auth by default.

    ``Authorization: Bearer <key>`` is sent only when the key is not empty (as for the
    ``json`` format); ``headers`` override it and add others (an OTLP vendor's own).
    """

    __slots__ = ("_headers", "_prefix", "_resource", "_scope", "path")

    name: str = "otlp"
    default_path: str = "/v1/logs"
    content_type: str = "application/json"

    def __init__(
        self,
        *,
        write_key: str,
        library_name: str,
        library_version: str,
        path: str | None = None,
        headers: Mapping[str, str] | None = None,
        service_name: str | None = None,
        resource_attributes: Mapping[str, Any] | None = None,
        host_name: str | None = None,
    ) -> None:
        self.path = _check_path(self.default_path if path is None else path)
        auth = {"Content-Type": self.content_type}
        if write_key:
            auth["Authorization"] = f"Bearer {write_key}"
        self._headers = _merge_headers(auth, headers)
        # the given attributes win over the detected host name; service_name is the service's
        resource: dict[str, Any] = {
            "service.name": service_name or default_service_name(),
            "host.name": host_name if host_name is not None else socket.gethostname(),
            **{k: v for k, v in (resource_attributes or {}).items() if k != "service.name"},
        }
        self._resource = {"attributes": [{"key": k, "value": any_value(v)} for k, v in resource.items()]}
        self._scope = {"name": library_name, "version": library_version}
        self._prefix = b"".join((b'{"resourceLogs":[{"resource":', _to_json_bytes(self._resource),
                                 b',"scopeLogs":[{"scope":', _to_json_bytes(self._scope), b',"logRecords":['))

    def event(self, record: dict[str, Any]) -> dict[str, Any]:
        """One internal record -> one LogRecord in OTLP's JSON form; ``ValueError`` if malformed."""
        try:
            return self._event(record)
        except (KeyError, TypeError, AttributeError, OverflowError, OSError) as exc:
            raise ValueError(f"cannot encode record: {exc!r}") from exc

    def _event(self, record: dict[str, Any]) -> dict[str, Any]:
        t = record["t"]
        attrs: dict[str, Any] = {}
        u = record.get("u")
        a = record.get("a")
        if u is None and a is None and t != "alias":
            raise ValueError(f"{t!r} record without 'u' or 'a'")
        if t == "track":
            name = _require(record, "e")
            attrs.update(record.get("p") or {})
            if name == ERROR_EVENT:
                exception_attributes(attrs)
        elif t == "identify":
            name = t
            attrs.update(record.get("tr") or {})
        elif t == "page" or t == "screen":
            name = t
            attrs.update(record.get("p") or {})
        elif t == "group":
            name = t
            attrs.update(record.get("tr") or {})
        elif t == "alias":
            name = t
            _require(record, "u")
        else:
            raise ValueError(f"unknown call type {t!r}")
        c = record.get("c")
        if c:
            for key, value in c.items():
                if key != "library":  # the scope says which library sent it
                    attrs[CONTEXT_PREFIX + json_key(key)] = value
        attrs[EVENT_NAME] = name
        attrs[TYPE] = t
        m = record.get("m")
        if m is not None:
            attrs[UID] = format_message_id(m)
        if u is not None:
            attrs[USER_ID] = u
        if a is not None:
            attrs[ANONYMOUS_ID] = a
        s = record.get("s")
        if s is not None:
            attrs[SESSION_ID] = s
        if t == "page" or t == "screen":
            for key, attr in (("n", NAME), ("cat", CATEGORY)):
                v = record.get(key)
                if v is not None:
                    attrs[attr] = v
        elif t == "group":
            attrs[GROUP_ID] = _require(record, "g")
        elif t == "alias":
            attrs[PREVIOUS_ID] = _require(record, "pv")

        out: dict[str, Any] = {}
        ts = record.get("ts")
        if type(ts) is str:  # a record of a version that kept the caller's string
            try:
                ts = to_timestamp(ts)
            except ValueError:
                attrs[TIMESTAMP] = ts
                ts = None
        if ts is not None:
            nanos = _nanos(ts)
            if nanos is None:
                attrs[TIMESTAMP] = format_timestamp(ts)
            else:
                out["timeUnixNano"] = str(nanos)
        w = record.get("w")
        observed = _nanos(w) if type(w) is float else out.get("timeUnixNano")
        if observed is not None:
            out["observedTimeUnixNano"] = str(observed)
        out["severityNumber"], out["severityText"] = _severity(record)
        out["eventName"] = name
        out["attributes"] = [{"key": json_key(k), "value": any_value(v)} for k, v in attrs.items()]
        return out

    def request(self, events: list[dict[str, Any]], *, sent_at: float) -> WireRequest:
        """One ExportLogsServiceRequest of ``events`` (OTLP has no sent-at: unused)."""
        return self.request_parts([self._part(ev) for ev in events], sent_at=sent_at)

    def _part(self, event: dict[str, Any]) -> bytes:
        return _to_json_bytes(event)

    def encode(self, record: dict[str, Any]) -> bytes:
        """One internal record -> one LogRecord as JSON bytes."""
        return self._part(self.event(record))

    def request_parts(self, parts: list[bytes], *, sent_at: float) -> WireRequest:
        """The request around LogRecords encoded by :meth:`encode`."""
        body = b"".join((self._prefix, b",".join(parts), b"]}]}]}"))
        return WireRequest(self.path, dict(self._headers), body)

    def envelope_bytes(self, batch_bytes: int) -> int:
        """The resource, the scope and the brackets around the LogRecords."""
        return empty_body_bytes(self)

    def per_event_bytes(self, largest_event: int) -> int:
        return 1  # the comma

    def loads(self, wire: bytes) -> Any:
        """One event from :meth:`encode` back as JSON-able data (the dead-letter file)."""
        return json.loads(wire)

    def partial_success(self, content: bytes, content_type: str) -> tuple[int, str] | None:
        """The ``partialSuccess`` of a 2xx answer: (rejected LogRecords, the server's message);
        None when it has none (or the body is not an ExportLogsServiceResponse)."""
        if not content:
            return None
        try:
            if "protobuf" in content_type.lower():
                answer: Any = pb.decode(pb.EXPORT_RESPONSE, content)
            else:
                answer = json.loads(content)
            partial = answer.get("partialSuccess")
            if not isinstance(partial, dict):
                return None
            rejected = int(partial.get("rejectedLogRecords") or 0)
            message = str(partial.get("errorMessage") or "")
        except (ValueError, TypeError, AttributeError):
            return None
        if rejected <= 0 and not message:
            return None
        return max(rejected, 0), message


class OtlpProtoEncoder(OtlpJsonEncoder):
    """OTLP/HTTP protobuf: the same LogRecords, as ``application/x-protobuf``."""

    __slots__ = ("_resource_field", "_scope_field")

    name = "otlp-proto"
    content_type = "application/x-protobuf"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._resource_field = pb.length_delimited(1, pb.encode(pb.RESOURCE, self._resource))
        self._scope_field = pb.length_delimited(1, pb.encode(pb.SCOPE, self._scope))

    def _part(self, event: dict[str, Any]) -> bytes:
        return pb.encode(pb.LOG_RECORD, event)

    def request_parts(self, parts: list[bytes], *, sent_at: float) -> WireRequest:
        """ExportLogsServiceRequest{ResourceLogs{resource, ScopeLogs{scope, LogRecords}}}."""
        scope_logs = b"".join([self._scope_field, *(pb.length_delimited(2, p) for p in parts)])
        resource_logs = self._resource_field + pb.length_delimited(2, scope_logs)
        return WireRequest(self.path, dict(self._headers), pb.length_delimited(1, resource_logs))

    def envelope_bytes(self, batch_bytes: int) -> int:
        """The resource and scope fields, and the tag and length of the three messages
        around the LogRecords: with no records each length is one byte, in a full body up
        to a varint of ``batch_bytes``."""
        return empty_body_bytes(self) + 3 * (len(pb.varint(batch_bytes)) - 1)

    def per_event_bytes(self, largest_event: int) -> int:
        return 1 + len(pb.varint(largest_event))  # each LogRecord's tag and length

    def loads(self, wire: bytes) -> Any:
        return pb.decode(pb.LOG_RECORD, wire)

