"""The core, end to end: any process of an app tracks, ONE sender per host delivers.

Application code runs in real subprocesses (and their os.fork / multiprocessing
children); the collector is a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import signal
import time
import uuid
from pathlib import Path

import pytest
from support import app_env, check, live_sender_pids, recv_message, run_app, send_message, sender_socket_kind, wait_for

import mpsender
from mpsender._collector import Collector

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _unique(collector: Collector) -> set[str]:
    return set(collector.message_ids())


def _script(tmp_path: Path, name: str, code: str) -> str:
    path = tmp_path / name
    path.write_text(code)
    return str(path)


def _run_file(path: str, env: dict[str, str], timeout: float = 90.0) -> str:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, path], env=env, capture_output=True, text=True, timeout=timeout)
    return check(proc)


def test_events_from_the_process_itself_arrive_exactly_once(client_factory, collector: Collector) -> None:
    """Events tracked by the calling process all arrive, once each, and flush() says so."""
    client = client_factory()
    for i in range(250):
        client.track("Order Completed", user_id=f"u{i % 7}", properties={"i": i, "total": 9.5})
    assert client.flush(timeout=20)
    ids = collector.message_ids()
    assert len(ids) == 250 and len(set(ids)) == 250
    assert sorted(e["properties"]["i"] for e in collector.events()) == list(range(250))


def test_flush_is_true_only_once_the_collector_has_the_events(client_factory, collector: Collector) -> None:
    """When flush() returns True, the collector already stored every event."""
    client = client_factory(flush_interval=5.0)  # no age-based upload would come in time
    for i in range(30):
        client.track("E", user_id="u", properties={"i": i})
    assert client.flush(timeout=10)
    assert collector.count() == 30  # read at once: no waiting after flush


def test_flush_with_the_collector_down_returns_false_within_its_timeout(
        client_factory, collector: Collector) -> None:
    """With the endpoint unreachable, flush() gives up at its timeout with False."""
    client = client_factory(retry_base=0.05, retry_cap=0.2)
    client.start(wait=10)
    collector.stop()
    client.track("E", user_id="u")
    started = time.monotonic()
    assert client.flush(timeout=1.0) is False
    assert time.monotonic() - started < 2.0


def test_flush_with_nothing_tracked_is_true_at_once(client_factory) -> None:
    """A process that tracked nothing has nothing to wait for."""
    client = client_factory()
    started = time.monotonic()
    assert client.flush(timeout=5)
    assert time.monotonic() - started < 0.5


def test_raw_fork_children_deliver_without_init(tmp_path: Path, collector: Collector, runtime_dir: str) -> None:
    """4 children of a raw os.fork() after init() in the parent deliver, each event once."""
    code = """
import os, mpsender
mpsender.init(flush_interval=0.05)
mpsender.track("parent-before-fork", user_id="p")
pids = []
for n in range(4):
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            for i in range(100):
                mpsender.track("child", user_id=f"c{n}", properties={"n": n, "i": i})
        except BaseException:
            code = 1
        os._exit(code)  # no flush, no atexit: the events are already safe
    pids.append(pid)
for pid in pids:
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
mpsender.track("parent-after-fork", user_id="p")
assert mpsender.flush(20), "flush failed"
print("ok")
"""
    out = _run_file(_script(tmp_path, "app.py", code), app_env(collector.url, runtime_dir))
    assert out.strip() == "ok"
    assert collector.wait_for(lambda c: len(set(c.message_ids())) >= 402, timeout=20)
    ids = collector.message_ids()
    assert len(ids) == 402 and len(set(ids)) == 402
    per_child = {}
    for e in collector.events():
        if e["event"] == "child":
            per_child.setdefault(e["properties"]["n"], set()).add(e["properties"]["i"])
    assert per_child == {n: set(range(100)) for n in range(4)}


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_multiprocessing_children_deliver_without_init(
        method: str, tmp_path: Path, collector: Collector, runtime_dir: str) -> None:
    """4 multiprocessing children (fork, spawn, forkserver) that never call init() deliver."""
    code = f"""
