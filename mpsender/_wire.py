"""Wire encoders: internal records (docs/architecture.md) to one HTTP request.

Runs in the sender process only. An encoder turns each internal record into a
wire event dict (:meth:`Encoder.event`) and wraps a batch of those into one
:class:`WireRequest` (:meth:`Encoder.request`). The uploader applies gzip and
``Content-Encoding`` itself.

Formats (``_options.FORMATS``, their one list): ``segment`` (default; Segment's HTTP Tracking API,
which RudderStack and other Segment-compatible collectors accept), ``posthog``
and ``json`` (Segment-shaped events for a collector of one's own), and
``otlp``/``otlp-proto`` (OTLP/HTTP logs, in ``_otlp.py``).

Bodies are compact UTF-8 JSON. NaN and infinities become ``null``, ``bytes``
become text, anything else JSON cannot hold becomes its ``str()``; that
sanitizing runs only when the fast encode fails, so the common batch pays
nothing for it.
"""

from __future__ import annotations

import base64
import json
import math
import time
import uuid
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from ._events import json_key
from ._options import FORMATS

_json_fast = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":")
).encode


@dataclass(frozen=True, slots=True)
class WireRequest:
    """One HTTP POST, ready for the transport."""

    path: str
    """Appended to the endpoint, e.g. ``"/v1/batch"``."""
    headers: dict[str, str]
    """Auth and ``Content-Type``; never ``Content-Encoding`` (the caller gzips)."""
    body: bytes
    """UTF-8 JSON."""


class Encoder(Protocol):
    """What the uploader needs from a wire format."""

    name: str
    default_path: str
    path: str

    def event(self, record: dict[str, Any]) -> dict[str, Any]:
        """One internal record -> one wire event; ``ValueError`` if it cannot be.

        The result may share sub-dicts with the record and the encoder: treat
        it as read-only.
        """
        ...

    def request(self, events: list[dict[str, Any]], *, sent_at: float) -> WireRequest:
        """Wrap already-encoded events into one request; ``sent_at`` is epoch seconds."""
        ...

    def encode(self, record: dict[str, Any]) -> bytes:
        """One internal record -> one wire event as compact JSON bytes."""
        ...

    def request_parts(self, parts: list[bytes], *, sent_at: float) -> WireRequest:
        """Like :meth:`request`, from events already encoded by :meth:`encode`.

        The sender encodes each event once, checks its size, and can then split or
        bisect a refused batch without encoding anything again.
        """
        ...

    def envelope_bytes(self, batch_bytes: int) -> int:
        """The most bytes a body of at most ``batch_bytes`` holds besides its events and
        what :meth:`per_event_bytes` counts: what a batch must leave room for."""
        ...

    def per_event_bytes(self, largest_event: int) -> int:
        """The most bytes the body spends on each event besides the event's own (a comma,
        protobuf's tag and length), for events of at most ``largest_event`` bytes."""
        ...

    def loads(self, wire: bytes) -> Any:
        """One event from :meth:`encode` back as JSON-able data (the dead-letter file)."""
        ...

    def partial_success(self, content: bytes, content_type: str) -> tuple[int, str] | None:
        """(events refused, the server's message) of a 2xx answer that accepted only part
        of the request (OTLP's ``partialSuccess``); None for a whole success."""
        ...


# -- scalar formatting -----------------------------------------------------------

# One cached (whole second, "YYYY-MM-DDTHH:MM:SS") pair: events in a batch are
# close in time, so strftime runs about once per second of events. A tuple is
# swapped in whole, so threads never see a second paired with another's prefix.
_ts_cache: tuple[int, str] = (-(2**63), "")
# ".000Z" ... ".999Z": a list index is about twice as fast as a format spec.
_MS_SUFFIX: Final = tuple(f".{ms:03d}Z" for ms in range(1000))


def format_timestamp(ts: float) -> str:
    """Epoch seconds -> ISO-8601 UTC with milliseconds, ``2026-11-23T08:07:59.123Z``.

    Rounds to the nearest millisecond (carrying into the next second when it
    must).
    """
    global _ts_cache
    sec, ms = divmod(round(ts * 1000), 1000)
    cached = _ts_cache
    if cached[0] == sec:
        return cached[1] + _MS_SUFFIX[ms]
    # not strftime: its %Y does not pad years before 1000 to four digits on glibc
    year, month, day, hour, minute, second = time.gmtime(sec)[:6]
    prefix = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
    _ts_cache = (sec, prefix)
    return prefix + _MS_SUFFIX[ms]


