"""Client-side behaviour of track() and friends: validation errors, before_send,
super properties and context, enrichment.

Everything here runs in the test process. Events are recorded with
``mpsender.testing.capture()``, which replaces only the channel to the sender: the
event building, validation, hook and packing under test are the production ones,
and what is recorded is what the sender's encoder would send.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

import mpsender
from mpsender import (
    ConfigurationError,
    EventTooLargeError,
    EventTypeError,
    InvalidEventError,
    MpsenderError,
    UnserializableError,
)
from mpsender._client import Client
from mpsender._version import __version__
from mpsender.testing import CapturedEvents, capture

LIBRARY = {"name": "mpsender", "version": __version__}



@pytest.fixture
def events() -> Iterator[CapturedEvents]:
    """The process's client (a fresh one with default options), captured."""
    with capture() as captured:
        yield captured


def expect_error(exc_type: type[Exception], message: str, call: Callable[[], object]) -> str:
    """``call`` raises ``exc_type`` (an MpsenderError) whose text contains ``message``."""
    with pytest.raises(exc_type) as info:
        call()
    assert isinstance(info.value, MpsenderError)
    assert message in str(info.value), str(info.value)
    return str(info.value)


# --- bad input: raised at once, naming the problem --------------------------------


U = {"user_id": "u"}

#: (function, args, kwargs, exception, text of the message)
BAD_CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any], type[Exception], str]] = [
    ("track", (5,), U, EventTypeError, "event must be a str, not int"),
    ("track", ("",), U, InvalidEventError, "event must not be empty"),
    ("track", ("Signup",), {}, InvalidEventError, "one of user_id or anonymous_id is required"),
    ("track", ("Signup",), {"user_id": ["u"]}, EventTypeError, "user_id must be a str or int, not list"),
    ("track", ("Signup",), {"user_id": True}, EventTypeError, "user_id must be a str or int, not bool"),
    ("track", ("Signup",), {"user_id": ""}, InvalidEventError, "user_id must not be empty"),
    ("track", ("Signup",), {"anonymous_id": 1.5}, EventTypeError,
     "anonymous_id must be a str or int, not float"),
    ("track", ("Signup",), {**U, "properties": [1]}, EventTypeError, "properties must be a dict, not list"),
    ("track", ("Signup",), {**U, "context": "web"}, EventTypeError, "context must be a dict, not str"),
    ("track", ("Signup",), {**U, "integrations": 1}, EventTypeError, "integrations must be a dict, not int"),
    ("track", ("Signup",), {**U, "timestamp": [1]}, EventTypeError,
     "timestamp must be a datetime, epoch seconds or an ISO-8601 string, not list"),
    ("track", ("Signup",), {**U, "message_id": ""}, InvalidEventError, "message_id must not be empty"),
    ("identify", ("u",), {"traits": [("a", 1)]}, EventTypeError, "traits must be a dict, not list"),
    ("group", (None,), U, InvalidEventError, "group_id is required"),
    ("alias", ("",), U, InvalidEventError, "previous_id must not be empty"),
    ("alias", ("anon-1",), {"user_id": None}, InvalidEventError, "user_id is required"),
    ("page", (5,), U, EventTypeError, "name must be a str, not int"),
    ("screen", ("Home",), {**U, "category": ""}, InvalidEventError, "category must not be empty"),
    ("capture_error", ("boom",), {}, EventTypeError, "capture_error() takes an exception, not str"),
]


@pytest.mark.parametrize(("fn", "args", "kwargs", "exc_type", "message"), BAD_CALLS,
                         ids=[case[-1] for case in BAD_CALLS])
def test_bad_call_raises_naming_the_field(
    events: CapturedEvents, fn: str, args: tuple[Any, ...], kwargs: dict[str, Any],
    exc_type: type[Exception], message: str,
) -> None:
    """A programmer error raises at once with a message naming the field, and nothing is sent."""
    expect_error(exc_type, message, lambda: getattr(mpsender, fn)(*args, **kwargs))
    assert events == []
    assert mpsender.stats().process.rejected == 1


def test_unserializable_value_is_named_by_its_key_path(events: CapturedEvents) -> None:
    """A value msgpack cannot carry raises UnserializableError with the key path to it."""
    text = expect_error(
        UnserializableError, "properties.order.lines[1]",
        lambda: mpsender.track("Order", user_id="u", properties={"order": {"lines": [1, object()]}}),
    )
    assert "value of type object cannot be sent" in text
    expect_error(UnserializableError, "traits.big: integer",
                 lambda: mpsender.identify("u", traits={"big": 2**70}))
    expect_error(UnserializableError, "context.x",
                 lambda: mpsender.track("A", user_id="u", context={"x": {1j}}))
    assert isinstance(UnserializableError("p", 1), TypeError)  # callers may catch TypeError
    assert events == []


