"""Every platform-specific call, behind one seam: detected once, with a fallback for each.

Linux is the reference and keeps its fast paths. Elsewhere (macOS, the BSDs) a feature that
is missing has a portable replacement:

=========================  ===============================  ====================================
feature                    Linux (``native``)               fallback (``portable``)
=========================  ===============================  ====================================
app <-> sender connection  AF_UNIX ``SOCK_SEQPACKET``:      AF_UNIX ``SOCK_STREAM``, each message
                           one message per packet, atomic   framed by a 4-byte big-endian length
                                                            and reassembled per connection
close-on-exec socket       ``SOCK_CLOEXEC`` flag            ``os.set_inheritable(fd, False)``
peer's uid                 ``SO_PEERCRED``                  ``LOCAL_PEERCRED`` (``struct xucred``)
                                                            on macOS/BSD; else unchecked (logged
                                                            once; the 0700 directory guards)
non-blocking pipe          ``os.pipe2``                     ``os.pipe`` + ``os.set_blocking``
socket path                107 bytes                        103 bytes (sun_path is 104 there)
fork hooks                 ``os.register_at_fork``          none (no fork: nothing to redo)
file locks                 ``fcntl.flock``                  (POSIX: the same everywhere)
=========================  ===============================  ====================================

Nothing reads ``/proc``. ``MPSENDER_PLATFORM=portable`` forces the fallbacks on Linux (CI runs
the integration suite so, which is how the macOS path is tested without a Mac); it is a
test and diagnostic switch, not an option, and every process of a host must agree on it: the
sender is told its creator's mode (``_spawn``). Where mpsender cannot run at all (Windows:
no AF_UNIX connection of this kind, no ``fcntl``), ``import mpsender`` still works and
:func:`require_supported` says why, naming ``MPSENDER_DISABLED``.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import struct
import sys
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ._exceptions import ConfigurationError

__all__ = [
    "FEATURES", "MAX_MESSAGE", "MAX_SOCKET_PATH", "MODE_ENV", "Connection", "Features", "FrameError",
    "PacketConnection", "StreamConnection", "at_fork_in_child", "connection", "detect", "green_threads", "lock",
    "nonblocking_pipe", "parse_xucred", "peer_credentials", "require_supported", "unix_socket", "use",
]

logger = logging.getLogger(__name__)

#: the test/diagnostic switch: ``portable`` forces every fallback; anything else is native
MODE_ENV = "MPSENDER_PLATFORM"
NATIVE = "native"
PORTABLE = "portable"

#: the longest socket path bind() takes: sun_path less its terminating NUL (108 bytes on
#: Linux, 104 on macOS and the BSDs)
MAX_SOCKET_PATH = 107 if sys.platform.startswith("linux") else 103

#: largest message either side sends on a connection (control frames and events sent over
#: the socket stay far below); a stream frame announcing more is a broken peer
MAX_MESSAGE = 1 << 20
_LENGTH = struct.Struct(">I")
#: a stream send that went out in part is finished within this long, else the connection is
#: shut down (a half frame must never be followed by another message)
STREAM_STALL = 0.5

_SO_PEERCRED = struct.Struct("3i")   # struct ucred: pid, uid, gid
#: struct xucred (macOS, FreeBSD): u_int cr_version; uid_t cr_uid; short cr_ngroups; gid_t[16]
_XUCRED_HEAD = struct.Struct("=Ii")
_XUCRED_SIZE = 4 + 4 + 4 + 16 * 4   # with the short padded to 4 bytes
_XUCRED_VERSION = 0
_SOL_LOCAL = 0       # macOS/FreeBSD values, for a Python that does not export the names
_LOCAL_PEERCRED = 1

try:
    import fcntl as _fcntl
except ImportError:  # Windows: no file locks of this kind; require_supported() says so
    _fcntl_mod: ModuleType | None = None
else:
    _fcntl_mod = _fcntl


@dataclass(frozen=True)
class Features:
    """What this process uses, decided once. ``unsupported`` names why mpsender cannot run
    here (empty when it can)."""

    mode: str
    platform: str
    seqpacket: bool        # SOCK_SEQPACKET, else a framed SOCK_STREAM
    sock_cloexec: bool     # the SOCK_CLOEXEC flag, else set_inheritable afterwards
    peercred: str          # "SO_PEERCRED", "LOCAL_PEERCRED" or "" (cannot check)
    pipe2: bool            # os.pipe2, else os.pipe + flags
    unsupported: str = ""


def detect(mode: str | None = None, *, platform: str | None = None, sock: Any = socket,
           osmod: Any = os, have_fcntl: bool | None = None) -> Features:
    """The features for ``mode`` (default: ``$MPSENDER_PLATFORM``) on this platform; the
    keyword arguments are a test's way to describe another platform."""
    if mode is None:
        mode = os.environ.get(MODE_ENV, NATIVE) or NATIVE
        if mode not in (NATIVE, PORTABLE):
            logger.warning("ignoring %s=%r: expected %r or %r", MODE_ENV, mode, NATIVE, PORTABLE)
            mode = NATIVE
    platform = sys.platform if platform is None else platform
    if have_fcntl is None:
        have_fcntl = _fcntl_mod is not None
    native = mode == NATIVE
    unsupported = ""
    if not hasattr(sock, "AF_UNIX") or not hasattr(osmod, "getuid") or not have_fcntl:
        unsupported = (f"mpsender cannot run on {platform}: it needs POSIX AF_UNIX sockets and "
                       "file locks (fcntl); set MPSENDER_DISABLED=1 to run with tracking off")
    if hasattr(sock, "SO_PEERCRED"):
        # Linux keeps SO_PEERCRED in portable mode too: what portable mode proves is the
        # stream path; LOCAL_PEERCRED is what macOS and the BSDs answer instead
        peercred = "SO_PEERCRED"
    elif hasattr(sock, "LOCAL_PEERCRED") or platform == "darwin" or platform.startswith("freebsd"):
        peercred = "LOCAL_PEERCRED"
    else:
        peercred = ""
    return Features(
        mode=mode, platform=platform,
        seqpacket=native and hasattr(sock, "SOCK_SEQPACKET") and platform.startswith("linux"),
        sock_cloexec=native and hasattr(sock, "SOCK_CLOEXEC"),
        peercred=peercred,
        pipe2=native and hasattr(osmod, "pipe2"),
        unsupported=unsupported,
    )


