"""Users' own test suites, run as users run them: ``python -m unittest``, Django's test
runner, and pytest with the mpsender plugin, each in a fresh interpreter with
MPSENDER_WRITE_KEY and MPSENDER_ENDPOINT exported, pointing at a real collector on
127.0.0.1, as a developer's shell may have them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support import REPO, live_sender_pids, without_mpsender

from mpsender._collector import Collector

#: the application code every user suite below tests
APP = '''
import mpsender

def signup(email, plan):
    mpsender.track("Signup", user_id=email, properties={"plan": plan})

def login(email):
    mpsender.track("Login", user_id=email)
'''

UNITTEST_SUITE = '''
import unittest

import mpsender
import mpsender.testing
from mpsender import _api
from myapp import login, signup


@mpsender.testing.captured
class ClassDecorated(unittest.TestCase):
    def setUp(self):
        login("setup@example.com")  # what setUp tracks is captured too

    def test_signup(self):
        signup("ada@example.com", "pro")
        self.assertEqual(self.mpsender_events.names(), ["Login", "Signup"])
        self.assertEqual(self.mpsender_events.named("Signup")[0]["properties"], {"plan": "pro"})

    def test_each_test_has_its_own_events(self):
        self.assertEqual(self.mpsender_events.names(), ["Login"])

    @mpsender.testing.captured
    def test_a_decorated_method_in_a_decorated_class_is_captured_once(self):
        signup("bob@example.com", "team")
        self.assertEqual(self.mpsender_events.names(), ["Login", "Signup"])


class MethodDecorated(unittest.TestCase):
    @mpsender.testing.captured
    def test_signup(self):
        signup("ada@example.com", "pro")
        self.assertEqual(self.mpsender_events.names(), ["Signup"])

    @mpsender.testing.captured(before_send=lambda event: None)
    def test_with_options(self):
        signup("ada@example.com", "pro")
        self.assertEqual(list(self.mpsender_events), [])
        self.assertEqual(self.mpsender_events.dropped, {"dropped_by_hook": 1})

    def test_outside_capture_nothing_is_recorded_and_the_log_says_why(self):
        with self.assertLogs("mpsender.testing", "WARNING") as logs:
            signup("ada@example.com", "pro")
        self.assertIn("mpsender.testing.capture()", logs.output[0])
        self.assertTrue(mpsender.get_client().options.disabled)


class AsyncMethodDecorated(unittest.IsolatedAsyncioTestCase):
    @mpsender.testing.captured
    async def test_signup(self):
        signup("ada@example.com", "pro")
        self.assertEqual(self.mpsender_events.names(), ["Signup"])


class WithMixin(mpsender.testing.CaptureMixin, unittest.TestCase):
    mpsender_capture_options = {"properties": {"suite": "mixin"}}

    def setUp(self):
        super().setUp()
        login("setup@example.com")

    def test_signup(self):
        signup("ada@example.com", "pro")
        self.assertEqual(self.mpsender_events.names(), ["Login", "Signup"])
        self.assertEqual(self.mpsender_events.named("Signup")[0]["properties"], {"plan": "pro", "suite": "mixin"})


class ZZAfterwards(unittest.TestCase):
    def test_no_capture_is_left_running(self):
        client = _api._client
        self.assertTrue(client is None or client.options.disabled and client._off)


class Failing(unittest.TestCase):
    @mpsender.testing.captured
    def test_expects_an_event_that_is_not_tracked(self):
        login("ada@example.com")
        self.assertEqual(self.mpsender_events.names(), ["Signup"])
'''

DJANGO_SETTINGS = '''
SECRET_KEY = "test"
INSTALLED_APPS = []
DATABASES = {}
USE_TZ = True
'''

DJANGO_SUITE = '''
from django.test import SimpleTestCase

import mpsender.testing
from myapp import login, signup


@mpsender.testing.captured
class Decorated(SimpleTestCase):
    def setUp(self):
        super().setUp()
        login("setup@example.com")

    def test_signup(self):
        signup("ada@example.com", "pro")
        self.assertEqual(self.mpsender_events.names(), ["Login", "Signup"])


class WithMixin(mpsender.testing.CaptureMixin, SimpleTestCase):
    def test_signup(self):
        signup("ada@example.com", "pro")
        self.assertEqual(self.mpsender_events.names(), ["Signup"])

    @mpsender.testing.captured
    def test_method_inside_the_mixin_is_captured_once(self):
        login("ada@example.com")
        self.assertEqual(self.mpsender_events.names(), ["Login"])
'''


def user_env(collector: Collector, runtime_dir: str, **extra: str) -> dict[str, str]:
    """A developer's shell: the write key and endpoint exported (a real collector), the
    runtime directory the test watches; no PYTEST_* variables of this run."""
    env = {k: v for k, v in without_mpsender().items() if not k.startswith("PYTEST_")}
    env.update(MPSENDER_WRITE_KEY="real-key", MPSENDER_ENDPOINT=collector.url, MPSENDER_RUNTIME_DIR=runtime_dir,
               MPSENDER_FLUSH_INTERVAL="0.05", MPSENDER_LINGER="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *cmd], cwd=str(cwd), env=env, capture_output=True, text=True,
                          timeout=100)


def output(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def assert_nothing_sent(collector: Collector, runtime_dir: str) -> None:
    """No request reached the collector, no sender was started, no spool file written."""
    assert live_sender_pids(runtime_dir) == set()
    assert list(Path(runtime_dir).rglob("*.wal")) == []
    assert collector.events() == []


def test_unittest_suite_with_captured_and_the_mixin(tmp_path: Path, collector: Collector, runtime_dir: str) -> None:
    """python -m unittest, MPSENDER_TESTING=1 as docs/testing.md says: the class decorator
    (setUp included, fresh events per test), the method decorator (sync, async, with
    options), the mixin all record what their tests track; the client is given back;
    the one failing test fails; nothing reaches the collector."""
    (tmp_path / "myapp.py").write_text(APP)
    (tmp_path / "test_user.py").write_text(textwrap.dedent(UNITTEST_SUITE))
    proc = run(["-m", "unittest", "-v", "test_user"], tmp_path, user_env(collector, runtime_dir, MPSENDER_TESTING="1"))
    assert proc.returncode == 1, output(proc)
    assert "Ran 10 tests" in proc.stderr and "FAILED (failures=1)" in proc.stderr, output(proc)
    assert "test_expects_an_event_that_is_not_tracked (test_user.Failing" in proc.stderr, output(proc)
    assert proc.stderr.count("... ok") == 9, output(proc)
    assert_nothing_sent(collector, runtime_dir)


def test_django_simple_test_case(tmp_path: Path, collector: Collector, runtime_dir: str) -> None:
    """Django's own test runner on SimpleTestCase: @captured on the class and CaptureMixin."""
    pytest.importorskip("django")
    (tmp_path / "myapp.py").write_text(APP)
    (tmp_path / "djsettings.py").write_text(DJANGO_SETTINGS)
    (tmp_path / "test_django_user.py").write_text(textwrap.dedent(DJANGO_SUITE))
    env = user_env(collector, runtime_dir, MPSENDER_TESTING="1", DJANGO_SETTINGS_MODULE="djsettings")
    proc = run(["-m", "django", "test", "-v", "2", "test_django_user"], tmp_path, env)
    assert proc.returncode == 0, output(proc)
    assert "Ran 3 tests" in proc.stderr and "\nOK" in proc.stderr, output(proc)
    assert_nothing_sent(collector, runtime_dir)


