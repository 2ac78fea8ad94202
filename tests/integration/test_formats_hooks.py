"""Wire formats, auth, before_send, super properties and the sender's on_error /
on_delivery hooks, end to end: a real Client, a real sender process and the real
collector on 127.0.0.1."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import wait_for

import mpsender
from mpsender._collector import Collector, Faults
from mpsender._version import __version__
from mpsender.testing import capture

KEY = "test-key"
FAST = {"retry_base": 0.02, "retry_cap": 0.2}
T0 = dt.datetime(2026, 11, 23, 8, 7, 59, 123000, tzinfo=dt.timezone.utc)
LIBRARY = {"name": "mpsender", "version": __version__}



def mid(n: int) -> str:
    """The message id of the n-th call."""
    return str(uuid.UUID(int=0xABCD_0000_0000_4000_8000_0000_0000_0000 + n))


def every_call(client: mpsender.Client) -> None:
    """One call of each type, with fixed ids and timestamps."""
    client.track("Signup", user_id="u1", properties={"plan": "pro"}, timestamp=T0, message_id=mid(1))
    client.identify("u1", anonymous_id="a1", traits={"email": "a@example.com"},
                    timestamp=T0, message_id=mid(2))
    client.group("acme", user_id="u1", traits={"name": "Acme"}, timestamp=T0, message_id=mid(3))
    client.alias("a1", user_id="u1", timestamp=T0, message_id=mid(4))
    client.page("Pricing", category="Docs", user_id="u1", properties={"url": "https://x.test/p"},
                timestamp=T0, message_id=mid(5))
    client.screen("Home", anonymous_id="a2", timestamp=T0, message_id=mid(6))


@pytest.fixture
def make_client(make_client: Callable[..., mpsender.Client]) -> Callable[..., mpsender.Client]:
    """The shared fixture (tests/conftest.py), with this module's write key by default."""

    def make(endpoint: str, **options: Any) -> mpsender.Client:
        options.setdefault("write_key", KEY)
        return make_client(endpoint, **options)

    return make


@pytest.fixture
def keyed_collector(tmp_path: Path) -> Iterator[Collector]:
    """A collector that checks the write key the way each format carries it."""
    c = Collector(tmp_path / "keyed.db", write_key=KEY)
    c.start()
    try:
        yield c
    finally:
        c.close()


# --- formats ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "path"), [("segment", "/v1/batch"), ("json", "/json")])
def test_segment_shaped_formats_deliver_exactly_what_capture_shows(
    fmt: str, path: str, make_client: Callable[..., mpsender.Client], keyed_collector: Collector
) -> None:
    """Segment and the generic JSON batch: every call type reaches the collector, decoded,
    equal to what mpsender.testing.capture() records for the same calls."""
    client = make_client(keyed_collector.url, format=fmt)
    every_call(client)
    assert client.flush(timeout=15)
    with capture(client=client) as expected:
        every_call(client)
    assert keyed_collector.events() == list(expected)
    assert keyed_collector.message_ids() == [mid(n) for n in range(1, 7)]
    requests = keyed_collector.requests()
    assert {(r.path, r.format, r.status, r.gzip) for r in requests} == {(path, fmt, 200, True)}


def test_posthog_format_is_received_and_decoded(make_client: Callable[..., mpsender.Client],
                                                keyed_collector: Collector) -> None:
    """PostHog's /batch/: each call becomes its PostHog event with distinct_id, uuid, timestamp and $lib."""
    client = make_client(keyed_collector.url, format="posthog")
    every_call(client)
    assert client.flush(timeout=15)
    events = keyed_collector.events()
    assert [(e["event"], e["distinct_id"], e["uuid"]) for e in events] == [
        ("Signup", "u1", mid(1)), ("$identify", "u1", mid(2)), ("$groupidentify", "u1", mid(3)),
        ("$create_alias", "a1", mid(4)), ("$pageview", "u1", mid(5)), ("$screen", "a2", mid(6)),
    ]
    assert all(e["timestamp"] == "2026-11-23T08:07:59.123Z" for e in events)
    assert all(e["properties"]["$lib"] == "mpsender" and e["properties"]["$lib_version"] == __version__
               for e in events)
    signup, identify, group, alias, page, screen = (e["properties"] for e in events)
    assert signup["plan"] == "pro"
    assert identify["$set"] == {"email": "a@example.com"} and identify["$anon_distinct_id"] == "a1"
    assert (group["$group_type"], group["$group_key"]) == ("company", "acme")
    assert group["$group_set"] == {"name": "Acme"}
    assert (alias["distinct_id"], alias["alias"]) == ("a1", "u1")
    assert page["$current_url"] == "https://x.test/p" and page["name"] == "Pricing"
    assert screen["$screen_name"] == "Home"
    assert {(r.path, r.format, r.status) for r in keyed_collector.requests()} == {("/batch/", "posthog", 200)}