import multiprocessing as mp, mpsender

def work(n):
    for i in range(50):
        mpsender.track("mp-child", user_id=f"c{{n}}", properties={{"n": n, "i": i}})
    assert mpsender.flush(20)

if __name__ == "__main__":
    mpsender.init(flush_interval=0.05)
    ctx = mp.get_context("{method}")
    procs = [ctx.Process(target=work, args=(n,)) for n in range(4)]
    for p in procs: p.start()
    for p in procs: p.join(60)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    print("ok")
"""
    out = _run_file(_script(tmp_path, "app.py", code), app_env(collector.url, runtime_dir))
    assert out.strip() == "ok"
    ids = collector.message_ids()  # every child flushed: no waiting needed
    assert len(ids) == 200 and len(set(ids)) == 200
    assert len(live_sender_pids(runtime_dir)) == 1


def test_unrelated_processes_share_one_sender_per_destination(
        collector: Collector, runtime_dir: str, tmp_path: Path) -> None:
    """Two unrelated processes with the same destination meet one sender; another
    destination gets its own."""
    code = """
import os, sys, mpsender
c = mpsender.init(flush_interval=0.05, linger=30)
mpsender.track("hello", user_id=sys.argv[1])
assert mpsender.flush(20)
print(mpsender.stats().sender.pid)
"""
    env = app_env(collector.url, runtime_dir)
    first = int(check(run_app(code, env, args=["a"])).strip())
    second = int(check(run_app(code, env, args=["b"])).strip())
    assert first == second
    other = int(check(run_app(code, {**env, "MPSENDER_WRITE_KEY": "another-key"}, args=["c"])).strip())
    assert other != first
    assert live_sender_pids(runtime_dir) == {first, other}
    assert collector.count() == 3


def test_sigkilled_app_process_loses_nothing(collector: Collector, runtime_dir: str) -> None:
    """An app SIGKILLed right after track() returns: its events still arrive."""
    code = """
import os, signal, mpsender
mpsender.init(flush_interval=0.05)
for i in range(500):
    mpsender.track("before-kill", user_id="k", properties={"i": i})
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = run_app(code, app_env(collector.url, runtime_dir))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert collector.wait_for(lambda c: len(set(c.message_ids())) >= 500, timeout=20)
    assert sorted(e["properties"]["i"] for e in collector.events()) == list(range(500))


def test_an_exiting_app_does_not_wait_for_the_flush_interval(collector: Collector, runtime_dir: str) -> None:
    """An application that exits (here without flush()) leaves a partial batch behind:
    the sender sends it when the connection closes, not flush_interval (60 s) later."""
    code = """
import mpsender
mpsender.init(flush_interval=60, batch_size=1000)
assert mpsender.stats(timeout=5).sender is not None  # connected: the sender will see it leave
for i in range(7):
    mpsender.track("last-words", user_id="x", properties={"i": i})
"""
    check(run_app(code, app_env(collector.url, runtime_dir)))
    assert collector.wait_for(lambda c: len(set(c.message_ids())) >= 7, timeout=15)
    assert sorted(e["properties"]["i"] for e in collector.events()) == list(range(7))


