"""The sender's view of the spool: the write-ahead files the application processes append to.

Each file is read from its committed offset. A batch remembers where each of its
records ends; after the endpoint accepted it (or it was settled for good), the
committed offset moves there and is appended to ``commits.log``. A file is deleted once
everything in it is committed and its writer has let go of its lock (exited, or moved
to a new file). A SIGKILLed sender therefore loses nothing: the next one reads from the
committed offsets again (at-least-once; the message ids let the endpoint dedupe).

Someone else may truncate or replace a file under the sender (logrotate's copytruncate, a
``> file``, an editor, an operator cleaning up). Neither may lose events silently:

- truncated (the file is now shorter than what was read, or than it was): once what was read
  from it is settled, it is read again from offset 0, since the truncation point is unknown
  (what follows it is the writer's new events; a kept prefix is sent again, at-least-once).
  What had not been read is gone: each truncation counts one region as dropped
  ``truncated`` (how many events it held cannot be known, as for ``corrupt``; often none).
- replaced or deleted (the path no longer names the file the sender holds): the writer still
  appends to the file it holds, so the sender reads that one to its end, until the writer
  lets go, and then picks up whatever is at the path as a new file from its start. Nothing is
  lost; it counts the incident ``spool_replaced``. A sender restarted meanwhile cannot reach
  the old file any more: its unread rest is lost without a count.

A flush that waited across a truncation is answered once what it covered is settled or
counted (see :meth:`Spool.settled`).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from .. import _platform
from .._framing import scan
from .._layout import COMMITS, commit_record, is_wal_name, parse_commits, parse_state, write_commits
from .._lograte import Throttle
from .._wire import format_message_id

logger = logging.getLogger(__name__)
_throttle = Throttle(logger)  # warnings a pass of the reading loop can meet every time

CHUNK = 256 * 1024
_COMPACT_AT = 1 << 20


class Counters:
    """The sender's counters: one set, counted by the IO, reading and posting threads.
    The totals are persisted in ``state.json`` across restarts; ``received`` and the last
    answer are this sender's own."""

    def __init__(self) -> None:
        self.received = 0  # events read from the spool or memory (the reading thread only)
        # The posting thread's alone (the IO thread reads them for stats: whole ints and
        # references, an old value or a new one, never a torn one):
        self.uploaded = 0
        self.batches = 0
        self.requests = 0
        self.retries = 0
        #: events lost for good, by reason (corrupt regions of the spool included)
        self.dropped: dict[str, int] = {}
        #: things that went wrong without losing an event (auth_failures, spool_unavailable, ...)
        self.incidents: dict[str, int] = {}
        self.last_status: int | None = None
        self.last_success_at: float | None = None  # epoch seconds of the last accepted request
        self.last_error: str | None = None
        self.dirty = False  # a drop happened since the last save: save soon, a SIGKILL may follow
        self._lock = threading.Lock()  # the reading and the posting thread both count

    def drop(self, reason: str, n: int = 1) -> None:
        if n:
            with self._lock:
                self.dropped[reason] = self.dropped.get(reason, 0) + n
                self.dirty = True

    def incident(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self.incidents[reason] = self.incidents.get(reason, 0) + n

    def load(self, state: Any) -> None:
        """Start from the totals of a ``state.json`` document (old formats included)."""
        saved = parse_state(state)
        with self._lock:
            self.uploaded = saved["uploaded"]
            self.batches = saved["batches"]
            self.requests = saved["requests"]
            self.retries = saved["retries"]
            self.dropped = saved["dropped"]
            self.incidents = saved["incidents"]

    def totals(self) -> dict[str, Any]:
        """What ``state.json`` keeps, copied under the lock: another thread may be counting."""
        with self._lock:
            return {"uploaded": self.uploaded, "batches": self.batches, "requests": self.requests,
                    "retries": self.retries, "dropped": dict(self.dropped),
                    "incidents": dict(self.incidents)}


@dataclass(slots=True)
class Entry:
    """One record read from the spool. ``payload`` None: skipped (corrupt region)."""

    source: WalFile | None  # None: received over a socket, held in memory
    end: int                 # offset after the record in its file (memory: sequence number)
    payload: bytes | None
    wire: bytes = b""        # the encoded wire event, set by the uploader
    ts: float = 0.0
    mid: bytes | str = b""   # the record's message id, as packed (set by the uploader)

    @property
    def message_id(self) -> str:
        """The id as the endpoint sees it; formatted only when asked (dead letters, hooks):
        the encoder formats it into the wire event already."""
        try:
            return format_message_id(self.mid)
        except ValueError:
            return repr(self.mid)


@dataclass(eq=False)
class WalFile:
    name: str
    path: str
    fd: int
    committed: int = 0
    read_pos: int = 0
    final: bool = False      # the writer has let go: no byte will be added
    size: int = 0            # last size seen
    taken: int = 0           # end of the last record handed out (or dropped)
    outstanding: int = 0     # records handed to the uploader and not yet committed
    synced: int = 0          # size at the last fsync
    truncated: bool = False  # found shorter than read: read again from 0 once what was read is settled
    replaced: bool = False   # the path names another file now: drain this one, never delete the path
    resync: int = 0          # Spool.resyncs when this file was last read again from 0 (0: never)
    prev_resync: int = 0     # the same for the resync before that one
    resync_size: int = 0     # its size at the last resync
    buffered: collections.deque[Entry] = field(default_factory=collections.deque)


class Spool:
    def __init__(self, directory: str, counters: Counters) -> None:
        self.dir = directory
        self.files: dict[str, WalFile] = {}
        self._lock = threading.Lock()  # the IO thread asks about commits while the uploader works
        self._rr = 0
        self.counters = counters  # the server's: received, corrupt regions, spool incidents
        # Events that came over a socket (an app's disk refused them), in sequence. The IO
        # thread appends (hold), the reading thread takes (read), the posting thread
        # commits: mem, mem_in and mem_bytes change under _lock only; mem_committed is the
        # posting thread's (under _lock too), read by the IO thread for flushes.
        self.mem: collections.deque[tuple[int, bytes]] = collections.deque()
        self.mem_in = 0          # sequence number of the last event received over a socket
        self.mem_committed = 0
        self.mem_bytes = 0
        self._noted: collections.deque[str] = collections.deque()  # names from HELLO/FLUSH (IO thread appends)
        #: files read again from 0 after a truncation, so far (the reading thread, under _lock)
        self.resyncs = 0
        #: committed size of files drained after they were replaced, by name: a writer's
        #: later flush naming one is answered from here, not from the file now at the path
        self._replaced_done: dict[str, int] = {}
        self._commits: dict[str, int] = {}
        #: the spool directory this sender owns: one made again under the same name (the
        #: old one deleted by a /tmp cleaner) belongs to the sender started for it
        self._dir_id = _identity(directory)
        self._dir_replaced = False
        self._load_commits()
        self._commit_fd = os.open(os.path.join(directory, COMMITS),
                                  os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._commit_log_size = os.fstat(self._commit_fd).st_size

    # --- commit log ------------------------------------------------------------------

    def _load_commits(self) -> None:
        path = os.path.join(self.dir, COMMITS)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return
        self._commits, torn = parse_commits(data)
        if torn:
            logger.warning("commits.log has a torn tail; records after it are read again")
        existing = {n for n in os.listdir(self.dir) if is_wal_name(n)}
        self._commits = {n: o for n, o in self._commits.items() if n in existing}
        write_commits(self.dir, self._commits.items())

    def _log_commit(self, name: str, offset: int | None) -> None:
        data = commit_record(name, offset)
        try:
            os.write(self._commit_fd, data)
        except OSError as exc:
            self.counters.incident("spool_unavailable")
            _throttle.warning("commits", "cannot write commits.log: %s; a restart would send some events again", exc)
            return
        self._commit_log_size += len(data)
        if self._commit_log_size > _COMPACT_AT:
            self._compact()

    def _compact(self) -> None:
        path = os.path.join(self.dir, COMMITS)
        try:
            # a replaced file's offsets are of a file the name no longer names
            write_commits(self.dir, [(wf.name, wf.committed) for wf in self.files.values() if not wf.replaced])
            os.close(self._commit_fd)
            self._commit_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            self._commit_log_size = os.fstat(self._commit_fd).st_size
        except OSError as exc:
            _throttle.warning("compact", "cannot compact commits.log: %s", exc)

    # --- discovery ---------------------------------------------------------------------

    def discover(self) -> int:
        """Pick up write-ahead files we do not know yet. Returns how many were added."""
        if self._dir_replaced:
            return 0
        if _identity(self.dir) != self._dir_id:
            self._dir_replaced = True
            logger.warning("the spool %s was deleted and made again: its new files are left to the "
                           "sender started for it; this one finishes the files it has", self.dir)
            return 0
        try:
            names = [e.name for e in os.scandir(self.dir) if is_wal_name(e.name)]
        except OSError as exc:
            _throttle.warning("list", "cannot list the spool %s: %s", self.dir, exc)
            return 0
        added = 0
        for name in names:
            if name not in self.files and self._add(name):
                added += 1
        return added

    def note(self, name: str) -> None:
        """A writer announced ``name`` (IO thread). Only the uploader thread opens files:
        two threads adding the same file would read it twice and leak a descriptor."""
        if is_wal_name(name):
            self._noted.append(name)

    def _add_noted(self) -> None:
        while self._noted:
            name = self._noted.popleft()
            if name not in self.files and not self._dir_replaced:
                self._add(name)

    def _add(self, name: str) -> bool:
        path = os.path.join(self.dir, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        start = self._commits.pop(name, 0)
        try:
            size = os.fstat(fd).st_size
        except OSError:
            size = 0
        with self._lock:
            if name in self.files:  # never two readers of one file
                os.close(fd)
                return False
            self.files[name] = WalFile(name, path, fd, committed=start, read_pos=start, size=size, taken=start)
        return True

    def hold(self, data: bytes) -> tuple[int, int]:
        """Keep an event that came over a socket (IO thread); (events, bytes) now held."""
        with self._lock:
            self.mem_in += 1
            self.mem.append((self.mem_in, data))
            self.mem_bytes += len(data)
            return len(self.mem), self.mem_bytes

    # --- reading ---------------------------------------------------------------------

    def read(self, limit: int) -> list[Entry]:
        """Up to ``limit`` records not yet read, fairly from every file, then from memory."""
        self._add_noted()
        out: list[Entry] = []
        files = list(self.files.values())
        if files:
            # start at a different file each time, and give each a fair share first
            self._rr = (self._rr + 1) % len(files)
            files = files[self._rr:] + files[:self._rr]
            share = max(1, limit // len(files))
            for wf in files:
                self._read_file(wf, min(share, limit - len(out)), out)
            for wf in files:
                self._read_file(wf, limit - len(out), out)
        if self.mem and len(out) < limit:
            with self._lock:  # the IO thread appends meanwhile
                while self.mem and len(out) < limit:
                    seq, payload = self.mem.popleft()
                    self.mem_bytes -= len(payload)
                    out.append(Entry(None, seq, payload))
        return out  # counted as received once decoded (Uploader._decode)

    def _read_file(self, wf: WalFile, limit: int, out: list[Entry]) -> None:
        taken = 0
        buffered = wf.buffered
        while taken < limit:
            if not buffered and not self._fill(wf):
                break
            n = min(limit - taken, len(buffered))
            if n == len(buffered):
                out.extend(buffered)
                buffered.clear()
            else:
                pop = buffered.popleft
                out.extend([pop() for _ in range(n)])
            taken += n
        if taken:
            wf.taken = out[-1].end
            with self._lock:  # the posting thread decrements it as batches commit
                wf.outstanding += taken

    def _fill(self, wf: WalFile) -> bool:
        """Scan the next chunk of ``wf`` into its buffer. False when nothing new is there."""
        if wf.truncated and not self._resync(wf):
            return False
        if wf.final and wf.read_pos >= wf.size:
            return False
        try:
            data = os.pread(wf.fd, CHUNK, wf.read_pos)
        except OSError as exc:
            _throttle.warning("read", "cannot read %s: %s", wf.path, exc)
            return False
        if not data:
            self._check_size(wf)  # caught up: a file now shorter than what was read was truncated
            return False
        result = scan(data, final=False)
        if result.incomplete and not result.payloads and self._writer_gone(wf):
            result = scan(data, final=len(data) < CHUNK)
        base = wf.read_pos
        wf.buffered.extend([Entry(wf, base + end, payload) for end, payload in result.payloads])
        last = result.payloads[-1][0] if result.payloads else 0
        if result.consumed > last:
            wf.buffered.append(Entry(wf, base + result.consumed, None))  # corrupt region, skipped in order
        wf.read_pos = base + result.consumed
        if result.corrupt:
            self.counters.drop("corrupt", result.corrupt)  # marks the counters for a save
            _throttle.warning("corrupt", "%s: skipped %d corrupt region(s) after offset %d",
                              wf.name, result.corrupt, base)
        return bool(wf.buffered)

    # --- truncated or replaced under us ------------------------------------------------

    def check_files(self) -> None:
        """Note every file's size, and notice one truncated or replaced under us
        (housekeeping, the reading thread, once a second)."""
        for wf in list(self.files.values()):
            try:
                st = os.fstat(wf.fd)
            except OSError:
                continue  # gone: finish_files deals with it
            if not wf.replaced:
                try:
                    at_path = os.stat(wf.path)
                    same = (at_path.st_ino, at_path.st_dev) == (st.st_ino, st.st_dev)
                except FileNotFoundError:
                    same = False
                except OSError:
                    same = True  # cannot look (permissions): assume it is still ours
                if not same:
                    self._replaced(wf)
            self._observe(wf, st.st_size)

    def _check_size(self, wf: WalFile) -> None:
        try:
            size = os.fstat(wf.fd).st_size
        except OSError:
            return
        self._observe(wf, size)

    def _observe(self, wf: WalFile, size: int) -> None:
        """Record ``size``; a file never shrinks unless someone truncated it."""
        if not (wf.truncated or wf.replaced) and (size < wf.read_pos or size < wf.size):
            unread = max(wf.size, wf.read_pos) - wf.read_pos
            wf.truncated = True
            self.counters.drop("truncated")
            _throttle.warning("truncated", "%s was truncated under the sender to %d bytes after %d were read: "
                              "at least %d bytes not read yet are lost (counted as one 'truncated' region); "
                              "reading it again from the start once what was read is settled",
                              wf.name, size, wf.read_pos, unread)
        wf.size = size

    def _resync(self, wf: WalFile) -> bool:
        """Read a truncated file again from 0, once nothing read from it is pending (their
        offsets are of the old content). False while some is."""
        with self._lock:
            if wf.outstanding or wf.buffered:
                return False
            try:
                size = os.fstat(wf.fd).st_size
            except OSError:
                size = 0
            self.resyncs += 1
            wf.prev_resync, wf.resync = wf.resync, self.resyncs
            wf.resync_size = size
            wf.committed = wf.read_pos = wf.taken = wf.synced = 0
            wf.size = size
            wf.truncated = False
            self._log_commit(wf.name, None)  # a sender started after this reads it from 0 too
        return True

    def _replaced(self, wf: WalFile) -> None:
        wf.replaced = True
        self.counters.incident("spool_replaced")
        with self._lock:
            self._log_commit(wf.name, None)  # the next file at that path is read from its start
        _throttle.warning("replaced", "%s was replaced or deleted under the sender: reading the file it "
                          "holds to its end (its writer still appends there), then a file at that path "
                          "from its start", wf.name)

    def _writer_gone(self, wf: WalFile) -> bool:
        if wf.final:
            return True
        try:
            _platform.lock(wf.fd, wait=False)
        except BlockingIOError:
            return False
        except OSError:
            return False
        wf.final = True
        self._check_size(wf)  # size stays as last seen if it fails; reading goes on until pread returns nothing
        return True

    def has_unread(self) -> bool:
        if self.mem or self._noted:
            return True
        for wf in list(self.files.values()):
            if wf.buffered:
                return True
            if wf.truncated:
                continue  # nothing to read before what was read from it commits: do not spin
            try:
                if os.fstat(wf.fd).st_size > wf.read_pos:
                    return True
            except OSError:
                continue
        return False

    # --- committing --------------------------------------------------------------------

    def commit(self, entries: list[Entry]) -> None:
        marks: dict[WalFile, int] = {}
        counts: dict[WalFile, int] = {}
        mem_top = 0
        for e in entries:
            if e.source is None:
                mem_top = max(mem_top, e.end)
            else:
                marks[e.source] = max(marks.get(e.source, 0), e.end)
                counts[e.source] = counts.get(e.source, 0) + 1
        with self._lock:  # commits come from the posting thread, reads from the reading one
            for wf, n in counts.items():
                wf.outstanding -= n
            for wf, end in marks.items():
                if wf.outstanding == 0:
                    end = max(end, wf.taken)  # past records dropped by drop_oldest, too
                if end > wf.committed:
                    wf.committed = end
                    if not wf.replaced:
                        self._log_commit(wf.name, end)
            if mem_top:
                self.mem_committed = max(self.mem_committed, mem_top)

    def settled(self, marks: list[list[Any]], resyncs: int | None = None) -> bool:
        """Is everything up to these (file, size) marks committed or counted as dropped?
        (flush; ``resyncs`` is :attr:`resyncs` when the flush arrived, None: now.)

        A writer's size is an offset in the file as it is now. After a truncation the
        committed offset restarts from 0 and no longer relates to sizes taken before, so:
        while a truncation is not yet resynced, nothing in that file is settled; a flush
        that came before the resync covered what was in the file then, which is settled
        once the file is committed up to its size at the resync (what was lost was counted
        as ``truncated``); after a second resync all of it is."""
        seen = self.resyncs if resyncs is None else resyncs
        with self._lock:
            for mark in marks:
                if not (isinstance(mark, list) and len(mark) == 2):
                    continue
                name, size = mark
                if not isinstance(size, int):
                    continue
                wf = self.files.get(name)
                if not (wf is not None and wf.replaced) and size <= self._replaced_done.get(name, -1):
                    continue  # the writer's own file, drained after it was replaced
                if wf is None:
                    if isinstance(name, str) and os.path.exists(os.path.join(self.dir, name)):
                        return False  # not discovered yet
                    continue  # deleted: everything in it was settled
                if wf.truncated:
                    return False
                if not wf.replaced:
                    try:
                        if os.fstat(wf.fd).st_size < max(wf.committed, wf.read_pos, wf.size):
                            return False  # truncated, and the reading thread has not noticed yet
                    except OSError:
                        pass  # cannot look: the offsets below decide
                if wf.resync > seen:
                    if wf.prev_resync > seen:
                        continue  # resynced twice since: all it covered is delivered or counted
                    size = min(size, wf.resync_size)
                if wf.committed < size:
                    return False
        return True

    def finish_files(self) -> int:
        """Delete files that are fully committed and whose writer has gone."""
        removed = 0
        for wf in list(self.files.values()):
            if wf.truncated:
                continue  # read again first
            try:
                size = os.fstat(wf.fd).st_size
            except OSError:
                continue
            self._observe(wf, size)
            if wf.truncated:
                continue
            if wf.committed < size or wf.read_pos < size or wf.buffered:
                continue
            if not self._writer_gone(wf):
                continue
            with self._lock:
                if os.fstat(wf.fd).st_size != wf.committed or wf.outstanding:
                    continue  # a last write landed before the writer let go
                if wf.replaced:
                    # the path names another file now (or none): keep it, it is read next
                    self._replaced_done[wf.name] = wf.committed
                    del self.files[wf.name]
                    os.close(wf.fd)
                    removed += 1
                    continue
                try:
                    os.unlink(wf.path)
                except OSError as exc:
                    _throttle.warning("delete", "cannot delete %s: %s", wf.path, exc)
                    continue
                del self.files[wf.name]
                os.close(wf.fd)
                self._log_commit(wf.name, None)
            removed += 1
        return removed

    # --- size ------------------------------------------------------------------------------

    def pending_bytes(self) -> int:
        total = self.mem_bytes
        for wf in list(self.files.values()):
            total += max(0, wf.size - wf.committed)
        return total

    def disk_bytes(self) -> int:
        return sum(wf.size for wf in list(self.files.values()))

    def unread_bytes(self) -> int:
        """Bytes not yet handed to the uploader: what max_spool_bytes bounds."""
        total = self.mem_bytes
        for wf in list(self.files.values()):
            total += max(0, wf.size - max(wf.taken, wf.committed))
        return total

    def drop_oldest(self, excess: int) -> int:
        """Drop records not yet handed out, oldest files first, until ``excess`` bytes
        are gone. Returns how many events were dropped (the caller counts spool_full)."""
        dropped = 0
        for wf in sorted(self.files.values(), key=_mtime):
            while excess > 0 and (wf.buffered or self._fill(wf)):
                entry = wf.buffered.popleft()
                excess -= entry.end - max(wf.taken, wf.committed)
                wf.taken = entry.end
                if entry.payload is not None:
                    dropped += 1
            with self._lock:
                if wf.outstanding == 0 and wf.taken > wf.committed:
                    wf.committed = wf.taken
                    if not wf.replaced:
                        self._log_commit(wf.name, wf.committed)
            if excess <= 0:
                break
        return dropped

    def fsync(self) -> None:
        """fsync every file that grew since it was last synced (writers gone included)."""
        for wf in list(self.files.values()):
            try:
                size = os.fstat(wf.fd).st_size
                if size > wf.synced:
                    os.fsync(wf.fd)
                    wf.synced = size
            except OSError as exc:
                _throttle.warning("fsync", "fsync %s: %s", wf.path, exc)

    def close(self) -> None:
        for wf in list(self.files.values()):
            try:
                os.close(wf.fd)
            except OSError:
                pass  # closing at exit: nothing left to do with it
        try:
            os.close(self._commit_fd)
        except OSError:
            pass  # as above


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _mtime(wf: WalFile) -> float:
    try:
        return os.fstat(wf.fd).st_mtime
    except OSError:
        return 0.0