@pytest.mark.parametrize("fmt", ["segment", "posthog", "json"])
def test_iso_string_timestamps_arrive_as_utc_with_milliseconds(
    fmt: str, make_client: Callable[..., mpsender.Client], keyed_collector: Collector
) -> None:
    """ISO-8601 strings given to track() reach the collector in every format as the UTC,
    millisecond timestamps datetimes give; a bad one raises at the call and nothing of it is sent."""
    client = make_client(keyed_collector.url, format=fmt, max_event_age=None)  # fixed, historical times
    given = ["2026-11-23T08:07:59.123Z", "2026-11-23T09:37:59.123+01:30", "2026-11-23T03:07:59.1234-0500",
             "2026-11-23 08:07:59.123", T0]
    for n, stamp in enumerate(given, 1):
        client.track("Stamped", user_id="u1", timestamp=stamp, message_id=mid(n))
    with pytest.raises(mpsender.InvalidEventError, match="timestamp '2026-11-23T08:07:59Q'"):
        client.track("Stamped", user_id="u1", timestamp="2026-11-23T08:07:59Q", message_id=mid(99))
    assert client.flush(timeout=15)
    events = keyed_collector.events()
    assert keyed_collector.message_ids() == [mid(n) for n in range(1, 6)]
    assert [e["timestamp"] for e in events] == ["2026-11-23T08:07:59.123Z"] * 5


# --- auth ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "authorization"),
    [("segment", "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()),
     ("posthog", None),
     ("json", f"Bearer {KEY}")],
)
def test_auth_per_format(fmt: str, authorization: str | None,
                         make_client: Callable[..., mpsender.Client], keyed_collector: Collector) -> None:
    """Segment: Basic with the write key; PostHog: the key in the body (no header); JSON: Bearer.
    The collector checks the key, so a 200 proves it was where the format wants it."""
    client = make_client(keyed_collector.url, format=fmt)
    client.track("A", user_id="u")
    assert client.flush(timeout=15)
    [request] = keyed_collector.requests()
    assert request.status == 200 and request.events == 1
    assert request.headers.get("authorization") == authorization
    assert request.headers["user-agent"] == f"mpsender/{__version__}"


@pytest.mark.parametrize("fmt", ["segment", "posthog", "json"])
def test_wrong_key_is_refused_per_format(fmt: str, make_client: Callable[..., mpsender.Client],
                                         keyed_collector: Collector) -> None:
    """A wrong key gets 401 in every format, and the events stay in the spool (nothing dropped)."""
    client = make_client(keyed_collector.url, format=fmt, write_key="wrong-key", **FAST)
    client.track("A", user_id="u")
    assert keyed_collector.wait_for(lambda c: c.totals()["errors"].get(401, 0) >= 1, 15)
    assert not client.flush(timeout=0.3)
    sender = client.stats().sender
    assert sender is not None and sender.dropped == {} and sender.pending_bytes > 0
    assert keyed_collector.count() == 0


