"""What a test run says when code tracks outside ``mpsender.testing.capture()``.

With MPSENDER_TESTING set (the pytest plugin sets it for a test run) every client is
disabled, so an event tracked outside a capture block goes nowhere: not to the endpoint,
and not to the test either. A developer who wonders why a test does not see an event,
or whether a test run sends anything, gets one log record telling them -- a log record,
not a warning: a warning turned into an error (``-W error``, ``filterwarnings = error``)
would make ``track()`` raise in the user's code, which it must never do for delivery.

Once per process, and once per test under the pytest plugin (which re-arms it before
each test), so a failing test's captured log shows it whatever ran before.
"""

from __future__ import annotations

import logging

__all__ = ["HINT", "outside_capture", "rearm"]

logger = logging.getLogger("mpsender.testing")

HINT = ("use the mpsender_events fixture, @mpsender.testing.captured or "
        "mpsender.testing.capture() to record it")

_armed = True  # a plain bool: read and set from any thread or signal handler, no lock


def outside_capture(call: str) -> None:
    """Log, once, that ``call`` was made outside a capture block in a test run."""
    global _armed
    if not _armed:
        return
    _armed = False
    logger.warning("%s outside mpsender.testing.capture() in a test run (MPSENDER_TESTING is set): "
                   "nothing is sent or recorded; %s", call, HINT)


def rearm() -> None:
    """Let the next call outside a capture block log again (the plugin: before each test)."""
    global _armed
    _armed = True
