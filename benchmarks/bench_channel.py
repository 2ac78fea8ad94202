"""Why the channel is not ``multiprocessing.Queue``: what a SIGKILL does to each channel.

    .venv/bin/python benchmarks/bench_channel.py                # ~2.5 min on 2 cores
    .venv/bin/python benchmarks/bench_channel.py --kills 30 --sender-kills 3   # a smoke test

A. Writers SIGKILLed (the experiment of DESIGN.md, "The channel", with the project's code).
   4 writer processes forked from this one (raw ``os.fork``, as gunicorn and billiard do)
   and one reader; every 0-50 ms a random writer is SIGKILLed and replaced, ``--kills``
   times per row. Every row sends the same event (mpsender's internal record of
   "Order Completed" with 8 properties, packed with msgpack, plus the writer's number and a
   sequence number) at the same pace (``--rate`` per writer, 0 = flat out; a queue or socket
   writer more than ``--window`` events ahead of its reader waits, so a saturated or stuck
   queue cannot eat the machine's memory):

   * ``multiprocessing.Queue``, that event (~300 B) and the same padded to ~20 KB: ``put()``
     in the writers, ``get()`` in a forked reader;
   * AF_UNIX SOCK_SEQPACKET, one connection per writer, blocking ``send()``, a forked reader
     on ``select``;
   * mpsender itself: the writers call ``mpsender.track()``; the reader is the real sender,
     and an event counts as read when the local collector (in a process of its own) stored it.

   After each kill, the replacement writer must get an event through to the reader within
   ``--deadline`` seconds (``--mpsender-deadline`` for mpsender, whose reader is an HTTP
   endpoint). If it does not, the channel is *stuck*: the row records why, throws the
   channel away and builds a new one (a stuck ``multiprocessing.Queue`` never recovers: a
   dead process cannot release a lock).

   *Lost* means acknowledged and never read: each writer stores, in memory shared with this
   process, the sequence number of its last event right after the call (``put()``,
   ``send()``, ``track()``) returned. An event counts as lost when its writer's call had
   returned for it and, once every writer has stopped and the reader has drained, the
   reader never received it. Per writer, queue and socket deliver in order, so the reader
   keeps "highest sequence read" and "sequence numbers skipped" per writer; for mpsender
   the collector's rows are compared with the acknowledged ranges exactly. Events still
   inside a channel found stuck are counted apart ("stranded"), not as lost.

B. The sender SIGKILLed: ``--producers`` processes (fresh interpreters, options from
   ``MPSENDER_*``) track events at ``--sender-rate`` each while the sender is SIGKILLed
   ``--sender-kills`` times (each time ``--sender-up`` seconds after a new one started);
   then the producers stop, a sender drains the spool, and the collector's rows are
   compared with what each producer's ``track()`` returned for: lost, duplicated (the event
   is in the process's spool file when track() returns, so none should be lost).

Benchmarks only: figures, not a pass/fail test. Every process it starts is ended by pid.
"""

from __future__ import annotations

import argparse
import json
import mmap
import multiprocessing
import os
import queue
import random
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    EVENT,
    PROPERTIES,
    USER_ID,
    WRITE_KEY,
    CollectorProcess,
    command_line,
    machine_line,
    new_runtime_dir,
)
from _producers import Producers, Run
from support import kill_senders, live_sender_pids

WRITERS = 4


# --- the event --------------------------------------------------------------------------------


def properties(w: int, seq: int, pad: int = 0) -> dict[str, Any]:
    props = dict(PROPERTIES)
    props["w"] = w
    props["seq"] = seq
    if pad:
        props["note"] = "x" * pad
    return props


def frame(w: int, seq: int, pad: int) -> bytes:
    """mpsender's internal record of the event (what track() writes), packed, plus a crc32."""
    rec = {"t": "track", "e": EVENT, "u": USER_ID, "m": os.urandom(16), "ts": time.time(),
           "p": properties(w, seq, pad)}
    body: bytes = msgpack.packb(rec)
    return body + zlib.crc32(body).to_bytes(4, "little")


def pad_for(size: int) -> int:
    """Padding that makes the packed frame about ``size`` bytes."""
    return max(0, size - len(frame(999, 99_999, 0)) - 3)


