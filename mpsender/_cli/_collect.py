"""``mpsender collect``: a local ingestion server for development and tests."""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
from typing import Any

from .._collector import Collector, Faults
from .._collector._server import tune_gc_for_serving
from . import _common as c

DEFAULT_PORT = 8787
DEFAULT_DB = "mpsender-events.db"


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "collect", parents=[common], help="run a local ingestion server (Segment, PostHog, JSON, OTLP)",
        description="Accept Segment's POST /v1/batch, PostHog's POST /batch/, the generic JSON "
                    "batch (POST /json) and OTLP/HTTP logs (POST /v1/logs, JSON or protobuf), gzip "
                    "or not; store every event in SQLite; print a live "
                    "line once a second. Fault options make it misbehave on purpose, to watch "
                    "the sender retry. Stops cleanly on Ctrl-C or SIGTERM.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help="port to listen on; 0 picks a free one (default: %(default)s)")
    p.add_argument("--db", default=DEFAULT_DB, metavar="PATH",
                   help="SQLite file to store events in, appended to (default: ./%(default)s; "
                        "':memory:' keeps nothing)")
    p.add_argument("--write-key", metavar="KEY", help="refuse requests without this key (401)")
    f = p.add_argument_group("faults (to watch retries)")
    f.add_argument("--fail-rate", type=float, default=0.0, metavar="FRACTION",
                   help="answer --fail-status to this fraction of batch requests")
    f.add_argument("--fail-first", type=int, default=0, metavar="N",
                   help="answer --fail-status to the first N batch requests")
    f.add_argument("--fail-status", type=int, default=503, metavar="STATUS",
                   help="status of --fail-rate/--fail-first failures (default: %(default)s)")
    f.add_argument("--status", type=int, metavar="STATUS", help="answer every request with this status")
    f.add_argument("--retry-after", metavar="VALUE", help="send Retry-After: VALUE with the failures")
    f.add_argument("--delay", type=float, default=0.0, metavar="SECONDS", help="wait before every answer")
    f.add_argument("--hang", action="store_true", help="read requests and never answer")
    f.add_argument("--reject-event", metavar="NAME", help="answer 400 to a batch holding a track event NAME")
    f.add_argument("--seed", type=int, default=0, help="seed of the --fail-rate draws (default: %(default)s)")
    o = p.add_argument_group("output")
    o.add_argument("--tail", action="store_true", help="print events (and refused requests) as they arrive")
    o.add_argument("--quiet", action="store_true", help="no live line")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        faults = Faults(
            fail_first=args.fail_first, fail_rate=args.fail_rate, fail_status=args.fail_status,
            status=args.status, retry_after=args.retry_after, delay=args.delay, hang=args.hang,
            reject_event=args.reject_event, seed=args.seed,
        )
    except ValueError as exc:
        # "fail_rate must be ..." -> "--fail-rate must be ...": name the option the user typed
        field, _, rest = str(exc).partition(" ")
        raise c.CliError(f"--{field.replace('_', '-')} {rest}", c.EXIT_USAGE) from exc
    if not 0 <= args.port <= 65535:
        raise c.CliError(f"--port must be within 0..65535, got {args.port}", c.EXIT_USAGE)
    memory = args.db == ":memory:"
    db = args.db if memory else os.path.abspath(args.db)
    if args.tail and memory:
        raise c.CliError("--tail reads the database: give --db a file", c.EXIT_USAGE)
    try:
        tune_gc_for_serving()  # this process only serves the collector
        collector = Collector(db, host=args.host, port=args.port, write_key=args.write_key, faults=faults)
    except (sqlite3.Error, OSError) as exc:
        raise c.CliError(f"cannot use the database {db}: {exc}") from exc
    try:
        try:
            collector.start()
        except OSError as exc:
            raise _bind_error(exc, args) from exc
        return _serve(collector, db, faults, args)
    finally:
        collector.close()


def _bind_error(exc: OSError, args: argparse.Namespace) -> c.CliError:
    if exc.errno == errno.EADDRINUSE:
        return c.CliError(f"port {args.port} is in use; choose another with --port", c.EXIT_USAGE)
    if exc.errno == errno.EACCES:
        return c.CliError(f"not allowed to listen on port {args.port}; choose one above 1023 with --port",
                          c.EXIT_USAGE)
    if isinstance(exc, socket.gaierror) or exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
        return c.CliError(f"cannot listen on {args.host}: {exc.strerror or exc}; check --host", c.EXIT_USAGE)
    return c.CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", c.EXIT_USAGE)