def test_sender_lingers_then_exits_cleanly_and_a_new_one_starts(
        collector: Collector, runtime_dir: str) -> None:
    """After the last client leaves and the linger passes the sender is gone, leaving
    nothing that stops the next start; a new init() starts a fresh one."""
    code = """
import mpsender
mpsender.init(flush_interval=0.05, linger=0.5)
mpsender.track("x", user_id="u")
assert mpsender.flush(20)
print(mpsender.stats().sender.pid)
"""
    env = app_env(collector.url, runtime_dir)
    first = int(check(run_app(code, env)).strip())
    assert wait_for(lambda: not live_sender_pids(runtime_dir), timeout=20)
    (dest,) = [p for p in Path(runtime_dir).iterdir() if p.is_dir()]
    assert not (dest / "sender.sock").exists()
    assert not (dest / "sender.json").exists()
    fd = os.open(dest / "sender.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: no one holds it
    finally:
        os.close(fd)
    second = int(check(run_app(code, env)).strip())
    assert second != first
    assert collector.count() == 2
    assert not list((dest / "spool").glob("*.wal")) or wait_for(
        lambda: not list((dest / "spool").glob("*.wal")), timeout=10)


def test_payload_matches_the_segment_http_tracking_api(client_factory, collector: Collector, tmp_path: Path) -> None:
    """Every call type arrives in Segment's /v1/batch shape: names, types, Basic auth, gzip."""
    client = client_factory(write_key="wk-123")
    client.track("Signed Up", user_id="u1", properties={"plan": "pro"}, context={"ip": "1.2.3.4"})
    client.identify("u1", traits={"email": "a@example.com"})
    client.group("g1", user_id="u1", traits={"name": "Acme"})
    client.alias("anon-1", user_id="u1")
    client.page("Home", category="Docs", anonymous_id="a1", properties={"url": "/"})
    client.screen("Settings", user_id="u1", properties={"tab": 2})
    assert client.flush(timeout=20)
    (request,) = [r for r in collector.requests() if r.events]
    assert request.method == "POST" and request.path == "/v1/batch"
    assert request.gzip and request.headers["content-encoding"] == "gzip"
    assert request.headers["authorization"] == "Basic " + base64.b64encode(b"wk-123:").decode()
    assert request.headers["content-type"].startswith("application/json")
    events = {e["type"]: e for e in collector.events()}
    assert set(events) == {"track", "identify", "group", "alias", "page", "screen"}
    for e in events.values():
        uuid.UUID(e["messageId"])
        assert ISO_MS.match(e["timestamp"]), e["timestamp"]
        assert e["context"]["library"] == {"name": "mpsender", "version": mpsender.__version__}
    t = events["track"]
    assert (t["event"], t["userId"], t["properties"], t["context"]["ip"]) == ("Signed Up", "u1", {"plan": "pro"}, "1.2.3.4")
    assert events["identify"]["traits"] == {"email": "a@example.com"}
    assert (events["group"]["groupId"], events["group"]["traits"]) == ("g1", {"name": "Acme"})
    assert (events["alias"]["previousId"], events["alias"]["userId"]) == ("anon-1", "u1")
    p = events["page"]
    assert (p["name"], p["category"], p["anonymousId"], p["properties"]) == ("Home", "Docs", "a1", {"url": "/"})
    assert (events["screen"]["name"], events["screen"]["properties"]) == ("Settings", {"tab": 2})
    sent_at = {row["sent_at"] for row in _stored_rows(tmp_path / "events.db")}
    assert len(sent_at) == 1 and ISO_MS.match(str(sent_at.pop()))


def _stored_rows(db_path: Path) -> list[dict[str, object]]:
    import sqlite3

    db = sqlite3.connect(db_path)
    try:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("select * from events")]
    finally:
        db.close()