def test_json_format_custom_headers_and_path(make_client: Callable[..., mpsender.Client],
                                             collector: Collector) -> None:
    """The generic JSON format: custom headers (a token scheme of one's own) replace the
    Bearer header by name, extra ones are added, and the path option is used."""
    client = make_client(collector.url, format="json", path="/hooks/analytics/json",
                         headers={"Authorization": "Token abc", "X-Team": "7"})
    client.track("A", user_id="u")
    assert client.flush(timeout=15)
    [request] = collector.requests()
    assert request.path == "/hooks/analytics/json" and request.status == 200
    assert request.headers["authorization"] == "Token abc" and request.headers["x-team"] == "7"
    assert collector.events()[0]["event"] == "A"


def test_segment_path_option(make_client: Callable[..., mpsender.Client], collector: Collector) -> None:
    """path= sends to a Segment-compatible collector mounted elsewhere (a proxy, RudderStack)."""
    client = make_client(collector.url, path="/proxy/v1/batch")
    client.track("A", user_id="u")
    assert client.flush(timeout=15)
    assert [r.path for r in collector.requests()] == ["/proxy/v1/batch"]


# --- before_send and super properties, end to end -----------------------------------------------------


def test_before_send_change_drop_and_raise_end_to_end(make_client: Callable[..., mpsender.Client],
                                                     collector: Collector) -> None:
    """What the hook returns is delivered, None is never sent and is counted, and an event
    whose hook raised is delivered unchanged."""

    def hook(event: dict[str, Any]) -> dict[str, Any] | None:
        name = event.get("event")
        if name == "Drop":
            return None
        if name == "Boom":
            raise ValueError("hook bug")
        return {**event, "properties": {**event["properties"], "email": "[redacted]"}}

    client = make_client(collector.url, before_send=hook)
    client.track("Signup", user_id="u", properties={"email": "a@example.com"})
    client.track("Drop", user_id="u")
    client.track("Boom", user_id="u", properties={"email": "b@example.com"})
    assert client.flush(timeout=15)
    events = {e["event"]: e for e in collector.events()}
    assert set(events) == {"Signup", "Boom"}
    assert events["Signup"]["properties"] == {"email": "[redacted]"}
    assert events["Boom"]["properties"] == {"email": "b@example.com"}
    assert client.stats().process.dropped == {"dropped_by_hook": 1}


def test_super_properties_and_context_on_every_delivered_event(
    make_client: Callable[..., mpsender.Client], collector: Collector
) -> None:
    """properties and context set once reach the endpoint on every event (properties on
    track/page/screen, context on all), with context.library set by the sender."""
    client = make_client(collector.url, properties={"app": "web"}, context={"app": {"build": "42"}},
                         enrich=True)
    every_call(client)
    client.capture_error(RuntimeError("x"), user_id="u1")
    assert client.flush(timeout=15)
    events = collector.events()
    assert len(events) == 7
    for event in events:
        assert event["context"]["app"] == {"build": "42"}
        assert event["context"]["library"] == LIBRARY
        assert event["context"]["pid"] == os.getpid()
        if event["type"] in ("track", "page", "screen"):
            assert event["properties"]["app"] == "web", event


def test_a_tuple_key_is_delivered_not_dead_lettered(make_client: Callable[..., mpsender.Client],
                                                    collector: Collector) -> None:
    """track() accepts a tuple dict key (msgpack packs it), so the sender must deliver the
    event (the key as its str()), not dead-letter it as undecodable."""
    client = make_client(collector.url)
    client.track("A", user_id="u", properties={(1, 2): "x"})
    assert client.flush(timeout=15)
    assert client.stats().sender.dropped == {}
    assert [e["properties"] for e in collector.events()] == [{"(1, 2)": "x"}]


# --- on_error / on_delivery in the sender ---------------------------------------------------------------


class Hooks:
    """A hook module importable by the sender, appending each call as a JSON line."""

    def __init__(self, directory: Path) -> None:
        self.module = f"mps_hooks_{uuid.uuid4().hex[:8]}"
        self.log = directory / "calls.jsonl"
        (directory / f"{self.module}.py").write_text(HOOKS_SOURCE.format(log=str(self.log)))

    def path(self, name: str) -> str:
        return f"{self.module}:{name}"

    def calls(self, hook: str | None = None) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        rows = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [r for r in rows if hook is None or r["hook"] == hook]


