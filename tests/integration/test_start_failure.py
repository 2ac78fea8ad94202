"""A sender that cannot start is loud: one warning on the app's stderr, with the sender's own
error and the fix, whatever logging is configured; ``mpsender status`` shows it; the next
sender that starts clears it and sends what waited in the spool.

The apps here configure no logging at all (the library's logger has only its NullHandler),
as the first user who met this did (issue 14: uWSGI, the base Python, no message anywhere).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from support import REPO, app_env, check, live_sender_pids, run_app, without_mpsender

from mpsender._collector import Collector
from mpsender._layout import START_FAILURE
from mpsender._options import Options
from mpsender._paths import paths_for
from mpsender._spawn import reap, spawn_sender

pytestmark = pytest.mark.timeout(60)

WARNING = "mpsender: WARNING: the sender process could not start"

TRACKING_APP = """
    import logging, sys
    import mpsender
    assert logging.getLogger("mpsender").handlers[0].__class__ is logging.NullHandler
    assert not logging.getLogger().handlers  # no logging configured
    mpsender.init()
    for i in range(20):
        mpsender.track("Signed Up", user_id=f"user-{i}")
    print(mpsender.flush(float(sys.argv[1])))
"""


def bare_python(tmp_path: Path) -> str:
    """A real interpreter that cannot import mpsender's dependencies: a virtualenv without
    them (and without pip, so it takes a fraction of a second to make)."""
    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    return str(venv / "bin" / "python")


def status(runtime_dir: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = app_env("http://127.0.0.1:1", runtime_dir)
    return subprocess.run([sys.executable, "-m", "mpsender", "status", "--runtime-dir", runtime_dir, *args],
                          env=without_mpsender(env),
                          capture_output=True, text=True, timeout=30, cwd=str(REPO))


def test_a_python_without_the_dependencies_is_reported_on_stderr_and_by_status(
        tmp_path: Path, collector: Collector, runtime_dir: str) -> None:
    """The python option names an interpreter lacking msgpack: the app writes ONE warning to
    stderr (its logging unconfigured) quoting the ModuleNotFoundError and naming
    MPSENDER_PYTHON; status shows the failure; a good interpreter later sends everything and
    the failure is gone from status."""
    python = bare_python(tmp_path)
    env = app_env(collector.url, runtime_dir, python=python, flush_interval=0.05, linger=5)
    proc = run_app(TRACKING_APP, env, args=["0.5"])
    assert check(proc).strip() == "False"
    assert proc.stderr.count(WARNING) == 1, proc.stderr  # once, though init() retried for 3 s
    assert f"({python} -m mpsender._sender exited with status 1)" in proc.stderr, proc.stderr
    assert "ModuleNotFoundError: No module named 'msgpack'" in proc.stderr, proc.stderr
    assert "Fix: set MPSENDER_PYTHON" in proc.stderr, proc.stderr
    assert not live_sender_pids(runtime_dir)

    shown = status(runtime_dir)
    assert shown.returncode == 1, shown
    assert "start failed" in shown.stdout and f"{python} -m mpsender._sender exited with status 1" in shown.stdout
    assert "    ModuleNotFoundError: No module named 'msgpack'" in shown.stdout, shown.stdout
    assert "fix       set MPSENDER_PYTHON" in shown.stdout, shown.stdout
    (report,) = json.loads(status(runtime_dir, "--json").stdout)
    assert report["running"] is False and report["start_failure"]["python"] == python
    assert "No module named 'msgpack'" in report["start_failure"]["output"]

    good = app_env(collector.url, runtime_dir, flush_interval=0.05, linger=5)
    fixed = run_app(TRACKING_APP, good, args=["10"])
    assert check(fixed).strip() == "True" and WARNING not in fixed.stderr
    assert collector.wait_for(lambda c: len(set(c.message_ids())) == 40, 10), len(collector.message_ids())
    assert not list(Path(runtime_dir).glob(f"*/{START_FAILURE}"))
    assert "start failed" not in status(runtime_dir).stdout


FAILING_INTERPRETER = """#!/bin/sh
echo "fake-python: cannot run $2 (this line is the sender's own output)" >&2
exit 3
"""

NO_WAIT_APP = """
    import os, sys, time
    import mpsender
    mpsender.init(start_timeout=0)  # starts nothing, waits for nothing: track() starts the sender
    record = sys.argv[1]
    deadline = time.monotonic() + 20
    i = 0
    while not os.path.exists(record) and time.monotonic() < deadline:
        mpsender.track("Tick", user_id="u", properties={"i": i})  # checks on the sender once a second
        i += 1
        time.sleep(0.01)  # a request-like pace, not a wait for something
    print(os.path.exists(record))
"""


def test_a_start_from_track_that_fails_is_reported_too(tmp_path: Path, collector: Collector,
                                                       runtime_dir: str) -> None:
    """With start_timeout=0 the sender is started from track() without waiting: the
    launcher's failure is found when it is reaped, recorded, and written once to stderr
    with the interpreter's own words, though track() tries again and again."""
    fake = tmp_path / "fake-python"
    fake.write_text(FAILING_INTERPRETER)
    fake.chmod(0o755)
    env = app_env(collector.url, runtime_dir, python=str(fake))
    record = paths_for(Options(write_key="test-key", endpoint=collector.url, runtime_dir=runtime_dir)).start_failure
    proc = run_app(NO_WAIT_APP, env, args=[str(record)])
    assert check(proc).strip() == "True", proc.stderr
    assert proc.stderr.count(WARNING) == 1, proc.stderr
    assert "fake-python: cannot run mpsender._sender" in proc.stderr, proc.stderr
    failure = json.loads(record.read_text())
    assert failure["python"] == str(fake) and failure["reason"] == "exited with status 3", failure
    assert "fake-python: cannot run mpsender._sender" in failure["output"], failure


def test_a_launcher_that_exits_before_reading_its_configuration_leaves_no_pipe_open(
        tmp_path: Path, runtime_dir: str) -> None:
    """A launcher that exits without reading its configuration (more than a pipe holds, so
    writing it fails): the start is reported failed, and both of its pipes are closed then,
    not left open until the garbage collector finds them (a ResourceWarning)."""
    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    options = Options(write_key="test-key", endpoint="http://127.0.0.1:1", runtime_dir=runtime_dir,
                      python=str(fake), properties={"pad": "p" * 1_000_000})
    paths = paths_for(options)
    paths.ensure()
    lock_fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        me = psutil.Process()
        before = me.num_fds()
        assert not spawn_sender(options, paths, lock_fd, wait=5.0)
        leaked = me.num_fds() - before
    finally:
        os.close(lock_fd)
        reap()
    assert not leaked, f"descriptors left open: {leaked}"
    failure = json.loads(paths.start_failure.read_text())
    assert failure["reason"] == "exited with status 3", failure