# --- pytest: the plugin makes the run send nothing ------------------------------------------

CONFTEST = '''
import mpsender
import myapp  # noqa: F401

# the app initialised at import time, before any fixture runs, from the shell's MPSENDER_*
mpsender.init()
'''

PYTEST_SUITE = '''
import os
import subprocess
import sys

import mpsender
from myapp import login, signup


def test_the_app_tracks_outside_capture():
    signup("ada@example.com", "pro")
    assert mpsender.flush(10)


def test_a_client_built_to_send():
    client = mpsender.Client(write_key="key", endpoint=os.environ["MPSENDER_ENDPOINT"], disabled=False)
    client.track("Direct", user_id="u")
    assert client.flush(10)
    client.shutdown()


def test_a_process_the_test_starts():
    code = "import mpsender, myapp; mpsender.init(); myapp.login('child'); assert mpsender.flush(10)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_fixture_still_records(mpsender_events):
    login("ada@example.com")
    assert mpsender_events.names() == ["Login"]
'''


def pytest_run(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """pytest in a project of its own (its own ini file) with the plugin as installed."""
    return run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error", *args], tmp_path, env)


def write_pytest_project(tmp_path: Path, ini: str = "") -> None:
    (tmp_path / "myapp.py").write_text(APP)
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_app.py").write_text(textwrap.dedent(PYTEST_SUITE))
    (tmp_path / "pytest.ini").write_text(f"[pytest]\n{ini}\n")


def test_a_pytest_run_sends_nothing_with_a_key_exported(tmp_path: Path, collector: Collector,
                                                         runtime_dir: str) -> None:
    """With MPSENDER_WRITE_KEY and MPSENDER_ENDPOINT exported (even MPSENDER_DISABLED=0), the
    plugin's run sends nothing: not from an init() in conftest at import time, not from a
    Client(disabled=False), not from a process a test starts; the fixture still records."""
    write_pytest_project(tmp_path)
    proc = pytest_run(tmp_path, user_env(collector, runtime_dir, MPSENDER_DISABLED="0"))
    assert proc.returncode == 0 and "4 passed" in proc.stdout, output(proc)
    assert_nothing_sent(collector, runtime_dir)


@pytest.mark.parametrize("opt_out", ["--mpsender-send", "mpsender_send = true"])
def test_a_pytest_run_that_opts_out_sends(opt_out: str, tmp_path: Path, collector: Collector,
                                          runtime_dir: str) -> None:
    """--mpsender-send, or mpsender_send = true in the ini file, lets the same suite send: the
    events of the three tests outside capture arrive (and none of the fixture's)."""
    ini, args = (opt_out, []) if "=" in opt_out else ("", [opt_out])
    write_pytest_project(tmp_path, ini)
    proc = pytest_run(tmp_path, user_env(collector, runtime_dir), *args)
    assert proc.returncode == 0 and "4 passed" in proc.stdout, output(proc)
    assert collector.wait_for(lambda c: len(c.events()) >= 3, 20), output(proc)
    assert sorted(e["event"] for e in collector.events()) == ["Direct", "Login", "Signup"]


HINT_SUITE = '''
import mpsender
from myapp import login, signup


def test_tracks_outside_capture_and_passes():
    signup("ada@example.com", "pro")  # a log record, not a warning: -W error does not fail it
    login("ada@example.com")


def test_tracks_outside_capture_and_fails():
    signup("ada@example.com", "pro")
    assert False, "the user's own failure"
'''


def test_tracking_outside_capture_tells_the_failing_test_what_to_do(tmp_path: Path, collector: Collector,
                                                                    runtime_dir: str) -> None:
    """A failing test that tracked outside capture shows, in its captured log, what it
    tracked and how to capture it, even though an earlier test already got the hint; the
    hint is not a warning, so -W error does not fail the test that only tracked."""
    write_pytest_project(tmp_path)
    (tmp_path / "test_app.py").write_text(textwrap.dedent(HINT_SUITE))
    proc = pytest_run(tmp_path, user_env(collector, runtime_dir))
    assert proc.returncode == 1 and "1 failed, 1 passed" in proc.stdout, output(proc)
    report = proc.stdout.split("test_tracks_outside_capture_and_fails", 1)[1]
    assert "Captured log call" in report, output(proc)
    assert "track('Signup') outside mpsender.testing.capture() in a test run" in report, output(proc)
    assert "use the mpsender_events fixture" in report, output(proc)
    assert_nothing_sent(collector, runtime_dir)


def test_an_in_process_run_gives_the_environment_back(tmp_path: Path, collector: Collector, runtime_dir: str) -> None:
    """pytest.main() in a process (as pytester runs do): MPSENDER_TESTING is "1" during the
    run and as it was afterwards, unset or the caller's own value."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_env.py").write_text("import os\n\ndef test_set():\n"
                                          "    assert os.environ['MPSENDER_TESTING'] == '1'\n")
    code = textwrap.dedent('''
        import os, pytest
        for before in (None, "0"):
            if before is not None:
                os.environ["MPSENDER_TESTING"] = before
            assert pytest.main(["-q", "-p", "no:cacheprovider", "test_env.py"]) == 0
            assert os.environ.get("MPSENDER_TESTING") == before, os.environ.get("MPSENDER_TESTING")
        print("restored")
    ''')
    proc = run(["-c", code], tmp_path, user_env(collector, runtime_dir))
    assert proc.returncode == 0 and "restored" in proc.stdout, output(proc)
