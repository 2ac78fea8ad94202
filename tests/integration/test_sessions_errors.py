"""Sessions and uncaught exceptions in real processes, delivered to a real collector.

Each application is a fresh interpreter configured through ``MPSENDER_*``: it dies of an
uncaught exception (the hooks of ``capture_uncaught``), exits with a session still open,
or tracks from threads and asyncio tasks inside a session; the collector shows what
arrived. A dying process is compared with the same process without the hooks: its exit
code and the traceback it prints must not change.
"""

from __future__ import annotations

import signal
from collections import Counter
from typing import Any

import pytest
from support import app_env, check, run_app

from mpsender._collector import Collector

CRASH = """
import sys
import mpsender

def previous_hook(kind, value, tb):
    print("previous hook saw", kind.__name__, file=sys.stderr)
    sys.__excepthook__(kind, value, tb)

sys.excepthook = previous_hook
mpsender.init()
left_open = mpsender.session("left-open", user_id="u1")
left_open.__enter__()  # never left: the crash ends it

def charge():
    try:
        {}["card"]
    except KeyError as exc:
        raise ValueError("payment 42 failed") from exc

with mpsender.session("checkout"):
    mpsender.track("Checkout Started")
    try:
        charge()
    except ValueError:
        mpsender.track("Retrying")  # inside the handler: the block has not ended yet
        raise
"""


def by_event(collector: Collector, name: str) -> list[dict[str, Any]]:
    return [e for e in collector.events() if e.get("event") == name]


def ended(collector: Collector) -> dict[str, list[dict[str, Any]]]:
    """session id -> the properties of each Session Ended it got."""
    out: dict[str, list[dict[str, Any]]] = {}
    for e in by_event(collector, "Session Ended"):
        out.setdefault(e["properties"]["session_id"], []).append(e["properties"])
    return out


def test_an_uncaught_exception_sends_a_fatal_error_and_ends_the_sessions_fatal(
        collector: Collector, runtime_dir: str) -> None:
    """capture_uncaught: the crash gives $error severity fatal with its cause chain and the
    session it left, both sessions end ``fatal`` once, all delivered before the process has
    exited; the previous hook still runs, and exit code and output are as with mpsender off."""
    plain = run_app(CRASH, app_env(collector.url, runtime_dir, disabled=1))
    # a generous shutdown_timeout: the hook's flush must not give up on a loaded machine
    hooked = run_app(CRASH, app_env(collector.url, runtime_dir, flush_interval=0.05, linger=10,
                                    capture_uncaught=1, shutdown_timeout=30))
    assert (hooked.returncode, hooked.stderr, hooked.stdout) == (plain.returncode, plain.stderr, plain.stdout)
    assert hooked.returncode == 1
    assert "previous hook saw ValueError" in hooked.stderr and "payment 42 failed" in hooked.stderr
    # delivered while the process waited in the hook: no waiting here
    [error] = by_event(collector, "$error")
    props = error["properties"]
    assert (props["severity"], props["error_type"], props["error_message"]) == ("fatal", "ValueError",
                                                                               "payment 42 failed")
    assert [(c["type"], c["relation"]) for c in props["causes"]] == [("KeyError", "cause")]
    assert props["uncaught"] is True and props["session_id"] == "checkout"
    assert error["userId"] == "u1"  # the nested session took the open one's user
    sessions = ended(collector)
    assert {k: [p["outcome"] for p in v] for k, v in sessions.items()} == {"checkout": ["fatal"],
                                                                           "left-open": ["fatal"]}
    assert by_event(collector, "Retrying")[0]["properties"]["session_id"] == "checkout"


@pytest.mark.parametrize("raised", ["KeyboardInterrupt", "SystemExit(3)"])
def test_keyboard_interrupt_and_system_exit_are_not_errors(
        raised: str, collector: Collector, runtime_dir: str) -> None:
    """Neither sends a $error; the block's session ends ``error`` and the process exits as it would."""
    code = f"""
import mpsender
mpsender.init()
with mpsender.session("s", anonymous_id="a"):
    raise {raised}
"""
    plain = run_app(code, app_env(collector.url, runtime_dir, disabled=1))
    hooked = run_app(code, app_env(collector.url, runtime_dir, flush_interval=0.05, linger=10,
                                   capture_uncaught=1))
    assert (hooked.returncode, hooked.stderr) == (plain.returncode, plain.stderr)
    assert hooked.returncode == (3 if raised.startswith("SystemExit") else -signal.SIGINT)  # as Python exits on ^C
    assert collector.wait_for(lambda c: by_event(c, "Session Ended"), 20)
    assert [p["outcome"] for p in ended(collector)["s"]] == ["error"]
    assert not by_event(collector, "$error")


