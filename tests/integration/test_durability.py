"""Durability: a failing, refusing, hanging or absent endpoint, a killed sender, a
corrupt or full spool. Every case is a real fault injected into real processes."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import msgpack
import psutil
import pytest
from support import (
    REPO,
    app_env,
    check,
    live_sender_pids,
    recv_message,
    run_app,
    send_message,
    sender_infos,
    sender_socket_kind,
    wait_for,
)

import mpsender
from mpsender._collector import Collector, Faults
from mpsender._events import pack
from mpsender._framing import frame
from mpsender._options import Options
from mpsender._paths import paths_for
from mpsender._protocol import HELLO, REPLY, STATS
from mpsender._wire import format_timestamp

FAST_RETRY = {"retry_base": 0.02, "retry_cap": 0.2}


def _unique(c: Collector) -> set[str]:
    return set(c.message_ids())


def _deadletters(client: mpsender.Client) -> list[dict[str, object]]:
    path = client.paths.spool / "deadletter.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# --- a failing endpoint -------------------------------------------------------------------

@pytest.mark.parametrize(
    "faults",
    [Faults(fail_first=5, fail_status=503), Faults(fail_rate=0.3, fail_status=500, seed=7)],
    ids=["503-first-5", "500-30pct"],
)
def test_failing_endpoint_loses_nothing(faults: Faults, client_factory, collector: Collector) -> None:
    """503 to the first requests, or 500 to 30% of them: every event delivered, once."""
    collector.set_faults(faults)
    client = client_factory(batch_size=20, **FAST_RETRY)
    for i in range(300):
        client.track("E", user_id="u", properties={"i": i})
    assert client.flush(timeout=30)
    assert len(_unique(collector)) == 300 and collector.count() == 300  # refused batches are not stored
    failed = [r for r in collector.requests() if r.status != 200]
    assert failed, "the fault was not exercised"
    assert client.stats().sender.retries >= len(failed)


def test_retry_after_holds_every_request_until_it_expires(client_factory, collector: Collector) -> None:
    """429 with Retry-After: 1: no request leaves the sender before it expires."""
    collector.set_faults(Faults(fail_first=2, fail_status=429, retry_after="1"))
    client = client_factory(batch_size=10, **FAST_RETRY)
    for i in range(50):
        client.track("E", user_id="u", properties={"i": i})
    assert client.flush(timeout=30)
    assert len(_unique(collector)) == 50
    reqs = sorted(collector.requests(), key=lambda r: r.arrived_at)
    for prev, nxt in itertools.pairwise(reqs):
        if prev.status == 429:
            assert nxt.arrived_at - prev.arrived_at >= 0.95, (prev, nxt)


def test_outage_while_apps_exit_then_everything_arrives(collector: Collector, runtime_dir: str,
                                                        tmp_path: Path) -> None:
    """The collector is down for 20 s while 4 processes track 20k events and exit: all
    20k arrive once it is back."""
    env = app_env(collector.url, runtime_dir, flush_interval=0.05, retry_base=0.05, retry_cap=1.0, linger=120)
    check(run_app("import mpsender; mpsender.init()", env))  # the sender is up
    port = collector.port
    collector.stop()
    down_at = time.monotonic()
    code = """
import sys, time, mpsender
n = int(sys.argv[1])
started = time.monotonic()
for i in range(5000):
    mpsender.track("outage", user_id=f"p{n}", properties={"n": n, "i": i})
