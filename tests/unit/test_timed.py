"""mpsender.timed(): one event per call or block, with duration and outcome, through the
library's own capture seam (the end-to-end case is in tests/integration/test_logging_timed.py)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import threading
import time
from typing import Any

import pytest

import mpsender
from mpsender import EventTypeError, InvalidEventError, UnserializableError
from mpsender.testing import capture

HOST = f"host:{socket.gethostname()}"


class PaymentDeclined(Exception):
    """An application's own exception."""


def props(event: dict[str, Any]) -> dict[str, Any]:
    return dict(event["properties"])


# --- as a decorator ---------------------------------------------------------------------


def test_a_sync_call_sends_its_duration_and_ok_with_the_given_properties() -> None:
    """One event per call: the properties given, outcome ok, duration at least the wait inside."""

    @mpsender.timed("Report Built", kind="monthly", pages=3)
    def build(n: int) -> int:
        time.sleep(0.05)
        return n * 2

    with capture() as events:
        assert build(21) == 42
    [event] = events.named("Report Built")
    p = props(event)
    assert p.pop("duration") >= 0.05
    assert p == {"kind": "monthly", "pages": 3, "outcome": "ok"}
    assert event["anonymousId"] == HOST and "userId" not in event


def test_the_exception_propagates_unchanged_and_the_event_says_error() -> None:
    """The very exception object reaches the caller, with its traceback; the event has its type."""
    declined = PaymentDeclined("card 4242 declined")

    @mpsender.timed("Charge")
    def charge() -> None:
        raise declined

    with capture() as events, pytest.raises(PaymentDeclined) as info:
        charge()
    assert info.value is declined and info.value.args == ("card 4242 declined",)
    assert info.traceback[-1].name == "charge"  # raised where it was raised, not re-made by the wrapper
    [event] = events.named("Charge")
    assert props(event)["outcome"] == "error"
    assert props(event)["error_type"] == f"{__name__}.PaymentDeclined"
    assert props(event)["duration"] >= 0


def test_a_builtin_error_and_a_base_exception_are_named_by_class() -> None:
    """KeyError is named KeyError; KeyboardInterrupt also propagates and gives outcome error."""

    @mpsender.timed("Lookup")
    def lookup(exc: BaseException) -> None:
        raise exc

    with capture() as events:
        with pytest.raises(KeyError):
            lookup(KeyError("k"))
        with pytest.raises(KeyboardInterrupt):
            lookup(KeyboardInterrupt())
    assert [(props(e)["outcome"], props(e)["error_type"]) for e in events] == [
        ("error", "KeyError"), ("error", "KeyboardInterrupt")]


def test_an_async_function_is_timed_over_its_await_not_its_creation() -> None:
    """No event when the coroutine is made; one when it finishes, its duration covering the await."""
    seen_before_await: list[int] = []

    @mpsender.timed("Fetch", source="api")
    async def fetch(x: int) -> int:
        await asyncio.sleep(0.05)
        return x + 1

    async def main(events: Any) -> int:
        coroutine = fetch(1)
        seen_before_await.append(len(events))
        return await coroutine

    with capture() as events:
        assert asyncio.run(main(events)) == 2
    assert seen_before_await == [0]
    [event] = events.named("Fetch")
    p = props(event)
    assert p.pop("duration") >= 0.05
    assert p == {"source": "api", "outcome": "ok"}


def test_an_async_function_that_raises_propagates_it_unchanged() -> None:
    """The awaited exception reaches the awaiting code as it was raised."""
    declined = PaymentDeclined("no")

    @mpsender.timed("Async Charge")
    async def charge() -> None:
        await asyncio.sleep(0)
        raise declined

    with capture() as events, pytest.raises(PaymentDeclined) as info:
        asyncio.run(charge())
    assert info.value is declined
    assert props(events.named("Async Charge")[0])["outcome"] == "error"