def check_frame(data: bytes) -> tuple[int, int] | None:
    """(writer, seq) of an intact frame; None for a corrupt one."""
    if len(data) < 5 or zlib.crc32(data[:-4]) != int.from_bytes(data[-4:], "little"):
        return None
    try:
        rec = msgpack.unpackb(data[:-4], raw=False)
        p = rec["p"]
        if rec["e"] != EVENT or p["order_id"] != PROPERTIES["order_id"]:
            return None
        return int(p["w"]), int(p["seq"])
    except Exception:  # noqa: BLE001 - anything unreadable is a corrupt message
        return None


# --- shared counters --------------------------------------------------------------------------


class Board:
    """int64 counters in an anonymous shared mapping, made before any fork.

    Per writer slot: ``acked`` (last seq whose call returned; -1 none), ``top`` (highest
    seq the reader got), ``got`` (messages read), ``skipped`` (seqs jumped over). Then:
    corrupt, duplicates, the reader's heartbeat (ns), the stop flag, writer errors.
    An aligned 8-byte store is one instruction: a SIGKILL cannot tear it.
    """

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._mm = mmap.mmap(-1, (4 * slots + 8) * 8)
        self.a = memoryview(self._mm).cast("q")
        self.ACKED, self.TOP, self.GOT, self.SKIPPED = 0, slots, 2 * slots, 3 * slots
        base = 4 * slots
        self.CORRUPT, self.DUPS, self.HEARTBEAT, self.STOP, self.ERRORS = range(base, base + 5)
        for i in range(slots):
            self.a[self.ACKED + i] = -1
            self.a[self.TOP + i] = -1

    def note(self, w: int, seq: int) -> None:
        """The reader got (w, seq); per writer, channels deliver in order."""
        a = self.a
        if not 0 <= w < self.slots:
            a[self.CORRUPT] += 1
            return
        top = a[self.TOP + w]
        if seq <= top:
            a[self.DUPS] += 1
            return
        a[self.SKIPPED + w] += seq - top - 1
        a[self.TOP + w] = seq
        a[self.GOT + w] += 1

    def beat(self) -> None:
        self.a[self.HEARTBEAT] = time.monotonic_ns()

    def lost(self, w: int) -> int:
        """Acknowledged by writer ``w`` and not read."""
        a = self.a
        acked, top = a[self.ACKED + w], a[self.TOP + w]
        skipped = a[self.SKIPPED + w]  # seqs jumped over, all below top, so all acknowledged
        return max(0, acked - top) + skipped


# --- the channels -------------------------------------------------------------------------------


class Channel:
    """One way from the writers to a reader. ``open()`` runs here; ``reader()`` and
    ``writer()`` in forked children, which leave through ``os._exit``."""

    name = ""
    has_reader_process = True

    def __init__(self, pad: int) -> None:
        self.pad = pad

    def open(self) -> None: ...

    def reader(self, board: Board) -> None: ...

    def send(self, data: bytes) -> None: ...

    def connect(self) -> None: ...

    def finish(self) -> None: ...

    def poll(self, board: Board) -> None:
        """Update the board from a reader living elsewhere (mpsender: the collector)."""

    def close(self) -> None: ...

    def diagnose(self, board: Board) -> str:
        return "no progress"

    def lost(self, board: Board, slots: list[int]) -> int:
        return sum(board.lost(s) for s in slots)

    def duplicates(self, board: Board) -> int:
        return board.a[board.DUPS]

    def corrupt(self, board: Board) -> int:
        return board.a[board.CORRUPT]

    def torn(self) -> int | None:
        """Writes cut short by the SIGKILL that the reader detected and skipped (if it can tell)."""
        return None

    def writer(self, board: Board, slot: int, rate: float, window: int) -> None:
        a = board.a
        acked, top = board.ACKED + slot, board.TOP + slot
        interval = 1.0 / rate if rate > 0 else 0.0
        self.connect()
        seq = 0
        t0 = time.monotonic()
        while not a[board.STOP]:
            # The app's own flow control, not the channel's: a writer this far ahead of the
            # reader waits, so a saturated or stuck queue cannot fill memory. put() itself
            # still returns as soon as the event is buffered.
            while seq - a[top] > window and not a[board.STOP]:
                time.sleep(0.001)
                t0 = time.monotonic() - seq * interval
            self.send(frame(slot, seq, self.pad))
            a[acked] = seq  # the call returned: from here on this event must not be lost
            seq += 1
            if interval:
                delay = t0 + seq * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        self.finish()