@pytest.fixture(params=["ormsgpack", "msgpack"])
def packing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[CapturedEvents]:
    """Captured events, packed with ormsgpack (the ``fast`` extra) or with msgpack alone."""
    from mpsender import _events

    if request.param == "ormsgpack":
        pytest.importorskip("ormsgpack")
    else:
        monkeypatch.setattr(_events, "_fast_packb", None)
    with capture() as captured:
        yield captured


def _nested(levels: int, leaf: Any = 1) -> dict[str, Any]:
    """``{"k": {"k": ... leaf}}`` with ``levels`` dicts."""
    value: Any = leaf
    for _ in range(levels):
        value = {"k": value}
    return value  # type: ignore[no-any-return]


def _circular() -> dict[str, Any]:
    a: dict[str, Any] = {"n": 1}
    a["b"] = {"a": a}
    return {"a": a}


#: properties refused with the key path and the reason, and what happens to them without
#: ormsgpack, where track() does not walk every event (msgpack takes any key and nests to
#: 1024): "raises" as with it, "dead-lettered" by the sender, or "sent" as it is
#: (properties, path, text of the message, without ormsgpack)
BAD_PROPERTIES: list[tuple[Any, str, str, str]] = [
    (_circular(), "properties.a.b.a", "circular reference", "raises"),
    ({"l": [1, [2]]}, "", "", "raises"),  # placeholder replaced below: a list inside itself
    (_nested(254, {"x": 1}), "properties.k.k", "nested deeper than 254 levels", "sent"),
    (_nested(100_000), "properties.k.k", "nested deeper than 254 levels", "raises"),
    ({"a": {"b": ["ok", "\ud800"]}}, "properties.a.b[1]", "lone surrogate '\\ud800' at index 0", "raises"),
    ({"a": {"x\udcff": 1}}, "properties.a['x\\udcff'] (key)", "lone surrogate '\\udcff' at index 1", "raises"),
    ({"a": {1: "one", "1": "uno"}}, "properties.a.1 (key)", "becomes the JSON key '1', as key 1 does",
     "dead-lettered"),
    ({"a": [{"True": 1, True: 2}]}, "properties.a[0][True] (key)", "becomes the JSON key 'True'", "dead-lettered"),
    ({"n": {frozenset({3}): 1, "(3,)": 2}}, "properties.n.(3,) (key)", "JSON key '(3,)'", "dead-lettered"),
]
_looped: list[Any] = [1]
_looped.append([2, _looped])
BAD_PROPERTIES[1] = ({"l": _looped}, "properties.l[1][1]", "circular reference", "raises")


@pytest.mark.parametrize(("properties", "path", "message", "without_ormsgpack"), BAD_PROPERTIES,
                         ids=["circular-dict", "circular-list", "too-deep", "very-deep", "surrogate-value",
                              "surrogate-key", "int-key-collides", "bool-key-collides", "set-key-collides"])
def test_values_json_cannot_carry_are_named_by_key_path(
    packing: CapturedEvents, properties: Any, path: str, message: str, without_ormsgpack: str,
) -> None:
    """Cycles, nesting past the limit, lone surrogates and keys that collide once made strings
    raise UnserializableError naming the path, never RecursionError; without ormsgpack, what
    msgpack takes is left to the sender (colliding keys dead-lettered, capture() counts them)."""
    from mpsender import _events

    track = lambda: mpsender.track("A", user_id="u", properties=properties)  # noqa: E731
    outcome = "raises" if _events._fast_packb is not None else without_ormsgpack
    if outcome == "raises":
        text = expect_error(UnserializableError, message, track)
        assert text.startswith(path), text
    else:
        track()
    assert len(packing) == (outcome == "sent")
    assert packing.dropped == ({"unencodable": 1} if outcome == "dead-lettered" else {})
    mpsender.track("B", user_id="u", properties={"ok": 1})  # the thread's packer still works
    assert packing[-1]["event"] == "B"


def test_the_deepest_event_track_takes_is_sent(packing: CapturedEvents) -> None:
    """Properties nested 254 levels deep (the properties dict is level 1) are sent, on both paths."""
    mpsender.track("A", user_id="u", properties=_nested(253, [1]), context={"deep": _nested(252)})
    [event] = packing
    value = event["properties"]
    for _ in range(253):
        value = value["k"]
    assert value == [1]


def test_traits_and_context_are_checked_like_properties(packing: CapturedEvents) -> None:
    """The path names traits or context when the problem is there."""
    expect_error(UnserializableError, "traits.a.b.a: circular", lambda: mpsender.identify("u", traits=_circular()))
    expect_error(UnserializableError, "context.x['\\ud800'] (key)",
                 lambda: mpsender.track("A", user_id="u", context={"x": {"\ud800": 1}}))


