"""mpsender.integrations.logging.EventHandler: log records as track events, through the
library's own capture seam (the end-to-end case, configured by dictConfig in a real
subprocess, is in tests/integration/test_logging_timed.py)."""

from __future__ import annotations

import datetime as dt
import logging
import logging.config
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import mpsender
from mpsender import EventTypeError, InvalidEventError
from mpsender.integrations.logging import EventHandler, _severity
from mpsender.testing import capture

HOST = f"host:{socket.gethostname()}"


@pytest.fixture
def log() -> Iterator[logging.Logger]:
    """A logger of the test's own, at DEBUG, with an EventHandler at its default level."""
    logger = logging.getLogger(f"app.{uuid.uuid4().hex[:8]}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = EventHandler()
    logger.addHandler(handler)
    yield logger
    logger.removeHandler(handler)


class NoStr:
    """A log message whose str() raises."""

    def __str__(self) -> str:
        raise RuntimeError("no str")


def props(event: dict[str, Any]) -> dict[str, Any]:
    return dict(event["properties"])


def test_the_module_is_usable_next_to_the_standard_logging() -> None:
    """Importing mpsender.integrations.logging leaves `logging` the standard library's."""
    import mpsender.integrations.logging as integration

    assert integration.logging is logging and issubclass(EventHandler, logging.Handler)


def test_a_warning_becomes_an_event_with_logger_level_message_and_location(log: logging.Logger) -> None:
    """A record at the handler's level is one "Log Record" event, from the host's anonymous id."""
    with capture() as events:
        log.warning("quota at %d%%", 93)
        line = 1 + test_a_warning_becomes_an_event_with_logger_level_message_and_location.__code__.co_firstlineno + 2
    [event] = events.named("Log Record")
    assert event["anonymousId"] == HOST and "userId" not in event
    assert props(event) == {
        "logger": log.name, "level": "WARNING", "message": "quota at 93%",
        "location": {"pathname": __file__, "lineno": line, "function": "test_a_warning_becomes_an_event_with_"
                                                                       "logger_level_message_and_location"},
    }


def test_records_below_the_level_are_not_sent(log: logging.Logger) -> None:
    """At the default WARNING, debug and info records send nothing; a level name works too."""
    with capture() as events:
        log.debug("d")
        log.info("i")
        log.warning("w")
        log.error("e")
        log.critical("c")
    assert [props(e)["level"] for e in events] == ["WARNING", "ERROR", "CRITICAL"]
    handler = EventHandler(level="INFO", event="Log Line")
    assert handler.level == logging.INFO and handler.event == "Log Line"


def test_extra_fields_become_properties_and_odd_values_their_repr(log: logging.Logger) -> None:
    """extra= values are sent (converted as track() converts them); what track() refuses is sent
    as its repr, and a string with a lone surrogate escaped, so the event is not lost."""

    class Widget:
        def __repr__(self) -> str:
            return "<Widget 7>"

    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    with capture() as events:
        log.warning("import", extra={
            "account": "acme", "rows": 12, "ratio": 0.5, "ok": True, "nested": {"a": [1, 2]},
            "when": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc), "tags": ("x", "y"),
            "widget": Widget(), "broken": Broken(), "deep": {"w": Widget()}, "path": "caf\udce9.txt",
            "huge": 2**70, "logger": "not this one",
        })
    p = props(events[0])
    assert p["account"] == "acme" and p["rows"] == 12 and p["ratio"] == 0.5 and p["ok"] is True
    assert p["nested"] == {"a": [1, 2]} and p["tags"] == ["x", "y"]
    assert p["when"] == "2026-01-02T03:04:05+00:00"
    assert p["widget"] == "<Widget 7>" and p["deep"] == "{'w': <Widget 7>}"
    assert p["broken"].startswith("<unrepresentable ") and p["broken"].endswith(".Broken>")
    assert p["path"] == "caf\\udce9.txt" and p["huge"] == str(2**70)
    assert p["logger"] == log.name  # the handler's own keys win over extra=


def test_ids_come_from_extra_and_are_not_properties(log: logging.Logger) -> None:
    """extra user_id / anonymous_id are the event's ids; without them the host's anonymous id."""
    with capture() as events:
        log.warning("a", extra={"user_id": "u-1"})
        log.warning("b", extra={"anonymous_id": 77, "plan": "pro"})
    first, second = events
    assert first["userId"] == "u-1" and "anonymousId" not in first and "user_id" not in props(first)
    assert second["anonymousId"] == "77" and "userId" not in second and props(second)["plan"] == "pro"


def test_a_record_with_exc_info_is_an_error_event(log: logging.Logger) -> None:
    """log.exception() sends capture_error()'s $error event with the log message, logger, level
    and severity as properties; exc_info=True at WARNING is a warning severity."""
    with capture() as events:
        try:
            {}["missing"]
        except KeyError:
            log.exception("lookup of %s failed", "missing", extra={"user_id": "u-2", "shard": 3})
        try:
            int("x")
        except ValueError:
            log.warning("bad input", exc_info=True)
            log.critical("stop", exc_info=True)
    assert events.names() == ["$error", "$error", "$error"]
    first, second, third = (props(e) for e in events)
    assert events[0]["userId"] == "u-2" and events[1]["anonymousId"] == HOST
    assert first["error_type"] == "KeyError" and first["error_message"] == "'missing'"
    assert first["stack"] and first["fingerprint"]
    assert (first["message"], first["logger"], first["level"], first["severity"], first["shard"]) == (
        "lookup of missing failed", log.name, "ERROR", "error", 3)
    assert (second["error_type"], second["severity"], third["severity"]) == ("ValueError", "warning", "fatal")


