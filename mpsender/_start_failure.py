"""A sender that cannot start: said loudly, once, where the user looks, and kept for status.

Why loud: when the sender cannot start, ``track()`` goes on writing events to the spool
and nothing is uploaded. The first user who met this (uWSGI in a virtualenv, the sender
started with an interpreter lacking msgpack) saw no message at all: the library's logger
has only a ``NullHandler`` unless the app configures logging, and most apps do not
configure it for a library. So the process that started the sender writes one warning
straight to ``sys.stderr`` (which every server keeps in its log), with the sender's own
error output and the fix, whatever logging is configured; at most once per
``WARN_INTERVAL`` in a process and the processes it forks (one warning, not one per
retry or per worker). The same record goes to ``start-failure.json`` in the
destination's directory, where ``mpsender status`` reads it; the next sender that
listens deletes it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ._paths import Paths

logger = logging.getLogger(__name__)

__all__ = ["StartFailure", "forget", "read", "report", "tail"]

#: a process (with the children it forks) writes the warning to stderr at most this often
WARN_INTERVAL = 600.0
#: how much of the sender's own output the warning and the record carry
TAIL_BYTES = 2000
TAIL_LINES = 12

#: what the user can do about it (the warning and ``mpsender status`` say it)
FIX = ("set MPSENDER_PYTHON (or the python option, init(python=...)) to a Python that can "
       "import mpsender and its dependencies (httpx, msgpack, psutil)")


@dataclass(frozen=True)
class StartFailure:
    """One failed start of a sender: who tried, with what, and what the sender said."""

    at: float       # epoch seconds
    pid: int        # the application process that started it
    python: str     # the interpreter it ran
    reason: str     # "exited with status 1", "cannot execute it: ..."
    output: str     # the tail of the sender's own stderr / log from this start

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> StartFailure | None:
        if not isinstance(data, dict):
            return None
        try:
            return cls(at=float(data["at"]), pid=int(data["pid"]), python=str(data["python"]),
                       reason=str(data["reason"]), output=str(data.get("output", "")))
        except (KeyError, TypeError, ValueError):
            return None

    def warning(self, log: Path) -> str:
        """The text written to stderr: what failed, the sender's words, the fix."""
        lines = [f"mpsender: WARNING: the sender process could not start ({self.python} -m "
                 f"mpsender._sender {self.reason}); events stay in the spool and nothing is sent "
                 "until one can start. Its output:"]
        lines += [f"    {line}" for line in (self.output or "(nothing)").splitlines()]
        lines.append(f"  Fix: {FIX}; this process runs {sys.prefix}. Full log: {log}. "
                     "`mpsender status` shows the last failure.")
        return "\n".join(lines) + "\n"


_last_warned = -math.inf  # monotonic; inherited by a fork child, which shares the stderr


def report(paths: Paths, failure: StartFailure) -> None:
    """Record ``failure`` for ``mpsender status`` and warn on stderr (rate-limited)."""
    global _last_warned
    logger.warning("the sender could not start: %s %s; see %s", failure.python, failure.reason, paths.log)
    _save(paths.start_failure, failure)
    now = time.monotonic()
    if now - _last_warned < WARN_INTERVAL:
        return
    _last_warned = now
    stream = sys.stderr
    if stream is None:
        return  # no stderr at all (pythonw, a daemon): the record and the log remain
    try:
        stream.write(failure.warning(paths.log))
        stream.flush()
    except (OSError, ValueError):
        pass  # stderr closed: the record and the log remain, nothing else to tell


def read(path: Path) -> StartFailure | None:
    """The recorded failure at ``path``, if any (``mpsender status``)."""
    try:
        return StartFailure.from_json(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def forget(path: str | os.PathLike[str]) -> None:
    """A sender listens: the last failure is history (called by the sender)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass  # nothing failed before this start


def tail(log: Path, offset: int) -> str:
    """What was written to ``log`` after ``offset``: this start's own output, last lines."""
    try:
        with open(log, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(offset, size - TAIL_BYTES))
            data = fh.read(TAIL_BYTES)
    except OSError as exc:
        return f"(cannot read {log}: {exc.strerror or exc})"
    lines = data.decode("utf-8", "replace").strip().splitlines()
    return "\n".join(lines[-TAIL_LINES:])


def _save(path: Path, failure: StartFailure) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, json.dumps(failure.to_json()).encode())
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        logger.warning("cannot record the start failure in %s: %s", path, exc)