FEATURES = detect()


def use(mode: str) -> Features:
    """Switch this process to ``mode`` (the sender, told its creator's mode, calls this
    before it opens anything)."""
    global FEATURES
    FEATURES = detect(mode if mode in (NATIVE, PORTABLE) else NATIVE)
    return FEATURES


def require_supported() -> None:
    """Raise ConfigurationError when mpsender cannot run on this platform."""
    if FEATURES.unsupported:
        raise ConfigurationError(FEATURES.unsupported)


# --- sockets ------------------------------------------------------------------------------

def unix_socket() -> socket.socket:
    """A new AF_UNIX socket of the kind this process speaks, closed on exec."""
    f = FEATURES
    kind = socket.SOCK_SEQPACKET if f.seqpacket else socket.SOCK_STREAM
    if f.sock_cloexec:
        return socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
    sock = socket.socket(socket.AF_UNIX, kind)
    os.set_inheritable(sock.fileno(), False)  # Python's default already; said here on purpose
    return sock


class Connection:
    """One connection to or from the sender, carrying whole messages whichever socket kind
    is underneath. ``sock`` is the socket (for poll, selectors, close, detach).

    ``send`` sends a whole message or nothing: BlockingIOError when it cannot go now,
    OSError when the connection is broken. ``recv`` returns one whole message, None at
    the end of the connection, BlockingIOError when none is complete yet.
    """

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def recv(self) -> bytes | None:
        raise NotImplementedError

    def pending(self) -> bool:
        """A whole message is already buffered here (read it before waiting on the socket)."""
        return False

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()


