"""The ``mpsender`` pytest plugin: a test run sends nothing, and the ``mpsender_events``
fixture records what a test tracks.

Registered under the ``pytest11`` entry point, so pytest loads it wherever mpsender is
installed; ``-p no:mpsender`` turns it off. It imports nothing of mpsender until a test
asks for the fixture (or something else imported mpsender already).

Sending is switched off by ``MPSENDER_TESTING=1`` in the environment of the whole run
(so of the processes the tests start, too), set before any ``conftest.py`` is imported:
an app that calls ``init()`` at import time, a write key exported in the developer's
shell, ``init(disabled=False)`` -- none of them sends from a test run. ``--mpsender-send``
or ``mpsender_send = true`` in the ini file leave the environment alone, for a suite that
means to send (to a local collector, say).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from mpsender.testing import CapturedEvents

__all__ = ["mpsender_events"]

#: mpsender._options.TESTING_ENV, spelt out so the plugin need not import mpsender
_TESTING_ENV = "MPSENDER_TESTING"
_SEND_HELP = ("let this test run send events (by default the mpsender plugin sets MPSENDER_TESTING=1: "
              "nothing is sent, whatever MPSENDER_* or init() say)")
#: the variable's value before the plugin set it (None: unset); absent when the run opted out
_before = pytest.StashKey[str | None]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--mpsender-send", action="store_true", default=False, help=_SEND_HELP)
    parser.addini("mpsender_send", type="bool", default=False, help=_SEND_HELP)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    # The earliest hook an installed plugin gets after the command line and the ini file
    # are read, and before any conftest.py (which may import the app, and the app call
    # init()) is imported.
    send = early_config.known_args_namespace.mpsender_send or early_config.getini("mpsender_send")
    if send:
        return
    early_config.stash[_before] = os.environ.get(_TESTING_ENV)
    os.environ[_TESTING_ENV] = "1"


def pytest_unconfigure(config: pytest.Config) -> None:
    # an in-process run (pytester) gives the environment back as it found it
    if _before not in config.stash:
        return
    before = config.stash[_before]
    if before is None:
        os.environ.pop(_TESTING_ENV, None)
    else:
        os.environ[_TESTING_ENV] = before


def pytest_runtest_setup(item: pytest.Item) -> None:
    # each test that tracks outside a capture block logs the hint in its own captured log
    testrun = sys.modules.get("mpsender._testrun")
    if testrun is not None:
        testrun.rearm()


@pytest.fixture
def mpsender_events() -> Iterator[CapturedEvents]:
    """Everything the test tracks through mpsender, recorded instead of sent
    (see :func:`mpsender.testing.capture`)."""
    from mpsender.testing import capture

    with capture() as events:
        yield events
