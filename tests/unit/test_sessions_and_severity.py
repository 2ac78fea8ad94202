"""Sessions and the richer ``$error`` (issue 16, points 1 and 2), in the test process.

The cause chain is built by ``_error_event.error_properties`` alone (it must never raise);
sessions and severities go through ``mpsender.testing.capture()``, which records what the
sender's Segment encoder would send; the wire formats' placement of the session id is
checked on the encoders themselves. What needs a real process (the exception hooks, the
exit path) is in tests/integration/test_sessions_errors.py.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import mpsender
from mpsender import EventTypeError, InvalidEventError
from mpsender._error_event import MAX_CAUSES, SEVERITIES, error_properties
from mpsender._wire import PostHogEncoder, SegmentEncoder
from mpsender.testing import CapturedEvents, capture


@pytest.fixture
def events() -> Iterator[CapturedEvents]:
    """The process's client, captured."""
    with capture() as captured:
        yield captured


def raised(exc: Exception, *, cause: BaseException | None = None, context: BaseException | None = None,
           suppress: bool = False) -> Exception:
    """``exc`` as a ``raise`` would leave it: with a traceback, and the links asked for."""
    try:
        raise exc
    except Exception as caught:  # noqa: BLE001 - any exception given, returned to the test
        caught.__cause__ = cause
        if context is not None:
            caught.__context__ = context
        caught.__suppress_context__ = suppress
        return caught


def links(exc: BaseException) -> list[tuple[str, str, str]]:
    return [(c["type"], c["message"], c["relation"]) for c in error_properties(exc)["causes"]]


# --- the cause chain ----------------------------------------------------------------------


def test_the_chain_follows_cause_then_context_as_python_prints_it() -> None:
    """``raise ... from`` gives a ``cause`` link, raising inside ``except`` a ``context`` link,
    nearest first, each with its own type, message and fingerprint."""
    try:
        try:
            try:
                raise KeyError("k")
            except KeyError:
                raise OSError("disk")  # noqa: B904 - the implicit context is what is tested
        except OSError as exc:
            raise ValueError("bad") from exc
    except ValueError as top:
        props = error_properties(top)
    assert [(c["type"], c["message"], c["relation"]) for c in props["causes"]] == [
        ("OSError", "disk", "cause"), ("KeyError", "'k'", "context")]
    fingerprints = [c["fingerprint"] for c in props["causes"]]
    assert all(len(f) == 16 for f in fingerprints) and len(set([*fingerprints, props["fingerprint"]])) == 3


def test_from_none_stops_the_chain_and_a_cause_wins_over_the_context() -> None:
    """``raise ... from None`` sends no links; an explicit cause is followed, not the context."""
    assert links(raised(ValueError("v"), context=KeyError("k"), suppress=True)) == []
    assert links(raised(ValueError("v"), cause=TypeError("t"), context=KeyError("k"), suppress=True)) == [
        ("TypeError", "t", "cause")]


def test_a_chain_that_loops_ends_at_the_first_exception_seen_twice() -> None:
    """a -> b -> a, and an exception that is its own context: no hang, each exception once."""
    a, b = ValueError("a"), KeyError("b")
    a.__context__, b.__context__ = b, a
    assert links(a) == [("KeyError", "'b'", "context")]
    c = OSError("c")
    c.__cause__ = c
    assert links(c) == []


def test_the_chain_is_bounded() -> None:
    """A chain longer than MAX_CAUSES sends the MAX_CAUSES nearest links."""
    top = current = ValueError("0")
    for i in range(1, 50):
        nxt = ValueError(str(i))
        current.__cause__ = nxt
        current = nxt
    assert [m for _, m, _ in links(top)] == [str(i) for i in range(1, MAX_CAUSES + 1)]


class StrRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no")


class CauseRaises(Exception):
    @property  # type: ignore[override]
    def __cause__(self) -> BaseException | None:
        raise RuntimeError("no cause for you")


def test_a_link_that_cannot_be_read_is_a_placeholder_and_never_raises() -> None:
    """A link whose ``__str__`` raises is sent as ``<unprintable ...>``; an exception whose
    ``__cause__`` itself raises gives an event without links, not an error."""
    [(kind, message, _)] = links(raised(ValueError("v"), cause=StrRaises()))
    assert kind.endswith("StrRaises") and message.startswith("<unprintable") and message.endswith("StrRaises>")
    props = error_properties(CauseRaises("top"))
    assert props["causes"] == [] and props["error_message"] == "top"