class MpQueue(Channel):
    name = "multiprocessing.Queue"

    def open(self) -> None:
        self.q: Any = multiprocessing.get_context("fork").Queue()

    def reader(self, board: Board) -> None:
        q = self.q
        while True:
            board.beat()
            try:
                data = q.get(timeout=0.1)
            except queue.Empty:
                continue
            except Exception:  # noqa: BLE001 - an unpicklable message is a corrupt one
                board.a[board.CORRUPT] += 1
                continue
            got = check_frame(data) if isinstance(data, bytes) else None
            if got is None:
                board.a[board.CORRUPT] += 1
            else:
                board.note(*got)

    def send(self, data: bytes) -> None:
        self.q.put(data)

    def finish(self) -> None:
        self.q.close()
        self.q.join_thread()  # the feeder thread writes what put() buffered

    def close(self) -> None:
        self.q.close()
        self.q.cancel_join_thread()

    def diagnose(self, board: Board) -> str:
        if time.monotonic_ns() - board.a[board.HEARTBEAT] > 1e9:
            return "reader blocked in get() on a half-written message"
        # A diagnosis only: may we take the queue's write lock? (private attribute)
        lock = self.q._wlock
        if lock is not None and lock.acquire(timeout=0.3):
            lock.release()
            return "no progress, write lock free"
        return "a dead writer holds the write lock"


class SeqPacket(Channel):
    name = "AF_UNIX SOCK_SEQPACKET"

    def open(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="mpb-sp-", dir="/tmp")
        self.path = os.path.join(self.dir, "s")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(self.path)
        self.listener.listen(64)

    def reader(self, board: Board) -> None:
        sel = selectors.DefaultSelector()
        self.listener.setblocking(False)
        sel.register(self.listener, selectors.EVENT_READ)
        buf = bytearray(256 * 1024)
        while True:
            board.beat()
            for key, _ in sel.select(0.1):
                sock = key.fileobj
                if sock is self.listener:
                    try:
                        conn, _ = self.listener.accept()
                    except BlockingIOError:
                        continue
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ)
                    continue
                assert isinstance(sock, socket.socket)
                for _ in range(64):
                    try:
                        n = sock.recv_into(buf)
                    except BlockingIOError:
                        break
                    except OSError:
                        n = 0
                    if n == 0:
                        sel.unregister(sock)
                        sock.close()
                        break
                    got = check_frame(bytes(buf[:n]))
                    if got is None:
                        board.a[board.CORRUPT] += 1
                    else:
                        board.note(*got)

    def connect(self) -> None:
        self.listener.close()  # the parent's copy, inherited: not ours to serve
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.connect(self.path)

    def send(self, data: bytes) -> None:
        self.sock.send(data)

    def finish(self) -> None:
        self.sock.close()

    def close(self) -> None:
        self.listener.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def diagnose(self, board: Board) -> str:
        if time.monotonic_ns() - board.a[board.HEARTBEAT] > 1e9:
            return "reader blocked"
        return "no progress"