HOOKS_SOURCE = '''
import json
import os

LOG = {log!r}


def _write(hook, outcome):
    line = json.dumps({{"hook": hook, "pid": os.getpid(), **outcome}}) + "\\n"
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def on_error(outcome):
    _write("on_error", outcome)


def on_delivery(outcome):
    _write("on_delivery", outcome)


def broken(outcome):
    raise RuntimeError("a bug in the user's hook")
'''


@pytest.fixture
def hooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Hooks:
    """A hook module on sys.path: a sender started by this process appends our sys.path."""
    directory = tmp_path / "hooks"
    directory.mkdir()
    monkeypatch.syspath_prepend(str(directory))
    return Hooks(directory)


def hooked_client(make_client: Callable[..., mpsender.Client], collector: Collector, hooks: Hooks,
                  **options: Any) -> mpsender.Client:
    return make_client(collector.url, on_error=hooks.path("on_error"),
                       on_delivery=hooks.path("on_delivery"), batch_size=10, **FAST, **options)


def track_ids(client: mpsender.Client, n: int, name: str = "E") -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    for i, message_id in enumerate(ids):
        client.track(name, user_id="u", properties={"i": i}, message_id=message_id)
    return ids


def sender_pid(client: mpsender.Client) -> int:
    stats = client.stats(timeout=5.0).sender
    assert stats is not None
    return stats.pid


def test_on_error_for_a_400(make_client: Callable[..., mpsender.Client], collector: Collector,
                            hooks: Hooks) -> None:
    """400 to everything: on_error runs in the sender process with status 400, the error,
    and the ids of the refused events; they are dead-lettered and counted, not retried."""
    collector.set_faults(Faults(status=400))
    client = hooked_client(make_client, collector, hooks)
    ids = track_ids(client, 4)
    assert client.flush(timeout=15)  # settled: refused for good
    calls = hooks.calls("on_error")
    assert calls, "on_error was not called"
    pid = sender_pid(client)
    assert pid != os.getpid()
    for call in calls:
        assert call["pid"] == pid and call["ok"] is False and call["status"] == 400
        assert "injected fault: status 400" in call["error"]
        assert call["count"] == len(call["message_ids"]) > 0
    assert {m for call in calls for m in call["message_ids"]} == set(ids)
    assert client.stats().sender.dropped == {"rejected": 4}
    assert collector.count() == 0
    assert all(r.status == 400 for r in collector.requests())


def test_on_error_for_a_503_that_recovers(make_client: Callable[..., mpsender.Client], collector: Collector,
                                          hooks: Hooks) -> None:
    """503 twice, then 200: on_error is told of each failed attempt, with the batch's ids,
    and on_delivery of the success; every event arrives once."""
    collector.set_faults(Faults(fail_first=2, fail_status=503))
    client = hooked_client(make_client, collector, hooks)
    ids = track_ids(client, 5)
    assert client.flush(timeout=15)
    errors = hooks.calls("on_error")
    seen = [(c["status"], c["ok"], sorted(c["message_ids"])) for c in errors]
    assert seen == [(503, False, sorted(ids))] * 2
    assert all("injected fault: fail_first" in c["error"] for c in errors)
    delivered = [c for c in hooks.calls("on_delivery") if c["ok"]]
    assert [(c["status"], sorted(c["message_ids"]), c["count"], c["error"]) for c in delivered] == [
        (200, sorted(ids), 5, None)]
    assert sorted(collector.message_ids()) == sorted(ids)
    assert {c["pid"] for c in hooks.calls()} == {sender_pid(client)}