def test_odd_keys_are_made_strings_in_the_record(packing: CapturedEvents) -> None:
    """Non-str keys are sent as their str() on both paths (bool as 'True', arrays as tuples)."""
    mpsender.track("A", user_id="u", properties={2: "int", True: "bool", None: "none", 1.5: "float",
                                                 (1, "x"): "tuple", b"b": "bytes", "s": {2: [{3: 4}]}})
    assert packing[0]["properties"] == {"2": "int", "True": "bool", "None": "none", "1.5": "float",
                                        "(1, 'x')": "tuple", "b": "bytes", "s": {"2": [{"3": 4}]}}


def test_oversize_event_raises_with_size_and_limit(events: CapturedEvents) -> None:
    """An event over max_message_bytes raises EventTooLargeError giving both sizes."""
    with pytest.raises(EventTooLargeError) as info:
        mpsender.track("Big", user_id="u", properties={"blob": "x" * 40_000})
    assert info.value.limit == 32_000 and info.value.size > 40_000
    assert "max_message_bytes" in str(info.value)
    assert events == []


def test_max_message_bytes_option_is_the_limit() -> None:
    """The limit is the max_message_bytes option, not a constant."""
    with capture(max_message_bytes=1_000) as events:
        mpsender.track("Small", user_id="u", properties={"blob": "x" * 500})
        with pytest.raises(EventTooLargeError) as info:
            mpsender.track("Big", user_id="u", properties={"blob": "x" * 1_100})
    assert info.value.limit == 1_000
    assert events.names() == ["Small"]


def test_values_are_converted_as_documented(events: CapturedEvents) -> None:
    """datetime (naive = UTC), date, Decimal, UUID, set, tuple and Enum reach the wire as JSON values."""

    class Plan(enum.Enum):
        PRO = "pro"

    uid = uuid.UUID("12345678-1234-5678-1234-567812345678")
    mpsender.track("Signup", user_id=42, properties={
        "naive": dt.datetime(2026, 1, 2, 3, 4, 5),
        "aware": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        "day": dt.date(2026, 1, 2), "price": Decimal("9.50"), "id": uid, "tags": {"a"},
        "pair": (1, 2), "plan": Plan.PRO, "nested": {"when": dt.datetime(2026, 1, 2)},
    })
    [event] = events
    assert event["userId"] == "42"
    assert event["properties"] == {
        "naive": "2026-01-02T03:04:05+00:00", "aware": "2026-01-02T03:04:05+02:00",
        "day": "2026-01-02", "price": 9.5, "id": str(uid), "tags": ["a"], "pair": [1, 2],
        "plan": "pro", "nested": {"when": "2026-01-02T00:00:00+00:00"},
    }


def test_odd_dict_keys_are_sent_as_strings(events: CapturedEvents) -> None:
    """Keys JSON cannot hold (int, tuple, frozenset) are sent as their str(), never lost."""
    mpsender.track("A", user_id="u", properties={1: "int", (1, 2): "tuple", "n": {frozenset({3}): "set"}})
    assert events.dropped == {}
    assert events[0]["properties"] == {"1": "int", "(1, 2)": "tuple", "n": {"(3,)": "set"}}


def test_user_timestamp_and_message_id_are_kept(events: CapturedEvents) -> None:
    """A given timestamp (datetime, epoch or ISO string) and message id are what is sent."""
    when = dt.datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=dt.timezone.utc)
    mpsender.track("A", user_id="u", timestamp=when, message_id="my-id-1")
    mpsender.track("B", user_id="u", timestamp=when.timestamp())
    mpsender.track("C", user_id="u", timestamp="2026-03-04T05:06:07.89Z")
    assert [e["timestamp"] for e in events] == ["2026-03-04T05:06:07.890Z"] * 3
    assert events[0]["messageId"] == "my-id-1"
    generated = {e["messageId"] for e in events[1:]}
    assert len(generated) == 2 and all(uuid.UUID(m).version == 4 for m in generated)


#: ISO-8601 strings track() takes, and the timestamp sent for each (UTC, milliseconds)
ISO_STRINGS = [
    ("2026-03-04T05:06:07Z", "2026-03-04T05:06:07.000Z"),
    ("2026-03-04t05:06:07.25z", "2026-03-04T05:06:07.250Z"),
    ("2026-03-04T06:36:07.123456+01:30", "2026-03-04T05:06:07.123Z"),
    ("2026-03-04T00:06:07-0500", "2026-03-04T05:06:07.000Z"),
    ("2026-03-04T07:06+02", "2026-03-04T05:06:00.000Z"),
    ("2026-03-04T05:06:07", "2026-03-04T05:06:07.000Z"),  # naive: UTC, as a naive datetime
    ("2026-03-04 05:06:07.999999999", "2026-03-04T05:06:08.000Z"),
    ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000Z"),
    ("9999-12-31T23:59:59.999Z", "9999-12-31T23:59:59.999Z"),
]