class Mpsender(Channel):
    """The writers call ``mpsender.track()``; the sender reads; the collector counts."""

    name = "mpsender (track)"
    has_reader_process = False

    def __init__(self, pad: int, collector: CollectorProcess, flush_interval: float) -> None:
        super().__init__(pad)
        self.collector = collector
        self.flush_interval = flush_interval
        self.first_id = self.last_id = 0
        self.bad = 0

    def open(self) -> None:
        import mpsender

        self.runtime_dir = new_runtime_dir()
        self.first_id = self.last_id = self.collector.last_id()  # this row's events come after
        self.client = mpsender.init(write_key=WRITE_KEY, endpoint=self.collector.url,
                                    runtime_dir=self.runtime_dir, flush_interval=self.flush_interval)
        if not self.client.start(wait=10.0):
            raise RuntimeError("the mpsender sender did not start")

    def writer(self, board: Board, slot: int, rate: float, window: int) -> None:
        import mpsender

        a = board.a
        acked = board.ACKED + slot
        interval = 1.0 / rate if rate > 0 else 0.0
        pad = self.pad
        seq = 0
        t0 = time.monotonic()
        while not a[board.STOP]:
            mpsender.track(EVENT, user_id=USER_ID, properties=properties(slot, seq, pad))
            a[acked] = seq
            seq += 1
            if interval:
                delay = t0 + seq * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        # No window (the spool is on disk), and nothing to do at exit: every event is in
        # this process's spool file already.

    def poll(self, board: Board) -> None:
        rows = self.collector.sql(
            "SELECT id, json_extract(payload, '$.properties.w'), json_extract(payload, '$.properties.seq'), "
            "json_extract(payload, '$.event') FROM events WHERE id > ? ORDER BY id", (self.last_id,))
        a = board.a
        for rid, w, seq, event in rows:
            self.last_id = rid
            if event != EVENT or not isinstance(w, int) or not isinstance(seq, int) or not 0 <= w < board.slots:
                self.bad += 1
                continue
            a[board.GOT + w] += 1
            if seq > a[board.TOP + w]:
                a[board.TOP + w] = seq

    # The sender reads a writer's files fairly with everyone else's and a writer moves to a
    # new file every 4 MiB: per writer, events may arrive out of order. So lost and
    # duplicated are counted exactly from the collector's rows.

    def lost(self, board: Board, slots: list[int]) -> int:
        pairs = self.collector.pairs(self.first_id)
        lost = 0
        for w in slots:
            acked = board.a[board.ACKED + w]
            lost += sum(1 for s in range(acked + 1) if (w, s) not in pairs)
        return lost

    def duplicates(self, board: Board) -> int:
        return sum(n - 1 for n in self.collector.pairs(self.first_id).values() if n > 1)

    def corrupt(self, board: Board) -> int:
        return self.bad

    def torn(self) -> int | None:
        st = self.client.stats(timeout=5.0).sender
        if st is None:
            return None
        return int(st.dropped.get("corrupt", 0)) + int(st.dropped.get("undecodable", 0))

    def close(self) -> None:
        import mpsender

        mpsender.shutdown(timeout=1.0)
        kill_senders(self.runtime_dir)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def diagnose(self, board: Board) -> str:
        if not live_sender_pids(self.runtime_dir):
            return "no sender running"
        return "no progress"


# --- experiment A -------------------------------------------------------------------------------


_children: set[int] = set()


def fork(target: Any, *args: Any, board: Board | None = None) -> int:
    """Run ``target(*args)`` in a forked child that leaves through ``os._exit``."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            target(*args)
        except BaseException:  # noqa: BLE001 - counted and shown; the parent's exit code must not run here
            import traceback

            traceback.print_exc()
            if board is not None:
                board.a[board.ERRORS] += 1
            code = 1
        finally:
            os._exit(code)
    _children.add(pid)
    return pid


def reap(pid: int) -> None:
    """SIGKILL a child of ours and wait for it."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    _children.discard(pid)


def reap_all() -> None:
    for pid in list(_children):
        reap(pid)