print(time.monotonic() - started)
"""
    procs = [subprocess.Popen([sys.executable, "-c", code, str(n)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for n in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert float(out) < 5.0  # tracking does not wait for the endpoint
    assert time.monotonic() - down_at < 20
    back = Collector(tmp_path / "after.db", port=port)
    remaining = 20 - (time.monotonic() - down_at)
    if remaining > 0:
        time.sleep(remaining)  # the outage itself: the collector stays down for 20 s
    back.start()
    try:
        assert back.wait_for(lambda c: len(set(c.message_ids())) >= 20_000, timeout=60)
        assert len(set(back.message_ids())) == 20_000
        assert len(back.message_ids()) == 20_000
    finally:
        back.stop()


# --- a refusing endpoint -----------------------------------------------------------------

def test_poison_event_is_isolated_in_the_dead_letter_file(client_factory, collector: Collector) -> None:
    """One event the endpoint refuses in a batch of 100: 99 delivered, 1 dead-lettered with
    the status and the reason, counted as rejected."""
    collector.set_faults(Faults(reject_event="poison"))
    client = client_factory(batch_size=100, flush_interval=30)
    for i in range(100):
        client.track("poison" if i == 37 else "fine", user_id="u", properties={"i": i})
    assert client.flush(timeout=30)
    assert collector.count() == 99
    assert 37 not in {e["properties"]["i"] for e in collector.events()}
    (dead,) = _deadletters(client)
    assert dead["status"] == 400 and "poison" in str(dead["reason"])
    assert dead["event"]["properties"] == {"i": 37}  # type: ignore[index]
    assert client.stats().sender.dropped == {"rejected": 1}


def test_oversize_batch_is_split(client_factory, collector: Collector) -> None:
    """413 for a large body: the sender splits the batch and delivers every event."""
    collector.set_faults(Faults(max_body_bytes=6_000))
    client = client_factory(batch_size=100, flush_interval=30)
    for i in range(100):
        client.track("E", user_id="u", properties={"i": i, "pad": "p" * 100})
    assert client.flush(timeout=30)
    assert len(_unique(collector)) == 100
    assert any(r.status == 413 for r in collector.requests())
    assert not client.stats().sender.dropped


def test_auth_failure_pauses_and_keeps_the_data(client_factory, collector: Collector) -> None:
    """401: nothing is dropped, the failure is counted; a fixed key delivers everything."""
    collector.set_faults(Faults(status=401))
    client = client_factory(retry_base=0.05, retry_cap=0.2)
    for i in range(20):
        client.track("E", user_id="u", properties={"i": i})
    assert not client.flush(timeout=1.0)
    stats = client.stats().sender
    assert stats.incidents.get("auth_failures", 0) >= 1 and not stats.dropped
    collector.set_faults(Faults())
    assert client.flush(timeout=20)
    assert len(_unique(collector)) == 20


def test_a_batch_stored_but_answered_too_late_is_sent_again(client_factory, collector: Collector) -> None:
    """An endpoint that stores a batch but answers after request_timeout receives it
    again (at least once, as the README says), with the same messageIds to dedupe on."""
    collector.set_faults(Faults(delay=0.6))
    client = client_factory(request_timeout=0.2, **FAST_RETRY)
    for i in range(3):
        client.track("slow", user_id="u", properties={"i": i})
    assert wait_for(lambda: len(collector.message_ids()) >= 6, timeout=20)
    collector.set_faults(Faults())
    assert client.flush(timeout=20)
    ids = collector.message_ids()
    assert len(set(ids)) == 3 and all(ids.count(m) >= 2 for m in set(ids))


# --- a hanging endpoint --------------------------------------------------------------------

def test_hanging_endpoint_never_slows_the_app_and_the_sender_meets_its_deadline(
        collector: Collector, runtime_dir: str) -> None:
    """The collector accepts and never answers: an app exits as fast as without
    mpsender, the sender's shutdown meets its deadline, the events wait in the spool and
    the next sender delivers them."""
    collector.set_faults(Faults(hang=True))
    env = app_env(collector.url, runtime_dir, flush_interval=0.05, request_timeout=30,
                  shutdown_timeout=1.0, linger=60)
    check(run_app("import mpsender; mpsender.init()", env))
    with_mpsender = """
import time, mpsender
t = time.monotonic()
mpsender.init()
for i in range(100):
    mpsender.track("hang", user_id="u", properties={"i": i})
print(time.monotonic() - t)
"""
    without = """
import time, json
t = time.monotonic()
for i in range(100):
    json.dumps({"i": i})