#: the first 8 bytes of the last id formatted, and their text: a process's ids share them
#: (``_events.MessageIds``: a per-process prefix and a counter), so only the counter's half
#: is formatted per event
_mid_cache: tuple[bytes, str] = (b"", "")


def format_message_id(m: bytes | str) -> str:
    """16 bytes -> canonical UUID string (as ``str(uuid.UUID(bytes=m))``); a str passes through."""
    global _mid_cache
    if isinstance(m, str):
        return m
    if len(m) != 16:
        raise ValueError(f"message id must be 16 bytes, got {len(m)}")
    prefix = m[:8]
    cached = _mid_cache
    if cached[0] != prefix:
        h = prefix.hex()
        cached = _mid_cache = (prefix, f"{h[:8]}-{h[8:12]}-{h[12:16]}-")
    t = m[8:].hex()
    return f"{cached[1]}{t[:4]}-{t[4:]}"


def empty_body_bytes(encoder: Encoder) -> int:
    """The length of ``encoder``'s request body with no events: the envelope, but for what
    grows with the events (protobuf's lengths). Its ``sent_at``, where a format has one,
    is a timestamp of fixed width."""
    return len(encoder.request_parts([], sent_at=time.time()).body)


_orjson_dumps: Callable[..., bytes] | None
try:  # optional (an extra): several times faster than the json module (benchmarks/README.md)
    import orjson  # type: ignore[import-not-found,unused-ignore]

    _orjson_dumps = orjson.dumps
except ImportError:  # pragma: no cover - exercised where orjson is not installed
    _orjson_dumps = None


#: deflate level of request bodies: the fastest, and JSON batches still compress well
#: (benchmarks/README.md, "The fast extra")
GZIP_LEVEL: Final = 1

_gzip_compressobj: Callable[..., Any]
try:  # optional (the ``fast`` extra): Intel's ISA-L deflate, much faster than zlib (benchmarks/README.md)
    from isal import isal_zlib  # type: ignore[import-not-found,unused-ignore]

    _gzip_compressobj = isal_zlib.compressobj
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    _gzip_compressobj = zlib.compressobj


def gzip_compress(data: bytes) -> bytes:
    """``data`` as one gzip member (RFC 1952), as ``Content-Encoding: gzip`` wants it.

    With python-isal installed (the ``fast`` extra) ISA-L deflates, faster than zlib at
    level 1 and to fewer bytes (benchmarks/README.md, "The fast extra"). Any gzip reader
    inflates either.
    """
    comp = _gzip_compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    return comp.compress(data) + comp.flush()  # type: ignore[no-any-return]


def _to_json_bytes(obj: Any) -> bytes:
    if _orjson_dumps is not None:
        try:
            # The same JSON as the json path below for what msgpack carries (str keys,
            # 64-bit ints, valid UTF-8; NaN/inf become null there as here). orjson
            # refuses the rest with a TypeError and the json path, with its
            # sanitizing, takes over. Floats may be spelled differently (1.5e-7 for
            # 1.5e-07): the same value.
            return _orjson_dumps(obj)
        except TypeError:
            pass
    try:
        text = _json_fast(obj)
    except (ValueError, TypeError):
        text = _json_fast(_sanitize(obj))
    # "replace": a lone surrogate must not make a whole batch unsendable.
    return text.encode("utf-8", "replace")