def test_a_cancelled_coroutine_is_an_error_and_the_cancellation_propagates() -> None:
    """Cancelling the awaiting task reaches it as CancelledError; the event says so."""
    started = asyncio.Event()

    @mpsender.timed("Slow")
    async def slow() -> None:
        started.set()
        await asyncio.Event().wait()  # until cancelled

    async def main() -> None:
        task = asyncio.ensure_future(slow())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with capture() as events:
        asyncio.run(main())
    assert (props(events[0])["outcome"], props(events[0])["error_type"]) == ("error", "asyncio.exceptions.CancelledError")


def test_the_decorated_function_keeps_its_metadata() -> None:
    """Name, qualified name, docstring, signature and coroutine-ness are the function's own."""

    @mpsender.timed("E")
    def work(a: int, *, b: str = "x") -> str:
        """Do the work."""
        return f"{a}{b}"

    @mpsender.timed("E")
    async def awork(a: int) -> int:
        """Do it later."""
        return a

    assert work.__name__ == "work" and work.__doc__ == "Do the work."
    assert work.__qualname__.endswith("<locals>.work")
    assert list(inspect.signature(work).parameters) == ["a", "b"]
    assert inspect.signature(work) == inspect.signature(work.__wrapped__)  # type: ignore[attr-defined]
    assert awork.__name__ == "awork" and awork.__doc__ == "Do it later."
    assert inspect.iscoroutinefunction(awork) and not inspect.iscoroutinefunction(work)
    assert work.__wrapped__.__name__ == "work"  # type: ignore[attr-defined]


def test_a_method_is_timed_with_its_instance() -> None:
    """On a method, self is passed through as usual."""

    class Importer:
        def __init__(self) -> None:
            self.n = 5

        @mpsender.timed("Import")
        def run(self, extra: int) -> int:
            return self.n + extra

    with capture() as events:
        assert Importer().run(1) == 6
    assert events.names() == ["Import"]


def test_generator_functions_are_refused_at_decoration() -> None:
    """A generator's body runs while it is iterated, so decorating one is an EventTypeError at once."""

    def numbers() -> Any:
        yield 1

    async def anumbers() -> Any:
        yield 1

    with pytest.raises(EventTypeError, match="generator function .*numbers.*`with mpsender.timed"):
        mpsender.timed("Numbers")(numbers)
    with pytest.raises(EventTypeError, match="generator function"):
        mpsender.timed("Numbers")(anumbers)
    with pytest.raises(EventTypeError, match="goes below @staticmethod"):
        mpsender.timed("Numbers")(staticmethod(numbers))
    with pytest.raises(EventTypeError, match="decorates a function, not int"):
        mpsender.timed("Numbers")(5)  # type: ignore[arg-type, misc]


# --- bad input, at the call of timed() ------------------------------------------------------