# --- severity ---------------------------------------------------------------------------------


def test_every_severity_is_sent_and_error_is_the_default(events: CapturedEvents) -> None:
    """capture_error() sends the severity given, ``error`` without one."""
    exc = raised(ValueError("v"))
    mpsender.capture_error(exc)
    for severity in SEVERITIES:
        mpsender.capture_error(exc, severity=severity)
    assert [e["properties"]["severity"] for e in events] == ["error", *SEVERITIES]


@pytest.mark.parametrize(("severity", "error", "text"), [
    ("critical", InvalidEventError, "severity must be one of debug, info, warning, error, fatal; got 'critical'"),
    ("ERROR", InvalidEventError, "got 'ERROR'"),
    (3, EventTypeError, "severity must be a str, not int"),
])
def test_a_bad_severity_raises_at_the_call(events: CapturedEvents, severity: Any, error: type[Exception],
                                           text: str) -> None:
    """A severity outside the five is a mistake in the call: a typed error, nothing sent."""
    with pytest.raises(error, match=text):
        mpsender.capture_error(raised(ValueError("v")), severity=severity)
    assert len(events) == 0


# --- sessions --------------------------------------------------------------------------------


def test_a_session_wraps_its_events_and_lends_them_its_ids(events: CapturedEvents) -> None:
    """Session Started, the events inside with the session id (and the session's user where
    they give none), Session Ended with duration and outcome; nothing after it carries the id."""
    with mpsender.session(user_id="u1", properties={"plan": "pro"}) as s:
        mpsender.track("Inside")
        mpsender.track("Other User", user_id="u2")
        mpsender.track("Own Session", properties={"session_id": "mine"})
    mpsender.track("Outside", user_id="u3")
    assert [e["event"] for e in events] == ["Session Started", "Inside", "Other User", "Own Session",
                                            "Session Ended", "Outside"]
    started, inside, other, own, ended, outside = events
    assert started["properties"] == {"session_id": s.session_id, "plan": "pro"}
    assert (inside["userId"], inside["properties"]) == ("u1", {"session_id": s.session_id})
    assert (other["userId"], other["properties"]["session_id"]) == ("u2", s.session_id)
    assert own["properties"] == {"session_id": "mine"}  # the caller's own wins
    assert ended["properties"]["outcome"] == "ok" and ended["properties"]["plan"] == "pro"
    assert 0 <= ended["properties"]["duration"] < 10
    assert "session_id" not in outside["properties"]
    assert s.outcome == "ok" and len(s.session_id) == 36


def test_a_block_that_raises_ends_with_error_and_sys_exit_with_ok(events: CapturedEvents) -> None:
    """Without capture_uncaught: an exception leaving the block gives ``error`` at once;
    ``sys.exit()`` (code 0 or None) leaves it normally."""
    with pytest.raises(KeyError), mpsender.session(anonymous_id="a") as failed:
        raise KeyError("k")
    with pytest.raises(SystemExit), mpsender.session(anonymous_id="a") as exited:
        raise SystemExit(0)
    with pytest.raises(SystemExit), mpsender.session(anonymous_id="a") as exited_1:
        raise SystemExit(1)
    assert (failed.outcome, exited.outcome, exited_1.outcome) == ("error", "ok", "error")
    assert [e["properties"]["outcome"] for e in events.named("Session Ended")] == ["error", "ok", "error"]


def test_the_inner_session_wins_inside_its_block(events: CapturedEvents) -> None:
    """Nested: the inner id inside the inner block, its Session Started names the parent and
    takes its ids; the outer id again after it."""
    with mpsender.session("outer", anonymous_id="a1"), mpsender.session("inner"):
        mpsender.track("In Inner")
    with mpsender.session("outer2", anonymous_id="a1"):
        with mpsender.session("inner2", user_id="u9"):
            mpsender.track("In Inner2")
        mpsender.track("Back In Outer")
    by_name = {e["event"]: e for e in events if not e["event"].startswith("Session")}
    assert by_name["In Inner"]["properties"]["session_id"] == "inner"
    assert by_name["In Inner"]["anonymousId"] == "a1"
    assert by_name["In Inner2"]["userId"] == "u9"
    assert by_name["Back In Outer"]["properties"]["session_id"] == "outer2"
    inner_started = [e for e in events.named("Session Started") if e["properties"]["session_id"] == "inner"]
    assert inner_started[0]["properties"]["parent_session_id"] == "outer"


