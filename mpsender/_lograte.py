"""Warnings that can repeat every second, logged without burying everything else.

A sender that cannot list its spool, delete a file or reach its disk bound meets the same
trouble at every pass of its loop (once a second, or once per batch); an application whose
sender will not start meets it at every attempt. Logging each one fills ``sender.log``
(rotated at 5 MiB: the first, most useful line is the first to go) and costs a write each
time. So the first occurrence of a kind is logged as it comes; later ones within
``interval`` are only counted, and the first one after that is logged with how many were
left out meanwhile: one line per kind per interval at most.

The log is not the record of what was lost: drops and incidents are counted by reason in
the counters ``stats()`` and ``mpsender status`` show, whatever the log leaves out.

No lock: an application may log from a signal handler that interrupted a call logging the
same kind. A race between threads can at worst log one extra line or miscount one left out.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable

from . import _platform

__all__ = ["Throttle"]

#: one line per kind of warning per this many seconds
INTERVAL = 60.0


class Throttle:
    """Rate-limits the warnings of one logger by kind (a short key the caller names)."""

    def __init__(self, logger: logging.Logger, interval: float = INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._kinds: dict[str, list[float]] = {}  # kind -> [when last logged, left out since]
        _throttles.add(self)

    def forget(self) -> None:
        """Start afresh: a fork child's first warning of a kind is its own to log."""
        self._kinds = {}

    def log(self, level: int, kind: str, msg: str, *args: object, exc_info: bool = False) -> bool:
        """Log unless ``kind`` was logged less than ``interval`` ago; True if logged."""
        now = self._clock()
        seen = self._kinds.get(kind)
        if seen is not None and now - seen[0] < self._interval:
            seen[1] += 1
            return False
        self._kinds[kind] = [now, 0]
        if seen is not None and seen[1]:
            msg += " (%d more like this in the last %.0fs not logged)"
            args = (*args, int(seen[1]), now - seen[0])
        self._logger.log(level, msg, *args, exc_info=exc_info)
        return True

    def warning(self, kind: str, msg: str, *args: object, exc_info: bool = False) -> bool:
        return self.log(logging.WARNING, kind, msg, *args, exc_info=exc_info)

    def error(self, kind: str, msg: str, *args: object, exc_info: bool = False) -> bool:
        return self.log(logging.ERROR, kind, msg, *args, exc_info=exc_info)


_throttles: weakref.WeakSet[Throttle] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for throttle in list(_throttles):
        throttle.forget()


_platform.at_fork_in_child(_after_fork_in_child)
