"""``mpsender stop``: ask senders to drain and exit, and wait for them, bounded."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Any

import psutil

from . import _common as c
from ._runtime import ControlError, Destination, select, stop_sender
from ._spoolfiles import pending_events, wal_files


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "stop", parents=[common], help="ask senders to drain and exit",
        description="Ask the sender of each destination (all of them by default) to send what "
                    "it can within its shutdown_timeout and exit; wait for it, bounded. What is "
                    "not sent stays in the spool for the next sender. An application still "
                    "running starts a new sender at its next track().",
    )
    p.add_argument("dest", nargs="*", metavar="DEST", help="destination id or a prefix of it (default: all)")
    p.add_argument("--timeout", type=float, default=15.0, metavar="SECONDS",
                   help="how long to wait for each sender to exit (default: %(default)s)")
    p.add_argument("--kill", action="store_true",
                   help="SIGKILL a sender still running after --timeout (the spool keeps its events)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    root = c.runtime_dir(args.runtime_dir)
    live = [d for d in select(root, args.dest) if d.running]
    if not live:
        raise c.CliError(f"no sender running under {root}")
    failed = 0
    for d in live:
        if not stop_one(d, args.timeout, kill=args.kill):
            failed += 1
    return c.EXIT_FAILED if failed else c.EXIT_OK


def stop_one(d: Destination, timeout: float, *, kill: bool = False, quiet: bool = False) -> bool:
    """STOP, then wait for the pid to be gone. True when it exited (or was killed)."""
    proc = d.process
    assert proc is not None
    started = time.monotonic()
    try:
        stop_sender(d, timeout=min(timeout, 5.0))
    except ControlError as exc:
        if not kill:
            print(f"mpsender: sender {proc.pid} ({d.label}) did not take the stop request: {exc}; "
                  "use --kill to end it", file=sys.stderr)
            return False
        print(f"mpsender: sender {proc.pid} did not take the stop request ({exc}); killing it", file=sys.stderr)
        _kill(proc)
    gone = _wait_gone(proc, max(0.0, timeout - (time.monotonic() - started)))
    if not gone and kill:
        print(f"mpsender: sender {proc.pid} still running after {timeout:g}s; killing it", file=sys.stderr)
        _kill(proc)
        gone = _wait_gone(proc, 5.0)
    if not gone:
        print(f"mpsender: sender {proc.pid} ({d.label}) is still running after {timeout:g}s "
              "(draining a slow endpoint?); use --kill or a longer --timeout", file=sys.stderr)
        return False
    if not quiet:
        left = _left(d)
        print(f"stopped sender {proc.pid} for {d.label} in {c.duration(time.monotonic() - started)}; {left}")
    return True


def _left(d: Destination) -> str:
    try:
        waiting = sum(pending_events(w) for w in wal_files(d.spool) if w.pending_bytes)
    except c.CliError as exc:
        return str(exc)
    if not waiting:
        return "nothing left undelivered"
    return f"{c.count(waiting)} event(s) left in the spool for the next sender (`mpsender spool replay`)"


def _wait_gone(proc: psutil.Process, timeout: float) -> bool:
    """Wait for the pid to exit. A zombie counts as gone: the sender is nobody's child
    (it is adopted by init), and an init that does not reap would otherwise keep it."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        except psutil.Error:
            pass  # cannot tell this time: ask again
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))  # polling a process we do not own: no wait() to block on
        delay = min(delay * 1.5, 0.1)


def _kill(proc: psutil.Process) -> None:
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # exited on its own meanwhile