def test_bad_input_is_refused_with_a_clear_error_and_counted(client_factory, collector: Collector) -> None:
    """Bad calls raise at once, naming what is wrong; what was sent before still arrives."""
    import datetime
    import decimal

    client = client_factory()
    client.track("good", user_id="u", properties={
        "when": datetime.datetime(2026, 1, 2, 3, 4, 5), "price": decimal.Decimal("1.5"),
        "id": uuid.UUID(int=1), "tags": {"a"}, "pair": (1, 2),
    })
    with pytest.raises(TypeError, match=r"properties\.cart\[2\]\.price: value of type object"):
        client.track("bad", user_id="u", properties={"cart": [{}, {}, {"price": object()}]})
    # packed, or as its JSON when the sender reads wire records (_wire_records): either way at the call
    with pytest.raises(ValueError, match=r"event is \d+ bytes (packed|as JSON), over the limit of 32000 bytes"):
        client.track("big", user_id="u", properties={"blob": "x" * 40_000})
    with pytest.raises(TypeError, match="event must be a str, not int"):
        client.track(42, user_id="u")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="event must not be empty"):
        client.track("", user_id="u")
    with pytest.raises(ValueError, match="one of user_id or anonymous_id is required"):
        client.track("no-id")
    assert client.flush(timeout=20)
    (event,) = collector.events()
    assert event["properties"] == {"when": "2026-01-02T03:04:05+00:00", "price": 1.5,
                                   "id": str(uuid.UUID(int=1)), "tags": ["a"], "pair": [1, 2]}
    stats = client.stats()
    assert stats.process.rejected == 5 and stats.process.tracked == 1


def test_status_polling_does_not_keep_an_idle_sender_alive(collector: Collector, runtime_dir: str) -> None:
    """Connections that only ask for stats (a monitor, `mpsender status --watch`) do not
    count as clients: the sender still exits after its linger."""
    import socket as _socket

    import msgpack

    from mpsender._protocol import STATS

    env = app_env(collector.url, runtime_dir, flush_interval=0.05, linger=1.0)
    check(run_app("import mpsender; mpsender.init(); mpsender.track('x', user_id='u'); mpsender.flush(10)", env))
    (pid,) = live_sender_pids(runtime_dir)
    (sock_path,) = Path(runtime_dir).glob("*/sender.sock")

    def poll_once() -> bool:
        s = _socket.socket(_socket.AF_UNIX, sender_socket_kind())
        try:
            s.connect(str(sock_path))
            send_message(s, msgpack.packb([STATS, 1]))
            s.settimeout(2)
            return bool(recv_message(s))
        except OSError:
            return False  # gone: what we wait for
        finally:
            s.close()

    started = time.monotonic()
    assert wait_for(lambda: not poll_once() and pid not in live_sender_pids(runtime_dir), timeout=10)
    assert time.monotonic() - started < 5


def test_threads_of_a_fork_child_without_at_fork_hooks_lose_nothing(collector: Collector, runtime_dir: str) -> None:
    """A child forked without Python's at-fork hooks (uWSGI's workers, a C extension's
    fork()) whose 8 threads all track at once: the pid check lets one thread reset the
    client and the others wait for it; every event of every thread arrives, once."""
    code = """
import ctypes, json, os, sys, threading
import mpsender
mpsender.init()
mpsender.track("parent", user_id="p")
assert mpsender.flush(timeout=20)
libc = ctypes.CDLL(None, use_errno=True)
children = []
for round_ in range(4):
    pid = libc.fork()  # no at-fork hooks: the child finds out by its pid
    if pid == 0:
        barrier = threading.Barrier(8)
        def work(t):
            barrier.wait()
            for i in range(25):
                mpsender.track("child", user_id="c", properties={"round": round_, "thread": t, "i": i})
        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        os._exit(0 if mpsender.flush(timeout=20) else 3)
    children.append(pid)
codes = [os.waitpid(pid, 0)[1] for pid in children]
print(json.dumps(codes))
"""
    env = app_env(collector.url, runtime_dir, flush_interval=0.05, linger=2.0)
    assert json.loads(check(run_app(code, env, timeout=120)).strip().splitlines()[-1]) == [0, 0, 0, 0]
    events = [e for e in collector.events() if e["event"] == "child"]
    got = sorted((e["properties"]["round"], e["properties"]["thread"], e["properties"]["i"]) for e in events)
    assert got == [(r, t, i) for r in range(4) for t in range(8) for i in range(25)]
    assert len(collector.message_ids()) == len(set(collector.message_ids()))