class PacketConnection(Connection):
    """SOCK_SEQPACKET: the kernel keeps message boundaries, and a send is all or nothing."""

    __slots__ = ("_buf",)

    def __init__(self, sock: socket.socket, buf: bytearray | None = None) -> None:
        super().__init__(sock)
        self._buf = buf  # the sender's one read buffer, shared by its connections

    def send(self, data: bytes) -> None:
        self.sock.send(data, socket.MSG_DONTWAIT)

    def recv(self) -> bytes | None:
        buf = self._buf
        if buf is None:
            data = self.sock.recv(MAX_MESSAGE, socket.MSG_DONTWAIT)
            return data or None
        n = self.sock.recv_into(buf)
        return bytes(buf[:n]) if n else None


class StreamConnection(Connection):
    """SOCK_STREAM with a 4-byte big-endian length before each message.

    Reading reassembles messages in this connection's own buffer (bounded by one largest
    message plus one read), so a peer that stops mid-message holds up nobody else; a frame
    longer than MAX_MESSAGE closes the connection (``FrameError``). Writing holds a lock
    per connection, taken without waiting (a signal handler must not wait for the code it
    interrupted): a message that went out in part is finished within STREAM_STALL, else
    the connection is shut down, so the peer never reads half a message followed by another.
    """

    __slots__ = ("_chunk", "_in", "_send_lock")

    _CHUNK = 64 * 1024

    def __init__(self, sock: socket.socket, buf: bytearray | None = None) -> None:
        super().__init__(sock)
        self._in = bytearray()
        self._chunk = memoryview(buf)[:self._CHUNK] if buf is not None else None
        self._send_lock = threading.Lock()

    def send(self, data: bytes) -> None:
        frame = _LENGTH.pack(len(data)) + data
        if not self._send_lock.acquire(blocking=False):
            raise BlockingIOError("another send is in progress on this connection")
        try:
            sent = self.sock.send(frame, socket.MSG_DONTWAIT)
            if sent < len(frame):
                self._finish(memoryview(frame)[sent:])
        finally:
            self._send_lock.release()

    def _finish(self, rest: memoryview) -> None:
        deadline = time.monotonic() + STREAM_STALL
        while rest:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not _writable(self.sock, remaining):
                self._break()
                raise BrokenPipeError("the peer did not take a whole message in time")
            try:
                rest = rest[self.sock.send(rest, socket.MSG_DONTWAIT):]
            except BlockingIOError:
                continue
            except OSError:
                self._break()
                raise

    def _break(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already gone: the peer sees the end either way

    def pending(self) -> bool:
        buf = self._in
        return len(buf) >= 4 and len(buf) - 4 >= _LENGTH.unpack_from(buf)[0]

    def recv(self) -> bytes | None:
        while True:
            msg = self._take()
            if msg is not None:
                return msg
            chunk = self._chunk
            if chunk is None:
                data = self.sock.recv(self._CHUNK, socket.MSG_DONTWAIT)
                n = len(data)
                if n:
                    self._in += data
            else:
                n = self.sock.recv_into(chunk)
                if n:
                    self._in += chunk[:n]
            if n == 0:
                if self._in:
                    logger.info("a connection ended in the middle of a message (%d bytes dropped)",
                                len(self._in))
                    self._in.clear()
                return None

    def _take(self) -> bytes | None:
        buf = self._in
        if len(buf) < 4:
            return None
        size = _LENGTH.unpack_from(buf)[0]
        if size > MAX_MESSAGE:
            self._in.clear()
            raise FrameError(f"a message of {size} bytes announced (at most {MAX_MESSAGE})")
        if len(buf) - 4 < size:
            return None
        msg = bytes(buf[4:4 + size])
        del buf[:4 + size]
        return msg


def _writable(sock: socket.socket, timeout: float) -> bool:
    if green_threads() or not hasattr(select, "poll"):
        _, writable, broken = select.select([], [sock], [sock], timeout)  # through the hub
        return bool(writable or broken)
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    return bool(poller.poll(timeout * 1000))


def green_threads() -> bool:
    """Has a green-thread library (gevent, eventlet) replaced ``select.select``?

    Then the wait must go through its hub, or every other greenlet of the process stops
    while one flushes. eventlet deletes ``select.poll`` outright; gevent replaces it only
    when it patches ``select`` aggressively. Looked up at each call: the app may patch
    after importing mpsender."""
    return not isinstance(select.select, types.BuiltinFunctionType)


class FrameError(OSError):
    """The peer broke the stream framing: the connection cannot be read any further."""


def connection(sock: socket.socket, buf: bytearray | None = None) -> Connection:
    """``sock`` (made by :func:`unix_socket` or accepted from one) as a Connection; ``buf``
    is a read buffer the caller shares between its connections (at least MAX_MESSAGE + 1)."""
    if sock.type == socket.SOCK_STREAM:
        return StreamConnection(sock, buf)
    return PacketConnection(sock, buf)


# --- the peer's credentials ------------------------------------------------------------------

_warned: set[str] = set()
_warned_lock = threading.Lock()


def peer_credentials(sock: socket.socket) -> tuple[int, int | None]:
    """``(pid, uid)`` of the process at the other end of an AF_UNIX connection; the pid is
    0 where the platform does not say, the uid None where it cannot be learnt (then the
    runtime directory's 0700 mode is the only guard; that is logged once)."""
    how = FEATURES.peercred
    try:
        if how == "SO_PEERCRED":
            pid, uid, _gid = _SO_PEERCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _SO_PEERCRED.size))
            return pid, uid
        if how == "LOCAL_PEERCRED":
            level = getattr(socket, "SOL_LOCAL", _SOL_LOCAL)
            opt = getattr(socket, "LOCAL_PEERCRED", _LOCAL_PEERCRED)
            uid = parse_xucred(sock.getsockopt(level, opt, _XUCRED_SIZE))
            if uid is not None:
                return 0, uid
    except OSError as exc:
        _warn_once("peercred-error", "cannot read the peer's credentials (%s): connections are "
                   "accepted unchecked, and the runtime directory's mode 0700 is the guard", exc)
        return 0, None
    _warn_once("peercred", "this platform (%s) does not say who is at the other end of a "
               "connection: connections are accepted unchecked, and the runtime directory's "
               "mode 0700 is the guard", FEATURES.platform)
    return 0, None


