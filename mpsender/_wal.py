"""This process's write-ahead files: where ``track()`` puts an event.

Why a file first: a SIGKILLed sender takes the contents of its socket receive queues
with it, so an event that only sat in a socket is lost with the sender. An event
appended to this process's own file is in the page cache the moment the call returns,
and it survives the death of any process: the app, the sender, both. The sender tails
these files from its committed offsets and deletes a file once everything in it was
delivered and its writer has let go of its lock.

A file is ``<pid>-<tag>-<n>.wal`` in the spool: created under a hidden name and renamed
once locked (shared ``flock``, held while this process may write to it), so the sender
never sees a file it could take for finished. Past ``ROTATE_BYTES`` the process moves to
a new file, so delivered data can be deleted.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import time
from collections.abc import Callable

from . import _platform
from ._exceptions import ConfigurationError
from ._layout import WAL_SUFFIX
from ._paths import Paths
from ._reentry import HandlerSafeLock

__all__ = ["BUSY", "RETIRE_GRACE", "ROTATE_BYTES", "WalWriter"]

#: a process starts a new write-ahead file past this size, so delivered data can be deleted
ROTATE_BYTES = 4 * 1024 * 1024
#: a rotated file stays locked this long, for threads still writing through the old fd
RETIRE_GRACE = 2.0
#: after the spool refused a file, wait this long before trying again
RETRY_AFTER = 1.0
#: ``open()``: the lock is held by the code a signal handler interrupted
BUSY = -2

_write = os.write

Warn = Callable[..., None]


class WalWriter:
    """One process's write-ahead files. ``fd`` is the file to append to (-1: none open).

    Owned by the process; safe to use from several threads and from signal handlers:
    ``_lock`` guards opening, rotating and closing (a few statements, no waits); the
    append itself needs no lock (``O_APPEND``).
    """

    def __init__(self, paths: Paths, warn_once: Warn, announce: Callable[[], None]) -> None:
        self._paths = paths
        self._warn_once = warn_once
        self._announce = announce  # tell the sender the file list changed
        self._lock = HandlerSafeLock()
        self._reset()

    def _reset(self) -> None:
        self._tag = os.urandom(4).hex()
        self._file_no = itertools.count()
        self.fd = -1
        self.size = 0  # bytes written to the open file
        self._name = ""
        #: every file this process wrote -> its final size (None: still writing); what a
        #: flush waits for, and what the sender is told of in HELLO
        self.files: dict[str, int | None] = {}
        self._retired: list[tuple[int, float]] = []
        self._retry_at = 0.0

    def after_fork(self) -> None:
        """In a fork child: let go of the parent's files, quietly (the parent's flocks stay:
        they are the parent's open files)."""
        for fd in [self.fd] + [fd for fd, _ in self._retired]:
            if fd >= 0:
                with contextlib.suppress(OSError):  # closed already by the app's own cleanup
                    os.close(fd)
        self._lock = HandlerSafeLock()
        self._reset()

    # --- opening -------------------------------------------------------------------------

    def open(self, now: float) -> int:
        """The file to append to, opened now if need be. -1 when the spool refuses it;
        ``BUSY`` when a signal handler interrupted this thread while it held the lock."""
        if not self._lock.acquire():
            return BUSY
        try:
            if self.fd >= 0:
                return self.fd
            if now < self._retry_at:
                return -1
            name = self._new_name()
            try:
                fd = self._create(name, lambda fd: _platform.lock(fd, shared=True))
            except OSError as exc:
                self._retry_at = now + RETRY_AFTER
                self._refused(exc)
                return -1
            self.fd = fd
            self._name = name
            self.size = 0
            self.files[name] = None
        finally:
            self._lock.release()
        self._announce()
        return fd

    def write_aside(self, data: bytes) -> bool:
        """Lock-free: one record in a write-ahead file of its own, complete before the
        sender can see it. For a signal handler that interrupted this thread while it
        was opening or rotating its file."""
        name = self._new_name()

        def write_all(fd: int) -> None:
            if _write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, "short write")

        try:
            os.close(self._create(name, write_all))
        except OSError as exc:
            self._refused(exc)
            return False
        self.files[name] = len(data)  # finished: a flush waits for it like a rotated file
        self._announce()
        return True

    def _new_name(self) -> str:
        return f"{os.getpid()}-{self._tag}-{next(self._file_no)}{WAL_SUFFIX}"

    def _create(self, name: str, prepare: Callable[[int], object]) -> int:
        """Create spool file ``name`` through a hidden temporary name: the sender sees it
        only once ``prepare(fd)`` has run (it deletes a file whose writer holds no lock).
        If the spool directory went away (a /tmp cleaner), it is made again first."""
        try:
            return self._create_once(name, prepare)
        except FileNotFoundError:
            try:
                self._paths.ensure()
            except ConfigurationError as exc:
                raise FileNotFoundError(errno.ENOENT, str(exc)) from None
            return self._create_once(name, prepare)

    def _create_once(self, name: str, prepare: Callable[[int], object]) -> int:
        spool = self._paths.spool
        tmp = os.path.join(spool, f".{name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            prepare(fd)
            os.rename(tmp, os.path.join(spool, name))
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return fd

    def _refused(self, exc: OSError) -> None:
        self._warn_once("wal", "cannot write to the spool %s (%s); sending over the socket",
                        self._paths.spool, exc)

    # --- rotating and closing ---------------------------------------------------------

    def retire(self, fd: int, now: float) -> None:
        """Stop appending to ``fd`` (rotation, or a failed write): the next append opens a
        new file; this one stays locked for ``RETIRE_GRACE``, for threads still in a write."""
        if not self._lock.acquire():
            return  # a signal handler in this thread: a later write rotates
        try:
            if self.fd != fd:
                return
            try:
                self.files[self._name] = os.fstat(fd).st_size
            except OSError:
                self.files[self._name] = self.size
            self._retired.append((fd, now))
            self.fd = -1
        finally:
            self._lock.release()

    def failed(self, fd: int, exc: OSError) -> None:
        """A write to ``fd`` failed (a full disk): retire it, try a new file a bit later."""
        self._warn_once("wal-write", "writing the spool file failed (%s); sending over the socket", exc)
        self.retire(fd, 0.0)  # a torn tail: let the sender see the file is finished
        self._retry_at = time.time() + RETRY_AFTER

    def tidy(self, now: float) -> None:
        """Close rotated files past their grace (releasing their locks: the sender may
        delete them once delivered)."""
        if not self._retired or not self._lock.acquire():
            return
        try:
            self._close_retired(now, everything=False)
        finally:
            self._lock.release()

    def _close_retired(self, now: float, *, everything: bool) -> None:
        keep = []
        for fd, since in self._retired:
            if everything or now - since >= RETIRE_GRACE:
                with contextlib.suppress(OSError):  # closed already; the lock went with it
                    os.close(fd)
            else:
                keep.append((fd, since))
        self._retired = keep

    def close(self) -> bool:
        """Let go of every file, so the sender may delete them once delivered. False when
        it cannot now: a signal handler interrupted this thread while it held them."""
        if not self._lock.acquire():
            return False
        try:
            if self.fd >= 0:
                with contextlib.suppress(OSError):  # the size stays unknown; flush uses what we wrote
                    self.files[self._name] = os.fstat(self.fd).st_size
                self._retired.append((self.fd, 0.0))
                self.fd = -1
            self._close_retired(0.0, everything=True)
        finally:
            self._lock.release()
        return True

    # --- what a flush waits for -------------------------------------------------------

    def marks(self) -> list[list[object]]:
        """``[name, size]`` of every file: a flush is settled once the sender committed
        each up to its size."""
        marks: list[list[object]] = []
        for name, size in list(self.files.items()):
            if size is None:
                fd = self.fd
                try:
                    size = os.fstat(fd).st_size if fd >= 0 and name == self._name else self.size
                except OSError:
                    size = self.size
            marks.append([name, size])
        return marks

    def delivered(self, marks: list[list[object]]) -> None:
        """A flush of ``marks`` was settled: forget the finished files among them."""
        for name, _size in marks:
            if isinstance(name, str) and self.files.get(name) is not None:
                del self.files[name]