@pytest.mark.parametrize(("given", "sent"), ISO_STRINGS, ids=[g for g, _ in ISO_STRINGS])
def test_iso_timestamp_strings_are_parsed_and_sent_in_utc(events: CapturedEvents, given: str, sent: str) -> None:
    """An ISO-8601 string ('Z', an offset, or naive = UTC) is stored as epoch seconds and sent as UTC."""
    mpsender.track("A", user_id="u", timestamp=given)
    mpsender.identify("u", timestamp=given)
    assert [e["timestamp"] for e in events] == [sent, sent]


#: timestamps refused at the call: (value, exception, text of the message)
BAD_TIMESTAMPS: list[tuple[Any, type[Exception], str]] = [
    (float("nan"), InvalidEventError, "timestamp nan is not a finite number"),
    (float("inf"), InvalidEventError, "timestamp inf is not a finite number"),
    (float("-inf"), InvalidEventError, "timestamp -inf is not a finite number"),
    (1e300, InvalidEventError, "timestamp 1e+300 is out of range (years 1 to 9999, UTC)"),
    (10**400, InvalidEventError, "is out of range"),
    (253402300800.0, InvalidEventError, "timestamp 253402300800.0 is out of range"),
    (-62135596801.0, InvalidEventError, "timestamp -62135596801.0 is out of range"),
    (dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))), InvalidEventError, "is out of range"),
    ("9999-12-31T23:59:59.9999Z", InvalidEventError, "'9999-12-31T23:59:59.9999Z' is out of range"),
    ("garbage", InvalidEventError, "timestamp 'garbage' is not an ISO-8601 date and time"),
    ("", InvalidEventError, "timestamp '' is not an ISO-8601 date and time"),
    ("2026-03-04", InvalidEventError, "timestamp '2026-03-04' is not an ISO-8601 date and time"),
    ("2026-03-04T05:06:07Z ", InvalidEventError, "is not an ISO-8601 date and time"),
    ("2026-13-04T05:06:07Z", InvalidEventError, "timestamp '2026-13-04T05:06:07Z' is not a valid date and time"),
    ("2026-03-04T24:00:00Z", InvalidEventError, "is not a valid date and time"),
    ("2026-03-04T05:06:07+24:00", InvalidEventError, "is not a valid date and time"),
    ("\ud800", InvalidEventError, "timestamp '\\ud800' is not an ISO-8601"),
    (True, EventTypeError, "timestamp must be a datetime, epoch seconds or an ISO-8601 string, not bool"),
    (dt.date(2026, 3, 4), EventTypeError, "not date"),
]


@pytest.mark.parametrize("fn", ["track", "identify", "group", "alias", "page", "screen"])
@pytest.mark.parametrize(("value", "exc_type", "message"), BAD_TIMESTAMPS, ids=[repr(b[0])[:30] for b in BAD_TIMESTAMPS])
def test_bad_timestamp_raises_naming_timestamp_and_value(
    events: CapturedEvents, fn: str, value: Any, exc_type: type[Exception], message: str,
) -> None:
    """NaN, infinities, times outside years 1-9999 and unparseable strings raise at the call."""
    args = {"track": ("E",), "group": ("g",), "alias": ("p",)}.get(fn, ())
    expect_error(exc_type, message, lambda: getattr(mpsender, fn)(*args, user_id="u", timestamp=value))
    assert events == []
    assert mpsender.stats().process.rejected == 1


def test_a_hook_timestamp_is_held_to_the_same_rules() -> None:
    """A before_send hook's ISO string is normalized; a bad one is not sent (the event is, unchanged)."""
    stamps = iter(["2026-03-04T06:06:07+01:00", "soon"])
    with capture(before_send=lambda e: {**e, "timestamp": next(stamps)}) as events:
        mpsender.track("A", user_id="u")
        mpsender.track("B", user_id="u", timestamp=0)
    assert [e["timestamp"] for e in events] == ["2026-03-04T05:06:07.000Z", "1970-01-01T00:00:00.000Z"]


def test_errors_never_come_from_the_hot_path_of_good_calls(events: CapturedEvents) -> None:
    """Each call type with good input is recorded with its fields and default context."""
    mpsender.track("Signup", user_id="u1", properties={"plan": "pro"})
    mpsender.identify("u1", traits={"email": "a@example.com"})
    mpsender.group("acme", user_id="u1", traits={"name": "Acme"})
    mpsender.alias("anon-1", user_id="u1")
    mpsender.page("Home", category="Docs", anonymous_id="anon-1", properties={"url": "https://x/"})
    mpsender.screen("Settings", user_id="u1")
    assert [e["type"] for e in events] == ["track", "identify", "group", "alias", "page", "screen"]
    assert events[2]["groupId"] == "acme" and events[3]["previousId"] == "anon-1"
    assert events[4]["anonymousId"] == "anon-1" and "userId" not in events[4]
    assert all(e["context"] == {"library": LIBRARY} for e in events)


