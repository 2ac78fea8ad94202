"""The application side of the channel: a write-ahead file plus one SEQPACKET connection.

Why a file first: a SIGKILLed sender takes the contents of its socket receive queues
with it, so an event that only sat in a socket is lost with the sender. An event that
``track()`` appended to this process's own write-ahead file is in the page cache the
moment the call returns (1.2 µs here, less than a SEQPACKET send and receive), and it
survives the death of any process: the app, the sender, both. The sender tails these
files and commits what the endpoint accepted.

The connection (one per process, opened lazily, reopened after fork) is how the
sender knows this process is alive and finds its file, how ``flush()``/``stats()``
talk to it, how a sleeping sender is woken (the shared doorbell byte), and the way
out for an event when the disk refuses the write.

Nothing here runs a thread or holds a lock across calls. The hot path is
``write()``: one ``os.write`` and two memory reads.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import logging
import mmap
import os
import select
import socket
import threading
import time
import weakref
from typing import Any

import msgpack

from . import _spawn
from ._framing import HEADER
from ._framing import crc32 as _crc32
from ._options import Options
from ._paths import Paths
from ._protocol import FLUSH, HELLO, MAX_CONTROL, REPLY, STATS, STOP, WAKE_FRAME
from ._version import __version__

logger = logging.getLogger(__name__)

__all__ = ["Channel"]

#: a process starts a new write-ahead file past this size, so delivered data can be deleted
ROTATE_BYTES = 4 * 1024 * 1024
#: how often (seconds, checked inside track()) a process looks at its sender's health
CHECK_INTERVAL = 1.0
#: a rotated file stays locked this long, for threads still writing through the old fd
RETIRE_GRACE = 2.0
#: after starting a sender that never answered, a process waits this long before it
#: starts another, doubling up to SPAWN_BACKOFF_CAP (a broken interpreter must not make
#: every process spawn every second); a connection resets it
SPAWN_BACKOFF = 1.0
SPAWN_BACKOFF_CAP = 30.0

_getpid = os.getpid
_pack_header = HEADER.pack
_write = os.write
_MSG_DONTWAIT = socket.MSG_DONTWAIT

_channels: weakref.WeakSet[Channel] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for channel in list(_channels):
        channel._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Channel:
    """One process's way to its sender. Safe to use from several threads."""

    def __init__(self, options: Options, paths: Paths) -> None:
        self._options = options
        self._paths = paths
        self._journal = options.journal
        self._bell: mmap.mmap | None = None
        self._setup_lock = threading.Lock()  # only around opening files and connecting
        self._control_lock = threading.Lock()  # one flush/stats round trip at a time
        self._init_state()
        _channels.add(self)

    def _init_state(self) -> None:
        self.pid = _getpid()
        # Message ids: a random per-process prefix (UUIDv4 version bits set) and a counter
        # (variant bits set), formatted as a UUID by the sender. Far cheaper than uuid4().
        prefix = bytearray(os.urandom(8))
        prefix[6] = (prefix[6] & 0x0F) | 0x40
        self.prefix = bytes(prefix)
        self.seq = itertools.count(0x8000_0000_0000_0000)
        self._tag = self.prefix[:4].hex()
        self._file_no = itertools.count()
        self._fd = -1
        self._wal_name = ""
        self._wal_size = 0
        self._files: dict[str, int | None] = {}  # name -> final size (None: still writing)
        self._retired: list[tuple[int, float]] = []
        self._wal_retry_at = 0.0
        self._sock: socket.socket | None = None
        self._next_check = 0.0
        self._next_spawn = 0.0
        self._spawns = 0  # sender starts since this process last connected
        self._req = itertools.count(1)
        self._warned: set[str] = set()
        self.handed = 0      # written while a sender was connected
        self.spilled = 0     # written while no sender was connected: waits for the next one
        self.fallback = 0    # sent over the socket because the disk refused the write
        self.dropped: dict[str, int] = {}
        self._reported: dict[str, int] = {}  # of dropped, what a HELLO already told a sender

    # --- fork -----------------------------------------------------------------------

    def _after_fork(self) -> None:
        """In a fork child: let go of the parent's file, connection and lock, quietly."""
        for fd in [self._fd] + [fd for fd, _ in self._retired]:
            if fd >= 0:
                try:
                    os.close(fd)  # the parent's flock stays: it is the parent's open file
                except OSError:
                    pass  # already closed by the app's own cleanup: nothing to release
        if self._sock is not None:
            try:
                os.close(self._sock.detach())  # the child's copy only; the parent keeps its own
            except OSError:
                pass  # already closed: nothing to let go of
        self._setup_lock = threading.Lock()
        self._control_lock = threading.Lock()
        self._init_state()

    # --- hot path -------------------------------------------------------------------

    def write(self, payload: bytes, now: float) -> None:
        """Append one packed event. Never blocks on the sender, never raises."""
        if self._journal or not self._send_first(payload):
            self._append(payload, now)
        if now >= self._next_check:
            self.check(now)

    def _send_first(self, payload: bytes) -> bool:
        """journal=False: the socket first; False when the event must go to the file."""
        sock = self._sock
        if sock is None:
            return False
        try:
            sock.send(payload, _MSG_DONTWAIT)
        except BlockingIOError:
            return False  # the sender is behind: spill to the file
        except OSError:
            self._drop_socket()
            return False
        self.handed += 1
        return True

    def _append(self, payload: bytes, now: float) -> None:
        data = _pack_header(len(payload), _crc32(payload)) + payload
        fd = self._fd
        if fd < 0:
            fd = self._open_wal(now)
        if fd >= 0:
            try:
                written = _write(fd, data)
            except OSError as exc:
                written = -1
                self._wal_failed(fd, exc)
            if written == len(data):
                if self._sock is not None and self._journal:
                    self.handed += 1
                else:
                    self.spilled += 1
                bell = self._bell
                if bell is not None and bell[0]:
                    self._ring()
                self._wal_size += written
                if self._wal_size >= ROTATE_BYTES:
                    self._retire(fd, now)
                return
            if written >= 0:
                self._wal_failed(fd, OSError(errno.ENOSPC, "short write"))
        self._fallback(payload)

    def _ring(self) -> None:
        bell, sock = self._bell, self._sock
        if bell is not None:
            bell[0] = 0
        if sock is not None:
            try:
                sock.send(WAKE_FRAME, _MSG_DONTWAIT)
            except OSError:
                pass  # full or gone: the sender also polls, and check() notices a dead one

    # --- write-ahead file -------------------------------------------------------------

    def _open_wal(self, now: float) -> int:
        with self._setup_lock:
            if self._fd >= 0:
                return self._fd
            if now < self._wal_retry_at:
                return -1
            spool = self._paths.spool
            name = f"{self.pid}-{self._tag}-{next(self._file_no)}.wal"
            tmp = os.path.join(spool, f".{name}.tmp")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                try:
                    # Held while this process may write; the sender deletes a file only
                    # when it can take the lock and has committed everything in it.
                    fcntl.flock(fd, fcntl.LOCK_SH)
                    os.rename(tmp, os.path.join(spool, name))
                except OSError:
                    os.close(fd)
                    raise
            except OSError as exc:
                self._wal_retry_at = now + CHECK_INTERVAL
                self._warn_once("wal", "cannot write to the spool %s (%s); sending over the socket", spool, exc)
                return -1
            self._fd = fd
            self._wal_name = name
            self._wal_size = 0
            self._files[name] = None
            if self._sock is not None:
                self._hello(self._sock)
            return fd

    def _retire(self, fd: int, now: float) -> None:
        with self._setup_lock:
            if self._fd != fd:
                return
            try:
                self._files[self._wal_name] = os.fstat(fd).st_size
            except OSError:
                self._files[self._wal_name] = self._wal_size
            self._retired.append((fd, now))
            self._fd = -1

    def _wal_failed(self, fd: int, exc: OSError) -> None:
        self._warn_once("wal-write", "writing the spool file failed (%s); sending over the socket", exc)
        self._retire(fd, 0.0)  # a torn tail: let the sender see the file is finished
        self._wal_retry_at = time.time() + CHECK_INTERVAL

    def _fallback(self, payload: bytes) -> None:
        sock = self._sock
        if sock is not None:
            try:
                sock.send(payload, _MSG_DONTWAIT)
                self.fallback += 1
                self.handed += 1
                return
            except OSError:
                pass
        self._count("spill_failed")
        self._warn_once("spill", "an event was dropped: neither the spool nor the sender could take it")

    def _close_retired(self, now: float, *, everything: bool = False) -> None:
        keep = []
        for fd, since in self._retired:
            if everything or now - since >= RETIRE_GRACE:
                try:
                    os.close(fd)  # releases the flock: the sender may now delete it
                except OSError:
                    pass  # closed already; the lock went with it
            else:
                keep.append((fd, since))
        self._retired = keep

    # --- the sender -----------------------------------------------------------------

    def check(self, now: float) -> None:
        """Once a second from track(): is the sender alive? start one if none is."""
        self._next_check = now + CHECK_INTERVAL
        if self._retired:
            self._close_retired(now)
        _spawn.reap()
        if self._sock is not None and not self._alive():
            logger.info("the sender went away; looking for a new one")
        self.connect(wait=0.0)

    def _alive(self) -> bool:
        """Is our connection still open at the other end? Drops it if not."""
        sock = self._sock
        if sock is None:
            return False
        try:
            if sock.recv(1, socket.MSG_PEEK | _MSG_DONTWAIT):
                return True  # a reply is waiting
        except BlockingIOError:
            return True  # nothing to read, not closed
        except OSError:
            pass
        self._drop_socket()
        return False

    def connect(self, *, wait: float, spawn: bool = True) -> bool:
        """Connect, starting a sender if none runs (unless ``spawn`` is False). With
        ``wait``, block up to that long."""
        with self._setup_lock:
            if self._alive():
                return True
            if self._try_connect():
                return True
            if not spawn:
                return False
            deadline = time.monotonic() + wait
            if wait > 0 or time.time() >= self._next_spawn:
                started = self._try_spawn(wait)
                if started and self._try_connect():
                    return True
            # Someone else is starting it (or one is draining to exit): wait for it.
            delay = 0.005
            while time.monotonic() < deadline:
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 2, 0.1)
                if self._try_connect():
                    return True
                if self._try_spawn(deadline - time.monotonic()) and self._try_connect():
                    return True
            return False

    def _try_connect(self) -> bool:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        try:
            sock.connect(str(self._paths.socket))
            self._hello(sock)
        except OSError:
            sock.close()
            return False
        self._sock = sock
        self._spawns = 0
        self._next_spawn = 0.0
        if self._bell is None:
            self._bell = _open_doorbell(self._paths)
        return True

    def _try_spawn(self, wait: float) -> bool:
        try:
            lock_fd = os.open(self._paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self._warn_once("lock", "cannot open %s: %s", self._paths.lock, exc)
            return False
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
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

    def _hello(self, sock: socket.socket) -> None:
        # Drops not yet reported go along, so the sender persists them where ops look.
        counts = dict(self.dropped)
        news = {k: n - self._reported.get(k, 0) for k, n in counts.items() if n > self._reported.get(k, 0)}
        try:
            sock.send(msgpack.packb([HELLO, self.pid, list(self._files), __version__, news]), _MSG_DONTWAIT)
        except BlockingIOError:
            return  # the socket is full: the sender finds the file by scanning the spool
        self._reported.update(counts)

    def _drop_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    # --- requests ---------------------------------------------------------------------

    def request(self, kind: int, args: list[Any], timeout: float, *, spawn: bool = True) -> Any:
        """One control round trip; None when no answer came within ``timeout``."""
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._control_lock:
            while True:
                remaining = deadline - time.monotonic()
                if not self.connect(wait=max(remaining, 0.0), spawn=spawn):
                    return None
                sock = self._sock
                if sock is None:
                    continue
                req = next(self._req)
                try:
                    sock.send(msgpack.packb([kind, req, *args]), _MSG_DONTWAIT)
                except BlockingIOError:
                    if not _wait_fd(sock, select.POLLOUT, deadline):
                        return None
                    continue
                except OSError:
                    self._drop_socket()
                    continue
                answer = self._await_reply(sock, req, deadline)
                if answer is not _GONE:
                    return answer
                self._drop_socket()  # the sender died while we waited: ask the next one

    def _await_reply(self, sock: socket.socket, req: int, deadline: float) -> Any:
        while True:
            if not _wait_fd(sock, select.POLLIN, deadline):
                return None
            try:
                data = sock.recv(MAX_CONTROL)
            except BlockingIOError:
                continue
            except OSError:
                return _GONE
            if not data:
                return _GONE
            try:
                msg = msgpack.unpackb(data)
            except Exception:  # noqa: BLE001 - a garbled reply is skipped, the wait goes on
                logger.warning("ignoring an unreadable reply from the sender")
                continue
            if isinstance(msg, list) and len(msg) == 3 and msg[0] == REPLY and msg[1] == req:
                return msg[2]
            # an answer to an earlier request that timed out: drop it

    def flush(self, timeout: float) -> bool:
        files = self.file_marks()
        answer = self.request(FLUSH, [files], timeout)
        if answer is True:
            for name, size in files:
                if self._files.get(name) is not None:
                    del self._files[name]  # rotated away and now delivered: forget it
            return True
        return False

    def nothing_sent(self) -> bool:
        """Has this process written nothing a flush must wait for: no file, and no event
        over the socket (journal=False, or the disk refused it)?"""
        return not self._files and not self.fallback and (self._journal or not self.handed)

    def file_marks(self) -> list[list[Any]]:
        marks: list[list[Any]] = []
        for name, size in list(self._files.items()):
            if size is None:
                try:
                    size = os.fstat(self._fd).st_size if self._fd >= 0 and name == self._wal_name else self._wal_size
                except OSError:
                    size = self._wal_size
            marks.append([name, size])
        return marks

    def sender_stats(self, timeout: float) -> dict[str, Any] | None:
        answer = self.request(STATS, [], timeout, spawn=False)  # asking starts nothing
        return answer if isinstance(answer, dict) else None

    def stop_sender(self, timeout: float) -> bool:
        return self.request(STOP, [], timeout, spawn=False) is True

    def close(self) -> None:
        """Let go of the file (so the sender may delete it once delivered) and the socket."""
        with self._setup_lock:
            if self._fd >= 0:
                try:
                    self._files[self._wal_name] = os.fstat(self._fd).st_size
                except OSError:
                    pass  # the size stays unknown; flush falls back to what we wrote
                self._retired.append((self._fd, 0.0))
                self._fd = -1
            self._close_retired(0.0, everything=True)
            self._drop_socket()

    # --- helpers -----------------------------------------------------------------------

    def _count(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def _warn_once(self, key: str, msg: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(msg, *args)


_GONE = object()


def _wait_fd(sock: socket.socket, events: int, deadline: float) -> bool:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return False
    poller = select.poll()
    poller.register(sock, events | select.POLLHUP)
    return bool(poller.poll(remaining * 1000))


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
