"""Options: one frozen dataclass, validated once; the only place MPSENDER_* is read."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import ssl
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._exceptions import ConfigurationError

logger = logging.getLogger(__name__)

__all__ = [
    "FORMATS", "PROXY_DIRECT", "TESTING_ENV", "Options", "env_disabled", "env_testing", "redact_url",
    "resolve_options",
]

FORMATS = ("segment", "posthog", "json", "otlp", "otlp-proto")
#: the OTLP/HTTP logs formats (JSON, protobuf): no key required, a service name
OTLP_FORMATS = ("otlp", "otlp-proto")
ENV_PREFIX = "MPSENDER_"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
#: the ``proxy`` value that sends directly, whatever HTTP(S)_PROXY say
PROXY_DIRECT = "direct"
#: set by the pytest plugin for a test run (or by hand, for unittest or Django's runner):
#: nothing is sent whatever else says so, and a call outside ``testing.capture()`` says
#: how to capture it. Stronger than MPSENDER_DISABLED=0, init(disabled=False) or a write
#: key in the shell, because a test suite must never send real analytics by accident.
TESTING_ENV = ENV_PREFIX + "TESTING"
_PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")

BeforeSend = Callable[[dict[str, Any]], "dict[str, Any] | None"]


@dataclass(frozen=True, slots=True)
class Options:
    """Everything that configures a client and the sender it talks to.

    Durations are float seconds, sizes are bytes. ``write_key`` and ``endpoint`` are
    required unless ``disabled``. Options marked *sender* are taken by the sender from
    the process that started it; the others act in each application process.
    """

    write_key: str = ""
    endpoint: str = ""
    #: wire format: "segment" (POST /v1/batch), "posthog" (POST /batch/), "json", or
    #: "otlp" / "otlp-proto" (OTLP/HTTP logs, POST /v1/logs, JSON or protobuf)
    format: str = "segment"
    #: request path appended to endpoint; None = the format's own
    path: str | None = None
    #: every call is a cheap no-op
    disabled: bool = False
    #: sender: events per request at most; with Segment's 500 KB ``batch_bytes`` a request
    #: of ~600-byte events carries ~800: each request costs the sender the same CPU
    #: whatever it carries, so it leaves as full as the limits allow
    batch_size: int = 1000
    #: sender: bytes per request (Segment: 500 KB)
    batch_bytes: int = 500_000
    #: largest packed event accepted by track() (Segment: 32 KB)
    max_message_bytes: int = 32_000
    #: sender: a batch is sent when its oldest event is this old
    flush_interval: float = 1.0
    #: sender: exits this long after its last client has gone
    linger: float = 30.0
    #: sender: timeout of one HTTP request
    request_timeout: float = 10.0
    #: sender: deadline to drain on exit; what is left stays in the spool. app: the
    #: longest capture_uncaught waits for the endpoint before the process dies
    shutdown_timeout: float = 5.0
    #: init() waits at most this long for a new sender to listen (0: do not wait)
    start_timeout: float = 3.0
    #: sender: first retry delay and cap of the exponential backoff
    retry_base: float = 0.5
    retry_cap: float = 30.0
    #: sender: undelivered events older than this are dropped as "expired" (None: never)
    max_event_age: float | None = 7 * 86400.0
    #: sender: undelivered data on disk above this is dropped oldest-first as "spool_full"
    max_spool_bytes: int = 512 * 1024 * 1024
    #: sender: fsync the spool files this often (None: never; the page cache survives
    #: any process death, not a power cut)
    fsync_interval: float | None = 1.0
    #: where sockets, locks and logs live (default: <tmp>/mpsender-<uid>)
    runtime_dir: str | None = None
    #: where the write-ahead spool lives (default: <runtime_dir>/<destination>/spool)
    spool_dir: str | None = None
    #: sender: gzip request bodies
    gzip: bool = True
    #: sender: verify TLS certificates
    verify_tls: bool = True
    #: sender: PEM file of the CAs to trust instead of the default ones (a TLS-inspecting
    #: proxy's CA); made absolute, since the sender runs in "/"
    ca_bundle: str | None = None
    #: sender: proxy URL for every request, instead of HTTP(S)_PROXY/ALL_PROXY/NO_PROXY
    #: ("direct": none); out of repr because it may hold credentials
    proxy: str | None = field(default=None, repr=False)
    #: sender: extra HTTP headers (the "json" format's auth, for example)
    headers: Mapping[str, str] = field(default_factory=dict)
    #: app: called with each event dict before it is written; return None to drop it
    before_send: BeforeSend | None = None
    #: sender: "module:function" called after a batch fails for good
    on_error: str | None = None
    #: sender: "module:function" called after every batch outcome
    on_delivery: str | None = None
    #: app: properties merged into every track/page/screen event
    properties: Mapping[str, Any] = field(default_factory=dict)
    #: app: context merged into every event
    context: Mapping[str, Any] = field(default_factory=dict)
    #: app: add host name, pid and worker ids to context
    enrich: bool = False
    #: app: for the segment and json formats with orjson, track() writes the event's wire JSON
    #: (the sender only frames it): the sender's CPU per event about halves at high rates,
    #: track() costs more (benchmarks/README.md, "Request-like rates")
    wire_records: bool = False
    #: the Python interpreter that runs the sender (default: found from sys.executable)
    python: str | None = None
    #: sender: log level of the sender's own log file
    log_level: str = "INFO"
    #: sender: write the sender's counters to this file (Prometheus text, for
    #: node_exporter's textfile collector: the name must end in ".prom"); "{destination}"
    #: in it is replaced by the destination id, so that each sender has its own file.
    #: Made absolute, since the sender runs in "/"
    metrics_file: str | None = None
    #: the OTLP formats' resource ``service.name`` (None: OTEL_SERVICE_NAME, else the
    #: program's name; resolved in the application process, where that name is known)
    service_name: str | None = None
    #: the OTLP formats' other resource attributes (None: OTEL_RESOURCE_ATTRIBUTES; resolved
    #: in the application process, like service_name)
    resource_attributes: Mapping[str, Any] | None = None
    #: app: init() hooks sys.excepthook and threading.excepthook: an uncaught exception
    #: sends a $error event and ends the open sessions (docs/events.md)
    capture_uncaught: bool = False

    def __post_init__(self) -> None:
        if not self.disabled:
            custom_auth = self.format == "json" and any(h.lower() == "authorization" for h in self.headers)
            if not self.write_key and not custom_auth and self.format not in OTLP_FORMATS:
                raise ConfigurationError(
                    "write_key is missing: pass mpsender.init(write_key=...) "
                    "or set MPSENDER_WRITE_KEY"
                )
            if not self.endpoint:
                raise ConfigurationError(
                    "endpoint is missing: pass mpsender.init(endpoint='https://...') "
                    "or set MPSENDER_ENDPOINT"
                    + (" (or OTEL_EXPORTER_OTLP_ENDPOINT)" if self.format in OTLP_FORMATS else "")
                )
        if not isinstance(self.write_key, str):
            raise ConfigurationError(f"write_key must be a str, not {type(self.write_key).__name__}")
        if self.endpoint and not self.endpoint.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"endpoint must start with http:// or https://, got {self.endpoint!r}"
            )
        if self.format not in FORMATS:
            raise ConfigurationError(f"format must be one of {', '.join(FORMATS)}; got {self.format!r}")
        if self.path is not None and not self.path.startswith("/"):
            raise ConfigurationError(f"path must start with '/', got {self.path!r}")
        for name in ("batch_size", "batch_bytes", "max_message_bytes", "max_spool_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigurationError(f"{name} must be a positive int, got {value!r}")
        if self.max_message_bytes > self.batch_bytes:
            raise ConfigurationError(
                f"max_message_bytes ({self.max_message_bytes}) must not exceed batch_bytes "
                f"({self.batch_bytes})"
            )
        if self.max_message_bytes > 1_000_000:
            raise ConfigurationError("max_message_bytes must be at most 1000000")
        for name in ("flush_interval", "linger", "request_timeout", "shutdown_timeout",
                     "start_timeout", "retry_base", "retry_cap"):
            _check_seconds(name, getattr(self, name), allow_zero=name in ("linger", "start_timeout"))
        for name in ("max_event_age", "fsync_interval"):
            if getattr(self, name) is not None:
                _check_seconds(name, getattr(self, name), allow_zero=False)
        if self.before_send is not None and not callable(self.before_send):
            raise ConfigurationError("before_send must be callable or None")
        for name in ("on_error", "on_delivery"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or ":" not in value):
                raise ConfigurationError(
                    f"{name} must be an import path 'package.module:function' (it runs in the "
                    f"sender process), got {value!r}"
                )
        for name in ("headers", "properties", "context"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise ConfigurationError(f"{name} must be a mapping, got {type(value).__name__}")
        self._check_proxy()
        self._check_ca_bundle()
        self._check_metrics_file()
        self._check_service_name()
        if not isinstance(self.capture_uncaught, bool):
            raise ConfigurationError(f"capture_uncaught must be a bool, got {self.capture_uncaught!r}")
        if not isinstance(self.wire_records, bool):
            raise ConfigurationError(f"wire_records must be a bool, got {self.wire_records!r}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigurationError(f"log_level must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")

    def _check_proxy(self) -> None:
        proxy = self.proxy
        if proxy is None or proxy == PROXY_DIRECT:
            return
        if not isinstance(proxy, str):
            raise ConfigurationError(f"proxy must be a URL str, not {type(proxy).__name__}")
        try:
            parts = urllib.parse.urlsplit(proxy)
            parts.port  # noqa: B018 - raises ValueError on a port that is not a number
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in _PROXY_SCHEMES or not parts.hostname:
            raise ConfigurationError(
                f"proxy must be a URL like http://host:3128 ({', '.join(_PROXY_SCHEMES)}) "
                f"or {PROXY_DIRECT!r}, got {redact_url(proxy)!r}"
            )

    def _check_ca_bundle(self) -> None:
        path = self.ca_bundle
        if path is None:
            return
        if not isinstance(path, str) or not path:
            raise ConfigurationError(f"ca_bundle must be the path of a PEM file, got {path!r}")
        if not self.verify_tls:
            raise ConfigurationError("ca_bundle is set but verify_tls is False: nothing would be verified")
        # the sender runs in "/": a relative path must mean the same file there
        object.__setattr__(self, "ca_bundle", os.path.abspath(path))
        try:
            ssl.create_default_context(cafile=self.ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"ca_bundle {self.ca_bundle!r} is not a readable PEM file of CA "
                                     f"certificates: {exc}") from exc

    def _check_metrics_file(self) -> None:
        path = self.metrics_file
        if path is None:
            return
        if not isinstance(path, str) or not path.endswith(".prom") or os.path.basename(path) == ".prom":
            raise ConfigurationError(
                f"metrics_file must be the path of a file whose name ends in .prom (node_exporter's textfile "
                f"collector reads only those), got {path!r}"
            )
        object.__setattr__(self, "metrics_file", os.path.abspath(path))

    def _check_service_name(self) -> None:
        name = self.service_name
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ConfigurationError(f"service_name must be a non-empty str or None, got {name!r}")
        attributes = self.resource_attributes
        if attributes is not None:
            if not isinstance(attributes, Mapping):
                raise ConfigurationError(f"resource_attributes must be a mapping or None, got {attributes!r}")
            for key, value in attributes.items():
                if not isinstance(key, str) or not key:
                    raise ConfigurationError(f"resource_attributes keys must be non-empty str, got {key!r}")
                if value.__class__ not in (str, bool, int, float):
                    raise ConfigurationError(
                        f"resource_attributes[{key!r}] must be a str, bool, int or float, got {value!r}")
        if self.format not in OTLP_FORMATS:
            return
        # here, in the application: the sender's own environment and program name say nothing
        if attributes is None:
            attributes = otel_resource_attributes(os.environ)
        object.__setattr__(self, "resource_attributes", dict(attributes))
        if name is None:
            from ._otlp import default_service_name  # only the OTLP formats need it

            given = attributes.get("service.name")
            object.__setattr__(self, "service_name", default_service_name(
                fallback=given if isinstance(given, str) and given.strip() else None))

    def to_wire(self) -> dict[str, Any]:
        """The options a sender needs, as plain data (no callables)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.pop("before_send")
        out["headers"] = dict(self.headers)
        out["properties"] = dict(self.properties)
        out["context"] = dict(self.context)
        if self.resource_attributes is not None:
            out["resource_attributes"] = dict(self.resource_attributes)
        return out

    def redacted_endpoint(self) -> str:
        """The destination as logs, sender.json and ``mpsender status`` show it: no
        secret of the key, the endpoint's or the proxy's credentials."""
        key = self.write_key
        shown = f"{key[:4]}…" if len(key) > 8 else "…"
        via = f", proxy {redact_url(self.proxy)}" if self.proxy else ""
        return f"{redact_url(self.endpoint)} ({self.format}, key {shown}{via})"