print(time.monotonic() - t)
"""
    t0 = time.monotonic()
    inner = float(check(run_app(with_mpsender, env)))
    wall_with = time.monotonic() - t0
    t0 = time.monotonic()
    check(run_app(without, env))
    wall_without = time.monotonic() - t0
    assert inner < 0.5
    assert wall_with - wall_without < 1.0, (wall_with, wall_without)
    assert wait_for(lambda: any(r.status is None for r in collector.requests()), timeout=10)
    (pid,) = live_sender_pids(runtime_dir)
    stopped_at = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
                    timeout=5)
    assert time.monotonic() - stopped_at < 2.5  # shutdown_timeout 1 s, not request_timeout 30 s
    assert collector.count() == 0
    collector.set_faults(Faults())
    check(run_app("import mpsender, sys; mpsender.init(); sys.exit(0 if mpsender.get_client().start(10) else 1)", env))
    assert collector.wait_for(lambda c: len(set(c.message_ids())) >= 100, timeout=30)
    assert len(_unique(collector)) == 100


def test_hanging_request_shows_in_stats_and_status_while_it_hangs(
        client_factory, collector: Collector, runtime_dir: str) -> None:
    """A request the endpoint holds shows in stats() and `mpsender status` while it hangs:
    how long it has waited and how many events it carries, before request_timeout."""
    collector.set_faults(Faults(hang=True))
    client = client_factory(request_timeout=60)
    assert client.start(wait=10)
    for i in range(10):
        client.track("hang", user_id="u", properties={"i": i})
    assert wait_for(lambda: getattr(client.stats().sender, "in_flight_events", None) == 10,
                    timeout=10), client.stats()
    stats = client.stats().sender
    assert stats.retries == 0 and stats.last_error is None  # nothing else says it hangs
    assert wait_for(lambda: client.stats().sender.in_flight_for >= 2.5, timeout=10)
    status = subprocess.run([sys.executable, "-m", "mpsender", "status", "--runtime-dir", runtime_dir],
                            capture_output=True, text=True, timeout=30, env=app_env(collector.url, runtime_dir))
    assert status.returncode == 0, status.stderr
    assert re.search(r"request in flight for [\d.]+s \(10 event\(s\)\)", status.stdout), status.stdout
    report = json.loads(subprocess.run(
        [sys.executable, "-m", "mpsender", "status", "--json", "--runtime-dir", runtime_dir],
        capture_output=True, text=True, timeout=30, env=app_env(collector.url, runtime_dir)).stdout)[0]
    assert report["in_flight_events"] == 10 and report["in_flight_for"] >= 2.5


# --- a killed sender ------------------------------------------------------------------------

def test_sender_sigkilled_five_times_under_load_loses_nothing(collector: Collector, runtime_dir: str,
                                                              tmp_path: Path) -> None:
    """SIGKILL the sender 5 times at random moments while 4 processes track: every event
    arrives; duplicates only for batches in flight at a kill; one sender at a time."""
    batch_size = 50
    stop_file = tmp_path / "stop"
    env = app_env(collector.url, runtime_dir, flush_interval=0.05, batch_size=batch_size, linger=30)
    check(run_app("import mpsender; mpsender.init()", env))
    code = """
import os, sys, time, mpsender
n, stop = int(sys.argv[1]), sys.argv[2]
i = 0
while not os.path.exists(stop):   # track until the test has made its kills
    for _ in range(20):
        mpsender.track("kill", user_id=f"p{n}", properties={"n": n, "i": i})
        i += 1
    time.sleep(0.01)  # about 2k events/s per process: load, not a flood