# --- options: a bad one raises, naming it ----------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"format": "amplitude"}, "format must be one of segment, posthog, json, otlp, otlp-proto; got 'amplitude'"),
        ({"path": "v1/batch"}, "path must start with '/'"),
        ({"before_send": "myapp.hooks:scrub"}, "before_send must be callable or None"),
        ({"on_error": "myapp.hooks.on_error"},
         "on_error must be an import path 'package.module:function' (it runs in the sender process)"),
        ({"on_delivery": print}, "on_delivery must be an import path"),
        ({"headers": [("X-Token", "t")]}, "headers must be a mapping"),
        ({"properties": "app=web"}, "properties must be a mapping"),
        ({"context": ["web"]}, "context must be a mapping"),
        ({"super_properties": {}}, "unknown option(s) super_properties"),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else None,
)
def test_bad_option_raises_naming_it(options: dict[str, Any], message: str) -> None:
    """init()/Client() refuse a bad option with a ConfigurationError that names it."""
    with pytest.raises(ConfigurationError) as info:
        Client("key", "http://127.0.0.1:9", **options)
    assert message in str(info.value)


def test_capture_refuses_bad_options_too() -> None:
    """capture(**options) validates like init(): unknown and bad values raise."""
    with pytest.raises(ConfigurationError, match="unknown option"):
        with capture(befor_send=lambda e: e):
            pass
    with pytest.raises(ConfigurationError, match="before_send must be callable"):
        with capture(before_send=42):
            pass


# --- before_send ------------------------------------------------------------------------


def test_before_send_sees_segment_names_and_can_change_the_event() -> None:
    """The hook gets the event with Segment's field names; what it returns is what is sent."""
    seen: list[dict[str, Any]] = []

    def scrub(event: dict[str, Any]) -> dict[str, Any]:
        seen.append(dict(event))
        props = dict(event["properties"])
        props.pop("email", None)
        props["scrubbed"] = True
        return {**event, "properties": props, "userId": "hashed-" + event["userId"]}

    with capture(before_send=scrub) as events:
        mpsender.track("Signup", user_id="u1", properties={"email": "a@example.com", "plan": "pro"})
    [event] = events
    assert event["properties"] == {"plan": "pro", "scrubbed": True}
    assert event["userId"] == "hashed-u1"
    [hooked] = seen
    assert hooked["type"] == "track" and hooked["event"] == "Signup" and hooked["userId"] == "u1"
    assert hooked["messageId"] == event["messageId"]  # the id the hook sees is the id sent
    assert isinstance(hooked["timestamp"], float)


def test_before_send_runs_for_every_call_type() -> None:
    """identify, group, alias, page and screen go through the hook as track does."""
    types: list[str] = []

    def spy(event: dict[str, Any]) -> dict[str, Any]:
        types.append(event["type"])
        return event

    with capture(before_send=spy) as events:
        mpsender.identify("u1", traits={"a": 1})
        mpsender.group("g", user_id="u1")
        mpsender.alias("anon", user_id="u1")
        mpsender.page("Home", user_id="u1")
        mpsender.screen("Home", user_id="u1")
        mpsender.track("T", user_id="u1")
    assert types == ["identify", "group", "alias", "page", "screen", "track"]
    assert len(events) == 6


def test_before_send_runs_in_the_calling_thread_and_process() -> None:
    """The hook runs inside track(), in the application process and thread that called it."""
    where: list[tuple[int, int]] = []

    def spy(event: dict[str, Any]) -> dict[str, Any]:
        where.append((os.getpid(), threading.get_ident()))
        return event

    with capture(before_send=spy):
        mpsender.track("Main", user_id="u")
        worker = threading.Thread(target=mpsender.track, args=("Thread",), kwargs={"user_id": "u"})
        worker.start()
        worker.join()
        worker_ident = worker.ident
    assert where == [(os.getpid(), threading.get_ident()), (os.getpid(), worker_ident)]


def test_before_send_returning_none_drops_and_counts() -> None:
    """None from the hook drops the event; it is counted as dropped_by_hook."""

    def drop_internal(event: dict[str, Any]) -> dict[str, Any] | None:
        return None if event.get("event", "").startswith("internal.") else event

    with capture(before_send=drop_internal) as events:
        mpsender.track("internal.ping", user_id="u")
        mpsender.track("Signup", user_id="u")
        mpsender.track("internal.pong", user_id="u")
        stats = mpsender.stats()
    assert events.names() == ["Signup"]
    assert stats.process.dropped == {"dropped_by_hook": 2}
    assert stats.process.tracked == 1
    assert events.dropped == {"dropped_by_hook": 2}