EXITS = {
    # how the process leaves with its session: (code, the outcome, sent by the exit path)
    "never-left": ("s = mpsender.session('s', anonymous_id='a'); s.__enter__()", "ok", True),
    "generator-never-closed": (
        "def pages():\n    with mpsender.session('s', anonymous_id='a'):\n        yield 1\n"
        "g = pages(); next(g)", "ok", True),
    "sys-exit-inside-with": (
        "import sys\nwith mpsender.session('s', anonymous_id='a'):\n    sys.exit()", "ok", False),
    "thread-still-in-its-block": (
        "import threading\nstarted = threading.Event()\n"
        "def work():\n    with mpsender.session('s', anonymous_id='a'):\n        started.set(); threading.Event().wait()\n"
        "threading.Thread(target=work, daemon=True).start(); started.wait()", "ok", True),
}


@pytest.mark.parametrize("how", list(EXITS))
def test_a_session_open_at_exit_is_ended_exactly_once(
        how: str, collector: Collector, runtime_dir: str) -> None:
    """Whatever leaves the session open, the exit path ends it: one Session Ended."""
    code, outcome, at_exit = EXITS[how]
    check(run_app(f"import mpsender\nmpsender.init()\n{code}\n",
                  app_env(collector.url, runtime_dir, flush_interval=0.05, linger=10, capture_uncaught=1)))
    assert collector.wait_for(lambda c: by_event(c, "Session Ended"), 20)
    assert collector.wait_for(lambda c: len(c.message_ids()) >= 2, 5)
    [props] = ended(collector)["s"]
    assert props["outcome"] == outcome and props.get("at_exit", False) is at_exit
    assert len(by_event(collector, "Session Started")) == 1
    assert len(collector.events()) == 2  # nothing sent twice


ACROSS = """
import asyncio, contextvars, threading
from concurrent.futures import ThreadPoolExecutor
import mpsender

mpsender.init()

def in_thread(name):
    mpsender.track(name, anonymous_id="t")

with mpsender.session("s1", user_id="u1"):
    mpsender.track("Main")
    t = threading.Thread(target=contextvars.copy_context().run, args=(in_thread, "Thread"))
    t.start(); t.join()
    with ThreadPoolExecutor(2) as pool:
        pool.submit(contextvars.copy_context().run, in_thread, "Pool").result()

    async def main():
        async def task(name):
            await asyncio.sleep(0)
            mpsender.track(name)
        async def other_session():
            async with mpsender.session("s2", anonymous_id="a2"):
                await asyncio.sleep(0)
                mpsender.track("Other Session")
        await asyncio.gather(task("Task"), asyncio.to_thread(in_thread, "To Thread"), other_session())

    asyncio.run(main())
    mpsender.identify("u1", traits={"plan": "pro"})
    mpsender.track("Own", properties={"session_id": "mine", "$session_id": "mine"})
mpsender.track("After", user_id="u1")
assert mpsender.flush(20)
"""


@pytest.mark.parametrize("fmt", ["segment", "posthog"])
def test_threads_and_tasks_carry_the_session_id_in_each_format(
        fmt: str, collector: Collector, runtime_dir: str) -> None:
    """Events tracked in threads and asyncio tasks inside a session arrive with its id:
    properties.session_id in Segment's format (context.session_id for identify), $session_id
    in PostHog's; a task in a session of its own has that one; nothing after the block has it."""
    check(run_app(ACROSS, app_env(collector.url, runtime_dir, flush_interval=0.05, linger=10, format=fmt)))
    events = collector.events()
    if fmt == "segment":
        def sid(e: dict[str, Any]) -> Any:
            return e["properties"].get("session_id") if "properties" in e else e["context"].get("session_id")
        names = {e.get("event") or e["type"]: e for e in events}
    else:
        def sid(e: dict[str, Any]) -> Any:
            return e["properties"].get("$session_id")
        names = {e["event"]: e for e in events}
    found = {name: sid(e) for name, e in names.items()}
    for name in ("Main", "Thread", "Pool", "Task", "To Thread", "Session Started", "Session Ended"):
        assert found[name] in ("s1", "s2"), (name, found)
    assert {found[n] for n in ("Main", "Thread", "Pool", "Task", "To Thread")} == {"s1"}
    assert found["Other Session"] == "s2"
    assert found["identify" if fmt == "segment" else "$identify"] == "s1"
    assert found["Own"] == "mine" and found["After"] is None
    user = (lambda e: e.get("userId") or e["anonymousId"]) if fmt == "segment" else (lambda e: e["distinct_id"])
    assert user(names["Task"]) == "u1" and user(names["Thread"]) == "t"
    assert Counter(e.get("event") for e in events)["Session Ended"] == 2


