"""The sender's IO thread: connections, control requests, flush waiters, linger, exit.

It never waits behind an upload: the uploader runs in its own thread, and the data
itself never passes through here (it is in the spool files) except for events sent
over a socket because an application process could not write its file.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import selectors
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .. import _layout as layout
from .. import _platform
from .._lograte import Throttle
from .._metrics import sender_metrics_file
from .._options import Options
from .._platform import Connection, FrameError
from .._protocol import FLUSH, HELLO, MAX_CONTROL, REPLY, STATS, STOP, WAKE
from .._version import __version__
from .._wire_records import FEATURE as WIRE_FEATURE
from .._wire_records import MARK as WIRE_MARK
from ._spool import Counters, Spool
from ._uploader import Uploader

logger = logging.getLogger(__name__)
_throttle = Throttle(logger)  # what each connection or pass of the loop can meet again

_SAVE_EVERY = 5.0
#: events held in memory when they came over a socket (the disk refused them); past
#: either bound the sender stops reading sockets until the uploader
#: catches up, and the applications spill to their files meanwhile
MAX_MEMORY_EVENTS = 100_000
MAX_MEMORY_BYTES = 64 * 1024 * 1024
#: a HELLO's drop report is read up to this many reasons (there is one today)
_MAX_REPORTED_REASONS = 16


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    chan: Connection  # whole messages on sock, whichever socket kind (_platform)
    pid: int = 0
    client: bool = False  # sent HELLO: an application, not a status/stop request


@dataclass
class _Waiter:
    conn: _Conn
    req: int
    marks: list[Any]
    mem_seq: int
    resyncs: int  # the spool's, when the flush came: how its marks relate to a truncated file
    since: float = field(default_factory=time.monotonic)


class Server:
    def __init__(self, options: Options, dest: str, spool_dir: str) -> None:
        self.options = options
        self.dest = dest
        self.counters = Counters()  # the one set: the spool and the uploader count into it too
        self.spool = Spool(spool_dir, self.counters)
        self._unspooled = 0  # events that came over a socket, not yet counted
        self._state_lock = threading.Lock()
        self._load_state()
        self.started_at = time.time()
        self._sel = selectors.DefaultSelector()
        self._conns: dict[int, _Conn] = {}
        self._waiters: list[_Waiter] = []
        self._wake_r, self._wake_w = _platform.nonblocking_pipe()
        #: connections with a whole message already read off the socket (a framed stream
        #: read ahead): served in the next pass without waiting for the socket
        self._ready: set[_Conn] = set()
        self._buf = bytearray(MAX_CONTROL + 1)
        self._exiting = False
        self._paused = False
        self._last_client_left = time.monotonic()
        self._next_save = time.monotonic() + _SAVE_EVERY
        self.socket_path = os.path.join(dest, layout.SOCKET)
        self._bell = _doorbell(os.path.join(dest, layout.DOORBELL))
        self.uploader = Uploader(options, self.spool, self.counters, self._poke, self._bell, self._save_state)
        self._listener: socket.socket | None = None
        self.metrics_file = sender_metrics_file(options, dest)  # options.metrics_file, if set

    # --- start --------------------------------------------------------------------------

    def listen(self) -> None:
        try:
            os.unlink(self.socket_path)  # stale: we hold the lock, so no sender owns it
        except FileNotFoundError:
            pass
        lst = _platform.unix_socket()
        lst.bind(self.socket_path)
        os.chmod(self.socket_path, 0o600)
        lst.listen(512)
        lst.setblocking(False)
        self._listener = lst
        self._sel.register(lst, selectors.EVENT_READ, "accept")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self.spool.discover()
        self.uploader.start()
        self._write_info()

    def _write_info(self) -> None:
        info = {
            "pid": os.getpid(), "started_at": self.started_at, "version": __version__,
            "destination": self.options.redacted_endpoint(), "format": self.options.format,
            "spool": self.spool.dir, "socket": self.socket_path,
            # what it reads besides packed records: applications write these only then
            "records": [WIRE_FEATURE],
        }
        tmp = os.path.join(self.dest, layout.INFO + ".tmp")
        with open(tmp, "w") as fh:
            json.dump(info, fh)
        os.replace(tmp, os.path.join(self.dest, layout.INFO))

    # --- loop -------------------------------------------------------------------------------

    def serve(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self._request_exit("SIGTERM"))
        signal.signal(signal.SIGINT, lambda *_: self._request_exit("SIGINT"))
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        while not self._exiting:
            ready: set[_Conn] = set()
            if self._ready and not self._paused:
                ready, self._ready = self._ready, set()
            events = self._sel.select(0.0 if ready else self._timeout())
            for key, _ in events:
                try:
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        _drain(self._wake_r)
                    else:
                        self._read(key.data)
                except Exception:  # noqa: BLE001 - one bad client must not stop the sender
                    _throttle.error("serve", "error while serving a connection", exc_info=True)
            for conn in ready:
                try:
                    if conn.sock.fileno() >= 0 and not self._paused:  # not closed meanwhile
                        self._read(conn)
                except Exception:  # noqa: BLE001 - one bad client must not stop the sender
                    _throttle.error("serve", "error while serving a connection", exc_info=True)
            self._count_unspooled()
            self._check_waiters()
            self._backpressure()
            now = time.monotonic()
            if not self._clients() and now - self._last_client_left >= self.options.linger:
                logger.info("no client for %.1fs: exiting", self.options.linger)
                self._exiting = True
            if now >= self._next_save:
                self._next_save = now + _SAVE_EVERY
                self._save_state()
                if self.metrics_file is not None:
                    self.metrics_file.update(self.stats(), now=now)
            if not self.uploader.is_alive() and not self._exiting:
                logger.error("the uploader thread died; exiting so a new sender takes over")
                self._exiting = True
        self._shutdown()

    def _backpressure(self) -> None:
        """Stop reading sockets while the in-memory queue is full; resume at half."""
        spool = self.spool
        full = len(spool.mem) >= MAX_MEMORY_EVENTS or spool.mem_bytes >= MAX_MEMORY_BYTES
        if full and not self._paused:
            self._paused = True
            for conn in self._conns.values():
                self._sel.unregister(conn.sock)
        elif self._paused and len(spool.mem) < MAX_MEMORY_EVENTS // 2 and spool.mem_bytes < MAX_MEMORY_BYTES // 2:
            self._paused = False
            for conn in self._conns.values():
                self._sel.register(conn.sock, selectors.EVENT_READ, conn)
                if conn.chan.pending():
                    self._ready.add(conn)

    def _clients(self) -> int:
        return sum(1 for c in self._conns.values() if c.client)

    def _timeout(self) -> float:
        if self._paused:
            return 0.01
        if self._clients():
            return _SAVE_EVERY
        left = self._last_client_left + self.options.linger - time.monotonic()
        return max(0.0, min(left, _SAVE_EVERY))

    def _request_exit(self, why: str) -> None:
        logger.info("%s: draining and exiting", why)
        self._exiting = True
        self._poke()

    def _poke(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # a wake-up is already pending: one is enough

    # --- connections ------------------------------------------------------------------------

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            pid, uid = _platform.peer_credentials(sock)
            if uid is not None and uid != os.getuid():
                _throttle.warning("uid", "refused a connection from uid %d (pid %d): only uid %d may send here",
                                  uid, pid, os.getuid())
                self.counters.incident("refused_connections")
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Conn(sock, _platform.connection(sock, self._buf), pid)
            self._conns[sock.fileno()] = conn
            if not self._paused:
                self._sel.register(sock, selectors.EVENT_READ, conn)

    def _close(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if fd >= 0:
            if not self._paused:
                self._sel.unregister(conn.sock)
            self._conns.pop(fd, None)
        conn.sock.close()
        self._ready.discard(conn)
        self._waiters = [w for w in self._waiters if w.conn is not conn]
        if conn.client and not self._clients():
            # only applications count: a monitor polling STATS must not keep us alive
            self._last_client_left = time.monotonic()
        # its file is final now, perhaps: let the uploader look
        self.uploader.client_left(application=conn.client)

    def _read(self, conn: _Conn) -> None:
        recv = conn.chan.recv
        for _ in range(256):  # bounded, so one busy client cannot starve the others
            try:
                data = recv()
            except BlockingIOError:
                return
            except FrameError as exc:
                self.counters.incident("bad_frames")
                _throttle.warning("frame", "closing the connection of pid %d: %s", conn.pid, exc)
                self._close(conn)
                return
            except OSError:
                self._close(conn)
                return
            if data is None:
                self._close(conn)
                return
            if not data:
                self.counters.incident("bad_frames")  # an empty frame (only a stream can carry one)
                continue
            self._message(conn, data)
            if self._paused:
                return
        if conn.chan.pending():
            self._ready.add(conn)  # the socket may say nothing more: come back next pass

    def _message(self, conn: _Conn, data: bytes) -> None:
        first = data[0]
        if 0x80 <= first <= 0x8F or first in (0xDE, 0xDF, WIRE_MARK):  # a record: packed, or wire JSON
            self._memory_event(data)
            return
        try:
            msg = msgpack.unpackb(data, raw=False)
            kind = msg[0]
        except Exception:  # noqa: BLE001 - garbage from a client is counted and skipped
            self.counters.incident("bad_frames")
            return
        if kind == WAKE:
            self.uploader.wake()
        elif kind == HELLO:
            conn.pid = msg[1]
            conn.client = True
            for name in msg[2]:
                self.spool.note(name)
            if len(msg) > 4 and self._count_app_drops(conn, msg[4]):
                self._save_state()  # a SIGKILL of the sender must not lose this account
            self.uploader.wake()
        elif kind == FLUSH:
            for mark in msg[2]:
                self.spool.note(mark[0])
            self._waiters.append(_Waiter(conn, msg[1], msg[2], self.spool.mem_in, self.spool.resyncs))
            self.uploader.urgent = True
            self.uploader.wake()
        elif kind == STATS:
            self._reply(conn, msg[1], self.stats())
        elif kind == STOP:
            self._reply(conn, msg[1], True)
            self._request_exit(f"stop requested by pid {conn.pid}")

    def _count_app_drops(self, conn: _Conn, drops: Any) -> bool:
        """Add the drops an application reported in its HELLO (events it could hand to
        no one) to the persisted counters. What is not ``{reason: count}`` is ignored."""
        if not isinstance(drops, dict):
            return False
        counted = False
        for reason, n in list(drops.items())[:_MAX_REPORTED_REASONS]:
            if isinstance(reason, str) and 0 < len(reason) <= 64 and type(n) is int and n > 0:
                self.counters.drop(reason, n)
                _throttle.warning("app-drops", "pid %d reports %d event(s) dropped in the application: %s",
                                  conn.pid, n, reason)
                counted = True
        return counted

    def _memory_event(self, data: bytes) -> None:
        held, held_bytes = self.spool.hold(data)
        self._unspooled += 1  # an app could not write its file (counted once per pass)
        if held >= MAX_MEMORY_EVENTS or held_bytes >= MAX_MEMORY_BYTES:
            self._backpressure()
        self.uploader.wake()

    def _count_unspooled(self) -> None:
        """Count the events that came over a socket (an app could not write its file) as
        spool_unavailable, once per pass of the loop: the counters' lock is not taken
        per event."""
        if self._unspooled:
            self.counters.incident("spool_unavailable", self._unspooled)
            self._unspooled = 0

    def _reply(self, conn: _Conn, req: int, payload: Any) -> None:
        try:
            conn.chan.send(msgpack.packb([REPLY, req, payload], use_bin_type=True))
        except OSError as exc:
            logger.info("could not answer pid %d: %s", conn.pid, exc)

    def _check_waiters(self) -> None:
        if not self._waiters:
            return
        still = []
        for w in self._waiters:
            if self.spool.settled(w.marks, w.resyncs) and self.spool.mem_committed >= w.mem_seq:
                self._reply(w.conn, w.req, True)
            else:
                still.append(w)
        self._waiters = still
        self.uploader.urgent = bool(still)

    # --- stats and state ------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        self._count_unspooled()  # a STATS request in the middle of a pass sees them too
        c = self.counters
        spool = self.spool
        dropped = dict(c.dropped)
        incidents = dict(c.incidents)
        pending_bytes = spool.pending_bytes()
        in_flight_for, in_flight_events = self.uploader.in_flight_now(time.monotonic())
        return {
            "pid": os.getpid(), "started_at": self.started_at, "uptime": time.time() - self.started_at,
            "received": c.received, "uploaded": c.uploaded, "batches": c.batches,
            "requests": c.requests, "retries": c.retries,
            # read from the spool and not yet settled (queued, in a batch, being retried)
            "pending": len(spool.mem) + sum(wf.outstanding + len(wf.buffered)
                                            for wf in list(spool.files.values())),
            "pending_bytes": pending_bytes, "spool_bytes": spool.disk_bytes(),
            "dropped": {k: v for k, v in dropped.items() if v},
            "incidents": {k: v for k, v in incidents.items() if v},
            "connections": self._clients(), "last_status": c.last_status, "last_error": c.last_error,
            "last_success_at": c.last_success_at,
            "rate_limited_for": self.uploader.rate_limit.remaining(time.monotonic()),
            "route": self.uploader.route,
            "in_flight_for": in_flight_for, "in_flight_events": in_flight_events,
            "destination": self.options.redacted_endpoint(), "version": __version__,
            "spool": spool.dir, "files": len(spool.files),
        }

    def _load_state(self) -> None:
        try:
            state = layout.read_state(self.spool.dir)
        except (OSError, ValueError) as exc:
            logger.warning("cannot read %s (%s); counters start from zero",
                           os.path.join(self.spool.dir, layout.STATE), exc)
            return
        if state is not None:
            self.counters.load(state)  # an older file's "corrupt" and "spool" keys are folded in

    def _save_state(self) -> None:
        with self._state_lock:  # the IO thread and the posting thread both save
            self._save_state_locked()

    def _save_state_locked(self) -> None:
        self.counters.dirty = False  # before the copy: a drop counted meanwhile is saved next time
        try:
            layout.write_state(self.spool.dir, self.counters.totals())
        except OSError as exc:
            _throttle.warning("save", "cannot save counters to %s: %s",
                              os.path.join(self.spool.dir, layout.STATE), exc)

    # --- exit ---------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        deadline = time.monotonic() + self.options.shutdown_timeout
        if self._listener is not None:
            self._sel.unregister(self._listener)
            self._listener.close()
            try:
                os.unlink(self.socket_path)  # we still hold the lock: it is ours to remove
            except FileNotFoundError:
                pass
        self.uploader.stop(deadline)
        self.uploader.join(max(0.0, deadline - time.monotonic()))
        if self.uploader.is_alive():
            logger.warning("shutdown deadline reached with a request in flight; "
                           "undelivered events stay in the spool for the next sender")
        self._check_waiters()
        for conn in list(self._conns.values()):
            conn.sock.close()
        self._save_state()
        if self.metrics_file is not None:
            self.metrics_file.update(self.stats(), up=False)  # the final counters; up 0
        try:
            os.unlink(os.path.join(self.dest, layout.INFO))
        except FileNotFoundError:
            pass
        logger.info("exited: %s", json.dumps(self.stats()))


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass  # drained


def _doorbell(path: str) -> mmap.mmap:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_size < 64:
            os.ftruncate(fd, 64)
        return mmap.mmap(fd, 64)
    finally:
        os.close(fd)
