"""OTLP/HTTP logs in the collector: LogRecords back into the events the collector stores.

``POST /v1/logs`` in OTLP's JSON encoding, or its protobuf encoding
(``Content-Type: application/x-protobuf``, read by ``mpsender._otlp_proto``). Each
LogRecord becomes the Segment-shaped event the other formats store, reversing what
``mpsender._otlp`` maps (docs/destinations.md, "OTLP"): ``mpsender.type`` gives the type
(a LogRecord without it, from another OTLP sender, is a ``track`` when it has an event
name and a ``log`` otherwise), ``log.record.uid`` the messageId (so the ``message_id``
column and its duplicates read as for the other formats), ``user.id`` the userId,
``enduser.pseudo.id`` the anonymousId, ``context.*`` the context, the other attributes the
properties (traits for identify and group). What has no Segment field (severity, the
observed time, the resource, a body) is kept under the event's ``otlp`` key.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any, Final

from .. import _otlp
from .. import _otlp_proto as pb
from .._wire import format_timestamp
from ._model import _Reject

OTLP_JSON: Final = "otlp"
OTLP_PROTO: Final = "otlp-proto"

_OWN: Final = frozenset({
    _otlp.UID, _otlp.USER_ID, _otlp.ANONYMOUS_ID, _otlp.EVENT_NAME, _otlp.TYPE, _otlp.NAME,
    _otlp.CATEGORY, _otlp.GROUP_ID, _otlp.PREVIOUS_ID, _otlp.TIMESTAMP,
})
_EXCEPTION: Final = (_otlp.EXCEPTION_TYPE, _otlp.EXCEPTION_MESSAGE, _otlp.EXCEPTION_STACKTRACE)
_FIELDS: Final = ((_otlp.UID, "messageId"), (_otlp.USER_ID, "userId"), (_otlp.ANONYMOUS_ID, "anonymousId"),
                  (_otlp.NAME, "name"), (_otlp.CATEGORY, "category"), (_otlp.GROUP_ID, "groupId"),
                  (_otlp.PREVIOUS_ID, "previousId"))
_SPECIAL_DOUBLES: Final = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def is_protobuf(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() in ("application/x-protobuf", "application/protobuf")


def read_request(body: bytes, protobuf: bool) -> list[dict[str, Any]]:
    """The events of one ExportLogsServiceRequest; ``_Reject(400)`` when it is not one."""
    if protobuf:
        try:
            request: Any = pb.decode(pb.EXPORT_REQUEST, body)
        except ValueError as exc:
            raise _Reject(400, f"body is not an OTLP ExportLogsServiceRequest: {exc}") from None
    else:
        try:
            request = json.loads(body)
        except (ValueError, RecursionError):
            raise _Reject(400, "body is not valid JSON") from None
    try:
        return _events(request)
    except (TypeError, ValueError, AttributeError, KeyError, RecursionError) as exc:
        raise _Reject(400, f"body is not an OTLP ExportLogsServiceRequest: {exc!r}") from None


def _events(request: Any) -> list[dict[str, Any]]:
    if not isinstance(request, dict):
        raise TypeError("not an object")
    events = []
    for resource_logs in request.get("resourceLogs") or ():
        resource = _attributes((resource_logs.get("resource") or {}).get("attributes"))
        for scope_logs in resource_logs.get("scopeLogs") or ():
            scope = scope_logs.get("scope") or {}
            library = {k: scope[k] for k in ("name", "version") if scope.get(k)}
            for record in scope_logs.get("logRecords") or ():
                events.append(_event(record, resource, library))
    return events


def _event(record: dict[str, Any], resource: dict[str, Any], library: dict[str, Any]) -> dict[str, Any]:
    attrs = _attributes(record.get("attributes"))
    name = record.get("eventName") or attrs.get(_otlp.EVENT_NAME)
    typ = attrs.get(_otlp.TYPE) or ("track" if name else "log")
    ev: dict[str, Any] = {"type": typ}
    if typ == "track":
        ev["event"] = name
    for attr, field in _FIELDS:
        if attrs.get(attr) is not None:
            ev[field] = attrs[attr]
    stamp = _time(record.get("timeUnixNano"))
    ev["timestamp"] = stamp if stamp is not None else attrs.get(_otlp.TIMESTAMP)
    context: dict[str, Any] = {"library": library} if library else {}
    rest: dict[str, Any] = {}
    for key, value in attrs.items():
        if key.startswith(_otlp.CONTEXT_PREFIX):
            context[key[len(_otlp.CONTEXT_PREFIX):]] = value
        elif key not in _OWN:
            rest[key] = value
    ev["context"] = context
    otlp: dict[str, Any] = {"resource": resource}
    if typ == "track" and name == _otlp.ERROR_EVENT:
        # the exception.* attributes the encoder derived from capture_error()'s properties
        # are not properties of the event: they go with the OTLP-only fields
        derived = {k: v for k, v in rest.items() if k not in _EXCEPTION}
        _otlp.exception_attributes(derived)
        for key in _EXCEPTION:
            if key in rest and key in derived and rest[key] == derived[key]:
                otlp[key] = rest.pop(key)
    if typ in ("identify", "group"):
        ev["traits"] = rest
    elif typ != "alias":
        ev["properties"] = rest
    for key in ("severityNumber", "severityText"):
        if record.get(key) is not None:
            otlp[key] = record[key]
    observed = _time(record.get("observedTimeUnixNano"))
    if observed is not None:
        otlp["observedTimestamp"] = observed
    if record.get("body") is not None:
        otlp["body"] = value_of(record["body"])
    ev["otlp"] = otlp
    return ev


def _time(nanos: Any) -> str | None:
    if nanos is None or int(nanos) == 0:  # 0: unknown, says OTLP
        return None
    return format_timestamp(int(nanos) / 1e9)


def _attributes(values: Any) -> dict[str, Any]:
    return {kv["key"]: value_of(kv.get("value")) for kv in values or ()}


def value_of(value: Any) -> Any:
    """An AnyValue in OTLP's JSON form as a Python value (bytes as UTF-8 text, as the JSON
    formats send bytes; an empty AnyValue as None)."""
    if not value:
        return None
    if "stringValue" in value:
        return str(value["stringValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        double = value["doubleValue"]
        return _SPECIAL_DOUBLES[double] if isinstance(double, str) and double in _SPECIAL_DOUBLES else float(double)
    if "arrayValue" in value:
        return [value_of(v) for v in (value["arrayValue"] or {}).get("values") or ()]
    if "kvlistValue" in value:
        return {kv["key"]: value_of(kv.get("value")) for kv in (value["kvlistValue"] or {}).get("values") or ()}
    if "bytesValue" in value:
        return base64.b64decode(value["bytesValue"]).decode("utf-8", "replace")
    return None
