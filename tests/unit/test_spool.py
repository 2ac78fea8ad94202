"""The sender's spool reader: each file read once, commits, deletion, the disk bound."""

from __future__ import annotations

import fcntl
import json
import os
import threading
from pathlib import Path

import msgpack

from mpsender._framing import frame
from mpsender._layout import parse_commits, parse_state
from mpsender._sender._spool import Counters, Spool


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
    spool = Spool(str(tmp_path), Counters())
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
    spool = Spool(str(tmp_path), Counters())
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
        spool = Spool(str(tmp_path), Counters())
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
        spool = Spool(str(tmp_path), Counters())
        spool.discover()
        entries = spool.read(4)
        spool.commit(entries)
        spool.read(100)  # read, never committed: a sender killed mid-batch
        spool.close()
        again = Spool(str(tmp_path), Counters())
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
    spool = Spool(str(tmp_path), Counters())
    spool.discover()
    for wf in spool.files.values():
        wf.size = os.path.getsize(wf.path)
    dropped = spool.drop_oldest(os.path.getsize(old))
    assert dropped == 50
    assert _seqs(spool.read(1000)) == list(range(100, 150))
    spool.close()


def test_corrupt_regions_are_counted_in_the_senders_counters(tmp_path: Path) -> None:
    """The spool counts into the sender's one set of counters: a corrupt region is dropped
    'corrupt' (and marks the counters for a save). Records read are counted as received
    by the uploader as it decodes them (test_cli: "received 25")."""
    path = tmp_path / "1-a-0.wal"
    _write(path, 3)
    with open(path, "ab") as fh:
        fh.write(b"\x00\x01garbage\xfe" * 5)
    _write(path, 2, start=3)
    counters = Counters()
    spool = Spool(str(tmp_path), counters)
    spool.discover()
    assert _seqs(spool.read(100)) == list(range(5))
    assert counters.dropped == {"corrupt": 1} and counters.dirty
    assert counters.incidents == {}
    spool.close()


# --- state.json: the persisted counters --------------------------------------------------------

#: a state.json written before the counters were one set
_OLD_STATE = {"uploaded": 40, "batches": 4, "requests": 6, "retries": 2,
              "dropped": {"expired": 3, "rejected": 1}, "incidents": {"auth_failures": 2},
              "corrupt": 5, "spool": {"spool_unavailable": 7}, "saved_at": 1.0}
_UNIFIED_KEYS = {"uploaded", "batches", "requests", "retries", "dropped", "incidents", "saved_at"}


def test_an_old_state_json_is_folded_into_dropped_and_incidents() -> None:
    """The old "corrupt" count becomes dropped corrupt, the old "spool" items incidents:
    nothing counted before an upgrade is lost; what is not a count reads as none."""
    expected = {"uploaded": 40, "batches": 4, "requests": 6, "retries": 2,
                "dropped": {"expired": 3, "rejected": 1, "corrupt": 5},
                "incidents": {"auth_failures": 2, "spool_unavailable": 7}}
    assert parse_state(_OLD_STATE) == expected
    assert parse_state(expected) == expected  # the unified format reads as itself
    assert parse_state({**_OLD_STATE, "dropped": {"corrupt": 1}, "incidents": {"spool_unavailable": 1}}) == {
        **expected, "dropped": {"corrupt": 6}, "incidents": {"spool_unavailable": 8}}
    assert parse_state({"uploaded": "x", "dropped": [1], "spool": {"a": None}, "corrupt": True}) == {
        "uploaded": 0, "batches": 0, "requests": 0, "retries": 0, "dropped": {}, "incidents": {}}
    assert parse_state([1, 2]) == parse_state({})
    counters = Counters()
    counters.load(_OLD_STATE)
    assert counters.totals() == expected and not counters.dirty


