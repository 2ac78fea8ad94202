"""The senders' counters in Prometheus' text exposition format (0.0.4), for ops to scrape.

One renderer for both places the text comes from, so they cannot drift apart:
``mpsender status --prometheus`` (every destination under the runtime directory, the
live senders asked over their sockets) and the sender's own ``metrics_file`` (its one
destination, rewritten from its housekeeping tick, for node_exporter's textfile
collector). Both render the sender's ``STATS`` answer (``Server.stats()``), so the same
counters give the same text.

Every series is labelled ``destination`` (the destination id: the name of the
destination's directory under the runtime directory), ``endpoint`` (scheme, host and
port only: no credentials, path or query, where a key could hide) and ``format``. The
write key never appears: nothing here reads it.
"""

from __future__ import annotations

import logging
import math
import os
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._lograte import Throttle
from ._options import Options

logger = logging.getLogger(__name__)
_throttle = Throttle(logger)

__all__ = [
    "DROP_REASONS", "INCIDENT_REASONS", "MetricsFile", "Target", "endpoint_label", "metrics_path", "render_metrics",
    "sender_metrics_file",
]

#: The reasons a sender counts events as dropped, each shown (0 until it happens, so
#: ``increase()`` works from the first scrape). Where each is counted: expired, oversize,
#: undecodable, rejected and spool_full in ``_sender/_uploader.py``; corrupt and truncated
#: (regions of the spool, whose events cannot be counted) in ``_sender/_spool.py``;
#: spill_failed reported by application processes (``_sink.py``, in their HELLO); purged
#: by ``mpsender spool purge``. A reason not listed (an application may report its own)
#: is shown too. tests/unit/test_metrics_text.py checks the list against the code.
DROP_REASONS = ("expired", "rejected", "oversize", "spool_full", "undecodable", "corrupt", "truncated",
                "spill_failed", "purged")
#: trouble that lost no event, counted by the sender
INCIDENT_REASONS = ("auth_failures", "spool_unavailable", "refused_connections", "hook_errors", "bad_frames",
                    "spool_replaced")

#: what ``metrics_file`` may hold to name each destination's own file
DESTINATION_PLACEHOLDER = "{destination}"


@dataclass(frozen=True, slots=True)
class Target:
    """One destination as the metrics show it."""

    destination: str              # the destination id
    endpoint: str = ""            # endpoint_label() of the endpoint
    format: str = ""
    version: str = ""             # of the sender, when known
    #: the sender answered (the CLI) / is running (the sender itself, until it exits)
    up: bool = False
    #: the sender's STATS answer, or (no sender) the saved totals and the spool's pending_bytes
    stats: Mapping[str, Any] = field(default_factory=dict)
    #: the last failed start, (epoch seconds, reason), while no sender runs
    start_failure: tuple[float, str] | None = None


