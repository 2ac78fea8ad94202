"""Signal handlers that call mpsender, and threads that track while another waits.

Apps flush from SIGTERM handlers (gunicorn, Celery, Kubernetes), and a handler runs in
the thread it interrupted, perhaps in the middle of an mpsender call. Each test runs the
application in a real subprocess, so that a deadlock shows as a timeout here rather
than a hung suite. The signal is real (``signal.raise_signal`` or ``setitimer``); where
a test must land it inside one particular call, a profile hook raises it when that call
makes a given C call, the way a timer would by chance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from support import app_env, check, run_app, wait_for

import mpsender
from mpsender._collector import Collector

# The app: tracks from its main thread (and flushes halfway); SIGUSR1's handler tracks,
# flushes and asks for stats. argv: the C call and the function inside which it raises the signal, how
# many times, the number of events, their size, whether to hide the fast extra.
_APP = r"""
import json, signal, sys, decimal
c_name, inside = sys.argv[1], sys.argv[2]
times, count, size = (int(a) for a in sys.argv[3:6])
no_fast = sys.argv[6] == "1"
if no_fast:
    sys.modules["ormsgpack"] = None  # the msgpack packer, as without the fast extra
import mpsender

results = {"flush": [], "shutdown": [], "stats": 0, "raised": 0, "handled": 0}
busy = False

def handler(signum, frame):
    global busy
    busy = True
    try:
        n = results["handled"]
        results["handled"] += 1
        mpsender.track("from-handler", user_id="h", properties={"n": n, "price": decimal.Decimal("1.5")})
        results["flush"].append(mpsender.flush(timeout=10))
        if mpsender.stats(timeout=2).sender is not None:
            results["stats"] += 1
    finally:
        busy = False

def profile(frame, event, arg):
    if busy or results["raised"] >= times:
        return
    name = getattr(arg, "__name__", None) if event == "c_call" else frame.f_code.co_name
    if name == c_name and (event == "c_call" and frame.f_code.co_name in inside.split(",")
                           or event == "call" and inside == "-"):
        results["raised"] += 1
        signal.raise_signal(signal.SIGUSR1)

signal.signal(signal.SIGUSR1, handler)
sys.setprofile(profile)
client = mpsender.init()
for i in range(count):
    mpsender.track("main", user_id="m", properties={"i": i, "price": decimal.Decimal("2.5"), "pad": "x" * size})
    if i == count // 2:
        results["flush"].append(mpsender.flush(timeout=10))  # the main thread flushes too