class WritersKilled:
    """One row of experiment A: a channel, its reader, writers killed and replaced."""

    def __init__(self, channel: Channel, *, kills: int, rate: float, window: int, deadline: float,
                 seed: int) -> None:
        self.channel = channel
        self.kills = kills
        self.rate = rate
        self.window = window
        self.deadline = deadline
        self.rng = random.Random(seed)
        self.board = Board(6 * kills + 16)  # room for a fresh set of writers after every kill
        self.next_slot = 0
        self.stuck: Counter[str] = Counter()
        self.stranded = 0
        self.killed: list[int] = []
        self.counted: list[int] = []  # slots whose acknowledged events count for "lost"
        self.reader: int | None = None
        self.live: dict[int, int] = {}  # slot -> pid
        self.open = False

    def new_writer(self) -> int:
        slot = self.next_slot
        self.next_slot += 1
        self.counted.append(slot)
        self.live[slot] = fork(self.channel.writer, self.board, slot, self.rate, self.window, board=self.board)
        return slot

    def delivered(self, slot: int, limit: float) -> bool:
        """Has the reader got an event from ``slot``? Wait up to ``limit`` seconds."""
        end = time.monotonic() + limit
        while True:
            self.channel.poll(self.board)
            if self.board.a[self.board.GOT + slot] > 0:
                return True
            if time.monotonic() >= end:
                return False
            time.sleep(0.002 if self.channel.has_reader_process else 0.02)

    def build(self) -> None:
        self.channel.open()
        self.open = True
        self.board.beat()
        if self.channel.has_reader_process:
            self.reader = fork(self.channel.reader, self.board, board=self.board)
        for slot in [self.new_writer() for _ in range(WRITERS)]:
            if not self.delivered(slot, self.deadline):
                raise RuntimeError(f"{self.channel.name}: a fresh channel delivered nothing in {self.deadline} s")

    def teardown(self) -> None:
        for pid in self.live.values():
            reap(pid)
        self.live.clear()
        if self.reader is not None:
            reap(self.reader)
            self.reader = None
        if self.open:
            self.open = False
            self.channel.close()

    def why_stuck(self, slot: int) -> str:
        b = self.board
        if b.a[b.ERRORS]:
            b.a[b.ERRORS] = 0
            return "a writer or the reader raised (traceback above)"
        if b.a[b.ACKED + slot] < 0:
            return "a put() blocked"
        return self.channel.diagnose(b)

    def run(self) -> dict[str, Any]:
        try:
            return self._run()
        finally:
            self.teardown()
            reap_all()  # whatever went wrong, no writer or reader outlives the row

    def _run(self) -> dict[str, Any]:
        t_start = time.monotonic()
        b, channel = self.board, self.channel
        self.build()
        for _ in range(self.kills):
            time.sleep(self.rng.uniform(0.0, 0.05))
            victim = self.rng.choice(sorted(self.live))
            reap(self.live.pop(victim))
            self.killed.append(victim)
            slot = self.new_writer()
            if self.delivered(slot, self.deadline):
                continue
            # Stuck: say why, set aside what is inside, start over with a new channel.
            self.stuck[self.why_stuck(slot)] += 1
            channel.poll(b)
            for s in self.live:
                self.stranded += b.lost(s)
                self.counted.remove(s)
            self.teardown()
            self.build()

        # The end: writers stop on their own (a queue's feeder thread writes what it holds
        # first), then the reader drains.
        t_drain = time.monotonic()
        b.a[b.STOP] = 1
        end = time.monotonic() + self.deadline + 10.0
        for slot, pid in list(self.live.items()):
            while time.monotonic() < end and not os.waitpid(pid, os.WNOHANG)[0]:
                time.sleep(0.01)
            if time.monotonic() >= end:
                reap(pid)
            _children.discard(pid)
            del self.live[slot]
        quiet_for = 2.0 if channel.has_reader_process else 10.0
        last, last_change = -1, time.monotonic()
        while time.monotonic() - last_change < quiet_for:
            channel.poll(b)
            if all(b.a[b.GOT + s] > b.a[b.ACKED + s] for s in self.counted):
                if channel.lost(b, self.counted) == 0:
                    break
            total = sum(b.a[b.GOT + s] for s in range(self.next_slot))
            if total != last:
                last, last_change = total, time.monotonic()
            time.sleep(0.1)
        return {
            "channel": channel.name, "kills": len(self.killed), "stuck": sum(self.stuck.values()),
            "why": dict(self.stuck), "corrupt": channel.corrupt(b), "duplicates": channel.duplicates(b),
            "acked": sum(b.a[b.ACKED + s] + 1 for s in range(self.next_slot)),
            "lost": channel.lost(b, self.counted), "torn": channel.torn(), "stranded": self.stranded,
            "writer_errors": b.a[b.ERRORS], "writers": self.next_slot,
            "seconds": time.monotonic() - t_start, "drain_seconds": time.monotonic() - t_drain,
        }


# --- experiment B ---------------------------------------------------------------------------------