def endpoint_label(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: no user info, path or query (a key may be in
    any of them); "" when it does not parse."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return ""
    host = parts.hostname or ""
    if not parts.scheme or not host:
        return ""
    if ":" in host:
        host = f"[{host}]"  # IPv6
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


# --- the families ---------------------------------------------------------------------------

Value = Callable[[Target], "float | int | bool | None"]


def _stat(key: str) -> Value:
    return lambda t: _number(t.stats.get(key))


def _failed_requests(t: Target) -> int | None:
    # every request is counted once, and an accepted one is a batch: a counter too
    requests, batches = _number(t.stats.get("requests")), _number(t.stats.get("batches"))
    if requests is None or batches is None:
        return None
    return max(0, int(requests) - int(batches))


def _last_status(t: Target) -> int | None:
    if not t.up:
        return None
    status = _number(t.stats.get("last_status"))
    return 0 if status is None else int(status)  # none yet, or a network error


#: name, type, help, value (None: no sample for that target)
_FAMILIES: tuple[tuple[str, str, str, Value], ...] = (
    ("mpsender_sender_up", "gauge",
     "1 while the destination's sender runs and answers, else 0 (none running: idle after linger, stopped, "
     "failed to start, or not answering)", lambda t: t.up),
    ("mpsender_sender_start_time_seconds", "gauge", "When the running sender started, in seconds since the epoch",
     lambda t: _number(t.stats.get("started_at")) if t.up else None),
    ("mpsender_events_received_total", "counter", "Events this sender read from the spool and sockets "
     "(since it started)", _stat("received")),
    ("mpsender_events_uploaded_total", "counter", "Events the endpoint accepted (2xx), total across restarts",
     _stat("uploaded")),
    ("mpsender_requests_total", "counter", "Requests sent to the endpoint, total across restarts",
     _stat("requests")),
    ("mpsender_requests_failed_total", "counter", "Requests the endpoint did not accept (an error status or "
     "no answer), total across restarts", _failed_requests),
    ("mpsender_batches_total", "counter", "Batches the endpoint accepted, total across restarts",
     _stat("batches")),
    ("mpsender_retries_total", "counter", "Requests sent again after a failure, total across restarts",
     _stat("retries")),
    ("mpsender_events_pending", "gauge", "Events read from the spool and not yet accepted (queued, in a batch, "
     "being retried)", _stat("pending")),
    ("mpsender_pending_bytes", "gauge", "Bytes of undelivered events in the spool", _stat("pending_bytes")),
    ("mpsender_spool_bytes", "gauge", "Bytes of the spool's files on disk", _stat("spool_bytes")),
    ("mpsender_spool_files", "gauge", "Write-ahead files in the spool", _stat("files")),
    ("mpsender_connected_processes", "gauge", "Application processes connected to the sender",
     _stat("connections")),
    ("mpsender_last_http_status", "gauge", "HTTP status of the endpoint's last answer (0: none yet, or a network "
     "error)", _last_status),
    ("mpsender_last_success_timestamp_seconds", "gauge", "When the running sender's last request was "
     "accepted, in seconds since the epoch (no sample: none yet)",
     lambda t: _number(t.stats.get("last_success_at")) if t.up else None),
    ("mpsender_rate_limited_seconds", "gauge", "Seconds until the endpoint's Retry-After expires (0: none)",
     _stat("rate_limited_for")),
    ("mpsender_request_in_flight_seconds", "gauge", "Seconds the request in flight has waited for its answer "
     "(0: none in flight); grows while the endpoint hangs", _stat("in_flight_for")),
    ("mpsender_request_in_flight_events", "gauge", "Events the request in flight carries", _stat("in_flight_events")),
)
_DROPPED = ("mpsender_events_dropped_total", "counter",
            "Events lost for good, by reason, total across restarts (corrupt and truncated count spool regions)")
_INCIDENTS = ("mpsender_incidents_total", "counter", "Trouble that lost no event, by reason, total across restarts")
_INFO = ("mpsender_sender_info", "gauge", "The destination's labels and its sender's version; always 1")
_START_FAILURE = ("mpsender_sender_start_failure_timestamp_seconds", "gauge",
                  "When the last attempt to start the destination's sender failed, while none runs "
                  "(`mpsender status` shows why and the fix)")


def render_metrics(targets: Iterable[Target]) -> str:
    """The exposition text for ``targets``: each family once (``# HELP``, ``# TYPE``), a
    sample per target that has a value; families without a sample are left out."""
    targets = list(targets)
    out: list[str] = []
    _family(out, *_INFO, [(_labels(t, version=t.version), 1) for t in targets])
    for name, kind, help_text, value in _FAMILIES:
        _family(out, name, kind, help_text, [(_labels(t), v) for t in targets if (v := value(t)) is not None])
    _family(out, *_DROPPED, [s for t in targets for s in _by_reason(t, "dropped", DROP_REASONS)])
    _family(out, *_INCIDENTS, [s for t in targets for s in _by_reason(t, "incidents", INCIDENT_REASONS)])
    _family(out, *_START_FAILURE, [(_labels(t, reason=t.start_failure[1]), t.start_failure[0])
                                   for t in targets if t.start_failure is not None and not t.up])
    return "".join(out)


def _by_reason(t: Target, key: str, known: tuple[str, ...]) -> list[tuple[str, Any]]:
    counts = t.stats.get(key)
    if not isinstance(counts, Mapping):
        return []  # an older sender, or nothing saved: no counts rather than zeros
    shown = {reason: 0 for reason in known}
    for reason, n in sorted(counts.items()):
        if isinstance(reason, str) and (v := _number(n)) is not None:
            shown[reason] = int(v)
    return [(_labels(t, reason=reason), n) for reason, n in shown.items()]


def _family(out: list[str], name: str, kind: str, help_text: str, samples: list[tuple[str, Any]]) -> None:
    if not samples:
        return
    out.append(f"# HELP {name} {_escape_help(help_text)}\n# TYPE {name} {kind}\n")
    out.extend(f"{name}{{{labels}}} {_format(v)}\n" for labels, v in samples)


def _labels(t: Target, **extra: str) -> str:
    pairs = {"destination": t.destination, "endpoint": t.endpoint, "format": t.format, **extra}
    return ",".join(f'{k}="{_escape_label(v)}"' for k, v in pairs.items())


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def _format(value: float | int | bool) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


# --- the sender's file ------------------------------------------------------------------------


def metrics_path(template: str, destination: str) -> str:
    """The file a destination's sender writes: ``{destination}`` in ``template`` replaced."""
    return template.replace(DESTINATION_PLACEHOLDER, destination)


class MetricsFile:
    """The ``metrics_file`` of one sender: rewritten when its text changed, at least every
    ``refresh`` seconds (node_exporter shows the file's mtime: a stale file means a dead
    sender), atomically (a temporary file in the same directory, then ``os.replace``),
    mode 0644 so the collector can read it. The directory is the user's: it is not made.
    Called from the sender's IO thread only."""

    def __init__(self, path: str, target: Target, *, refresh: float = 60.0) -> None:
        self.path = path
        self._target = target
        self._refresh = refresh
        self._written = ""
        self._next_refresh = -math.inf
        directory, name = os.path.split(path)
        # not *.prom: node_exporter never reads a half-written file
        self._tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")

    def update(self, stats: Mapping[str, Any], *, up: bool = True, now: float | None = None) -> bool:
        """Write the text for ``stats`` if it changed or is due; True if the file was written."""
        now = time.monotonic() if now is None else now
        target = Target(self._target.destination, self._target.endpoint, self._target.format,
                        str(stats.get("version") or self._target.version), up, stats)
        text = render_metrics([target])
        if text == self._written and now < self._next_refresh:
            return False
        try:
            self._write(text)
        except OSError as exc:
            _throttle.warning("metrics_file", "cannot write metrics_file %s: %s", self.path, exc.strerror or exc)
            return False
        self._written = text
        self._next_refresh = now + self._refresh
        return True

    def _write(self, text: str) -> None:
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.fchmod(fd, 0o644)  # the sender's umask is 077
            view = memoryview(text.encode())
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        try:
            os.replace(self._tmp, self.path)
        except OSError:
            try:
                os.unlink(self._tmp)
            except OSError:
                pass  # nothing to clean: the error that matters is raised below
            raise


def sender_metrics_file(options: Options, dest: str) -> MetricsFile | None:
    """The ``metrics_file`` of the sender of the destination directory ``dest``, if set."""
    if options.metrics_file is None:
        return None
    destination = os.path.basename(os.path.normpath(dest))
    target = Target(destination, endpoint_label(options.endpoint), options.format)
    return MetricsFile(metrics_path(options.metrics_file, destination), target)