def test_threads_and_tasks_that_run_in_the_context_carry_the_id(events: CapturedEvents) -> None:
    """A thread run in a copy of the context, asyncio tasks and to_thread carry the id; a plain
    thread (Python gives it an empty context) does not."""
    def in_thread(name: str) -> None:
        mpsender.track(name, anonymous_id="t")

    with mpsender.session("s1", anonymous_id="a"):
        thread = threading.Thread(target=contextvars.copy_context().run, args=(in_thread, "Copied Thread"))
        thread.start()
        thread.join()
        plain = threading.Thread(target=in_thread, args=("Plain Thread",))
        plain.start()
        plain.join()
        with ThreadPoolExecutor(2) as pool:
            pool.submit(contextvars.copy_context().run, in_thread, "Pool").result()

        async def main() -> None:
            async def task(name: str) -> None:
                await asyncio.sleep(0)
                mpsender.track(name)
            await asyncio.gather(task("Task 1"), task("Task 2"), asyncio.to_thread(in_thread, "To Thread"))

        asyncio.run(main())
    ids = {e["event"]: e["properties"].get("session_id") for e in events}
    assert ids["Plain Thread"] is None
    assert {ids[n] for n in ("Copied Thread", "Pool", "Task 1", "Task 2", "To Thread")} == {"s1"}


def test_async_with_and_a_session_per_task(events: CapturedEvents) -> None:
    """``async with``: concurrent tasks each in their own session see only their own id."""
    async def visit(n: int) -> None:
        async with mpsender.session(f"s{n}", anonymous_id=f"a{n}"):
            for _ in range(3):
                await asyncio.sleep(0)
                mpsender.track("Step")

    async def main() -> None:
        await asyncio.gather(*(visit(n) for n in range(4)))

    asyncio.run(main())
    for e in events.named("Step"):
        assert e["properties"]["session_id"] == "s" + e["anonymousId"][1:]
    assert [e["properties"]["outcome"] for e in events.named("Session Ended")] == ["ok"] * 4


def test_capture_error_in_a_session_carries_it_and_its_user(events: CapturedEvents) -> None:
    """An error captured inside a session has its id and, given no ids, the session's user."""
    with mpsender.session("s1", user_id="u1"):
        mpsender.capture_error(raised(ValueError("v")))
    [error] = events.named("$error")
    assert (error["userId"], error["properties"]["session_id"]) == ("u1", "s1")


def test_shutdown_ends_an_open_session_once(events: CapturedEvents) -> None:
    """A session entered and never left is ended by shutdown(), as ``ok`` at exit; leaving it
    afterwards sends nothing more."""
    s = mpsender.session("left-open", anonymous_id="a")
    s.__enter__()
    mpsender.shutdown(0.0)
    s.__exit__(None, None, None)
    [ended] = events.named("Session Ended")
    assert ended["properties"]["outcome"] == "ok" and ended["properties"]["at_exit"] is True


@pytest.mark.parametrize(("kwargs", "error", "text"), [
    ({"session_id": 5}, EventTypeError, "session_id must be a str, not int"),
    ({"session_id": ""}, InvalidEventError, "session_id must not be empty"),
    ({"user_id": ["u"]}, EventTypeError, "user_id must be a str or int, not list"),
    ({"anonymous_id": ""}, InvalidEventError, "anonymous_id must not be empty"),
    ({"properties": [1]}, EventTypeError, "session properties must be a dict, not list"),
])
def test_bad_session_arguments_raise_at_the_call(events: CapturedEvents, kwargs: dict[str, Any],
                                                 error: type[Exception], text: str) -> None:
    """A typed error from session() itself, before any block runs."""
    with pytest.raises(error, match=text):
        mpsender.session(**kwargs)
    assert len(events) == 0


def test_a_session_is_entered_once(events: CapturedEvents) -> None:
    """Entering the same session object twice is refused."""
    s = mpsender.session(anonymous_id="a")
    with s, pytest.raises(InvalidEventError, match="entered already"), s:
        pass


# --- the session id on the wire ----------------------------------------------------------------


RECORD = {"t": "track", "e": "E", "m": "m1", "ts": 0.0, "u": "u1", "s": "s1"}


def encoders() -> tuple[SegmentEncoder, PostHogEncoder]:
    kw: dict[str, Any] = {"write_key": "k", "library_name": "mpsender", "library_version": "0"}
    return SegmentEncoder(**kw), PostHogEncoder(**kw)