def test_before_send_raising_sends_the_event_unchanged_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A hook that raises is logged once (with the traceback); every event is still sent as built."""

    def buggy(event: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("oops")

    caplog.set_level(logging.ERROR, logger="mpsender")
    with capture(before_send=buggy) as events:
        mpsender.track("A", user_id="u", properties={"n": 1})
        mpsender.track("B", user_id="u", properties={"n": 2})
        mpsender.identify("u", traits={"t": 1})
    assert events.names() == ["A", "B"]
    assert [e["properties"] for e in events.of_type("track")] == [{"n": 1}, {"n": 2}]
    assert events.of_type("identify")[0]["traits"] == {"t": 1}
    logged = [r for r in caplog.records if "before_send" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert events.dropped == {}


def test_before_send_returning_a_non_dict_sends_the_event_unchanged(caplog: pytest.LogCaptureFixture) -> None:
    """A hook returning something other than a dict or None is a bug: logged, event sent as built."""
    caplog.set_level(logging.ERROR, logger="mpsender")
    with capture(before_send=lambda event: True) as events:  # type: ignore[arg-type,return-value]
        mpsender.track("A", user_id="u")
    assert events.names() == ["A"]
    assert any("before_send returned bool" in r.getMessage() for r in caplog.records)


def test_before_send_raising_after_changing_the_event_sends_it_as_built() -> None:
    """A hook that scrubs in place and then raises does not leave a half-changed event."""

    def half(event: dict[str, Any]) -> dict[str, Any]:
        event["properties"]["email"] = "[scrubbed]"
        raise RuntimeError("then fails")

    with capture(before_send=half) as events:
        mpsender.track("A", user_id="u", properties={"email": "a@example.com"})
    assert events[0]["properties"] == {"email": "a@example.com"}


def test_before_send_changing_in_place_leaves_the_callers_dict_alone() -> None:
    """Scrubbing event["properties"] in place does not change the dict the caller passed."""

    def scrub(event: dict[str, Any]) -> dict[str, Any]:
        event["properties"].pop("email")
        return event

    props = {"email": "a@example.com", "plan": "pro"}
    with capture(before_send=scrub) as events:
        mpsender.track("Signup", user_id="u", properties=props)
    assert events[0]["properties"] == {"plan": "pro"}
    assert props == {"email": "a@example.com", "plan": "pro"}


@pytest.mark.parametrize(
    "broken",
    [
        lambda e: {"event": e["event"], "properties": {}},         # a fresh dict without ids
        lambda e: {k: v for k, v in e.items() if k != "messageId"},  # the sender needs the id
        lambda e: {**e, "userId": None},                            # no identity left
        lambda e: {**e, "properties": {"obj": object()}},           # nothing can carry it
        lambda e: {**e, "properties": {"blob": "x" * 40_000}},      # over max_message_bytes
    ],
    ids=["no-ids", "no-message-id", "user-id-none", "unpackable", "oversize"],
)
def test_before_send_returning_an_unsendable_event_sends_the_original(
    broken: Callable[[dict[str, Any]], dict[str, Any]]
) -> None:
    """An event the sender could not send, returned by a buggy hook, is replaced by the
    original: a buggy hook never loses the event."""
    with capture(before_send=broken) as events:
        mpsender.track("Signup", user_id="u", properties={"plan": "pro"})
    assert events.dropped == {}
    [event] = events
    assert event["userId"] == "u" and event["properties"] == {"plan": "pro"}


def test_before_send_unset_costs_nothing_in_track(
    monkeypatch: pytest.MonkeyPatch, events: CapturedEvents,
) -> None:
    """Without before_send, track() never enters the hook machinery (one attribute test)."""

    def trap(self: Client, rec: dict[str, Any]) -> None:
        raise AssertionError("hook path taken without a hook")

    monkeypatch.setattr(Client, "_run_hook", trap)
    mpsender.track("A", user_id="u")
    mpsender.identify("u")
    assert len(events) == 2


def test_before_send_given_to_init_is_used(runtime_dir: str) -> None:
    """before_send passed to Client()/init() is the one track() calls."""

    def tag(event: dict[str, Any]) -> dict[str, Any]:
        return {**event, "properties": {**event.get("properties", {}), "tagged": True}}

    client = Client("key", "http://127.0.0.1:9", runtime_dir=runtime_dir, before_send=tag)
    with capture(client=client) as events:
        client.track("A", user_id="u")
    assert events[0]["properties"] == {"tagged": True}


# --- capture_error never replaces the app's exception ---------------------------------


class StrRaises(ValueError):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")


class StrNotText(ValueError):
    def __str__(self) -> str:
        return 5  # type: ignore[return-value]


class StrRecurses(ValueError):
    def __str__(self) -> str:
        return str(self)


class OddTraceback(ValueError):
    __traceback__ = property(lambda self: "not a traceback")  # type: ignore[assignment]


def _raised_in_file_named(filename: str) -> BaseException:
    """An exception whose traceback names ``filename`` (undecodable names arrive as surrogates)."""
    code = compile("def fail():\n    raise KeyError('k')\nfail()\n", filename, "exec")
    try:
        exec(code, {})
    except KeyError as exc:
        return exc
    raise AssertionError("did not raise")


#: exceptions that are awkward to describe: (exception, error_message sent)
ODD_EXCEPTIONS: list[tuple[Callable[[], BaseException], str]] = [
    (StrRaises, "<unprintable test_client.StrRaises>"),
    (StrNotText, "<unprintable test_client.StrNotText>"),
    (StrRecurses, "<unprintable test_client.StrRecurses>"),
    (lambda: ValueError("name \udcff\ud800 here"), "name \\udcff\\ud800 here"),
    (lambda: OddTraceback("odd"), "odd"),
    (lambda: _raised_in_file_named("/nowhere/caf\udce9.py"), "'k'"),
]


@pytest.mark.parametrize(("make", "message"), ODD_EXCEPTIONS,
                         ids=["str-raises", "str-not-text", "str-recurses", "surrogates", "odd-traceback",
                              "undecodable-file-name"])
def test_capture_error_never_replaces_the_exception(
    events: CapturedEvents, make: Callable[[], BaseException], message: str,
) -> None:
    """An exception that cannot be printed, holds text that is not UTF-8 or has an odd traceback
    is still sent as a $error event, and the app's own exception goes on up unchanged."""
    original = make()
    with pytest.raises(type(original)) as info:
        try:
            raise original
        except BaseException as exc:
            mpsender.capture_error(exc)
            raise
    assert info.value is original
    [event] = events
    props = event["properties"]
    assert event["event"] == "$error" and props["error_type"].endswith(type(original).__qualname__)
    assert props["error_message"].replace("tests.unit.", "") == message
    assert len(props["fingerprint"]) == 16 and isinstance(props["stack"], list)
    assert mpsender.stats().process.rejected == 0