def redact_url(url: str) -> str:
    """``url`` with its user info masked (``http://***@host:3128``): a proxy's user name
    may be a token too. Anything that does not parse is masked whole after the scheme."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or "@" not in url:
        if parts is not None:
            return url
        scheme, sep, _ = url.partition("://")
        return f"{scheme}{sep}***" if sep else "***"
    host = parts.netloc.rpartition("@")[2]
    if "@" not in parts.netloc:  # an "@" in the path or query: no credentials to hide
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}"))


def _check_seconds(name: str, value: object, *, allow_zero: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigurationError(f"{name} must be a number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero) or math.isinf(value):
        raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")


def _parse_bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"not a boolean: {raw!r}")


def _parse_optional_float(raw: str) -> float | None:
    if raw.strip().lower() in ("", "none", "never", "off"):
        return None
    return float(raw)


def _parse_optional_str(raw: str) -> str | None:
    return raw.strip() or None


def _parse_headers(raw: str) -> dict[str, str]:
    # "Name: value; Other: value"
    out = {}
    for part in raw.split(";"):
        if part.strip():
            name, sep, value = part.partition(":")
            if not sep:
                raise ValueError(f"header without ':' in {raw!r}")
            out[name.strip()] = value.strip()
    return out


_ENV_PARSERS: dict[str, Callable[[str], Any]] = {
    "write_key": str,
    "endpoint": str,
    "format": str,
    "path": str,
    "disabled": _parse_bool,
    "batch_size": int,
    "batch_bytes": int,
    "max_message_bytes": int,
    "flush_interval": float,
    "linger": float,
    "request_timeout": float,
    "shutdown_timeout": float,
    "start_timeout": float,
    "retry_base": float,
    "retry_cap": float,
    "max_event_age": _parse_optional_float,
    "max_spool_bytes": int,
    "fsync_interval": _parse_optional_float,
    "runtime_dir": str,
    "spool_dir": str,
    "gzip": _parse_bool,
    "verify_tls": _parse_bool,
    "ca_bundle": _parse_optional_str,
    "proxy": _parse_optional_str,
    "headers": _parse_headers,
    "on_error": str,
    "on_delivery": str,
    "enrich": _parse_bool,
    "python": str,
    "log_level": str,
    "metrics_file": _parse_optional_str,
    "service_name": _parse_optional_str,
    "resource_attributes": lambda raw: _parse_pairs(raw, header_names=False),
    "capture_uncaught": _parse_bool,
    "wire_records": _parse_bool,
}
_DEFAULTS = {f.name: f for f in dataclasses.fields(Options)}


def env_disabled(environ: Mapping[str, str] | None = None) -> bool:
    """True when MPSENDER_DISABLED or MPSENDER_TESTING says so (a bad value warns and
    counts as not set)."""
    return _env_flag(ENV_PREFIX + "DISABLED", environ) or env_testing(environ)


def env_testing(environ: Mapping[str, str] | None = None) -> bool:
    """True in a test run that must send nothing: MPSENDER_TESTING is set and true."""
    return _env_flag(TESTING_ENV, environ)


def _env_flag(name: str, environ: Mapping[str, str] | None) -> bool:
    raw = (os.environ if environ is None else environ).get(name)
    if raw is None:
        return False
    try:
        return _parse_bool(raw)
    except ValueError:
        logger.warning("ignoring %s=%r: not a boolean", name, raw)
        return False


def _env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, parse in _ENV_PARSERS.items():
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is None:
            continue
        try:
            values[name] = parse(raw)
        except ValueError as exc:
            logger.warning("ignoring %s%s=%r: %s; using the default", ENV_PREFIX, name.upper(), raw, exc)
    return values


def resolve_options(explicit: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Options:
    """Merge explicit arguments over MPSENDER_* variables over defaults.

    A bad explicit argument raises :class:`ConfigurationError`; a bad environment value
    logs a warning and falls back to the default.
    """
    unknown = sorted(set(explicit) - set(_DEFAULTS))
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(_DEFAULTS))}"
        )
    env = _env_values(os.environ if environ is None else environ)
    for name in list(env):
        if name in explicit and explicit[name] is not None:
            del env[name]
            continue
        try:
            Options(**{**_sentinels(), name: env[name]})
        except ConfigurationError as exc:
            logger.warning("ignoring %s%s: %s; using the default", ENV_PREFIX, name.upper(), exc)
            del env[name]
    merged = {**env, **{k: v for k, v in explicit.items() if v is not None or k in _NULLABLE}}
    if merged.get("format", "segment") in OTLP_FORMATS:
        _otel_exporter_env(merged, os.environ if environ is None else environ)
    if env_testing(os.environ if environ is None else environ):
        merged["disabled"] = True  # even over an explicit disabled=False: see TESTING_ENV
    return Options(**merged)


#: OpenTelemetry's exporter variables mpsender reads for the OTLP formats, the logs signal's
#: own first (as OTel's SDKs read them: the signal's variable replaces the generic one)
OTEL_ENDPOINT_ENV = ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
OTEL_HEADERS_ENV = ("OTEL_EXPORTER_OTLP_LOGS_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")


def _otel_exporter_env(merged: dict[str, Any], environ: Mapping[str, str]) -> None:
    """For the OTLP formats, what an OpenTelemetry deployment already exports, under what
    mpsender is told (an argument or MPSENDER_*): the endpoint, when none is given, and
    headers, each replaced by a ``headers`` entry of the same name (any case).

    ``OTEL_EXPORTER_OTLP_ENDPOINT`` is a base URL (``/v1/logs`` is appended, as for
    ``endpoint``); ``OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`` is the whole URL, used as it is.
    Headers are ``name=value`` pairs separated by commas, percent-encoded (the W3C Baggage
    form OTel specifies). A value that cannot be used is logged and ignored, as a bad
    MPSENDER_* value is."""
    if not merged.get("endpoint"):
        for name in OTEL_ENDPOINT_ENV:
            raw = environ.get(name, "").strip()
            if not raw:
                continue
            url = urllib.parse.urlsplit(raw)
            if url.scheme not in ("http", "https") or not url.netloc or url.query or url.fragment:
                # (not the value: a URL can carry credentials)
                logger.warning("ignoring %s: not an http:// or https:// URL without a query", name)
                continue
            if name == OTEL_ENDPOINT_ENV[0]:  # the logs' own URL, path and all
                merged["endpoint"] = f"{url.scheme}://{url.netloc}"
                merged.setdefault("path", url.path or "/")
            else:
                merged["endpoint"] = raw
            break
    for name in OTEL_HEADERS_ENV:
        raw = environ.get(name, "").strip()
        if not raw:
            continue
        try:
            found = parse_otel_headers(raw)
        except ValueError as exc:
            logger.warning("ignoring %s: %s", name, exc)
            continue
        from ._wire import _merge_headers  # it imports this module

        given = merged.get("headers")
        merged["headers"] = _merge_headers(found, given if isinstance(given, Mapping) else None)
        break


def parse_otel_headers(raw: str) -> dict[str, str]:
    """``OTEL_EXPORTER_OTLP_HEADERS``' form: ``name=value,name2=value2``, each side
    percent-decoded and stripped. ``ValueError`` names the first entry that is not one
    (without its value: headers carry keys)."""
    return _parse_pairs(raw, header_names=True)


def _parse_pairs(raw: str, *, header_names: bool) -> dict[str, str]:
    """OTel's ``key=value,key2=value2`` (W3C Baggage's form, percent-encoded)."""
    out: dict[str, str] = {}
    for i, part in enumerate(raw.split(","), 1):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = urllib.parse.unquote(name).strip()
        value = urllib.parse.unquote(value).strip()
        if not sep or not (_TOKEN.fullmatch(name) if header_names else name):
            raise ValueError(f"entry {i} is not name=value{' with a header name' if header_names else ''} "
                             "(the form is 'name=value,name2=value2')")
        if header_names and any(c in value for c in "\r\n\0"):
            raise ValueError(f"the value of {name!r} has a line break or NUL in it")
        out[name] = value
    return out


def otel_resource_attributes(environ: Mapping[str, str]) -> dict[str, str]:
    """``OTEL_RESOURCE_ATTRIBUTES`` (``key=value,key2=value2``, percent-encoded), or {}
    when it is unset or cannot be read (logged, by name, as a bad MPSENDER_* value is)."""
    raw = environ.get("OTEL_RESOURCE_ATTRIBUTES", "").strip()
    if not raw:
        return {}
    try:
        return _parse_pairs(raw, header_names=False)
    except ValueError as exc:
        logger.warning("ignoring OTEL_RESOURCE_ATTRIBUTES: %s", exc)
        return {}


#: an HTTP header name (RFC 9110's token)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


# Options whose None is meaningful when given explicitly.
_NULLABLE = frozenset({"max_event_age", "fsync_interval"})


def _sentinels() -> dict[str, Any]:
    """Valid placeholder identity so one env value can be validated alone."""
    return {"write_key": "k", "endpoint": "http://127.0.0.1"}