def run_sender_killed(workdir: str, *, producers: int, rate: float, kills: int, up: float) -> dict[str, Any]:
    """Experiment B."""
    collector = CollectorProcess(workdir)
    run = Run(collector.url)
    procs: Producers | None = None
    t_start = time.monotonic()
    try:
        procs = Producers(run.env, producers, events=0, rate=rate)
        procs.go()
        dead: set[int] = set()
        respawn: list[float] = []
        for _ in range(kills):
            t_gone = time.monotonic()
            pid = run.sender(30.0, exclude=dead)
            if pid is None:
                raise RuntimeError("no sender came back within 30 s")
            if dead:
                respawn.append(time.monotonic() - t_gone)
            time.sleep(up)
            os.kill(pid, signal.SIGKILL)
            dead.add(pid)
            while pid in run.senders():
                time.sleep(0.01)
        t_gone = time.monotonic()
        if run.sender(30.0, exclude=dead) is not None:
            respawn.append(time.monotonic() - t_gone)
        time.sleep(up)
        procs.stop()
        sent = sum(r["sent"] for r in procs.results(timeout=30))
        # A sender drains the spool (if none runs now, a fresh one replays it).
        run.start_sender()
        last, last_change = -1, time.monotonic()
        while time.monotonic() - last_change < 10.0:
            n = collector.count()
            if n >= sent:
                time.sleep(1.5)  # a late duplicate would show up now
                break
            if n != last:
                last, last_change = n, time.monotonic()
            time.sleep(0.1)
        pairs = collector.pairs()
        stored = sum(pairs.values())
        distinct = len(pairs)
        return {"kills": kills, "sent": sent, "stored": stored, "distinct": distinct,
                "lost": sent - distinct, "duplicates": stored - distinct,
                "per_producer": dict(Counter(w for w, _ in pairs)),
                "respawn": respawn, "seconds": time.monotonic() - t_start,
                "sender_log": dict(run.log_problems())}
    finally:
        if procs is not None:
            procs.kill()
        run.close()
        collector.close()