def _serve(collector: Collector, db: str, faults: Faults, args: argparse.Namespace) -> int:
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    url = collector.url
    print(f"mpsender collect: listening on {url}", flush=True)
    print(f"  Segment  POST {url}/v1/batch · PostHog  POST {url}/batch/ · JSON  POST {url}/json"
          f" · OTLP  POST {url}/v1/logs", flush=True)
    where = "in memory (nothing kept)" if db == ":memory:" else db
    key = "required" if args.write_key else "not checked"
    print(f"  events stored {where} · write key {key}", flush=True)
    active = _describe_faults(faults)
    if active:
        print(f"  faults: {active}", flush=True)
    live = _Live(collector, quiet=args.quiet)
    tail = _Tail(db) if args.tail else None
    try:
        while not stop.wait(0.2 if tail else 1.0):
            if tail is not None:
                lines = tail.poll()
                if lines:
                    live.clear()
                    sys.stdout.write("".join(lines))
                    sys.stdout.flush()
            live.tick()
    except KeyboardInterrupt:
        pass  # Ctrl-C: the normal way to stop
    finally:
        signal.signal(signal.SIGTERM, previous)
        if tail is not None:
            tail.close()
    live.clear()
    collector.stop()
    totals = collector.totals()
    errors = sum(totals["errors"].values())
    stored = totals["events"] - live.first_events
    held = f"; {where} holds {c.count(totals['events'])}" if db != ":memory:" else ""
    print(f"mpsender collect: stopped; {c.count(stored)} event(s) stored from "
          f"{c.count(totals['requests'])} request(s), {c.count(errors)} answered with an error{held}",
          file=sys.stderr, flush=True)
    return c.EXIT_OK


def _describe_faults(f: Faults) -> str:
    parts = []
    if f.status is not None:
        parts.append(f"every request answered {f.status}")
    if f.fail_first:
        parts.append(f"first {f.fail_first} batch(es) answered {f.fail_status}")
    if f.fail_rate:
        parts.append(f"{f.fail_rate:.0%} of batches answered {f.fail_status}")
    if f.retry_after is not None:
        parts.append(f"Retry-After: {f.retry_after}")
    if f.delay:
        parts.append(f"{f.delay:g}s delay")
    if f.hang:
        parts.append("never answers")
    if f.reject_event:
        parts.append(f"400 for event {f.reject_event!r}")
    return ", ".join(parts)


class _Live:
    """The once-a-second line on stderr: events/s, totals, errors."""

    def __init__(self, collector: Collector, *, quiet: bool) -> None:
        self.collector = collector
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.first_events = self.last_events = collector.totals()["events"]
        self.last_time = time.monotonic()
        self.last_text = ""
        self.shown = False

    def tick(self) -> None:
        now = time.monotonic()
        if self.quiet or now - self.last_time < 1.0:
            return
        t = self.collector.totals()
        rate = (t["events"] - self.last_events) / (now - self.last_time)
        self.last_events, self.last_time = t["events"], now
        errors = " ".join(f"{status}×{n}" for status, n in sorted(t["errors"].items())) or "0"
        text = (f"{rate:,.0f} events/s · {c.count(t['events'] - self.first_events)} events · "
                f"{c.count(t['requests'])} requests"
                f" · errors {errors}" + (f" · unanswered {t['unanswered']}" if t["unanswered"] else ""))
        if self.tty:
            sys.stderr.write("\r" + text + "\x1b[K")
            self.shown = True
        elif text != self.last_text or rate:
            sys.stderr.write(text + "\n")
        self.last_text = text
        sys.stderr.flush()

    def clear(self) -> None:
        if self.tty and self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.shown = False


class _Tail:
    """New rows of the events and requests tables, read through a second connection."""

    def __init__(self, db: str) -> None:
        self.db = sqlite3.connect(f"file:{db}?mode=ro", uri=True, check_same_thread=False)
        self.last_event = self.db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
        self.last_request = self.db.execute("SELECT coalesce(max(id), 0) FROM requests").fetchone()[0]

    def poll(self) -> list[str]:
        lines: list[tuple[float, str]] = []
        try:
            rows = self.db.execute(
                "SELECT id, received_at, format, type, event, user_id, message_id, payload FROM events "
                "WHERE id > ? ORDER BY id LIMIT 5000", (self.last_event,)).fetchall()
            bad = self.db.execute(
                "SELECT id, received_at, path, status, error FROM requests WHERE id > ? ORDER BY id",
                (self.last_request,)).fetchall()
        except sqlite3.Error as exc:
            return [f"(cannot read the database: {exc})\n"]
        for rid, at, fmt, typ, event, user, mid, payload in rows:
            self.last_event = rid
            lines.append((at, f"{_clock(at)}  {fmt:<7} {typ or '?':<8} {json.dumps(event) if event else '-'}  "
                               f"{user or '-'}  {mid or '-'}  {_props(payload)}".rstrip() + "\n"))
        for rid, at, path, status, error in bad:
            self.last_request = rid
            if status is None or status >= 400:
                lines.append((at, f"{_clock(at)}  ! {status or 'no answer'} {path}: {error}\n"))
        lines.sort(key=lambda item: item[0])  # stable: a request's events stay in order
        return [line for _, line in lines]

    def close(self) -> None:
        self.db.close()


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"


def _props(payload: str) -> str:
    try:
        ev = json.loads(payload)
    except ValueError:
        return ""
    props = ev.get("properties") or ev.get("traits") or {}
    if not props:
        return ""
    text = json.dumps(props, separators=(",", ":"))
    return text if len(text) <= 120 else text[:117] + "..."