def test_segment_puts_the_id_in_properties_or_context_and_posthog_in_dollar_session_id() -> None:
    """Segment/JSON: properties.session_id (context.session_id for identify, group, alias);
    PostHog: $session_id on every event; a caller's own property of that name wins."""
    segment, posthog = encoders()
    assert segment.event(RECORD)["properties"] == {"session_id": "s1"}
    assert segment.event({**RECORD, "p": {"session_id": "mine"}})["properties"] == {"session_id": "mine"}
    identify = segment.event({**RECORD, "t": "identify"})
    assert identify["context"]["session_id"] == "s1" and identify["traits"] == {}
    assert posthog.event(RECORD)["properties"]["$session_id"] == "s1"
    assert posthog.event({**RECORD, "t": "identify"})["properties"]["$session_id"] == "s1"
    assert posthog.event({**RECORD, "p": {"$session_id": "mine"}})["properties"]["$session_id"] == "mine"
    assert "$session_id" not in posthog.event({k: v for k, v in RECORD.items() if k != "s"})["properties"]


def test_before_send_sees_the_session_id_as_session_id() -> None:
    """The hook gets ``sessionId`` and may drop it."""
    seen: list[Any] = []

    def hook(event: dict[str, Any]) -> dict[str, Any]:
        seen.append(event.get("sessionId"))
        event.pop("sessionId", None)
        return event

    with capture(before_send=hook) as events, mpsender.session("s1", anonymous_id="a"):
        mpsender.track("E")
    assert seen == ["s1", "s1", "s1"]  # Session Started, E, Session Ended
    assert all("session_id" not in e["properties"] for e in events)


# --- the hooks' chaining -------------------------------------------------------------------------


def test_hooks_chain_give_back_and_never_chain_to_themselves(monkeypatch: pytest.MonkeyPatch) -> None:
    """install() chains to the hook before it and uninstall() gives it back; when another hook
    was installed over ours meanwhile, ours stays in its chain, passing calls on, and a new
    install() activates it there instead of chaining it to a hook that calls it."""
    from mpsender import _uncaught

    calls: list[str] = []

    def previous(kind: Any, value: Any, tb: Any) -> None:
        calls.append("previous")

    monkeypatch.setattr("sys.excepthook", previous)
    monkeypatch.setattr("threading.excepthook", threading.excepthook)
    for name in ("_previous_sys", "_previous_thread", "_active", "_sys_linked", "_thread_linked"):
        monkeypatch.setattr(_uncaught, name, getattr(_uncaught, name))

    _uncaught.install()
    assert sys.excepthook is _uncaught._sys_hook and _uncaught.installed()
    _uncaught.uninstall()
    assert sys.excepthook is previous and not _uncaught.installed()

    _uncaught.install()
    ours = sys.excepthook

    def wrapper(kind: Any, value: Any, tb: Any) -> None:
        calls.append("wrapper")
        ours(kind, value, tb)

    sys.excepthook = wrapper
    _uncaught.uninstall()
    assert sys.excepthook is wrapper  # not ours to take away
    _uncaught.install()
    assert sys.excepthook is wrapper and _uncaught.installed()
    sys.excepthook(ValueError, ValueError("v"), None)
    assert calls == ["wrapper", "previous"]


def test_matching_a_session_to_an_exception_survives_an_unreadable_chain() -> None:
    """Whether an exception was raised from a session's: False, not an error, when the
    chain cannot be read (this runs inside track() and the hooks)."""
    from mpsender._session import _in_chain

    target = ValueError("v")
    assert _in_chain(target, raised(KeyError("k"), context=target))
    assert not _in_chain(target, CauseRaises("top"))


def test_otlp_carries_the_session_in_session_id() -> None:
    """OTLP: the semantic conventions' ``session.id`` attribute, on every call type."""
    from mpsender._wire import get_encoder

    otlp = get_encoder("otlp", write_key="", library_name="mpsender", library_version="0")

    def attributes(record: dict[str, Any]) -> dict[str, Any]:
        return {a["key"]: a["value"] for a in otlp.event(record)["attributes"]}

    assert attributes(RECORD)["session.id"] == {"stringValue": "s1"}
    assert attributes({**RECORD, "t": "identify"})["session.id"] == {"stringValue": "s1"}
    assert "session.id" not in attributes({k: v for k, v in RECORD.items() if k != "s"})