# --- main -------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=100, help="A: writer SIGKILLs per row (default: %(default)s)")
    ap.add_argument("--rate", type=float, default=5000.0,
                    help="A: events/s per writer, the same for every row; 0 = flat out (default: %(default)s)")
    ap.add_argument("--window", type=int, default=1000,
                    help="A: a queue or socket writer this many events ahead of the reader waits "
                         "(bounds memory when a queue is saturated or stuck) (default: %(default)s)")
    ap.add_argument("--small", type=int, default=300, help="A: size of the small event, bytes (default: %(default)s)")
    ap.add_argument("--large", type=int, default=20_000, help="A: size of the large event, bytes (default: %(default)s)")
    ap.add_argument("--deadline", type=float, default=1.0,
                    help="A: seconds for a replacement writer's first event to be read (default: %(default)s)")
    ap.add_argument("--mpsender-deadline", type=float, default=10.0,
                    help="A: the same through the sender and HTTP (default: %(default)s)")
    ap.add_argument("--flush-interval", type=float, default=0.05,
                    help="A: the sender's flush_interval in the mpsender row, so a kill cycle does not "
                         "wait a whole second for the replacement's first batch (default: %(default)s)")
    ap.add_argument("--rows", nargs="+", default=["queue", "queue-large", "seqpacket", "mpsender"],
                    choices=["queue", "queue-large", "seqpacket", "mpsender"], metavar="ROW",
                    help="A: rows to run: queue queue-large seqpacket mpsender (default: all)")
    ap.add_argument("--sender-kills", type=int, default=5, help="B: sender SIGKILLs per row (default: %(default)s)")
    ap.add_argument("--producers", type=int, default=4, help="B: producer processes (default: %(default)s)")
    ap.add_argument("--sender-rate", type=float, default=500.0,
                    help="B: events/s per producer (default: %(default)s)")
    ap.add_argument("--sender-up", type=float, default=1.5,
                    help="B: seconds a new sender runs before it is killed (default: %(default)s)")
    ap.add_argument("--only", choices=["A", "B"], help="run one experiment")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", metavar="FILE", help="also write the raw results here")
    args = ap.parse_args()
    for name in ("kills", "sender_kills", "producers"):
        if getattr(args, name) < 1 or getattr(args, name) > 1000:
            ap.error(f"--{name.replace('_', '-')} must be within 1..1000")
    if args.rate < 0 or args.sender_rate <= 0:
        ap.error("--rate must be >= 0 and --sender-rate > 0")

    print(f"# bench_channel\n\n`{command_line()}`\n\n{machine_line()}\n", flush=True)
    workdir = tempfile.mkdtemp(prefix="mpb-ch-")
    results: dict[str, Any] = {"command": command_line(), "machine": machine_line()}
    try:
        if args.only in (None, "A"):
            results["A"] = experiment_a(args, workdir)
        if args.only in (None, "B"):
            results["B"] = experiment_b(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def experiment_a(args: argparse.Namespace, workdir: str) -> list[dict[str, Any]]:
    small, large = pad_for(args.small), pad_for(args.large)
    sizes = {small: len(frame(0, 0, small)) - 4, large: len(frame(0, 0, large)) - 4}
    pace = "flat out" if args.rate == 0 else f"{args.rate:,.0f} events/s each"
    print(f"## A. Writers SIGKILLed\n\n{WRITERS} forked writers ({pace}, queue and socket writers at most "
          f"{args.window:,} events ahead of the reader), one reader; a random writer "
          f"SIGKILLed every 0-50 ms and replaced, {args.kills} kills per row. Stuck = the replacement's "
          f"first event not read within {args.deadline:g} s ({args.mpsender_deadline:g} s for mpsender, "
          f"flush_interval={args.flush_interval:g}); the row then starts over on a new channel.\n", flush=True)
    collector = CollectorProcess(workdir)
    rows = []
    try:
        every: dict[str, tuple[Channel, int]] = {
            "queue": (MpQueue(small), small), "queue-large": (MpQueue(large), large),
            "seqpacket": (SeqPacket(small), small),
            "mpsender": (Mpsender(small, collector, args.flush_interval), small),
        }
        plan = [every[name] for name in args.rows]
        for i, (channel, pad) in enumerate(plan):
            deadline = args.mpsender_deadline if isinstance(channel, Mpsender) else args.deadline
            row = WritersKilled(channel, kills=args.kills, rate=args.rate, window=args.window,
                                deadline=deadline, seed=args.seed + i).run()
            row["bytes"] = sizes[pad]
            rows.append(row)
            print(f"  … {row['channel']} ({row['bytes']:,} B): {row['seconds']:.0f} s", file=sys.stderr, flush=True)
    finally:
        collector.close()
    print("| channel | event | kills | channel stuck for good after a kill | corrupt | duplicated "
          "| events acknowledged | lost (acknowledged, never read) | stranded in a stuck channel |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        why = "; ".join(f"{n} {w}" for w, n in sorted(r["why"].items(), key=lambda x: -x[1]))
        stuck = f"{r['stuck']} of {r['kills']}" + (f" ({why})" if why else "")
        print(f"| {r['channel']} | {r['bytes']:,} B | {r['kills']} | {stuck} | {r['corrupt']} | {r['duplicates']} "
              f"| {r['acked']:,} | {r['lost']:,} | {r['stranded']:,} |")
    print()
    for r in rows:
        if r["writer_errors"]:
            print(f"{r['channel']}: {r['writer_errors']} writer(s) or reader raised after the last stuck "
                  f"channel (tracebacks on stderr).")
        if r["torn"]:
            print(f"{r['channel']}: {r['torn']} event(s) cut short by a SIGKILL in the middle of the write "
                  f"(their track() never returned) failed the spool checksum; the sender skipped them and "
                  f"counted them as dropped (corrupt).")
    print("Rows took " + ", ".join(f"{r['seconds']:.0f} s" for r in rows) + ".\n")
    return rows


def experiment_b(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    print(f"## B. The sender SIGKILLed\n\n{args.producers} producer processes, {args.sender_rate:,.0f} "
          f"events/s each; the sender SIGKILLed {args.sender_kills} times, each time {args.sender_up:g} s "
          f"after a new one started (the producers start it); then the producers stop and a sender "
          f"drains the spool. Other options at their defaults.\n", flush=True)
    row = run_sender_killed(workdir, producers=args.producers, rate=args.sender_rate,
                            kills=args.sender_kills, up=args.sender_up)
    print(f"  … {row['seconds']:.0f} s", file=sys.stderr, flush=True)
    print("| sender kills | events track() returned for | stored at the collector | lost "
          "| duplicated | lost per kill | new sender after a kill (median s) |")
    print("|---|---|---|---|---|---|---|")
    resp = sorted(row["respawn"])
    med = f"{resp[len(resp) // 2]:.1f}" if resp else "-"
    print(f"| {row['kills']} | {row['sent']:,} | {row['stored']:,} | {row['lost']:,} | {row['duplicates']:,} "
          f"| {row['lost'] / row['kills']:,.0f} | {med} |")
    print()
    if row["sender_log"]:
        items = "; ".join(f"{n}× {m}" for m, n in sorted(row["sender_log"].items(), key=lambda x: -x[1])[:5])
        print(f"The senders logged {items}")
    print()
    return row


if __name__ == "__main__":
    sys.exit(main())
