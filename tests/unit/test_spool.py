"""The sender's spool reader: each file read once, commits, deletion, the disk bound."""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

import msgpack

from mpsender._framing import frame
from mpsender._sender._spool import Spool, parse_commits


def _write(path: Path, n: int, start: int = 0) -> None:
    with open(path, "ab") as fh:
        for i in range(start, start + n):
            fh.write(frame(msgpack.packb({"t": "track", "e": "E", "u": "u", "p": {"seq": i}})))


def _seqs(entries: list) -> list[int]:
    return [msgpack.unpackb(e.payload)["p"]["seq"] for e in entries if e.payload is not None]


def _open_fds_on(path: Path) -> int:
    target = os.path.realpath(path)
    return sum(1 for fd in os.listdir("/proc/self/fd")
               if os.path.realpath(f"/proc/self/fd/{fd}") == target)


def test_a_file_announced_and_discovered_is_read_once(tmp_path: Path) -> None:
    """HELLO (IO thread) and a directory scan (uploader) both naming a new file: its
    records are read once, through one descriptor."""
    name = "123-abcd1234-0.wal"
    _write(tmp_path / name, 3)
    spool = Spool(str(tmp_path))
    t = threading.Thread(target=spool.note, args=(name,))
    t.start()
    spool.discover()
    t.join()
    first = spool.read(100)
    second = spool.read(100)
    assert _seqs(first) == [0, 1, 2] and _seqs(second) == []
    assert _open_fds_on(tmp_path / name) == 1
    spool.close()


def test_commit_then_finish_deletes_a_file_whose_writer_left(tmp_path: Path) -> None:
    """A file fully committed whose writer holds no lock is deleted, and the commit log
    forgets it."""
    path = tmp_path / "1-a-0.wal"
    _write(path, 5)
    spool = Spool(str(tmp_path))
    spool.discover()
    entries = spool.read(100)
    assert _seqs(entries) == list(range(5))
    spool.commit(entries)
    assert spool.finish_files() == 1 and not path.exists()
    commits, torn = parse_commits((tmp_path / "commits.log").read_bytes())
    assert commits == {} and not torn
    spool.close()


def test_a_locked_file_is_kept_and_read_on(tmp_path: Path) -> None:
    """While its writer holds the lock, a committed file stays, and new records are read."""
    path = tmp_path / "1-a-0.wal"
    _write(path, 2)
    writer = os.open(path, os.O_RDONLY)
    fcntl.flock(writer, fcntl.LOCK_SH)
    try:
        spool = Spool(str(tmp_path))
        spool.discover()
        spool.commit(spool.read(100))
        assert spool.finish_files() == 0 and path.exists()
        _write(path, 2, start=2)
        assert _seqs(spool.read(100)) == [2, 3]
        spool.close()
    finally:
        os.close(writer)


def test_restart_resumes_from_the_committed_offset(tmp_path: Path) -> None:
    """A new Spool (a new sender) reads only what was not committed."""
    path = tmp_path / "1-a-0.wal"
    _write(path, 10)
    writer = os.open(path, os.O_RDONLY)
    fcntl.flock(writer, fcntl.LOCK_SH)  # the writer is alive: nothing gets deleted
    try:
        spool = Spool(str(tmp_path))
        spool.discover()
        entries = spool.read(4)
        spool.commit(entries)
        spool.read(100)  # read, never committed: a sender killed mid-batch
        spool.close()
        again = Spool(str(tmp_path))
        again.discover()
        assert _seqs(again.read(100)) == list(range(4, 10))
        again.close()
    finally:
        os.close(writer)


def test_drop_oldest_skips_unread_records_and_counts_them(tmp_path: Path) -> None:
    """Over the bound, unread records are dropped oldest file first and counted."""
    old, new = tmp_path / "1-a-0.wal", tmp_path / "2-b-0.wal"
    _write(old, 50)
    os.utime(old, (1, 1))
    _write(new, 50, start=100)
    spool = Spool(str(tmp_path))
    spool.discover()
    for wf in spool.files.values():
        wf.size = os.path.getsize(wf.path)
    dropped = spool.drop_oldest(os.path.getsize(old))
    assert dropped == 50
    assert _seqs(spool.read(1000)) == list(range(100, 150))
    spool.close()