THREAD_CRASH = """
import sys, threading
import mpsender

def previous_hook(args):
    print("previous thread hook saw", args.exc_type.__name__, file=sys.stderr)
    threading.__excepthook__(args)

threading.excepthook = previous_hook
mpsender.init()

def work():
    with mpsender.session("in-thread", anonymous_id="a"):
        raise OSError("disk full")

t = threading.Thread(target=work, name="exporter")
t.start(); t.join()
mpsender.track("Still Running", anonymous_id="a")
assert mpsender.flush(20)
mpsender.shutdown()
assert threading.excepthook is previous_hook and sys.excepthook is sys.__excepthook__
mpsender.init()  # the same options again: the same client, the hooks back
assert threading.excepthook is not previous_hook and sys.excepthook is not sys.__excepthook__
print("alive")
"""


def test_an_uncaught_exception_in_a_thread_is_an_error_and_the_process_lives(
        collector: Collector, runtime_dir: str) -> None:
    """A thread dying: $error severity ``error`` naming the thread, its session ends ``error``,
    the previous threading hook prints, the process goes on; shutdown() gives the hooks back
    and init() puts them in again."""
    proc = run_app(THREAD_CRASH, app_env(collector.url, runtime_dir, flush_interval=0.05, linger=10,
                                         capture_uncaught=1))
    assert check(proc).strip() == "alive"
    assert "previous thread hook saw OSError" in proc.stderr and "disk full" in proc.stderr
    [error] = by_event(collector, "$error")
    props = error["properties"]
    assert (props["severity"], props["thread"], props["uncaught"], props["session_id"]) == (
        "error", "exporter", True, "in-thread")
    assert [p["outcome"] for p in ended(collector)["in-thread"]] == ["error"]
    assert by_event(collector, "Still Running")


def test_a_caught_exception_ends_the_session_error_before_the_next_event(
        collector: Collector, runtime_dir: str) -> None:
    """With the hooks on, a block whose exception is then caught ends ``error``, sent before
    the next event and timed at the block's end; no $error is sent for it."""
    code = """
import time
import mpsender
mpsender.init()
try:
    with mpsender.session("s", anonymous_id="a"):
        raise ValueError("caught later")
except ValueError:
    pass
time.sleep(0.3)  # the session's duration must not include this
mpsender.track("Next", anonymous_id="a")
assert mpsender.flush(20)
"""
    check(run_app(code, app_env(collector.url, runtime_dir, flush_interval=0.05, linger=10, capture_uncaught=1)))
    names = [e["event"] for e in collector.events()]
    assert names == ["Session Started", "Session Ended", "Next"]
    [props] = ended(collector)["s"]
    assert props["outcome"] == "error" and props["duration"] < 0.3


def test_a_fork_child_carries_the_parents_session_but_never_ends_it(
        collector: Collector, runtime_dir: str) -> None:
    """A child forked inside a session tracks with its id, leaves the block and exits
    normally (atexit runs): the parent alone sends the one Session Ended."""
    code = """
import os
import mpsender
mpsender.init()
with mpsender.session("s", anonymous_id="a"):
    pid = os.fork()
    if pid == 0:
        mpsender.track("In Child")
if pid == 0:
    mpsender.flush(20)
    raise SystemExit(0)
assert os.waitpid(pid, 0)[1] == 0
assert mpsender.flush(20)
"""
    check(run_app(code, app_env(collector.url, runtime_dir, flush_interval=0.05, linger=10)))
    assert collector.wait_for(lambda c: len(c.events()) >= 3, 20)
    assert [e["event"] for e in collector.events()].count("Session Ended") == 1
    [child] = by_event(collector, "In Child")
    assert child["properties"]["session_id"] == "s" and child["anonymousId"] == "a"
    assert len(collector.events()) == 3