def _sanitize(value: Any) -> Any:
    """A copy of ``value`` that strict JSON can hold (the slow path)."""
    if isinstance(value, dict):
        return {json_key(k): _sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sanitize(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _merge_headers(base: dict[str, str], extra: Mapping[str, str] | None) -> dict[str, str]:
    """``base`` overridden by ``extra``, header names compared case-insensitively."""
    if not extra:
        return base
    lowered = {k.lower() for k in extra}
    merged = {k: v for k, v in base.items() if k.lower() not in lowered}
    merged.update(extra)
    return merged


def _check_path(path: str) -> str:
    if path and not path.startswith(("/", "?")):
        raise ValueError(f"path must be empty or start with '/' or '?', got {path!r}")
    return path


def _require(record: Mapping[str, Any], key: str) -> Any:
    value = record.get(key)
    if value is None:
        raise ValueError(f"{record.get('t')!r} record without {key!r}")
    return value


# -- Segment ---------------------------------------------------------------------

#: call types without properties: Segment's carry the session id in their context
_NO_PROPERTIES: Final = frozenset({"identify", "group", "alias"})


def _with_session(record: Mapping[str, Any]) -> Any:
    """The record's properties, with ``session_id`` when it was tracked in a session
    (a ``session_id`` property of the caller's own wins)."""
    p = record.get("p") or {}
    s = record.get("s")
    if s is None or "session_id" in p:
        return p
    return {"session_id": s, **p}



class SegmentEncoder:
    """Segment HTTP Tracking API: ``POST /v1/batch``, ``{"batch": [...], "sentAt": ...}``.

    Each event carries ``type``, ``messageId``, ``timestamp``, ``userId`` and/or
    ``anonymousId``, ``context`` (the record's context with ``library`` set to
    this library, which wins over a user-given one), ``integrations`` when given,
    and per type: track ``event``, ``properties``; identify ``traits``; group
    ``groupId``, ``traits``; alias ``previousId``, ``userId``; page ``name``,
    ``category``, ``properties``; screen ``name``, ``properties`` (and
    ``category`` when the record has one). ``properties``/``traits`` are ``{}``
    when absent, as Segment's own libraries send them.
    """

    __slots__ = ("_headers", "_library", "_library_context", "path")

    name: str = "segment"
    default_path: str = "/v1/batch"

    def __init__(
        self,
        *,
        write_key: str,
        library_name: str,
        library_version: str,
        path: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.path = _check_path(self.default_path if path is None else path)
        self._library = {"name": library_name, "version": library_version}
        self._library_context = {"library": self._library}  # shared by events without a context
        self._headers = _merge_headers(self._auth_headers(write_key), headers)

    def _auth_headers(self, write_key: str) -> dict[str, str]:
        token = base64.b64encode(f"{write_key}:".encode()).decode("ascii")
        return {"Authorization": f"Basic {token}", "Content-Type": "application/json"}

    def event(self, record: dict[str, Any]) -> dict[str, Any]:
        """One internal record -> one Segment message; ``ValueError`` if malformed."""
        try:
            t = record["t"]
            out: dict[str, Any] = {"type": t}
            v = record.get("m")
            if v is not None:
                out["messageId"] = v if type(v) is str else format_message_id(v)
            v = record.get("ts")
            if v is not None:
                out["timestamp"] = v if type(v) is str else format_timestamp(v)
            u = record.get("u")
            if u is not None:
                out["userId"] = u
            v = record.get("a")
            if v is not None:
                out["anonymousId"] = v
            elif u is None and t != "alias":
                raise ValueError(f"{t!r} record without 'u' or 'a'")
            c = record.get("c")
            out["context"] = {**c, "library": self._library} if c else self._library_context
            v = record.get("i")
            if v is not None:
                out["integrations"] = v

            if t == "track":
                v = record.get("e")
                if v is None:
                    raise ValueError("'track' record without 'e'")
                out["event"] = v
                out["properties"] = _with_session(record)
            elif t == "identify":
                out["traits"] = record.get("tr") or {}
            elif t == "page" or t == "screen":
                v = record.get("n")
                if v is not None:
                    out["name"] = v
                v = record.get("cat")
                if v is not None:
                    out["category"] = v
                out["properties"] = _with_session(record)
            elif t == "group":
                out["groupId"] = _require(record, "g")
                out["traits"] = record.get("tr") or {}
            elif t == "alias":
                out["previousId"] = _require(record, "pv")
                _require(record, "u")
            else:
                raise ValueError(f"unknown call type {t!r}")
            v = record.get("s")
            if v is not None and t in _NO_PROPERTIES and "session_id" not in out["context"]:
                out["context"] = {**out["context"], "session_id": v}
            return out
        except (KeyError, TypeError, AttributeError, OverflowError, OSError) as exc:
            raise ValueError(f"cannot encode record: {exc!r}") from exc

    def request(self, events: list[dict[str, Any]], *, sent_at: float) -> WireRequest:
        """``{"batch": events, "sentAt": ...}`` as one request."""
        body = _to_json_bytes({"batch": events, "sentAt": format_timestamp(sent_at)})
        return WireRequest(self.path, dict(self._headers), body)

    def encode(self, record: dict[str, Any]) -> bytes:
        """One internal record -> one Segment message as JSON bytes."""
        return _to_json_bytes(self.event(record))

    def request_parts(self, parts: list[bytes], *, sent_at: float) -> WireRequest:
        """``{"batch": [...], "sentAt": ...}`` from events encoded by :meth:`encode`."""
        body = b"".join((b'{"batch":[', b",".join(parts), b'],"sentAt":"',
                         format_timestamp(sent_at).encode("ascii"), b'"}'))
        return WireRequest(self.path, dict(self._headers), body)

    def envelope_bytes(self, batch_bytes: int) -> int:
        return empty_body_bytes(self)

    def per_event_bytes(self, largest_event: int) -> int:
        return 1  # the comma

    def loads(self, wire: bytes) -> Any:
        """One event from :meth:`encode` back as data (the dead-letter file)."""
        return json.loads(wire)

    def partial_success(self, content: bytes, content_type: str) -> tuple[int, str] | None:
        """Always None: a 2xx takes the whole batch."""
        return None


class JsonEncoder(SegmentEncoder):
    """A generic JSON batch: Segment-shaped events, ``POST /json``, Bearer auth.

    ``Authorization: Bearer <key>`` is sent only when the key is not empty;
    custom ``headers`` override it (and anything else) by name.
    """

    __slots__ = ()

    name = "json"
    default_path = "/json"

    def _auth_headers(self, write_key: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if write_key:
            headers["Authorization"] = f"Bearer {write_key}"
        return headers


# -- PostHog ---------------------------------------------------------------------

# Context fields PostHog has a property for (as PostHog's own Segment plugin maps
# them). Other context fields are not sent.
_PH_CONTEXT_FLAT: Final[dict[str, tuple[str, ...]]] = {
    "ip": ("$ip",),
    "userAgent": ("$raw_user_agent", "$user_agent"),
    "locale": ("$browser_language",),
}
_PH_CONTEXT_NESTED: Final[dict[str, dict[str, str]]] = {
    "page": {"url": "$current_url", "path": "$pathname", "referrer": "$referrer"},
    "os": {"name": "$os"},
    "screen": {"width": "$screen_width", "height": "$screen_height"},
    "device": {"type": "$device_type"},
}
_PH_PAGE_PROPERTIES: Final = (
    ("url", "$current_url"), ("path", "$pathname"), ("referrer", "$referrer"),
)

# A user-given message id that is not a UUID would make PostHog refuse the whole
# batch; a name-based UUID from it keeps retries deduplicable.
_PH_UUID_NAMESPACE: Final = uuid.UUID("6f1d2c1e-5d0a-4c55-9a43-3a6d3e0f6b1a")


def _posthog_uuid(m: bytes | str) -> str:
    if not isinstance(m, str):
        return format_message_id(m)
    try:
        return str(uuid.UUID(m))
    except ValueError:
        return str(uuid.uuid5(_PH_UUID_NAMESPACE, m))


def _posthog_context(context: Mapping[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for key, value in context.items():
        flat = _PH_CONTEXT_FLAT.get(key)
        if flat is not None:
            for target in flat:
                props[target] = value
        elif not isinstance(value, dict):
            continue
        elif key in _PH_CONTEXT_NESTED:
            for sub, target in _PH_CONTEXT_NESTED[key].items():
                if sub in value:
                    props[target] = value[sub]
        elif key == "campaign":
            for sub, sub_value in value.items():
                props["utm_campaign" if sub == "name" else f"utm_{sub}"] = sub_value
        elif key == "groups":
            props["$groups"] = value
    return props


class PostHogEncoder:
    """PostHog ``POST /batch/``: ``{"api_key": key, "batch": [...], "sent_at": ...}``.

    Each event is ``{event, distinct_id, properties, timestamp, uuid}``, shaped
    as posthog-python shapes them:

    * ``distinct_id`` is the userId, else the anonymousId.
    * track: ``event`` is the event name, ``properties`` the properties.
    * identify: ``$identify`` with ``$set`` = traits; with both ids,
      ``$anon_distinct_id`` = the anonymousId (as posthog-js sends it).
    * group: ``$groupidentify`` with ``$group_type`` (traits' ``group_type``,
      else ``"company"``), ``$group_key`` = groupId and ``$group_set`` = the
      other traits; without a user, ``distinct_id`` is ``$<type>_<key>``.
    * alias: ``$create_alias``, ``distinct_id`` = previousId, properties
      ``distinct_id`` = previousId and ``alias`` = userId.
    * page: ``$pageview``; ``$current_url``, ``$pathname``, ``$referrer`` from
      the properties ``url``, ``path``, ``referrer``; ``name``, ``category`` kept.
    * screen: ``$screen`` with ``$screen_name`` = name (``name``, ``category``
      kept as for page).

    Context becomes properties where PostHog has a name for it: ``ip`` ->
    ``$ip``, ``userAgent`` -> ``$raw_user_agent``/``$user_agent``, ``locale`` ->
    ``$browser_language``, ``page.url/path/referrer`` -> ``$current_url``/
    ``$pathname``/``$referrer``, ``os.name`` -> ``$os``, ``screen.width/height``
    -> ``$screen_width``/``$screen_height``, ``device.type`` -> ``$device_type``,
    ``campaign.*`` -> ``utm_*``, ``groups`` -> ``$groups``; other context fields
    and ``integrations`` are not sent. Event properties win over context.
    Every event gets ``$lib``/``$lib_version``, and ``$geoip_disable`` unless it
    carries ``$ip`` (posthog-python's default: a server's own address says
    nothing about the user). A message id that is not a UUID is replaced by a
    UUIDv5 of it, since PostHog refuses the whole batch otherwise.
    """

    __slots__ = ("_api_key", "_headers", "_lib", "_lib_version", "path")

    name: str = "posthog"
    default_path: str = "/batch/"

    def __init__(
        self,
        *,
        write_key: str,
        library_name: str,
        library_version: str,
        path: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.path = _check_path(self.default_path if path is None else path)
        self._api_key = write_key
        self._lib = library_name
        self._lib_version = library_version
        self._headers = _merge_headers({"Content-Type": "application/json"}, headers)

    def event(self, record: dict[str, Any]) -> dict[str, Any]:
        """One internal record -> one PostHog event; ``ValueError`` if malformed."""
        try:
            return self._event(record)
        except (KeyError, TypeError, AttributeError, OverflowError, OSError) as exc:
            raise ValueError(f"cannot encode record: {exc!r}") from exc

    def _event(self, record: dict[str, Any]) -> dict[str, Any]:
        t = record["t"]
        c = record.get("c")
        p = record.get("p")
        if c:
            props = _posthog_context(c)
            if p:
                props.update(p)
        else:
            props = dict(p) if p else {}
        u = record.get("u")
        distinct = u if u is not None else record.get("a")

        if t == "track":
            name = _require(record, "e")
        elif t == "identify":
            name = "$identify"
            props["$set"] = record.get("tr") or {}
            a = record.get("a")
            if u is not None and a is not None:
                props["$anon_distinct_id"] = a
        elif t == "page":
            name = "$pageview"
            if p:
                for key, target in _PH_PAGE_PROPERTIES:
                    if key in p and target not in p:
                        props[target] = p[key]
            self._name_category(record, props)
        elif t == "screen":
            name = "$screen"
            v = record.get("n")
            if v is not None:
                props["$screen_name"] = v
            self._name_category(record, props)
        elif t == "group":
            name = "$groupidentify"
            key = _require(record, "g")
            traits = dict(record.get("tr") or {})
            group_type = traits.pop("group_type", None) or "company"
            props["$group_type"] = group_type
            props["$group_key"] = key
            props["$group_set"] = traits
            if distinct is None:
                distinct = f"${group_type}_{key}"
        elif t == "alias":
            name = "$create_alias"
            distinct = _require(record, "pv")
            props["distinct_id"] = distinct
            props["alias"] = _require(record, "u")
        else:
            raise ValueError(f"unknown call type {t!r}")
        if distinct is None:
            raise ValueError(f"{t!r} record without 'u' or 'a'")

        v = record.get("s")
        if v is not None and "$session_id" not in props:
            props["$session_id"] = v
        props["$lib"] = self._lib
        props["$lib_version"] = self._lib_version
        if "$ip" not in props and "$geoip_disable" not in props:
            props["$geoip_disable"] = True
        out: dict[str, Any] = {"event": name, "distinct_id": distinct, "properties": props}
        v = record.get("ts")
        if v is not None:
            out["timestamp"] = v if type(v) is str else format_timestamp(v)
        v = record.get("m")
        if v is not None:
            out["uuid"] = _posthog_uuid(v)
        return out

    @staticmethod
    def _name_category(record: Mapping[str, Any], props: dict[str, Any]) -> None:
        v = record.get("n")
        if v is not None:
            props["name"] = v
        v = record.get("cat")
        if v is not None:
            props["category"] = v

    def request(self, events: list[dict[str, Any]], *, sent_at: float) -> WireRequest:
        """``{"api_key": key, "batch": events, "sent_at": ...}`` as one request."""
        body = _to_json_bytes(
            {"api_key": self._api_key, "batch": events, "sent_at": format_timestamp(sent_at)}
        )
        return WireRequest(self.path, dict(self._headers), body)

    def encode(self, record: dict[str, Any]) -> bytes:
        """One internal record -> one PostHog event as JSON bytes."""
        return _to_json_bytes(self.event(record))

    def request_parts(self, parts: list[bytes], *, sent_at: float) -> WireRequest:
        """``{"api_key": ..., "batch": [...], "sent_at": ...}`` from encoded events."""
        body = b"".join((b'{"api_key":', _to_json_bytes(self._api_key), b',"batch":[', b",".join(parts),
                         b'],"sent_at":"', format_timestamp(sent_at).encode("ascii"), b'"}'))
        return WireRequest(self.path, dict(self._headers), body)

    def envelope_bytes(self, batch_bytes: int) -> int:
        return empty_body_bytes(self)  # the API key is in it

    def per_event_bytes(self, largest_event: int) -> int:
        return 1  # the comma

    def loads(self, wire: bytes) -> Any:
        """One event from :meth:`encode` back as data (the dead-letter file)."""
        return json.loads(wire)

    def partial_success(self, content: bytes, content_type: str) -> tuple[int, str] | None:
        """Always None: a 2xx takes the whole batch."""
        return None


_ENCODERS: Final[dict[str, type[SegmentEncoder] | type[PostHogEncoder]]] = {
    "segment": SegmentEncoder,
    "posthog": PostHogEncoder,
    "json": JsonEncoder,
}
_OTLP_FORMATS: Final = frozenset({"otlp", "otlp-proto"})


def get_encoder(
    fmt: str,
    *,
    write_key: str,
    library_name: str,
    library_version: str,
    path: str | None = None,
    headers: Mapping[str, str] | None = None,
    service_name: str | None = None,
    resource_attributes: Mapping[str, Any] | None = None,
) -> Encoder:
    """The encoder for wire format ``fmt`` (one of :data:`FORMATS`).

    ``path`` replaces the format's default path (empty, or starting with ``/``
    or ``?``). ``headers`` are added to every request and override the
    encoder's own (auth, ``Content-Type``) of the same name, compared
    case-insensitively. ``service_name``: the OTLP formats' ``service.name`` (None: the
    default of ``_otlp.default_service_name``) and ``resource_attributes`` its other resource
    attributes; the others have no use for them. Raises
    ``ValueError`` for an unknown format or a bad path.
    """
    if fmt in _OTLP_FORMATS:
        from ._otlp import OtlpJsonEncoder, OtlpProtoEncoder  # it imports this module

        otlp = OtlpProtoEncoder if fmt == "otlp-proto" else OtlpJsonEncoder
        return otlp(write_key=write_key, library_name=library_name, library_version=library_version,
                    path=path, headers=headers, service_name=service_name,
                    resource_attributes=resource_attributes)
    cls = _ENCODERS.get(fmt)
    if cls is None:
        raise ValueError(f"unknown wire format {fmt!r}; valid formats: {', '.join(sorted(FORMATS))}")
    return cls(write_key=write_key, library_name=library_name,
               library_version=library_version, path=path, headers=headers)