def test_the_sender_loads_an_old_state_json_and_saves_the_unified_format(tmp_path: Path) -> None:
    """A sender started on an older state.json reports the same totals as before (corrupt
    among the dropped, spool_unavailable among the incidents) and saves only the unified keys."""
    from mpsender._options import Options
    from mpsender._sender._server import Server

    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    (spool_dir / "state.json").write_text(json.dumps(_OLD_STATE))
    server = Server(Options(write_key="k", endpoint="http://127.0.0.1:9"), str(tmp_path), str(spool_dir))
    try:
        stats = server.stats()
        assert stats["dropped"] == {"expired": 3, "rejected": 1, "corrupt": 5}
        assert stats["incidents"] == {"auth_failures": 2, "spool_unavailable": 7}
        assert (stats["uploaded"], stats["batches"], stats["requests"], stats["retries"]) == (40, 4, 6, 2)
        assert stats["received"] == 0  # this sender's own, not persisted
        server._memory_event(b"\x80")  # an event over a socket (the app's disk refused it): a spool incident
        assert server.stats()["incidents"]["spool_unavailable"] == 8
        server._save_state()
        saved = json.loads((spool_dir / "state.json").read_text())
        assert set(saved) == _UNIFIED_KEYS
        assert saved["dropped"] == {"expired": 3, "rejected": 1, "corrupt": 5}
        assert saved["incidents"] == {"auth_failures": 2, "spool_unavailable": 8}
    finally:
        server.uploader._http.close()
        server.spool.close()
        server._sel.close()
        server._bell.close()
        os.close(server._wake_r)
        os.close(server._wake_w)


def test_spool_purge_counts_into_an_old_state_json_in_the_unified_format(tmp_path: Path) -> None:
    """`mpsender spool purge` reads an older state.json with its keys folded in and
    writes the unified format, adding the purged events to the dropped."""
    from mpsender._cli._spool import _count_purged
    from mpsender._cli._spoolfiles import state

    assert state(tmp_path) == {}  # nothing saved yet
    (tmp_path / "state.json").write_text(json.dumps(_OLD_STATE))
    assert state(tmp_path)["dropped"] == {"expired": 3, "rejected": 1, "corrupt": 5}
    _count_purged(tmp_path, 9)
    saved = json.loads((tmp_path / "state.json").read_text())
    assert set(saved) == _UNIFIED_KEYS
    assert saved["dropped"] == {"expired": 3, "rejected": 1, "corrupt": 5, "purged": 9}
    assert saved["incidents"] == {"auth_failures": 2, "spool_unavailable": 7}
    assert saved["uploaded"] == 40


def test_flush_marks_across_a_truncation_are_settled_only_once_delivered_or_counted(tmp_path: Path) -> None:
    """A file truncated and written again: a flush is not settled by the old committed
    offset; one from before the truncation settles once what was in the file at the
    resync is committed (the loss counted as truncated), one from after only at its size."""
    path = tmp_path / "1-a-0.wal"
    _write(path, 10)
    counters = Counters()
    spool = Spool(str(tmp_path), counters)
    spool.discover()
    spool.commit(spool.read(100))
    old_size = path.stat().st_size
    flushed_before = spool.resyncs
    assert spool.settled([[path.name, old_size]], flushed_before)
    os.truncate(path, 0)
    _write(path, 3, start=100)
    new_size = path.stat().st_size
    assert new_size < old_size
    assert not spool.settled([[path.name, new_size]], flushed_before)  # not before the 3 new are read
    spool.check_files()
    assert counters.dropped == {"truncated": 1}
    assert not spool.settled([[path.name, old_size]], flushed_before)
    entries = spool.read(100)
    assert _seqs(entries) == [100, 101, 102]
    assert not spool.settled([[path.name, new_size]], flushed_before)
    spool.commit(entries)
    assert spool.settled([[path.name, old_size]], flushed_before)  # the rest was counted
    assert spool.settled([[path.name, new_size]], flushed_before)
    assert not spool.settled([[path.name, old_size]])  # a mark taken now is an offset in the new content
    assert parse_commits((tmp_path / "commits.log").read_bytes())[0] == {path.name: new_size}
    spool.close()
