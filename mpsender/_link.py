"""This process's connection to the host's sender, and starting one when none runs.

The connection (one per process, opened lazily, reopened after fork) is how the sender
knows this process is alive and finds its files (HELLO), how ``flush()``/``stats()``
talk to it, how a sleeping sender is woken (the shared doorbell byte), and the way out
for an event when the disk refuses the write.

Starting a sender: the first process that finds no live sender takes the sender's file
lock, starts it and hands it the lock (``_spawn``); everyone else connects. Nothing here
holds a lock that ``track()`` takes while it starts a sender or waits for one: two
threads or processes starting at once are kept apart by that file lock.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import mmap
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import msgpack

from . import _platform, _protocol, _spawn
from ._exceptions import ConfigurationError
from ._options import Options
from ._paths import Paths
from ._platform import Connection
from ._protocol import HELLO, WAKE_FRAME
from ._reentry import HandlerSafeLock
from ._version import __version__
from ._wire_records import FEATURE

__all__ = ["SenderLink"]

logger = logging.getLogger(__name__)

#: after starting a sender that never answered, a process waits this long before it
#: starts another, doubling up to SPAWN_BACKOFF_CAP (a broken interpreter must not make
#: every process spawn every second); a connection resets it
SPAWN_BACKOFF = 1.0
SPAWN_BACKOFF_CAP = 30.0

class SenderLink:
    """One process's connection to its sender. ``sock`` is None while not connected;
    ``bell`` is the shared doorbell once a sender was reached.

    ``_lock`` guards replacing ``sock`` (a few statements); ``_control`` marks the shared
    connection busy with a round trip: a second request meanwhile (another thread, or a
    signal handler) uses a connection of its own instead of waiting.
    """

    def __init__(self, options: Options, paths: Paths, files: Callable[[], list[str]],
                 drops: Callable[[], dict[str, int]], warn_once: Callable[..., None]) -> None:
        self._options = options
        self._paths = paths
        self._files = files  # this process's write-ahead files, for HELLO
        self._drops = drops  # events this process lost, by reason, for HELLO
        self._warn_once = warn_once
        self.bell: mmap.mmap | None = None
        self._reset()

    def _reset(self) -> None:
        self.sock: Connection | None = None
        #: the connection whose sender reads wire records (_wire_records): while it is
        #: ``sock``, track() may write them
        self.wire_sock: Connection | None = None
        self._lock = HandlerSafeLock()
        self._control = HandlerSafeLock()
        self._next_spawn = 0.0
        self._spawns = 0  # sender starts since this process last connected
        self._req = itertools.count(1)
        self._reported: dict[str, int] = {}  # of the drops, what a HELLO already told a sender

    def after_fork(self) -> None:
        """In a fork child: let go of the parent's connection (the child's copy only)."""
        if self.sock is not None:
            with contextlib.suppress(OSError):  # closed already: nothing to let go of
                os.close(self.sock.sock.detach())
        self._reset()

    # --- connecting -----------------------------------------------------------------------

    def alive(self) -> bool:
        """Is our connection still open at the other end? Drops it if not."""
        sock = self.sock
        if sock is None:
            return False
        try:
            if sock.pending() or sock.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                return True  # a reply is waiting
        except BlockingIOError:
            return True  # nothing to read, not closed
        except OSError:
            pass
        self._drop(sock)
        return False

    def connect(self, *, wait: float, spawn: bool = True) -> bool:
        """Connect, starting a sender if none runs (unless ``spawn`` is False). With
        ``wait``, block up to that long for it to listen."""
        if self.alive() or self._try_connect():
            return True
        if not spawn:
            return False
        deadline = time.monotonic() + wait
        if wait > 0 or time.time() >= self._next_spawn:
            if self._try_spawn(wait) and self._try_connect():
                return True
        # Someone else is starting it (or one is draining to exit): wait for it.
        delay = 0.005
        while time.monotonic() < deadline:
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.1)
            if self._try_connect():
                return True
            # another start only past the backoff: a sender that dies at start (a broken
            # interpreter) must not be started again every few milliseconds
            if time.time() >= self._next_spawn and self._try_spawn(deadline - time.monotonic()) \
                    and self._try_connect():
                return True
        return False

    def _open(self) -> Connection | None:
        try:
            return _protocol.connect(str(self._paths.socket))
        except OSError:
            return None

    def _try_connect(self) -> bool:
        sock = self._open()
        if sock is None:
            return False
        if not self._lock.acquire():
            sock.close()  # a signal handler in this thread: keep the connection it interrupted
            return False
        try:
            if self.sock is not None:
                sock.close()  # another thread connected meanwhile: one connection per process
                return True
            try:
                self._hello(sock)
            except OSError:
                sock.close()
                return False
            self.wire_sock = sock if self._reads_wire(sock) else None
            self.sock = sock
        finally:
            self._lock.release()
        self._spawns = 0
        self._next_spawn = 0.0
        if self.bell is None:
            self.bell = _open_doorbell(self._paths)
        return True

    def _reads_wire(self, sock: Connection) -> bool:
        """Does the sender at the other end of ``sock`` read wire records? Its
        ``sender.json`` says so, if that file is its own (the pid the socket reports; a
        platform that reports none is taken at the file's word). An earlier version's
        sender says nothing, and gets packed records."""
        try:
            with open(self._paths.info, "rb") as fh:
                info = json.loads(fh.read(65536))
            pid, _uid = _platform.peer_credentials(sock.sock)
        except (OSError, ValueError):
            return False
        if not isinstance(info, dict) or (pid and info.get("pid") != pid):
            return False
        records = info.get("records")
        return isinstance(records, list) and FEATURE in records

    def _try_spawn(self, wait: float) -> bool:
        try:
            lock_fd = os.open(self._paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                with contextlib.suppress(ConfigurationError):
                    self._paths.ensure()  # the runtime directory was deleted: the next try has it
            self._warn_once("lock", "cannot open %s: %s", self._paths.lock, exc)
            return False
        try:
            try:
                _platform.lock(lock_fd, wait=False)
            except BlockingIOError:
                return False  # a sender holds it: alive, starting or draining
            # We hold the lock, so no sender is alive: start one and hand it the lock.
            self._spawns += 1
            self._next_spawn = time.time() + min(SPAWN_BACKOFF * 2 ** (self._spawns - 1), SPAWN_BACKOFF_CAP)
            try:
                return _spawn.spawn_sender(self._options, self._paths, lock_fd, wait=max(wait, 0.0))
            except OSError as exc:
                self._warn_once("spawn", "cannot start the sender: %s", exc)
                return False
        finally:
            os.close(lock_fd)

    def hello(self) -> None:
        """Tell the sender (if connected) which files this process writes."""
        sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):  # gone: the next check notices
                self._hello(sock)

    def _hello(self, sock: Connection) -> None:
        # Drops not yet reported go along, so the sender persists them where ops look.
        counts = dict(self._drops())
        reported = self._reported
        news = {k: n - reported.get(k, 0) for k, n in counts.items() if n > reported.get(k, 0)}
        try:
            sock.send(msgpack.packb([HELLO, os.getpid(), self._files(), __version__, news]))
        except BlockingIOError:
            return  # the socket is full: the sender finds the file by scanning the spool
        reported.update(counts)

    def _drop(self, sock: Connection) -> None:
        """Forget ``sock`` if it is still our connection (another thread may have made a
        new one since), and close it."""
        if self.sock is sock:
            self.sock = None
        sock.close()

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()

    # --- messages -------------------------------------------------------------------------

    def ring(self) -> None:
        """The doorbell said the sender sleeps: wake it."""
        bell, sock = self.bell, self.sock
        if bell is not None:
            bell[0] = 0
        if sock is not None:
            try:
                sock.send(WAKE_FRAME)
            except OSError:
                pass  # full or gone: the sender also polls, and a check notices a dead one

    def send_event(self, payload: bytes) -> bool:
        """An event over the connection, for when the disk refused it. False if it could not go."""
        sock = self.sock
        if sock is None:
            return False
        try:
            sock.send(payload)
        except OSError:
            return False
        return True

    def request(self, kind: int, args: list[Any], timeout: float, *, spawn: bool = True) -> Any:
        """One control round trip; None when no answer came within ``timeout``.

        Over the shared connection when it is free; when another call holds it (another
        thread, or the call a signal handler interrupted), over a connection of its own,
        so that no request waits for another's deadline."""
        deadline = time.monotonic() + max(timeout, 0.0)
        if not self._control.acquire(blocking=False):
            return self._request_alone(kind, args, deadline, spawn=spawn)
        try:
            while True:
                if not self.connect(wait=max(deadline - time.monotonic(), 0.0), spawn=spawn):
                    return None
                sock = self.sock
                if sock is None:
                    continue
                try:
                    return _protocol.request(sock, kind, next(self._req), args, deadline)
                except _protocol.NoAnswer:
                    return None
                except _protocol.SenderGone:
                    self._drop(sock)  # the sender died while we waited: ask the next one
        finally:
            self._control.release()

    def _request_alone(self, kind: int, args: list[Any], deadline: float, *, spawn: bool) -> Any:
        while time.monotonic() < deadline:
            sock = self._open()
            if sock is None:
                if not spawn or not self.connect(wait=max(deadline - time.monotonic(), 0.0)):
                    return None
                continue
            try:
                return _protocol.request(sock, kind, next(self._req), args, deadline)
            except _protocol.NoAnswer:
                return None
            except _protocol.SenderGone:
                continue
            finally:
                sock.close()
        return None


def _open_doorbell(paths: Paths) -> mmap.mmap | None:
    try:
        fd = os.open(paths.doorbell, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return mmap.mmap(fd, 64)
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
