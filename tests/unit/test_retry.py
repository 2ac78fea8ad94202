"""Unit tests for the retry policy in mpsender._retry."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from mpsender._retry import (
    RETRYABLE_STATUSES,
    RateLimit,
    backoff_delay,
    expired,
    is_auth_status,
    is_retryable_status,
    is_size_rejection,
    next_delay,
    parse_retry_after,
)

NOW = datetime(2026, 11, 23, 8, 0, 0, tzinfo=timezone.utc).timestamp()


def http_date(offset: float) -> str:
    """An IMF-fixdate header value ``offset`` seconds from NOW."""
    return format_datetime(
        datetime.fromtimestamp(NOW + offset, tz=timezone.utc), usegmt=True
    )


# -- statuses ----------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 507, 520, 599])
def test_retryable_statuses(status: int) -> None:
    """408, 429 and 5xx (other than 501 and 505) are retried."""
    assert is_retryable_status(status)
    assert status in RETRYABLE_STATUSES


@pytest.mark.parametrize(
    "status", [200, 204, 301, 400, 401, 403, 404, 409, 413, 422, 501, 505, 600]
)
def test_not_retryable_statuses(status: int) -> None:
    """Success, redirects, other 4xx, 501, 505 and non-5xx codes are not retried."""
    assert not is_retryable_status(status)


def test_retryable_table_is_exact() -> None:
    """The table holds exactly 408, 429 and the 98 retryable 5xx codes."""
    assert len(RETRYABLE_STATUSES) == 100
    assert 501 not in RETRYABLE_STATUSES and 505 not in RETRYABLE_STATUSES


@pytest.mark.parametrize("status,expected", [(401, True), (403, True), (400, False),
                                             (404, False), (407, True), (500, False)])
def test_auth_statuses(status: int, expected: bool) -> None:
    """Only 401, 403 (the key) and 407 (the proxy's credentials) count as an auth failure."""
    assert is_auth_status(status) is expected


@pytest.mark.parametrize(
    "status,body,expected",
    [
        (413, "", True),
        (413, "whatever", True),
        (400, "Request Entity Too Large", True),
        (400, '{"error":"message exceeds 32KB"}', True),
        (400, "Batch SIZE limit", True),
        (400, "payload too big", True),
        (400, "invalid write key format", False),
        (400, "", False),
        (422, "too large", False),
        (500, "size", False),
    ],
)
def test_size_rejection(status: int, body: str, expected: bool) -> None:
    """413 always, a 400 only when its body speaks of size, nothing else."""
    assert is_size_rejection(status, body) is expected


def test_size_rejection_only_scans_the_start_of_the_body() -> None:
    """A size word buried past the scanned prefix of a huge body is not read."""
    assert not is_size_rejection(400, "x" * 10_000 + "too large")


# -- Retry-After --------------------------------------------------------------


@pytest.mark.parametrize(
    "value,expected",
    [("120", 120.0), ("0", 0.0), ("1.5", 1.5), (" 7 ", 7.0), ("3600", 3600.0)],
)
def test_retry_after_seconds(value: str, expected: float) -> None:
    """Delta-seconds, integer or fractional, give that many seconds."""
    assert parse_retry_after(value, NOW) == expected


def test_retry_after_http_date_in_future() -> None:
    """An HTTP-date in the future gives the seconds until it."""
    assert parse_retry_after(http_date(90), NOW) == 90.0


def test_retry_after_http_date_in_past() -> None:
    """An HTTP-date in the past gives 0.0."""
    assert parse_retry_after(http_date(-90), NOW) == 0.0


def test_retry_after_http_date_minus_zero_zone_is_utc() -> None:
    """A date with the "-0000" zone is read as UTC, not local time."""
    value = http_date(60).replace("GMT", "-0000")
    assert parse_retry_after(value, NOW) == 60.0


def test_retry_after_http_date_with_offset() -> None:
    """A date with a numeric zone offset is converted before comparing."""
    when = datetime.fromtimestamp(NOW + 30, tz=timezone.utc).astimezone(
        timezone(timedelta(hours=2))
    )
    assert parse_retry_after(format_datetime(when), NOW) == 30.0


@pytest.mark.parametrize(
    "value",
    [None, "", "  ", "soon", "-5", "-1.5", "1e3", "nan", "inf", "1,5", "12s",
     "Wed, 99 Foo 2015 07:28:00 GMT", "Wed, 21 Oct 99999 07:28:00 GMT"],
)
def test_retry_after_unusable(value: str | None) -> None:
    """Absent, empty, negative or unparseable values give None."""
    assert parse_retry_after(value, NOW) is None


def test_retry_after_capped() -> None:
    """Seconds and dates beyond the cap are cut to it."""
    assert parse_retry_after("999999", NOW) == 3600.0
    assert parse_retry_after("999999", NOW, cap=60.0) == 60.0
    assert parse_retry_after(http_date(86400), NOW) == 3600.0
    assert parse_retry_after("99999999999999999999999", NOW) == 3600.0


# -- backoff -------------------------------------------------------------------


@pytest.mark.parametrize(
    "attempt,expected", [(0, 0.5), (1, 1.0), (2, 2.0), (5, 16.0), (6, 30.0), (50, 30.0)]
)
def test_backoff_ceiling_doubles_to_cap(attempt: int, expected: float) -> None:
    """With rand() == 1 the delay is base * 2**attempt, saturating at cap."""
    assert backoff_delay(attempt, rand=lambda: 1.0) == expected


def test_backoff_full_jitter() -> None:
    """The delay is rand() times the ceiling, anywhere from zero up."""
    assert backoff_delay(3, rand=lambda: 0.25) == 1.0
    assert backoff_delay(3, rand=lambda: 0.0) == 0.0


def test_backoff_custom_base_and_cap() -> None:
    """base and cap are honoured."""
    assert backoff_delay(2, base=0.1, cap=100.0, rand=lambda: 1.0) == pytest.approx(0.4)
    assert backoff_delay(10, base=1.0, cap=5.0, rand=lambda: 0.5) == 2.5


@pytest.mark.parametrize("attempt", [1023, 1024, 10_000, 10**30])
def test_backoff_huge_attempt_does_not_overflow(attempt: int) -> None:
    """Huge attempt numbers give the cap instead of raising OverflowError."""
    assert backoff_delay(attempt, rand=lambda: 1.0) == 30.0


def test_backoff_default_rand_is_within_bounds() -> None:
    """With the real random source the delay stays within [0, ceiling)."""
    delays = [backoff_delay(2) for _ in range(200)]
    assert all(0.0 <= d < 2.0 for d in delays)
    assert len(set(delays)) > 1


def test_backoff_negative_attempt_raises() -> None:
    """A negative attempt is a programming error."""
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay(-1)


def test_next_delay_without_retry_after_is_backoff() -> None:
    """No Retry-After: the jittered backoff."""
    assert next_delay(2, retry_after=None, rand=lambda: 0.5) == 1.0


def test_next_delay_retry_after_is_a_floor() -> None:
    """Retry-After longer than the backoff wins, even past the backoff cap."""
    assert next_delay(2, retry_after=7.0, rand=lambda: 0.5) == 7.0
    assert next_delay(0, retry_after=120.0, cap=30.0, rand=lambda: 1.0) == 120.0


def test_next_delay_backoff_longer_than_retry_after() -> None:
    """A Retry-After shorter than the backoff does not shorten it."""
    assert next_delay(4, retry_after=0.0, rand=lambda: 1.0) == 8.0


def test_next_delay_passes_base_and_cap() -> None:
    """next_delay forwards base and cap to the backoff."""
    assert next_delay(3, retry_after=None, base=1.0, cap=4.0, rand=lambda: 1.0) == 4.0


# -- deadline ------------------------------------------------------------------


def test_expired_without_max_age_never() -> None:
    """max_age=None never expires."""
    assert not expired(0.0, 1e12, None)


def test_expired_boundary() -> None:
    """An event exactly max_age old is kept; older is expired."""
    assert not expired(100.0, 160.0, 60.0)
    assert expired(100.0, 160.5, 60.0)
    assert not expired(100.0, 110.0, 60.0)


# -- RateLimit -----------------------------------------------------------------


def test_rate_limit_starts_free() -> None:
    """A new RateLimit holds nothing."""
    assert RateLimit().remaining(1000.0) == 0.0


def test_rate_limit_hold_and_remaining() -> None:
    """hold() sets a deadline; remaining() counts down to 0.0 and not below."""
    rl = RateLimit()
    rl.hold(10.0, now=100.0)
    assert rl.until == 110.0
    assert rl.remaining(104.0) == 6.0
    assert rl.remaining(110.0) == 0.0
    assert rl.remaining(200.0) == 0.0


def test_rate_limit_only_extends() -> None:
    """A shorter hold never shortens a longer one; a longer one extends it."""
    rl = RateLimit()
    rl.hold(60.0, now=100.0)
    rl.hold(5.0, now=101.0)
    assert rl.until == 160.0
    rl.hold(100.0, now=101.0)
    assert rl.until == 201.0


@pytest.mark.parametrize("seconds", [0.0, -5.0, math.nan])
def test_rate_limit_ignores_non_positive_hold(seconds: float) -> None:
    """Zero, negative and NaN holds change nothing."""
    rl = RateLimit(until=50.0)
    rl.hold(seconds, now=10.0)
    assert rl.until == 50.0
    assert "50.0" in repr(rl)