def test_capture_error_names_an_undecodable_file_escaped(events: CapturedEvents) -> None:
    """A traceback file name holding a lone surrogate is sent with it escaped, not dropped."""
    mpsender.capture_error(_raised_in_file_named("/nowhere/caf\udce9.py"))
    frames = events[0]["properties"]["stack"]
    assert frames[-1]["filename"] == "/nowhere/caf\\udce9.py" and frames[-1]["function"] == "fail"


#: capture_error() arguments that would make track() raise: (kwargs, what the event keeps)
BAD_CAPTURE_ARGS: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"user_id": "u", "properties": {"order": object()}}, {"userId": "u"}),
    ({"user_id": "u", "properties": ["not", "a", "dict"]}, {"userId": "u"}),
    ({"user_id": "u", "properties": {"blob": "x" * 40_000}}, {"userId": "u"}),
    ({"user_id": "u", "context": {"x": {"\ud800": 1}}}, {"userId": "u"}),
    ({"user_id": ["u"], "properties": {"ok": 1}}, {"anonymousId": f"host:{socket.gethostname()}"}),
]


@pytest.mark.parametrize(("kwargs", "kept"), BAD_CAPTURE_ARGS,
                         ids=["unserializable", "not-a-dict", "oversize", "bad-context", "bad-user-id"])
def test_capture_error_sends_without_bad_arguments_and_warns_once(
    events: CapturedEvents, caplog: pytest.LogCaptureFixture, kwargs: dict[str, Any], kept: dict[str, Any],
) -> None:
    """Bad properties, context or ids make capture_error() send the $error event without them,
    log one warning and count a rejection; it raises nothing."""
    with caplog.at_level(logging.WARNING, logger="mpsender"):
        mpsender.capture_error(ValueError("first"), **kwargs)
        mpsender.capture_error(ValueError("second"), **kwargs)
    assert [e["properties"]["error_message"] for e in events] == ["first", "second"]
    for event in events:
        assert set(event["properties"]) == {"error_type", "error_message", "stack", "fingerprint", "in_app_frame",
                                              "severity", "causes"}
        assert {k: event[k] for k in kept} == kept
        assert "x" not in event["context"]
    assert mpsender.stats().process.rejected == 2
    warnings = [r for r in caplog.records if "capture_error()" in r.getMessage()]
    assert len(warnings) == 1 and "without the caller's properties and context" in warnings[0].getMessage()


# --- super properties and context ------------------------------------------------------


def test_super_properties_on_every_track_page_and_screen(runtime_dir: str) -> None:
    """properties set once for the client are on every track/page/screen event; an event's own value wins."""
    client = Client("key", "http://127.0.0.1:9", runtime_dir=runtime_dir,
                    properties={"app": "web", "release": "1.2"})
    with capture(client=client) as events:
        client.track("A", user_id="u")
        client.track("B", user_id="u", properties={"release": "override", "n": 1})
        client.page("Home", user_id="u")
        client.screen("Main", user_id="u", properties={"x": 1})
        client.capture_error(ValueError("bad"), user_id="u")
        client.track("C", user_id="u")
        client.identify("u", traits={"t": 1})
    tracks = events.of_type("track") + events.of_type("page") + events.of_type("screen")
    assert len(tracks) == 6 and all(e["properties"]["app"] == "web" for e in tracks)
    assert events.named("B")[0]["properties"] == {"app": "web", "release": "override", "n": 1}
    assert events.named("C")[0]["properties"] == {"app": "web", "release": "1.2"}  # B's did not stick
    assert events.of_type("identify")[0]["traits"] == {"t": 1}  # traits are the user's, not super properties