ok = mpsender.flush(60)
print(i if ok else -1)
"""
    procs = [subprocess.Popen([sys.executable, "-c", code, str(n), str(stop_file)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in range(4)]
    rng = random.Random(1234)
    killed: list[int] = []
    try:
        for _ in range(5):
            assert wait_for(lambda: live_sender_pids(runtime_dir) - set(killed), timeout=15), "no new sender"
            pids = live_sender_pids(runtime_dir) - set(killed)
            assert len(pids) == 1, pids  # never two senders at once
            time.sleep(rng.uniform(0.05, 0.4))  # a random moment, not a wait for anything
            pid = pids.pop()
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        stop_file.write_text("")
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        stop_file.write_text("")
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    tracked = 0
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0 and int(out) > 0, (out, err)
        tracked += int(out)
    ids = collector.message_ids()
    assert len(set(ids)) == tracked
    per_process = {}
    for e in collector.events():
        per_process.setdefault(e["properties"]["n"], set()).add(e["properties"]["i"])
    assert all(per_process[n] == set(range(len(per_process[n]))) for n in range(4))  # no gaps
    assert len(ids) - tracked <= 5 * batch_size
    assert len(killed) == 5


def test_replay_skips_garbage_and_counts_it(client_factory, collector: Collector, runtime_dir: str) -> None:
    """A spool file left by a dead process, with garbage in it: the rest is replayed and
    the corruption counted."""
    opts = Options(write_key="test-key", endpoint=collector.url, runtime_dir=runtime_dir)
    paths = paths_for(opts)
    paths.ensure()
    records = [pack({"t": "track", "e": "replayed", "u": "u", "m": os.urandom(16), "ts": time.time(),
                     "p": {"i": i}}) for i in range(30)]
    data = b"".join(frame(r) for r in records[:10]) + b"\x00\x01garbage\xfe" * 5 + \
        b"".join(frame(r) for r in records[10:]) + b"\xffgarbage at the end"
    (paths.spool / "99999-deadbeef-0.wal").write_bytes(data)
    client = client_factory()
    client.start(wait=10)
    assert collector.wait_for(lambda c: c.count() >= 30, timeout=20)
    assert sorted(e["properties"]["i"] for e in collector.events()) == list(range(30))
    assert wait_for(lambda: client.stats().sender.dropped.get("corrupt") == 2, timeout=10), client.stats()
    assert wait_for(lambda: not (paths.spool / "99999-deadbeef-0.wal").exists(), timeout=10)


def _wal_of(client: mpsender.Client) -> Path:
    (wal,) = client.paths.spool.glob("*.wal")
    return wal


def test_truncated_spool_file_is_read_again_and_the_loss_counted(
        client_factory, collector: Collector, runtime_dir: str) -> None:
    """A .wal truncated under the sender while its events wait for the endpoint: what the
    sender had read and what the app tracks after it are delivered, flush() is True only
    once they are, and the loss is counted as 'truncated' in stats(), state.json and status."""
    collector.set_faults(Faults(status=503))
    client = client_factory(batch_size=50, **FAST_RETRY)
    assert client.start(wait=10)
    for i in range(2000):  # past one read chunk: some is not read when the file is cut
        client.track("before", user_id="u", properties={"i": i, "pad": "x" * 200})
    assert collector.wait_for(lambda c: len(c.requests()) >= 2, timeout=10)  # read, and held
    os.truncate(_wal_of(client), 0)
    for i in range(100):
        client.track("after", user_id="u", properties={"i": i})
    assert wait_for(lambda: client.stats().sender.dropped.get("truncated") == 1, timeout=10), client.stats()
    collector.set_faults(Faults())
    assert client.flush(timeout=30)
    after = {e["properties"]["i"] for e in collector.events() if e["event"] == "after"}
    assert after == set(range(100))  # nothing tracked after the truncation is missing
    before = {e["properties"]["i"] for e in collector.events() if e["event"] == "before"}
    assert before and before <= set(range(2000))  # what had been read was not dropped
    sender = client.stats().sender
    assert sender.dropped == {"truncated": 1}, sender
    state = client.paths.spool / "state.json"
    assert wait_for(lambda: json.loads(state.read_text())["dropped"] == {"truncated": 1}, timeout=10)
    status = subprocess.run([sys.executable, "-m", "mpsender", "status", "--json", "--runtime-dir", runtime_dir],
                            capture_output=True, text=True, timeout=30, cwd=str(REPO),
                            env=app_env(collector.url, runtime_dir))
    assert json.loads(status.stdout)[0]["dropped"] == {"truncated": 1}, status
    client.track("later", user_id="u")
    assert client.flush(timeout=10) and "later" in {e["event"] for e in collector.events()}


def test_replaced_spool_file_is_drained_then_the_new_one_read(
        client_factory, collector: Collector) -> None:
    """A .wal renamed over under the sender: the writer's events, before and after, come
    from the file it holds, then the file now at that path is read from its start (not
    deleted); counted as the incident spool_replaced, nothing dropped."""
    client = client_factory()
    assert client.start(wait=10)
    for i in range(20):
        client.track("before", user_id="u", properties={"i": i})
    assert client.flush(timeout=10)
    wal = _wal_of(client)
    other = wal.with_name(".replacement.tmp")
    other.write_bytes(b"".join(frame(pack({"t": "track", "e": "replacement", "u": "u", "m": os.urandom(16),
                                           "ts": time.time(), "p": {"i": i}})) for i in range(5)))
    os.replace(other, wal)
    for i in range(20):
        client.track("after", user_id="u", properties={"i": i})
    assert client.flush(timeout=10)
    assert wait_for(lambda: client.stats().sender.incidents.get("spool_replaced") == 1, timeout=10)
    assert not client.stats().sender.dropped
    assert client.shutdown(timeout=10)  # the writer lets go of the file it holds
    assert collector.wait_for(lambda c: c.count() >= 45, timeout=15), [e["event"] for e in collector.events()]
    by_name: dict[str, set[int]] = {}
    for e in collector.events():
        by_name.setdefault(e["event"], set()).add(e["properties"]["i"])
    assert by_name == {"before": set(range(20)), "after": set(range(20)), "replacement": set(range(5))}
    assert wait_for(lambda: not wal.exists(), timeout=10)  # delivered, then deleted as usual


# --- bounds, expiry, persisted counters -------------------------------------------------------

def test_spool_bound_drops_oldest_and_counts_it(client_factory, collector: Collector, tmp_path: Path) -> None:
    """With the endpoint down and max_spool_bytes small, the oldest events are dropped and
    counted as spool_full; delivered + dropped is what was tracked."""
    client = client_factory(max_spool_bytes=20_000, batch_size=50, **FAST_RETRY)
    client.start(wait=10)
    port = collector.port
    collector.stop()
    for i in range(1000):
        client.track("bounded", user_id="u", properties={"i": i, "pad": "x" * 60})
    assert wait_for(lambda: client.stats().sender.dropped.get("spool_full", 0) > 0, timeout=15)
    back = Collector(tmp_path / "back.db", port=port).start()
    try:
        assert client.flush(timeout=30)
        delivered = {e["properties"]["i"] for e in back.events()}
        dropped = client.stats().sender.dropped["spool_full"]
        assert len(delivered) + dropped == 1000, (len(delivered), dropped)
        assert 999 in delivered  # the newest survive: the oldest were dropped
    finally:
        back.stop()


def test_a_warning_repeated_every_second_is_logged_once(client_factory, collector: Collector) -> None:
    """The endpoint down and the spool over its bound in three housekeeping passes in a
    row: sender.log has the spool_full warning once, the counter has all three drops."""
    client = client_factory(max_spool_bytes=20_000, batch_size=10, **FAST_RETRY)
    assert client.start(wait=10)
    collector.stop()
    dropped = 0
    for _ in range(3):  # each round needs a new pass of housekeeping to drop what it added
        for i in range(300):
            client.track("bounded", user_id="u", properties={"i": i, "pad": "x" * 60})
        before = dropped
        assert wait_for(lambda before=before: client.stats().sender.dropped.get("spool_full", 0) > before,
                        timeout=10)
        dropped = client.stats().sender.dropped["spool_full"]
    log = client.paths.log.read_text()
    assert log.count("spool over max_spool_bytes") == 1, log


def test_expired_events_are_dropped_and_the_count_survives_a_restart(
        client_factory, collector: Collector) -> None:
    """An event still undelivered max_event_age after track() wrote it is dropped as
    expired; the counter is persisted across sender restarts."""
    collector.set_faults(Faults(status=503))
    client = client_factory(max_event_age=0.3, **FAST_RETRY)
    client.track("old", user_id="u")
    assert wait_for(lambda: (client.stats().sender or _NO_DROPS).dropped == {"expired": 1}, timeout=20)
    collector.set_faults(Faults())
    client.track("new", user_id="u")
    assert client.flush(timeout=20)
    assert [e["event"] for e in collector.events()] == ["new"]
    first = client.stats().sender
    assert first is not None and first.dropped == {"expired": 1}
    assert client._sink.stop_sender(timeout=10)
    assert wait_for(lambda: not psutil.pid_exists(first.pid), timeout=10)
    client.start(wait=10)
    second = client.stats().sender
    assert second.pid != first.pid and second.dropped == {"expired": 1}
    assert second.uploaded == 1


def test_a_backfilled_timestamp_never_expires_the_event(client_factory, collector: Collector) -> None:
    """An event whose own timestamp is years old (a backfill) is delivered with that
    timestamp: its age counts from when track() wrote it, not from its timestamp."""
    client = client_factory(max_event_age=60.0)
    years_ago = time.time() - 5 * 365 * 86400
    client.track("backfilled", user_id="u", timestamp=years_ago)
    client.track("backfilled-dt", user_id="u",
                 timestamp=dt.datetime.fromtimestamp(years_ago - 86400, dt.timezone.utc))
    assert client.flush(timeout=20)
    events = collector.events()
    assert [e["event"] for e in events] == ["backfilled", "backfilled-dt"]
    assert events[0]["timestamp"] == format_timestamp(years_ago)
    assert events[1]["timestamp"] == format_timestamp(years_ago - 86400)
    assert (client.stats().sender or _NO_DROPS).dropped == {}


class _NoDrops:
    dropped: ClassVar[dict[str, int]] = {}


_NO_DROPS = _NoDrops()


# --- a full or unusable disk ------------------------------------------------------------------

_FULL_DISK_APP = """
import logging, resource, signal, sys, mpsender
logging.basicConfig(level=logging.WARNING)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # as if the disk were full
mpsender.init(start_timeout=float(sys.argv[1]))
for i in range(200):
    mpsender.track("full-disk", user_id="u", properties={"i": i})
