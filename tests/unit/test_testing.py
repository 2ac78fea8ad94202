"""mpsender.testing: capture() and the pytest plugin, as a user's test suite uses them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from support import REPO, live_sender_pids, without_mpsender

import mpsender
from mpsender import NotInitializedError, _api, _testrun
from mpsender._client import Client
from mpsender._version import __version__
from mpsender.testing import CapturedEvents, capture

LIBRARY = {"name": "mpsender", "version": __version__}


def wal_files(runtime_dir: str) -> list[Path]:
    """Every spool file under ``runtime_dir``."""
    return list(Path(runtime_dir).rglob("*.wal"))


def real_client(runtime_dir: str, **options: Any) -> Client:
    """A configured (not disabled) client, as init() makes it, without starting a sender."""
    return Client("key", "http://127.0.0.1:9", runtime_dir=runtime_dir, **options)


# --- capture() without init() -------------------------------------------------------


def test_capture_needs_no_init_and_writes_nothing(runtime_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without init(), capture() records the calls and creates no file, process or thread."""
    monkeypatch.setenv("MPSENDER_RUNTIME_DIR", runtime_dir)
    threads = threading.active_count()
    with capture() as events:
        mpsender.track("Signup", user_id="u1", properties={"plan": "pro"})
        assert mpsender.flush(1.0) is True
    assert events.names() == ["Signup"]
    assert os.listdir(runtime_dir) == []
    assert live_sender_pids(runtime_dir) == set()
    assert threading.active_count() == threads


def test_capture_leaves_no_client_behind() -> None:
    """After the block the process is as before: without init(), track() raises NotInitializedError."""
    with capture():
        mpsender.track("A", user_id="u")
    assert _api._client is None
    with pytest.raises(NotInitializedError):
        mpsender.track("A", user_id="u")


def test_capture_restores_even_when_the_block_raises() -> None:
    """An exception in the block propagates and the client is given back."""
    with pytest.raises(ZeroDivisionError):
        with capture():
            mpsender.track("A", user_id="u")
            1 / 0  # noqa: B018
    assert _api._client is None


# --- capture() around the process's client -------------------------------------------