def test_super_context_on_every_event_with_library_set(runtime_dir: str) -> None:
    """context set once is on every call type; a call's own context wins per key; the library
    is always mpsender's."""
    client = Client("key", "http://127.0.0.1:9", runtime_dir=runtime_dir,
                    context={"app": {"name": "web"}, "region": "eu", "library": {"name": "spoof"}})
    with capture(client=client) as events:
        client.track("A", user_id="u")
        client.identify("u")
        client.group("g", user_id="u")
        client.alias("anon", user_id="u")
        client.page("P", user_id="u", context={"region": "us", "ip": "10.0.0.1"})
        client.screen("S", user_id="u")
    assert len(events) == 6
    for event in events:
        assert event["context"]["app"] == {"name": "web"}
        assert event["context"]["library"] == LIBRARY
    assert events.of_type("page")[0]["context"]["region"] == "us"
    assert events.of_type("page")[0]["context"]["ip"] == "10.0.0.1"
    assert events.of_type("screen")[0]["context"]["region"] == "eu"


def test_super_properties_reach_before_send_and_can_be_scrubbed(runtime_dir: str) -> None:
    """The hook sees the merged event, so it can remove a super property too."""

    def scrub(event: dict[str, Any]) -> dict[str, Any]:
        return {**event, "properties": {k: v for k, v in event["properties"].items() if k != "release"}}

    client = Client("key", "http://127.0.0.1:9", runtime_dir=runtime_dir,
                    properties={"app": "web", "release": "1.2"}, before_send=scrub)
    with capture(client=client) as events:
        client.track("A", user_id="u")
        client.track("B", user_id="u")
    assert [e["properties"] for e in events] == [{"app": "web"}, {"app": "web"}]


def test_super_properties_through_init_and_module_functions() -> None:
    """Options given to capture() act like init()'s: module-level calls carry them."""
    with capture(properties={"app": "api"}, context={"service": "billing"}) as events:
        mpsender.track("Charge", user_id="u", properties={"amount": 5})
    [event] = events
    assert event["properties"] == {"app": "api", "amount": 5}
    assert event["context"] == {"service": "billing", "library": LIBRARY}


# --- enrichment -----------------------------------------------------------------------------


def test_no_enrichment_by_default(events: CapturedEvents) -> None:
    """Without enrich, context holds only the library (no host or pid leaks out)."""
    mpsender.track("A", user_id="u")
    assert events[0]["context"] == {"library": LIBRARY}


def test_enrich_adds_host_and_pid() -> None:
    """enrich=True adds the host name and the pid of the process that tracked."""
    with capture(enrich=True) as events:
        mpsender.track("A", user_id="u", context={"ip": "10.0.0.1"})
    context = events[0]["context"]
    assert context == {"host": socket.gethostname(), "pid": os.getpid(), "ip": "10.0.0.1", "library": LIBRARY}


def test_enrich_adds_the_gunicorn_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside a gunicorn worker (MPSENDER_GUNICORN_WORKER set by the integration) its number is added."""
    monkeypatch.setenv("MPSENDER_GUNICORN_WORKER", "3")
    with capture(enrich=True) as events:
        mpsender.track("A", user_id="u")
    assert events[0]["context"]["gunicorn_worker"] == 3


def test_enrich_adds_the_celery_task() -> None:
    """Inside a Celery task the task id and name are added; outside it they are not."""
    celery = pytest.importorskip("celery")
    app = celery.Celery("mpsender_test", broker="memory://", backend="cache+memory://")
    app.conf.task_always_eager = True

    @app.task(name="billing.charge")
    def charge() -> None:
        mpsender.track("Charged", user_id="u")

    with capture(enrich=True) as events:
        result = charge.delay()
        mpsender.track("Outside", user_id="u")
    inside = events.named("Charged")[0]["context"]
    assert inside["celery_task_id"] == result.id and inside["celery_task"] == "billing.charge"
    assert "celery_task_id" not in events.named("Outside")[0]["context"]


def test_user_context_wins_over_enrichment() -> None:
    """A context key given by the caller or set once overrides the enriched one."""
    with capture(enrich=True, context={"host": "web-1.public"}) as events:
        mpsender.track("A", user_id="u")
        mpsender.track("B", user_id="u", context={"pid": "n/a"})
    assert events[0]["context"]["host"] == "web-1.public"
    assert events[1]["context"]["pid"] == "n/a"
