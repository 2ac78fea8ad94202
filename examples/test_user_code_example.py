"""How to test your own tracking with mpsender.testing.

Run it with ``pytest examples/test_user_code_example.py``. The application code is
at the top to keep the example in one file; in a project it lives in your package
(``myapp/analytics.py``, ``myapp/accounts.py``) and the tests import it.

Nothing is sent and no sender process is started: inside ``capture()`` (or the
``mpsender_events`` fixture of the ``mpsender`` pytest plugin) every call goes
through the same building and validation as in production -- your ``before_send``
and super properties included -- and is recorded instead. Outside them nothing is
sent either: the plugin sets MPSENDER_TESTING=1 for the run, whatever your shell
exports (docs/testing.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest

import mpsender
import mpsender.testing

# --- myapp/analytics.py ------------------------------------------------------------------


def scrub(event: dict[str, Any]) -> dict[str, Any] | None:
    """before_send: no e-mail addresses leave the process; health checks are not tracked."""
    if event.get("event") == "Health Check":
        return None
    props = event.get("properties") or {}
    if "email" in props:
        event = {**event, "properties": {**props, "email": "[redacted]"}}
    return event


def setup_analytics() -> None:
    """Called once at start-up (create_app(), Django's AppConfig.ready(), a Celery signal).
    The write key and endpoint come from MPSENDER_WRITE_KEY / MPSENDER_ENDPOINT."""
    mpsender.init(before_send=scrub, properties={"service": "accounts"})


# --- myapp/accounts.py ---------------------------------------------------------------------


class PaymentDeclined(Exception):
    pass


def signup(email: str, plan: str, *, card_ok: bool = True) -> str:
    user_id = "u_" + hashlib.sha256(email.encode()).hexdigest()[:12]
    if not card_ok:
        mpsender.track("Payment Declined", user_id=user_id, properties={"plan": plan})
        raise PaymentDeclined(email)
    mpsender.identify(user_id, traits={"plan": plan})
    mpsender.track("Signup", user_id=user_id, properties={"plan": plan, "email": email})
    return user_id


def health() -> str:
    mpsender.track("Health Check", anonymous_id="probe")
    return "ok"


# --- tests/conftest.py -------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def analytics() -> Iterator[None]:
    """The app configured as in production; the plugin's MPSENDER_TESTING=1 keeps it from
    sending (no key or endpoint is needed)."""
    setup_analytics()
    yield
    mpsender.shutdown()


# --- tests/test_accounts.py ----------------------------------------------------------------------


def test_signup_is_tracked(mpsender_events: mpsender.testing.CapturedEvents) -> None:
    """The fixture form: everything the test tracks is in mpsender_events."""
    user_id = signup("ada@example.com", "pro")

    [event] = mpsender_events.named("Signup")
    assert event["userId"] == user_id
    assert event["properties"]["plan"] == "pro"
    assert event["properties"]["service"] == "accounts"  # the super property from init()


def test_email_never_leaves_the_process() -> None:
    """The context-manager form; the app's before_send runs as in production."""
    with mpsender.testing.capture() as events:
        signup("ada@example.com", "pro")

    assert events.names() == ["Signup"]
    assert events.named("Signup")[0]["properties"]["email"] == "[redacted]"
    assert events.of_type("identify")[0]["traits"] == {"plan": "pro"}


def test_declined_payment_is_tracked_and_signup_is_not() -> None:
    with mpsender.testing.capture() as events:
        with pytest.raises(PaymentDeclined):
            signup("bob@example.com", "team", card_ok=False)

    assert events.names() == ["Payment Declined"]


def test_health_checks_are_not_tracked() -> None:
    with mpsender.testing.capture() as events:
        assert health() == "ok"

    assert events == []
    assert events.dropped == {"dropped_by_hook": 1}


def test_a_bad_property_fails_the_test_not_production() -> None:
    """Validation runs as in production: an unserializable value raises in track()."""
    with mpsender.testing.capture():
        with pytest.raises(mpsender.UnserializableError, match="properties.card"):
            mpsender.track("Signup", user_id="u1", properties={"card": object()})
