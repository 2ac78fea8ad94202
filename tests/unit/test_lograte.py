"""The throttle for warnings that can repeat every second: first logged, then one line per interval."""

from __future__ import annotations

import logging
import os

import pytest

from mpsender._lograte import Throttle


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_first_is_logged_repeats_are_counted_and_summed_up_once_per_interval(
        caplog: pytest.LogCaptureFixture) -> None:
    """A warning repeated every second for 3 minutes: the first is logged, then one line a
    minute saying how many were left out; another kind is not held back by it."""
    clock = _Clock()
    throttle = Throttle(logging.getLogger("mpsender.test"), interval=60.0, clock=clock)
    caplog.set_level(logging.WARNING, logger="mpsender.test")
    logged = []
    for second in range(180):
        clock.now = 1000.0 + second
        logged.append(throttle.warning("disk", "cannot delete %s: %s", "a.wal", "EACCES"))
    assert throttle.warning("other", "another kind")
    assert [i for i, done in enumerate(logged) if done] == [0, 60, 120]
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "cannot delete a.wal: EACCES",
        "cannot delete a.wal: EACCES (59 more like this in the last 60s not logged)",
        "cannot delete a.wal: EACCES (59 more like this in the last 60s not logged)",
        "another kind",
    ]


def test_a_fork_child_logs_its_own_first_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A kind the parent just logged is logged again by a fork child (reported by exit code)."""
    throttle = Throttle(logging.getLogger("mpsender.test"))
    assert throttle.warning("spawn", "first")
    assert not throttle.warning("spawn", "again")
    pid = os.fork()
    if pid == 0:
        os._exit(0 if throttle.warning("spawn", "in the child") else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