sys.setprofile(None)
results["final_flush"] = mpsender.flush(timeout=20)
print(json.dumps(results))
"""

# (C call or Python function, inside which function, how many signals, events, event size)
CASES = {
    # the first write opens the write-ahead file under the setup lock
    "first write": ("flock", "_open_wal,<lambda>,open,lock", 1, 20, 10),
    # rotation (4 MiB) retires the file under the setup lock
    "rotation": ("fstat", "_retire,retire", 1, 200, 25_000),
    # the once-a-second check looks at the connection (under the setup lock, once)
    "health check": ("recv", "_alive,alive", 3, 20, 10),
    # connecting at init()
    "connect": ("connect", "_try_connect,_open_socket,connect", 2, 20, 10),
    # a flush waiting for its answer holds the control lock
    "flush": ("poll", "_wait_fd,_wait", 2, 20, 10),
}


def _run(collector: Collector, runtime_dir: str, case: tuple[str, str, int, int, int], *,
         no_fast: bool = False, flush: bool = True) -> dict[str, object]:
    c_name, inside, times, count, size = case
    env = app_env(collector.url, runtime_dir, flush_interval=0.05, linger=2.0,
                  max_message_bytes=100_000)
    code = _APP if flush else _APP.replace("mpsender.flush(timeout=10)", "True")
    proc = subprocess.run(
        [sys.executable, "-c", code, c_name, inside, str(times), str(count), str(size), str(int(no_fast))],
        env=env, capture_output=True, text=True, timeout=60,
    )
    results = json.loads(check(proc))
    assert results["raised"] >= 1, "the signal was never raised: the case no longer exercises the call"
    return results


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_a_handler_that_interrupts_an_mpsender_call_never_deadlocks(
        case: tuple[str, str, int, int, int], collector: Collector, runtime_dir: str) -> None:
    """A SIGUSR1 handler that tracks, flushes and asks for stats, run while the same
    thread is inside mpsender (first write, rotation, health check, connect, flush),
    returns; every event of both arrives once, and each flush said True."""
    results = _run(collector, runtime_dir, case)
    handled, count = results["handled"], case[3]
    assert handled == results["raised"]
    assert results["flush"] == [True] * (handled + 1) and results["final_flush"] is True
    assert results["stats"] == handled
    events = collector.events()
    assert len(collector.message_ids()) == len(set(collector.message_ids())) == count + handled
    assert sorted(e["properties"]["i"] for e in events if e["event"] == "main") == list(range(count))
    assert sorted(e["properties"]["n"] for e in events if e["event"] == "from-handler") == list(range(handled))


@pytest.mark.parametrize("no_fast", [True, False], ids=["msgpack", "fast"])
def test_a_handler_that_tracks_while_an_event_is_being_packed_corrupts_nothing(
        no_fast: bool, collector: Collector, runtime_dir: str) -> None:
    """A handler that tracks while the interrupted track() is inside the packer's
    ``default`` hook (a Decimal being converted) leaves both records whole: all arrive."""
    results = _run(collector, runtime_dir, ("convert", "-", 40, 100, 10), no_fast=no_fast, flush=False)
    handled = results["handled"]
    assert handled == 40
    events = collector.events()
    assert len(set(collector.message_ids())) == 100 + handled
    assert sorted(e["properties"]["i"] for e in events if e["event"] == "main") == list(range(100))
    assert all(e["properties"]["price"] in (1.5, 2.5) for e in events)


def test_a_timer_signal_that_tracks_and_flushes_during_a_busy_loop_loses_nothing(
        collector: Collector, runtime_dir: str) -> None:
    """A setitimer signal every millisecond whose handler tracks (and every 100th time
    flushes) during 3,000 track() calls without the fast extra: all events arrive once."""
    code = r"""
        import json, signal, sys, decimal
        sys.modules["ormsgpack"] = None
        import mpsender
        mpsender.init()
        state = {"handled": 0, "flushes": [], "busy": False}
        def handler(signum, frame):
            if state["busy"]:
                return  # a tick during a slow flush: nesting handlers would only grow the stack
            state["busy"] = True
            state["handled"] += 1
            mpsender.track("tick", user_id="h", properties={"n": state["handled"], "d": decimal.Decimal("1")})
            if state["handled"] % 100 == 0:
                state["flushes"].append(mpsender.flush(timeout=10))
            state["busy"] = False
        signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
        for i in range(3000):
            mpsender.track("main", user_id="m", properties={"i": i, "d": decimal.Decimal("2"), "t": {"x": [1, 2]}})
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        state["final"] = mpsender.flush(timeout=20)
        print(json.dumps(state))
    """
    env = app_env(collector.url, runtime_dir, flush_interval=0.05, linger=2.0)
    state = json.loads(check(run_app(code, env, timeout=90)))
    assert state["final"] is True and all(state["flushes"])
    ids = collector.message_ids()
    assert len(ids) == len(set(ids)) == 3000 + state["handled"]


def test_track_in_one_thread_never_waits_for_a_sender_another_thread_is_starting(
        tmp_path: Path, collector: Collector, runtime_dir: str) -> None:
    """While one thread waits for the sender it started to listen (held back here until
    the test lets it go), another thread's first track() returns at once; once the
    sender runs, the event is delivered."""
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    python = tmp_path / "python-held"
    python.write_text(f'#!/bin/sh\nread line < "{fifo}"\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    client = mpsender.Client(write_key="k", endpoint=collector.url, runtime_dir=runtime_dir,
                             python=str(python), flush_interval=0.05, linger=2.0)
    started: list[bool] = []
    starter = threading.Thread(target=lambda: started.append(client.start(wait=30)))
    starter.start()
    tracked = threading.Event()
    try:
        assert wait_for(lambda: list(Path(runtime_dir).glob("*/sender.log")), timeout=10)
        tracker = threading.Thread(target=lambda: (client.track("E", user_id="u"), tracked.set()))
        tracker.start()
        assert tracked.wait(10), "track() waited for the sender another thread is starting"
        assert not started  # the sender was still held back
    finally:
        with open(fifo, "w") as go:
            go.write("go\n")
        starter.join(30)
    assert started == [True]
    assert client.flush(timeout=20)
    assert [e["event"] for e in collector.events()] == ["E"]
    client.shutdown(timeout=5)
