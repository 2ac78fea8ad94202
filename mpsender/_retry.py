"""The retry policy, as small pure functions.

Nothing here sleeps, reads a clock or does I/O: callers pass ``now`` (and a
random source for jitter) so every decision can be unit-tested exactly. The
uploader in the sender process strings them together:

* a response status is retryable (:func:`is_retryable_status`), an auth
  failure that pauses delivery while keeping the data (:func:`is_auth_status`),
  a size rejection that calls for splitting the batch
  (:func:`is_size_rejection`), or a permanent rejection;
* the wait before the next attempt is :func:`next_delay`: full-jitter
  exponential backoff, never shorter than the server's ``Retry-After``
  (:func:`parse_retry_after`);
* an event still unsent ``max_event_age`` after it was written is given up (:func:`expired`);
* a ``Retry-After`` holds the whole host, not one batch: :class:`RateLimit`.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from datetime import timezone
from email.utils import parsedate_to_datetime

# 501 Not Implemented and 505 HTTP Version Not Supported will answer the same
# way however often they are asked; every other 5xx is the server's trouble.
RETRYABLE_STATUSES: frozenset[int] = frozenset(
    {408, 429} | {s for s in range(500, 600) if s not in (501, 505)}
)

# 407: a forward proxy refused its credentials (for http:// endpoints it answers the
# request itself; through CONNECT httpx raises instead, a network error that retries)
_AUTH_STATUSES = frozenset({401, 403, 407})

# Words collectors use in a 400 body when the request or one event is too big
# (Segment: "exceeds the maximum size", others "payload too large").
_SIZE_WORDS = ("too large", "too big", "size", "exceed")

# Only look at the start of a body: a size complaint is said up front, and a
# huge HTML error page should not cost a full lowercase copy.
_SIZE_BODY_SCAN = 4096

_DELTA_SECONDS = re.compile(r"\s*(\d+(?:\.\d+)?)\s*")


def is_retryable_status(status: int) -> bool:
    """Whether a response with ``status`` is worth sending again unchanged."""
    return status in RETRYABLE_STATUSES


def is_auth_status(status: int) -> bool:
    """Whether ``status`` says the key is wrong (401, 403) or the proxy's credentials (407).

    That is not a problem of the events: the sender pauses and keeps them.
    """
    return status in _AUTH_STATUSES


def is_size_rejection(status: int, body: str) -> bool:
    """Whether the server refused the request for its size.

    413 always; a 400 when its body talks about size ("too large", "size",
    "exceeds", ..., case-insensitive). The caller splits the batch instead of
    dropping it.
    """
    if status == 413:
        return True
    if status != 400 or not body:
        return False
    text = body[:_SIZE_BODY_SCAN].lower()
    return any(word in text for word in _SIZE_WORDS)


def parse_retry_after(
    value: str | None, now: float, *, cap: float = 3600.0
) -> float | None:
    """Seconds to wait according to a ``Retry-After`` header value.

    Accepts delta-seconds (``"120"``, also ``"1.5"``) and an HTTP-date, which is
    read against ``now``, the current wall-clock time in epoch seconds. A date
    in the past gives ``0.0``. The result is at most ``cap``. An absent, empty,
    negative or unparseable value gives ``None`` (no opinion from the server).
    """
    if value is None:
        return None
    match = _DELTA_SECONDS.fullmatch(value)
    if match is not None:
        seconds = float(match.group(1))
    else:
        seconds_or_none = _parse_http_date(value, now)
        if seconds_or_none is None:
            return None
        seconds = seconds_or_none
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), cap)


def _parse_http_date(value: str, now: float) -> float | None:
    if not value.strip():
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        # parsedate_to_datetime gives a naive datetime for a "-0000" zone, which
        # RFC 5322 defines as UTC; .timestamp() would read it as local time.
        when = when.replace(tzinfo=timezone.utc)
    try:
        return when.timestamp() - now
    except (OverflowError, ValueError, OSError):
        return None


def backoff_delay(
    attempt: int,
    *,
    base: float = 0.5,
    cap: float = 30.0,
    rand: Callable[[], float] = random.random,
) -> float:
    """Full-jitter exponential backoff: ``rand() * min(cap, base * 2**attempt)``.

    ``attempt`` counts retries from 0. Any attempt number is safe: the ceiling
    saturates at ``cap`` instead of overflowing. ``rand`` returns a float in
    ``[0, 1)``; pass a constant to get exact results in tests.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    try:
        ceiling = min(cap, math.ldexp(base, attempt))
    except OverflowError:
        ceiling = cap
    return rand() * ceiling


def next_delay(
    attempt: int,
    *,
    retry_after: float | None,
    base: float = 0.5,
    cap: float = 30.0,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number ``attempt``.

    The larger of the jittered backoff and ``retry_after``: the server's
    ``Retry-After`` is a floor that jitter never shortens (and may exceed
    ``cap``, which bounds only our own backoff).
    """
    delay = backoff_delay(attempt, base=base, cap=cap, rand=rand)
    if retry_after is not None and retry_after > delay:
        return retry_after
    return delay


def expired(written: float, now: float, max_age: float | None) -> bool:
    """Whether an event ``track()`` wrote at ``written`` (never its own timestamp) is too
    old to send (``max_event_age``).

    ``max_age=None`` means no limit. An event exactly ``max_age`` old is still
    sent; older ones are given up.
    """
    if max_age is None:
        return False
    return now - written > max_age


class RateLimit:
    """The host's rate-limit state: nothing is sent before ``until``.

    ``until`` is a ``time.monotonic()`` deadline. One instance per sender, so a
    ``Retry-After`` on one batch holds every batch for that destination.
    """

    __slots__ = ("until",)

    def __init__(self, until: float = 0.0) -> None:
        self.until = until

    def __repr__(self) -> str:
        return f"RateLimit(until={self.until!r})"

    def hold(self, seconds: float, now: float) -> None:
        """Hold sending for ``seconds`` from ``now``; only ever extends the hold."""
        if not seconds > 0.0:  # also refuses NaN
            return
        deadline = now + seconds
        if deadline > self.until:
            self.until = deadline

    def remaining(self, now: float) -> float:
        """Seconds left on the hold at ``now`` (0.0 when free to send)."""
        left = self.until - now
        return left if left > 0.0 else 0.0
