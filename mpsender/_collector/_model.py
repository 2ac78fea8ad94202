"""The collector's vocabulary: faults, request records, totals, and the limits and names it shares."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, TypedDict

logger = logging.getLogger(__name__)

SEGMENT: Final = "segment"
POSTHOG: Final = "posthog"
JSON: Final = "json"
#: OTLP/HTTP logs, JSON and protobuf (both at /v1/logs; the Content-Type tells them apart)
OTLP_JSON: Final = "otlp"
OTLP_PROTO: Final = "otlp-proto"

#: A body larger than this on the wire is refused with 413 before it is read.
MAX_WIRE_BYTES: Final = 64 * 1024 * 1024
#: A gzip body that inflates past this is refused with 413 (unless ``max_body_bytes`` says less).
MAX_BODY_BYTES: Final = 256 * 1024 * 1024

_HEALTH_PATH: Final = "/health"
_BATCH_METHODS: Final = frozenset({"POST"})



@dataclass(frozen=True, slots=True)
class Faults:
    """Ways to make the collector misbehave; swap them live with :meth:`Collector.set_faults`.

    ``hang`` and ``delay`` apply to every request but ``GET /health``; the others to
    batch requests (a POST to a format's path), in this order: ``status``,
    ``fail_first``, ``fail_rate``, then ``max_body_bytes`` and ``reject_event`` once
    the body is decoded. The full order is in ``docs/collector.md``.
    """

    fail_first: int = 0
    """Answer ``fail_status`` to the first N batch requests after these faults are set."""
    fail_rate: float = 0.0
    """Answer ``fail_status`` to this fraction of batch requests, drawn from ``random.Random(seed)``."""
    fail_status: int = 503
    status: int | None = None
    """Answer every batch request with this status, without looking at it."""
    retry_after: str | None = None
    """``Retry-After`` value sent with the failures above (``"2"`` or an HTTP-date)."""
    delay: float = 0.0
    """Seconds to wait, after reading a request, before handling and answering it."""
    hang: bool = False
    """Read the request and never answer; the connection is held until ``stop()``."""
    reject_event: str | None = None
    """A batch holding a track event of this name gets 400 naming it; nothing of it is stored."""
    max_body_bytes: int | None = None
    """A body larger than this once decompressed gets 413."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.fail_first < 0:
            raise ValueError(f"fail_first must be >= 0, got {self.fail_first!r}")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError(f"fail_rate must be within [0, 1], got {self.fail_rate!r}")
        if not 100 <= self.fail_status <= 599:
            raise ValueError(f"fail_status must be an HTTP status, got {self.fail_status!r}")
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP status or None, got {self.status!r}")
        if not (math.isfinite(self.delay) and self.delay >= 0.0):
            raise ValueError(f"delay must be a finite number of seconds >= 0, got {self.delay!r}")
        if self.max_body_bytes is not None and self.max_body_bytes < 0:
            raise ValueError(f"max_body_bytes must be >= 0 or None, got {self.max_body_bytes!r}")
        if self.retry_after is not None and ("\r" in self.retry_after or "\n" in self.retry_after):
            raise ValueError("retry_after must be a single header line")


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the collector saw it."""

    arrived_at: float
    """``time.monotonic()`` when the request line and headers had been read."""
    method: str
    path: str
    """Without the query string."""
    headers: dict[str, str]
    """Lower-case names; repeated headers joined with ``", "``."""
    status: int | None
    """The status answered; ``None`` when none was (``hang``, or stopped while delayed)."""
    events: int
    """Events stored from this request (0 unless the status is 200)."""
    body_bytes: int
    """Body size on the wire, before any decompression."""
    gzip: bool
    error: str | None
    """Why the request failed, as in the ``{"error": ...}`` answer; ``None`` on success."""
    format: str | None
    """``"segment"``, ``"posthog"``, ``"json"``, ``"otlp"`` or ``"otlp-proto"``; ``None`` for other paths."""
    body: bytes | None = None
    """The body as it came (gzipped if it was), with ``Collector(keep_bodies=True)``; else ``None``."""


class CollectorTotals(TypedDict):
    """Running totals, for a once-a-second progress line."""

    events: int
    requests: int
    errors: dict[int, int]
    """Requests answered with a status >= 400, by status."""
    unanswered: int
    """Requests never answered (``hang``, or stopped while delayed)."""


class _Reject(Exception):
    """A request is answered with an error status; carries what to send and record."""

    def __init__(
        self,
        status: int,
        reason: str,
        *,
        headers: Iterable[tuple[str, str]] = (),
        extra: dict[str, object] | None = None,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = list(headers)
        self.extra = extra or {}


class _Incomplete(Exception):
    """The client went away before sending the whole body."""


@dataclass(slots=True)
class _Batch:
    """A valid batch on its way to the store."""

    fmt: str
    text: str
    count: int
    sent_at: str | None
    events: list[dict[str, Any]] | None
    """The events decoded by Python, when SQLite could not read the text; else ``None``."""