ok = mpsender.flush(float(sys.argv[1]) or 0.5)
s = mpsender.stats(timeout=2).process
print(ok, s.sent_over_socket, dict(s.dropped))
"""


def test_full_disk_app_sends_over_the_socket(collector: Collector, runtime_dir: str) -> None:
    """An app that cannot write its spool file hands events over the socket; the sender
    delivers them from memory and counts spool_unavailable; the app warns once."""
    env = app_env(collector.url, runtime_dir, flush_interval=0.05, linger=30)
    check(run_app("import mpsender; mpsender.init()", env))  # sender started without the limit
    proc = run_app(_FULL_DISK_APP, env, args=["10"])
    out = check(proc)
    assert out.split()[:2] == ["True", "200"], out
    assert proc.stderr.count("WARNING:mpsender._sink") == 1, proc.stderr  # logged once, not per event
    assert len(_unique(collector)) == 200
    code = "import mpsender; print(mpsender.init().stats().sender.incidents.get('spool_unavailable'))"
    assert check(run_app(code, env)).strip() == "200"


def test_full_disk_and_no_sender_drops_and_counts(collector: Collector, runtime_dir: str) -> None:
    """With nowhere to write and no sender to take it, an event is dropped and counted
    as spill_failed; track() still returns."""
    env = app_env(collector.url, runtime_dir, python="/nonexistent/python")
    out = check(run_app(_FULL_DISK_APP, env, args=["0"]))
    assert out.strip() == "False 0 {'spill_failed': 200}", out


def test_spill_failed_reaches_the_sender_and_status(collector: Collector, runtime_dir: str) -> None:
    """Events an app dropped with no disk and no sender are reported when it connects to
    a sender: counted once in the sender's dropped, state.json and `mpsender status`."""
    env = app_env(collector.url, runtime_dir, python="/nonexistent/python")
    code = """
import resource, signal, sys, mpsender
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))      # the disk refuses every write
client = mpsender.init(start_timeout=0)
for i in range(200):
    mpsender.track("full-disk", user_id="u", properties={"i": i})
print(dict(client.stats(timeout=0).process.dropped), flush=True)
sys.stdin.readline()                                   # the test has started a sender
first = client.stats(timeout=5).sender
client.shutdown(timeout=0)                              # reconnect: nothing is reported twice
second = client.stats(timeout=5).sender
print(dict(first.dropped), dict(second.dropped))
"""
    app = subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(REPO))
    try:
        assert app.stdout is not None and app.stdin is not None
        assert app.stdout.readline().strip() == "{'spill_failed': 200}"
        check(run_app("import mpsender; mpsender.init()", app_env(collector.url, runtime_dir, linger=30)))
        out, err = app.communicate("go\n", timeout=30)
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()
    assert app.returncode == 0, err
    assert out.strip() == "{'spill_failed': 200} {'spill_failed': 200}", (out, err)
    state = Path(next(iter(sender_infos(runtime_dir)))["spool"]) / "state.json"  # type: ignore[arg-type]
    assert json.loads(state.read_text())["dropped"] == {"spill_failed": 200}
    status = subprocess.run([sys.executable, "-m", "mpsender", "status", "--json", "--runtime-dir", runtime_dir],
                            capture_output=True, text=True, timeout=30, env=env, cwd=str(REPO))
    assert json.loads(status.stdout)[0]["dropped"] == {"spill_failed": 200}, status
    # an older client's 4-element HELLO, and a report that is not {reason: count}, count nothing
    with socket.socket(socket.AF_UNIX, sender_socket_kind()) as sock:
        sock.settimeout(10)
        sock.connect(str(next(iter(sender_infos(runtime_dir)))["socket"]))
        send_message(sock, msgpack.packb([HELLO, 1, [], "0.0.1"]))
        send_message(sock, msgpack.packb([HELLO, 1, [], "0.0.1", {"spill_failed": -5, "x": "y", "": 3}]))
        send_message(sock, msgpack.packb([STATS, 7]))
        kind, req, answer = msgpack.unpackb(recv_message(sock))
    assert (kind, req) == (REPLY, 7) and answer["dropped"] == {"spill_failed": 200}