@pytest.mark.parametrize(("args", "kwargs", "error", "match"), [
    (("",), {}, InvalidEventError, "event must not be empty"),
    ((5,), {}, EventTypeError, "event must be a str, not int"),
    (("E",), {"duration": 1}, InvalidEventError, "duration is set by timed"),
    (("E",), {"outcome": "x", "error_type": "y"}, InvalidEventError, "error_type, outcome is set by timed"),
    (("E",), {"when": object()}, UnserializableError, "properties.when: value of type object"),
    (("E",), {"user_id": ["u"]}, EventTypeError, "user_id must be a str or int"),
    (("E",), {"anonymous_id": ""}, InvalidEventError, "anonymous_id must not be empty"),
])
def test_bad_input_is_a_typed_error_when_timed_is_called(
        args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    """Event name, reserved properties, values and ids are checked at decoration, naming the fault."""
    with capture() as events, pytest.raises(error, match=match):
        mpsender.timed(*args, **kwargs)
    assert len(events) == 0


def test_ids_are_keyword_arguments_and_event_may_be_a_property() -> None:
    """user_id/anonymous_id set the event's ids; a property called "event" is a property."""

    @mpsender.timed("Export", user_id="u-7", event="nightly")
    def export() -> None:
        pass

    with capture() as events:
        export()
        with mpsender.timed("Export", anonymous_id=42):
            pass
    first, second = events
    assert first["userId"] == "u-7" and props(first)["event"] == "nightly"
    assert second["anonymousId"] == "42" and "userId" not in second


# --- as a context manager -------------------------------------------------------------------


def test_with_and_async_with_time_their_block() -> None:
    """`with` and `async with` send one event per pass, duration at least the wait inside."""

    async def main() -> None:
        async with mpsender.timed("Async Block", step="b"):
            await asyncio.sleep(0.05)

    with capture() as events:
        with mpsender.timed("Import Done", source="s3"):
            time.sleep(0.05)
        asyncio.run(main())
    first, second = events
    assert (first["event"], props(first)["source"], props(first)["outcome"]) == ("Import Done", "s3", "ok")
    assert (second["event"], props(second)["step"], props(second)["outcome"]) == ("Async Block", "b", "ok")
    assert props(first)["duration"] >= 0.05 and props(second)["duration"] >= 0.05


def test_a_block_that_raises_lets_the_exception_through() -> None:
    """The block's exception is not swallowed, and the event says error with its type."""
    declined = PaymentDeclined()
    with capture() as events, pytest.raises(PaymentDeclined) as info, mpsender.timed("Block"):
        raise declined
    assert info.value is declined
    assert props(events[0])["error_type"].endswith("PaymentDeclined")


def test_one_timed_object_entered_by_several_threads_times_each_pass() -> None:
    """A shared timed() object keeps a start per thread: a short pass inside a long one is short."""
    shared = mpsender.timed("Shared")
    long_entered, short_done = threading.Event(), threading.Event()

    def long_pass() -> None:
        with shared:
            long_entered.set()
            assert short_done.wait(10)
            time.sleep(0.05)  # the long pass is at least this much longer than the short one

    with capture() as events:
        worker = threading.Thread(target=long_pass)
        worker.start()
        assert long_entered.wait(10)
        with shared:
            pass
        short_done.set()
        worker.join(10)
    short, long = (props(e)["duration"] for e in events)
    assert long >= short + 0.05


def test_nested_passes_of_one_object_each_send() -> None:
    """The same object nested in itself sends two events, the outer one the longer."""
    t = mpsender.timed("Nested")
    with capture() as events:
        with t:
            with t:
                pass
            time.sleep(0.01)
    inner, outer = (props(e)["duration"] for e in events)
    assert outer >= inner + 0.01


# --- the client it sends with -----------------------------------------------------------------


def test_client_timed_sends_with_that_client() -> None:
    """Client.timed() tracks on the client it was made from, not on the process's."""
    client = mpsender.Client(disabled=True)
    with capture(client=client) as events:
        with client.timed("Mine", a=1):
            pass
    assert events.names() == ["Mine"] and props(events[0])["a"] == 1


def test_decorating_before_init_is_fine_and_without_any_client_the_call_still_returns(
        caplog: pytest.LogCaptureFixture) -> None:
    """The client is looked up per call: no init() yet means no event (logged once), never an error."""

    @mpsender.timed("Early")
    def early() -> str:
        return "done"

    with caplog.at_level(logging.WARNING, logger="mpsender"):
        assert early() == "done"
        with pytest.raises(PaymentDeclined):
            with mpsender.timed("Early Block"):
                raise PaymentDeclined
        assert early() == "done"
    warned = [r.getMessage() for r in caplog.records if r.name == "mpsender._timed"]
    assert len(warned) == 2 and "NotInitializedError" in warned[0]  # once per timed() object
    with capture() as events:
        early()
    assert events.names() == ["Early"]


def test_an_event_refused_at_send_changes_neither_result_nor_exception(caplog: pytest.LogCaptureFixture) -> None:
    """An event over max_message_bytes is dropped (logged); the call's value and exception stand."""

    @mpsender.timed("Big", blob="x" * 500)
    def work(fail: bool) -> int:
        if fail:
            raise PaymentDeclined
        return 7

    with capture(max_message_bytes=200) as events, caplog.at_level(logging.WARNING, logger="mpsender"):
        assert work(False) == 7
        with pytest.raises(PaymentDeclined):
            work(True)
    assert len(events) == 0
    assert any("EventTooLargeError" in r.getMessage() for r in caplog.records if r.name == "mpsender._timed")