def test_capture_takes_over_the_client_init_returned(runtime_dir: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The client the app keeps from init() and the module functions are both captured,
    with the app's options; its own spool gets nothing, and it is restored afterwards."""
    app_client = real_client(runtime_dir, properties={"app": "web"})
    monkeypatch.setattr(_api, "_client", app_client)  # what init() does, minus starting a sender
    sink_before = app_client._sink
    with capture() as events:
        app_client.track("Stored", user_id="u")
        mpsender.track("Module", user_id="u")
        assert mpsender.get_client() is app_client
    assert events.names() == ["Stored", "Module"]
    assert all(e["properties"] == {"app": "web"} for e in events)
    assert wal_files(runtime_dir) == []
    assert app_client._sink is sink_before and app_client._off is False
    assert app_client._tracked == 0  # its own counters are untouched
    assert live_sender_pids(runtime_dir) == set()


def test_capture_a_client_built_directly(runtime_dir: str) -> None:
    """capture(client=...) records a Client the app built itself; the module client is untouched."""
    client = real_client(runtime_dir)
    with capture(client=client) as events:
        client.identify("u", traits={"plan": "pro"})
    assert events.of_type("identify")[0]["traits"] == {"plan": "pro"}
    assert _api._client is None
    assert wal_files(runtime_dir) == []


def test_capture_works_when_mpsender_is_disabled_in_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    """With MPSENDER_DISABLED=1 (common in test settings) events are still captured, and the
    client is disabled again afterwards."""
    monkeypatch.setenv("MPSENDER_DISABLED", "1")
    client = mpsender.init(properties={"app": "web"})
    assert client.options.disabled
    with capture() as events:
        mpsender.track("A", user_id="u")
    assert events[0]["properties"] == {"app": "web"}
    mpsender.track("B", user_id="u")  # a no-op again
    assert len(events) == 1 and client._off is True


def test_capture_options_apply_only_inside_the_block(runtime_dir: str) -> None:
    """capture(before_send=...) overrides the client's option for the block only."""
    client = real_client(runtime_dir, properties={"app": "web"})
    with capture(client=client, properties={"app": "test"}, before_send=lambda e: None) as events:
        client.track("Dropped", user_id="u")
    assert events == [] and events.dropped == {"dropped_by_hook": 1}
    assert client._hook is None and dict(client._props) == {"app": "web"}
    assert client.options.properties == {"app": "web"}


def test_init_with_the_same_options_inside_capture_keeps_capturing(monkeypatch: pytest.MonkeyPatch) -> None:
    """An app that calls init() again (same options) inside the block stays captured."""
    monkeypatch.setenv("MPSENDER_DISABLED", "1")
    mpsender.init(properties={"app": "web"})
    with capture() as events:
        mpsender.init(properties={"app": "web"})
        mpsender.track("A", user_id="u")
    assert events.names() == ["A"]


def test_init_with_other_options_inside_capture_is_adopted(runtime_dir: str) -> None:
    """init() inside the block (an app factory built in the test) takes its options for the
    block and starts nothing; afterwards the process's client is what it was."""
    with capture() as events:
        mpsender.init(write_key="k", endpoint="http://127.0.0.1:9", runtime_dir=runtime_dir,
                      properties={"app": "factory"})
        mpsender.track("A", user_id="u")
    assert events[0]["properties"] == {"app": "factory"}
    assert live_sender_pids(runtime_dir) == set() and wal_files(runtime_dir) == []
    assert _api._client is None


def test_nested_captures(runtime_dir: str) -> None:
    """An inner block records its own events; the outer one resumes after it."""
    with capture() as outer:
        mpsender.track("Outer1", user_id="u")
        with capture(properties={"inner": True}) as inner:
            mpsender.track("Inner", user_id="u")
        mpsender.track("Outer2", user_id="u")
    assert outer.names() == ["Outer1", "Outer2"]
    assert inner.names() == ["Inner"] and inner[0]["properties"] == {"inner": True}
    assert outer[1]["properties"] == {}


def test_lifecycle_calls_inside_capture_do_not_block(runtime_dir: str) -> None:
    """flush(), stats(), start() and shutdown() answer at once; tracking goes on after shutdown()."""
    client = real_client(runtime_dir)
    with capture(client=client) as events:
        client.track("A", user_id="u")
        assert client.start(wait=5.0) is True
        assert client.flush(timeout=5.0) is True
        stats = client.stats(timeout=5.0)
        assert stats.sender is None and stats.process.tracked == 1
        assert client.shutdown(timeout=5.0) is True
        client.track("B", user_id="u")
    assert events.names() == ["A", "B"]
    assert live_sender_pids(runtime_dir) == set()


def test_events_from_other_threads_are_captured() -> None:
    """Calls made by other threads of the process during the block are recorded."""
    with capture() as events:
        workers = [threading.Thread(target=mpsender.track, args=(f"T{i}",), kwargs={"user_id": "u"})
                   for i in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    assert sorted(events.names()) == ["T0", "T1", "T2", "T3"]


# --- what is recorded --------------------------------------------------------------------


def test_events_are_recorded_as_the_sender_would_send_them() -> None:
    """Segment-shaped JSON values: UUID message ids, ISO-8601 UTC timestamps, context.library."""
    with capture() as events:
        mpsender.track("Signup", anonymous_id="a1", properties={"ids": {1, 2}})
    [event] = events
    assert set(event) == {"type", "event", "anonymousId", "properties", "context", "messageId", "timestamp"}
    assert uuid.UUID(event["messageId"])
    assert event["timestamp"].endswith("Z") and len(event["timestamp"]) == 24
    assert event["context"] == {"library": LIBRARY}
    assert sorted(event["properties"]["ids"]) == [1, 2]


def test_validation_errors_raise_inside_capture() -> None:
    """A call that would raise in production raises in capture, and is not recorded."""
    with capture() as events:
        with pytest.raises(mpsender.UnserializableError, match="properties.when"):
            mpsender.track("A", user_id="u", properties={"when": object()})
    assert events == []


def test_an_event_the_sender_would_refuse_is_counted_not_recorded(caplog: pytest.LogCaptureFixture) -> None:
    """An event under max_message_bytes packed but over it as JSON is dropped by the sender
    in production when it was packed (dead-lettered as oversize; where track() writes the
    wire JSON it raises EventTooLargeError instead); capture counts it as the sender would
    and warns."""
    with capture(max_message_bytes=1_000) as events:
        mpsender.track("Edge", user_id="u", properties={"blob": "x" * 900})
    assert events == [] and events.dropped == {"oversize": 1}
    assert any("would dead-letter" in r.getMessage() for r in caplog.records)


def test_sequence_helpers() -> None:
    """named(), of_type(), names(), clear(), indexing, slicing, len, iteration and equality."""
    with capture() as events:
        mpsender.track("Signup", user_id="u")
        mpsender.identify("u", traits={"a": 1})
        mpsender.track("Login", user_id="u")
        mpsender.track("Signup", user_id="v")
        assert len(events) == 4 and events.names() == ["Signup", "Login", "Signup"]
        assert [e["userId"] for e in events.named("Signup")] == ["u", "v"]
        assert events.named("Nope") == []
        assert [e["type"] for e in events.of_type("identify")] == ["identify"]
        assert events[0]["event"] == "Signup" and events[-1]["userId"] == "v"
        assert [e["type"] for e in events[1:3]] == ["identify", "track"]
        assert [e["type"] for e in events] == ["track", "identify", "track", "track"]
        assert events == list(events) and events != [] and "Signup" in repr(events)
        events.clear()
        assert events == [] and len(events) == 0
        mpsender.track("After", user_id="u")
    assert events.names() == ["After"]


def test_clear_resets_the_drop_counts() -> None:
    """clear() forgets the drop counts as well as the events."""
    with capture(before_send=lambda e: None if e.get("event") == "x" else e) as events:
        mpsender.track("x", user_id="u")
        assert events.dropped == {"dropped_by_hook": 1}
        events.clear()
        assert events.dropped == {}
        mpsender.track("x", user_id="u")
    assert events.dropped == {"dropped_by_hook": 1}


def test_captured_events_is_a_sequence() -> None:
    """CapturedEvents is a read-only Sequence (no append), unhashable like a list."""
    events = CapturedEvents()
    from collections.abc import Sequence

    assert isinstance(events, Sequence) and not hasattr(events, "append")
    with pytest.raises(TypeError):
        hash(events)


# --- a test run sends nothing: MPSENDER_TESTING -----------------------------------------------


def test_testing_env_disables_every_client(runtime_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """MPSENDER_TESTING=1 disables init() with a key and endpoint, a Client built with
    disabled=False, and the environment's own MPSENDER_DISABLED=0; no file is written."""
    monkeypatch.setenv("MPSENDER_TESTING", "1")
    monkeypatch.setenv("MPSENDER_DISABLED", "0")
    monkeypatch.setenv("MPSENDER_RUNTIME_DIR", runtime_dir)
    assert mpsender.init(write_key="key", endpoint="http://127.0.0.1:9").options.disabled
    assert real_client(runtime_dir, disabled=False).options.disabled
    mpsender.track("A", user_id="u")
    assert os.listdir(runtime_dir) == []


@pytest.mark.parametrize("raw", ["0", "false", "off", ""])
def test_testing_env_false_changes_nothing(raw: str, runtime_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """MPSENDER_TESTING=0 (or empty) leaves a configured client configured."""
    monkeypatch.setenv("MPSENDER_TESTING", raw)
    assert not real_client(runtime_dir).options.disabled


def hints(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mpsender.testing"]


def test_a_call_outside_capture_in_a_test_run_says_how_to_capture_it(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """With MPSENDER_TESTING, the first call outside capture() logs (a WARNING record, not a
    warning) what was called and how to capture it; later calls do not, until re-armed."""
    monkeypatch.setenv("MPSENDER_TESTING", "1")
    mpsender.init(write_key="key", endpoint="http://127.0.0.1:9")
    _testrun.rearm()
    with capture() as events:
        mpsender.track("Inside", user_id="u")
    assert events.names() == ["Inside"] and hints(caplog) == []
    mpsender.track("Signup", user_id="u")
    mpsender.identify("u", traits={"plan": "pro"})
    [hint] = hints(caplog)
    assert "track('Signup')" in hint
    assert "mpsender_events fixture" in hint and "mpsender.testing.capture()" in hint
    assert [r.levelname for r in caplog.records if r.name == "mpsender.testing"] == ["WARNING"]
    _testrun.rearm()
    mpsender.page("Home", user_id="u")
    assert "page()" in hints(caplog)[1] and len(hints(caplog)) == 2


def test_disabled_outside_a_test_run_stays_silent(monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """MPSENDER_DISABLED=1 alone (production's switch) logs nothing on a call."""
    monkeypatch.setenv("MPSENDER_DISABLED", "1")
    mpsender.init()
    _testrun.rearm()
    mpsender.track("A", user_id="u")
    assert hints(caplog) == []


# --- the pytest plugin and the example -----------------------------------------------------


def run_pytest(target: Path | str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run pytest on ``target`` in a fresh interpreter with the mpsender plugin loaded
    explicitly (``-p no:mpsender`` keeps an installed entry point from loading it twice)."""
    env = {k: v for k, v in without_mpsender().items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:mpsender",
         "-p", "mpsender.pytest_plugin", "-W", "error", str(target)],
        cwd=str(cwd), env=env, capture_output=True, text=True, timeout=100,
    )


def test_pytest_plugin_fixture(tmp_path: Path) -> None:
    """The mpsender_events fixture captures a test's events and gives the client back after it."""
    (tmp_path / "test_user.py").write_text(textwrap.dedent('''
        import mpsender
        from mpsender import _api

        def test_tracked(mpsender_events):
            mpsender.track("Signup", user_id="u1", properties={"plan": "pro"})
            assert mpsender_events.names() == ["Signup"]
            assert mpsender_events[0]["properties"] == {"plan": "pro"}

        def test_isolated(mpsender_events):
            assert mpsender_events == []

        def test_after():
            assert _api._client is None
    '''))
    proc = run_pytest("test_user.py", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout


def test_example_user_test_passes() -> None:
    """examples/test_user_code_example.py, a user's test written with mpsender.testing, passes."""
    proc = run_pytest(REPO / "examples" / "test_user_code_example.py", REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed" in proc.stdout and "failed" not in proc.stdout