def test_unusable_directories_are_named(tmp_path: Path, collector: Collector) -> None:
    """init() with a runtime or spool directory it cannot use names the path and why."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(mpsender.ConfigurationError, match=r"a-file/rt.*Not a directory"):
        mpsender.Client(write_key="k", endpoint=collector.url, runtime_dir=str(blocker / "rt"))
    with pytest.raises(mpsender.ConfigurationError, match=r"a-file/spool.*Not a directory"):
        mpsender.Client(write_key="k", endpoint=collector.url, runtime_dir=str(tmp_path / "rt"),
                        spool_dir=str(blocker / "spool"))


# --- security -----------------------------------------------------------------------------------

def test_private_files_and_no_key_leaks(client_factory, collector: Collector) -> None:
    """Directories are 0700, spool files 0600, and the write key appears in no argv,
    environment, log, spool or dead-letter file (only the 0600 client config holds it)."""
    key = "SECRET-write-key-4242"
    collector.set_faults(Faults(reject_event="poison"))
    client = client_factory(write_key=key)
    client.track("poison", user_id="u")
    client.track("fine", user_id="u")
    assert client.flush(timeout=20)
    pid = client.stats().sender.pid
    proc = psutil.Process(pid)
    assert not any(key in arg for arg in proc.cmdline())
    assert not any(key in value for value in proc.environ().values())
    paths = client.paths
    for d in (paths.base, paths.dest, paths.spool):
        assert d.stat().st_mode & 0o777 == 0o700, d
    checked = 0
    for f in paths.dest.rglob("*"):
        if f.is_file() and f.name != "client.msgpack":
            assert key.encode() not in f.read_bytes(), f
            if f.parent == paths.spool:
                assert f.stat().st_mode & 0o777 == 0o600, f
            checked += 1
    assert checked >= 5 and (paths.spool / "deadletter.jsonl").exists()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a child as another uid")
def test_connection_from_another_uid_is_refused(client_factory) -> None:
    """A process of another user that reaches the socket is refused (its peer credentials)."""
    client = client_factory()
    assert client.start(wait=10)
    paths = client.paths
    for d in (paths.base, paths.dest):
        os.chmod(d, 0o711)  # let the other uid reach the socket, to test the check behind it
    os.chmod(paths.socket, 0o777)
    code = f"""
import os, socket
os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_UNIX, {sender_socket_kind()})
s.connect({str(paths.socket)!r})
s.settimeout(10)
print("refused" if s.recv(100) == b"" else "accepted")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "refused", out.stderr
    assert client.stats().sender.incidents.get("refused_connections") == 1


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls_is_verified_by_default(client_factory, tmp_path: Path) -> None:
    """An HTTPS endpoint with a self-signed certificate is refused by default (events kept,
    the error reported); verify_tls=False delivers to it."""
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    received: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass  # quiet

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{server.server_address[1]}"
    try:
        strict = client_factory(endpoint=url, retry_base=0.05, retry_cap=0.2)
        strict.track("E", user_id="u")
        assert not strict.flush(timeout=1.5)
        stats = strict.stats().sender
        assert "CERTIFICATE_VERIFY_FAILED" in str(stats.last_error) or "certificate" in str(stats.last_error).lower()
        assert not received and not stats.dropped
        relaxed = client_factory(endpoint=url, write_key="other-key", verify_tls=False)
        relaxed.track("E", user_id="u")
        assert relaxed.flush(timeout=20)
        assert len(received) == 1
    finally:
        server.shutdown()
        server.server_close()