def parse_xucred(data: bytes) -> int | None:
    """The uid in a ``struct xucred`` (LOCAL_PEERCRED on macOS and FreeBSD), None if the
    answer is not one. (``getpeereid()`` reads the same thing; Python does not offer it.)"""
    if len(data) < _XUCRED_HEAD.size:
        return None
    version, uid = _XUCRED_HEAD.unpack_from(data)
    return uid if version == _XUCRED_VERSION else None


def _warn_once(key: str, msg: str, *args: object) -> None:
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning(msg, *args)


# --- processes, pipes and locks ------------------------------------------------------------

def at_fork_in_child(func: Callable[[], None]) -> None:
    """Run ``func`` in each fork child (nothing where there is no fork: the import must work)."""
    register = getattr(os, "register_at_fork", None)
    if register is not None:
        register(after_in_child=func)


def nonblocking_pipe() -> tuple[int, int]:
    """A pipe, both ends non-blocking and closed on exec."""
    if FEATURES.pipe2:
        return os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    r, w = os.pipe()  # non-inheritable already (PEP 446)
    for fd in (r, w):
        os.set_blocking(fd, False)
        os.set_inheritable(fd, False)
    return r, w


def lock(fd: int, *, shared: bool = False, wait: bool = True) -> None:
    """``flock`` on ``fd``: BlockingIOError when ``wait`` is False and another holds it."""
    fcntl = _fcntl_mod
    if fcntl is None:
        raise ConfigurationError(FEATURES.unsupported or f"no file locks on {sys.platform}")
    op = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    fcntl.flock(fd, op if wait else op | fcntl.LOCK_NB)