def test_an_exc_info_without_an_exception_is_a_plain_event(log: logging.Logger) -> None:
    """log.exception() outside an except block has exc_info (None, None, None): a plain event."""
    with capture() as events:
        log.exception("no exception here")
    assert events.names() == ["Log Record"]


def test_severity_of_each_level() -> None:
    """Levels map onto the severities error trackers use, custom levels to the one below."""
    assert [_severity(n) for n in (5, 10, 20, 25, 30, 40, 45, 50, 60)] == [
        "debug", "debug", "info", "info", "warning", "error", "error", "fatal", "fatal"]


def test_mpsender_own_records_are_never_sent(log: logging.Logger) -> None:
    """Records of the mpsender logger and its children are ignored; a look-alike name is not."""
    handler = log.handlers[0]
    with capture() as events:
        for name in ("mpsender", "mpsender._client", "mpsender.testing", "mpsenderish"):
            handler.handle(logging.LogRecord(name, logging.ERROR, __file__, 1, "from %s", (name,), None))
    assert [props(e)["message"] for e in events] == ["from mpsenderish"]


def test_a_record_logged_while_sending_one_does_not_loop(log: logging.Logger) -> None:
    """A before_send hook that logs on the app's logger: the record it logs is dropped, not sent
    again and again (nor does it recurse until RecursionError)."""
    calls: list[str] = []

    def hook(event: dict[str, Any]) -> dict[str, Any]:
        calls.append(event["properties"]["message"])
        log.warning("hook saw %s", event["event"])  # back into the handler, in the same thread
        return event

    with capture(before_send=hook) as events:
        log.warning("outer")
    assert calls == ["outer"]
    assert [props(e)["message"] for e in events] == ["outer"]


def test_an_event_track_refuses_goes_to_handle_error_not_the_app(
        log: logging.Logger, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad user_id in extra= makes track() raise; logging reports it on stderr, the caller
    goes on, and the next record is sent."""
    with capture() as events:
        log.warning("bad", extra={"user_id": ["not", "an", "id"]})
        log.warning("good")
    err = capsys.readouterr().err
    assert "--- Logging error ---" in err and "EventTypeError: user_id must be a str or int, not list" in err
    assert [props(e)["message"] for e in events] == ["good"]


def test_a_message_that_cannot_be_formatted_is_sent_as_a_placeholder(log: logging.Logger) -> None:
    """A format string that does not match its arguments (or a msg whose str() raises) is still
    an event, with a placeholder message, and nothing reaches the caller."""
    handler = log.handlers[0]  # alone: pytest's own capture handler raises where a handler fails
    with capture() as events:
        handler.handle(log.makeRecord(log.name, logging.WARNING, __file__, 1, "%d rows", ("many",), None))
        handler.handle(log.makeRecord(log.name, logging.WARNING, __file__, 2, NoStr(), (), None))
    assert [props(e)["message"] for e in events] == [
        "<unformattable message: %d rows>", "<unformattable message of type NoStr>"]


def test_without_init_the_first_record_is_reported_and_later_ones_are_sent_once_a_client_exists(
        log: logging.Logger, capsys: pytest.CaptureFixture[str]) -> None:
    """Like mpsender.track() before init(), the handler has no client: it says so once through
    handleError, never raises, and sends as soon as the process has a client."""
    log.warning("one")
    log.warning("two")
    err = capsys.readouterr().err
    assert err.count("--- Logging error ---") == 1 and "NotInitializedError" in err
    with capture() as events:
        log.warning("three")
    assert [props(e)["message"] for e in events] == ["three"]


def test_an_explicit_client_is_used() -> None:
    """client= sends with that client, not the process's."""
    client = mpsender.Client(disabled=True)
    logger = logging.getLogger("app.explicit")
    handler = EventHandler(client=client, event="Explicit")
    logger.addHandler(handler)
    try:
        with capture(client=client) as events:
            logger.error("hello")
    finally:
        logger.removeHandler(handler)
    assert events.names() == ["Explicit"]


def test_bad_arguments_are_typed_errors() -> None:
    """An empty or non-str event, or a client that is not a Client, raise when the handler is made."""
    with pytest.raises(InvalidEventError, match="event must not be empty"):
        EventHandler(event="")
    with pytest.raises(EventTypeError, match="event must be a str, not int"):
        EventHandler(event=3)  # type: ignore[arg-type]
    with pytest.raises(EventTypeError, match="client must be a mpsender.Client, not str"):
        EventHandler(client="x")  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["class", "()"])
def test_dict_config_makes_the_handler_with_its_level_and_event(key: str) -> None:
    """Both dictConfig forms build the handler with level and event from the config."""
    name = f"app.dictconfig.{uuid.uuid4().hex[:8]}"
    logging.config.dictConfig({
        "version": 1, "disable_existing_loggers": False,
        "handlers": {"events": {key: "mpsender.integrations.logging.EventHandler", "level": "ERROR",
                                "event": "Configured"}},
        "loggers": {name: {"handlers": ["events"], "level": "DEBUG", "propagate": False}},
    })
    logger = logging.getLogger(name)
    [handler] = logger.handlers
    try:
        assert isinstance(handler, EventHandler) and handler.level == logging.ERROR
        with capture() as events:
            logger.warning("below")
            logger.error("at")
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert events.names() == ["Configured"]