def test_on_error_for_a_401_keeps_the_events(make_client: Callable[..., mpsender.Client],
                                             collector: Collector, hooks: Hooks) -> None:
    """401: on_error gets status 401; the events are kept (nothing dropped) and go out once
    the key is accepted again."""
    collector.set_faults(Faults(status=401))
    client = hooked_client(make_client, collector, hooks)
    ids = track_ids(client, 3)
    assert wait_for(lambda: hooks.calls("on_error"), 15)
    assert not client.flush(timeout=0.2)
    first = hooks.calls("on_error")[0]
    assert (first["status"], first["ok"], sorted(first["message_ids"])) == (401, False, sorted(ids))
    assert first["pid"] == sender_pid(client)
    assert client.stats().sender.dropped == {}
    collector.set_faults(Faults())
    assert client.flush(timeout=15)
    assert sorted(collector.message_ids()) == sorted(ids)
    assert any(c["ok"] and c["status"] == 200 for c in hooks.calls("on_delivery"))


def test_outcomes_say_whether_events_will_be_retried(make_client: Callable[..., mpsender.Client],
                                                     collector: Collector, hooks: Hooks) -> None:
    """A 503 or 401 outcome has will_retry=True (events kept); a 400 outcome has
    will_retry=False and names each refused event exactly once."""
    collector.set_faults(Faults(fail_first=1, fail_status=503))
    client = hooked_client(make_client, collector, hooks)
    track_ids(client, 2)
    assert client.flush(timeout=15)
    collector.set_faults(Faults(status=400))
    refused = track_ids(client, 4)
    assert client.flush(timeout=15)
    errors = hooks.calls("on_error")
    assert errors[0]["status"] == 503 and errors[0]["will_retry"] is True
    final = [c for c in errors if c["status"] == 400]
    assert all(c["will_retry"] is False for c in final)
    assert sorted(m for c in final for m in c["message_ids"]) == sorted(refused)


def test_on_error_names_only_the_refused_event(make_client: Callable[..., mpsender.Client],
                                               collector: Collector, hooks: Hooks) -> None:
    """One bad event in a batch of 8: on_error is called once, with that event only; the
    other 7 are delivered (the uploader isolates it by bisection)."""
    collector.set_faults(Faults(reject_event="Bad"))
    client = hooked_client(make_client, collector, hooks)
    good = track_ids(client, 4)
    [bad] = track_ids(client, 1, name="Bad")
    good += track_ids(client, 3)
    assert client.flush(timeout=15)
    errors = hooks.calls("on_error")
    assert [(c["status"], c["message_ids"], c["will_retry"]) for c in errors] == [(400, [bad], False)]
    assert sorted(collector.message_ids()) == sorted(good)


def test_a_raising_hook_does_not_stop_delivery(make_client: Callable[..., mpsender.Client],
                                               collector: Collector, hooks: Hooks) -> None:
    """A hook that raises is logged and counted (incidents: hook_errors); delivery goes on."""
    client = make_client(collector.url, on_delivery=hooks.path("broken"), **FAST)
    ids = track_ids(client, 3)
    assert client.flush(timeout=15)
    assert sorted(collector.message_ids()) == sorted(ids)
    sender = client.stats().sender
    assert sender is not None and sender.incidents.get("hook_errors", 0) >= 1 and sender.dropped == {}
    assert "on_delivery hook raised" in client.paths.log.read_text()


def test_a_hook_that_cannot_be_imported_is_reported_and_skipped(
    make_client: Callable[..., mpsender.Client], collector: Collector
) -> None:
    """A wrong import path is logged in sender.log; the sender runs and delivers without the hook."""
    client = make_client(collector.url, on_error="no_such_module_for_mpsender:on_error")
    client.track("A", user_id="u")
    assert client.flush(timeout=15)
    assert collector.count() == 1
    log = client.paths.log.read_text()
    assert "cannot import the on_error hook 'no_such_module_for_mpsender:on_error'" in log


def test_hooks_run_in_the_sender_not_in_the_app(make_client: Callable[..., mpsender.Client],
                                                collector: Collector, hooks: Hooks) -> None:
    """The hook module is imported by the sender process only, never by the application."""
    client = hooked_client(make_client, collector, hooks)
    client.track("A", user_id="u")
    assert client.flush(timeout=15)
    assert hooks.module not in sys.modules
    [call] = hooks.calls("on_delivery")
    assert call["pid"] == sender_pid(client) != os.getpid()
    assert (call["ok"], call["status"], call["count"]) == (True, 200, 1)
