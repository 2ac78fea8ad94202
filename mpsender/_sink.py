"""Where a client's records go: the seam between building an event and delivering it.

A :class:`Client` builds and packs records and hands them to a :class:`Sink`, the way an
``httpx.Client`` hands requests to a transport. In production that is a
:class:`SenderSink`: this process's write-ahead file (``_wal``) read by the host's
sender, and a connection to it (``_link``). ``mpsender.testing.capture()`` puts a sink
that records in its place; nothing else about the client changes.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import _spawn
from ._framing import HEADER
from ._framing import crc32 as _crc32
from ._link import SenderLink
from ._options import Options
from ._paths import Paths
from ._protocol import FLUSH, STATS, STOP
from ._wal import BUSY, ROTATE_BYTES, WalWriter

__all__ = ["CHECK_INTERVAL", "SenderSink", "Sink", "SinkCounters"]

logger = logging.getLogger(__name__)

#: how often (seconds, checked inside track()) a process looks at its sender's health
CHECK_INTERVAL = 1.0

_pack_header = HEADER.pack
_write = os.write


@dataclass
class SinkCounters:
    """What a sink did with the records it was given, in this process."""

    handed: int = 0      # written while a sender was connected
    spilled: int = 0     # written while no sender was connected: waits for the next one
    fallback: int = 0    # sent over the socket because the disk refused the write
    dropped: dict[str, int] = field(default_factory=dict)  # lost here, by reason


class Sink(Protocol):
    """Where a :class:`~mpsender.Client` puts the records it packed.

    ``write`` never blocks and never raises; it is called from any thread, and from
    signal handlers. The rest may wait, up to the timeout they are given.
    """

    #: True for a sink that a later ``init()`` must keep (``testing.capture()``)
    survives_init: bool

    def write(self, payload: bytes, now: float) -> None: ...
    def start(self, wait: float) -> bool: ...
    def flush(self, timeout: float) -> bool: ...
    def close(self) -> bool: ...
    def sender_stats(self, timeout: float) -> dict[str, Any] | None: ...
    def counters(self) -> SinkCounters: ...
    def after_fork(self) -> None: ...


class SenderSink:
    """The production sink: append to this process's write-ahead file, keep in touch
    with the host's sender (starting one when none runs), and send an event over the
    connection only when the disk refuses it."""

    survives_init = False

    def __init__(self, options: Options, paths: Paths) -> None:
        self.paths = paths
        self._warned: set[str] = set()
        self._wal = WalWriter(paths, self._warn_once, self._announce)
        self._link = SenderLink(options, paths, lambda: list(self._wal.files),
                                lambda: self._counts.dropped, self._warn_once)
        self._counts = SinkCounters()
        self._next_check = 0.0

    @property
    def wire_ready(self) -> bool:
        """Connected to a sender that reads records written as wire JSON (_wire_records)."""
        link = self._link
        return link.sock is not None and link.sock is link.wire_sock

    def _announce(self) -> None:
        self._link.hello()

    def after_fork(self) -> None:
        """In a fork child: let go of the parent's file and connection; the child opens
        its own on its first event."""
        self._wal.after_fork()
        self._link.after_fork()
        self._counts = SinkCounters()
        self._warned = set()
        self._next_check = 0.0

    # --- the hot path ---------------------------------------------------------------------

    def write(self, payload: bytes, now: float) -> None:
        """Append one packed event. Never blocks on the sender, never raises."""
        data = _pack_header(len(payload), _crc32(payload)) + payload
        wal = self._wal
        fd = wal.fd
        if fd < 0:
            fd = wal.open(now)
        if fd >= 0:
            try:
                written = _write(fd, data)
            except OSError as exc:
                written = -1
                wal.failed(fd, exc)
            if written == len(data):
                self._written()
                wal.size += written
                if wal.size >= ROTATE_BYTES:
                    wal.retire(fd, now)
            else:
                if written >= 0:
                    wal.failed(fd, OSError(errno.ENOSPC, "short write"))
                self._fallback(payload)
        elif fd == BUSY and wal.write_aside(data):
            self._written()
        else:
            self._fallback(payload)
        if now >= self._next_check:
            self.check(now)

    def _written(self) -> None:
        link = self._link
        if link.sock is not None:
            self._counts.handed += 1
        else:
            self._counts.spilled += 1
        bell = link.bell
        if bell is not None and bell[0]:
            link.ring()

    def _fallback(self, payload: bytes) -> None:
        if self._link.send_event(payload):
            self._counts.fallback += 1
            self._counts.handed += 1
            return
        dropped = self._counts.dropped
        dropped["spill_failed"] = dropped.get("spill_failed", 0) + 1
        self._warn_once("spill", "an event was dropped: neither the spool nor the sender could take it")

    def check(self, now: float) -> None:
        """Once a second from track(): is the sender alive? start one if none is (without
        waiting for it to listen)."""
        self._next_check = now + CHECK_INTERVAL
        self._wal.tidy(now)
        _spawn.reap()
        link = self._link
        if link.sock is not None and not link.alive():
            logger.info("the sender went away; looking for a new one")
        link.connect(wait=0.0)

    # --- the rest of the interface --------------------------------------------------------

    def start(self, wait: float) -> bool:
        return self._link.connect(wait=wait)

    def flush(self, timeout: float) -> bool:
        """True once the sender settled every file up to what this process wrote (and
        what it sent over the socket). True at once when nothing was written."""
        if not self._wal.files and not self._counts.fallback:
            return True
        marks = self._wal.marks()
        if self._link.request(FLUSH, [marks], timeout) is True:
            self._wal.delivered(marks)
            return True
        return False

    def close(self) -> bool:
        """Let go of the files (so the sender may delete them once delivered) and the
        connection. False when a signal handler interrupted this thread inside them."""
        if not self._wal.close():
            return False
        self._link.close()
        return True

    def sender_stats(self, timeout: float) -> dict[str, Any] | None:
        answer = self._link.request(STATS, [], timeout, spawn=False)  # asking starts nothing
        return answer if isinstance(answer, dict) else None

    def stop_sender(self, timeout: float) -> bool:
        """Ask the sender to drain and exit (tests, the CLI's stop)."""
        return self._link.request(STOP, [], timeout, spawn=False) is True

    def counters(self) -> SinkCounters:
        return self._counts

    def _warn_once(self, key: str, msg: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(msg, *args)
