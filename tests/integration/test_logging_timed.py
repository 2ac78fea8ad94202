"""The logging handler and timed(), end to end: an application in a real subprocess,
configured as users configure it, and its events at a real collector on 127.0.0.1."""

from __future__ import annotations

import socket

from support import app_env, check, run_app

from mpsender._collector import Collector


def test_a_dict_config_handler_delivers_warnings_and_exceptions(collector: Collector, runtime_dir: str) -> None:
    """dictConfig, then init(): info is filtered out, a warning arrives with its extra fields
    and a logged exception arrives as a $error event; mpsender's own records stay out."""
    code = """
        import logging, logging.config, mpsender
        logging.config.dictConfig({
            "version": 1,
            "handlers": {"events": {"class": "mpsender.integrations.logging.EventHandler",
                                    "level": "WARNING", "event": "App Log"}},
            "root": {"handlers": ["events"], "level": "DEBUG"},
        })
        mpsender.init(flush_interval=0.05)
        log = logging.getLogger("billing")
        log.info("not sent")
        log.warning("quota at %d%%", 93, extra={"account": "acme", "user_id": "u-1"})
        logging.getLogger("mpsender.anything").error("never sent")
        try:
            raise KeyError("invoice-7")
        except KeyError:
            log.exception("charge failed")
        assert mpsender.flush(20), "flush failed"
        print("ok")
    """
    proc = run_app(code, app_env(collector.url, runtime_dir))
    assert check(proc).strip() == "ok"
    assert "Logging error" not in proc.stderr, proc.stderr
    assert collector.wait_for(lambda c: c.count() >= 2, timeout=20)
    events = {e["event"]: e for e in collector.events()}
    assert sorted(events) == ["$error", "App Log"] and collector.count() == 2
    warning = events["App Log"]
    assert warning["userId"] == "u-1"
    assert {k: warning["properties"][k] for k in ("logger", "level", "message", "account")} == {
        "logger": "billing", "level": "WARNING", "message": "quota at 93%", "account": "acme"}
    assert warning["properties"]["location"]["function"] == "<module>"
    error = events["$error"]
    assert error["anonymousId"] == f"host:{socket.gethostname()}"
    assert error["properties"]["error_type"] == "KeyError" and error["properties"]["error_message"] == "'invoice-7'"
    assert (error["properties"]["message"], error["properties"]["logger"], error["properties"]["severity"]) == (
        "charge failed", "billing", "error")


def test_timed_sync_and_async_deliver_duration_and_outcome(collector: Collector, runtime_dir: str) -> None:
    """Functions decorated at import (before init()) and blocks, sync and async, each deliver one
    event with duration and outcome; the failing call's exception reaches its caller."""
    code = """
        import asyncio, time, mpsender

        @mpsender.timed("Report Built", kind="monthly")
        def build():
            time.sleep(0.05)
            return "built"

        @mpsender.timed("Charge", user_id="u-9")
        def charge():
            raise ValueError("declined")

        @mpsender.timed("Fetch")
        async def fetch():
            await asyncio.sleep(0.05)
            return "fetched"

        async def block():
            async with mpsender.timed("Async Block", step=2):
                await asyncio.sleep(0.05)

        mpsender.init(flush_interval=0.05)
        assert build() == "built"
        try:
            charge()
        except ValueError as exc:
            assert str(exc) == "declined"
        else:
            raise AssertionError("the exception was swallowed")
        assert asyncio.run(fetch()) == "fetched"
        asyncio.run(block())
        with mpsender.timed("Import Done", source="s3"):
            time.sleep(0.05)
        assert mpsender.flush(20), "flush failed"
        print("ok")
    """
    assert check(run_app(code, app_env(collector.url, runtime_dir))).strip() == "ok"
    assert collector.wait_for(lambda c: c.count() >= 5, timeout=20)
    events = {e["event"]: e for e in collector.events()}
    assert collector.count() == 5
    assert sorted(events) == ["Async Block", "Charge", "Fetch", "Import Done", "Report Built"]
    for name in ("Report Built", "Fetch", "Async Block", "Import Done"):
        assert events[name]["properties"]["outcome"] == "ok", name
        assert events[name]["properties"]["duration"] >= 0.05, name
    assert events["Report Built"]["properties"]["kind"] == "monthly"
    assert events["Async Block"]["properties"]["step"] == 2
    assert events["Import Done"]["properties"]["source"] == "s3"
    charge = events["Charge"]
    assert charge["userId"] == "u-9"
    assert (charge["properties"]["outcome"], charge["properties"]["error_type"]) == ("error", "ValueError")
    assert isinstance(charge["properties"]["duration"], float)
