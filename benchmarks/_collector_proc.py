"""The local collector in a process of its own, driven over stdin/stdout (benchmarks only).

The collector serves from threads; a benchmark parent that forks or spawns producers
must have none, and the collector's CPU must not be charged to the producers. So it
runs here.

    python _collector_proc.py DB_PATH [--store ids|sqlite] [--write-key KEY]

``--store ids`` (what the benchmarks use for their end-to-end figures) plugs in the
lean store of ``_lean_store.py``: the same checks and answers, only the message ids
kept, in memory, DB_PATH never created; ``--store sqlite`` (the default here, as for
``Collector``) stores every event in DB_PATH. ``--write-key``: check each format's
auth against this key (Basic for Segment, ``api_key`` for PostHog, Bearer for JSON).
Protocol, one JSON object per line:

* on start it prints ``{"url": ..., "pid": ..., "store": ...}``;
* ``{"cmd": "target", "n": N}`` -> a thread starts watching for N stored events (woken
  by every request, no polling) and notes ``time.monotonic()`` (system-wide on Linux,
  so comparable with the producers' clocks) when they are there;
* ``{"cmd": "wait", "timeout": T}`` -> waits up to T for that target and answers
  ``{"ok", "count", "distinct", "done_at"}``;
* ``{"cmd": "stats"}`` -> ``{"count", "distinct", "requests", "cpu"}``;
* ``{"cmd": "timeline"}`` -> ``{"requests": [[arrived_at, events, status], ...]}``, the last
  1,000 requests (``arrived_at`` is ``time.monotonic()``), to see gaps between requests;
* ``{"cmd": "count"}`` -> ``{"count"}``, cheap (a counter);
* ``{"cmd": "stop"}``, ``{"cmd": "start"}`` -> ``{"ok": true}``: an outage (the port then
  refuses connections) and the end of it, on the same port with the same store;
* end of stdin -> stop and exit.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _lean_store import IdStore

from mpsender._collector import Collector
from mpsender._collector._server import tune_gc_for_serving


def _distinct(collector: Collector, db_path: str) -> int:
    """Distinct message ids received (read from the database in the SQLite mode, which
    serves without the message_id index: another connection scans the table)."""
    if isinstance(collector.store, IdStore):
        return len(set(collector.message_ids()))
    db = sqlite3.connect(db_path)
    try:
        return int(db.execute("SELECT count(DISTINCT message_id) FROM events").fetchone()[0])
    finally:
        db.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("db_path")
    ap.add_argument("--store", choices=("sqlite", "ids"), default="sqlite")
    ap.add_argument("--write-key", default=None)
    args = ap.parse_args()
    db_path = args.db_path
    tune_gc_for_serving()  # as `mpsender collect` does
    if args.store == "ids":
        collector = Collector(max_records=1000, store=IdStore(), write_key=args.write_key)
    else:
        collector = Collector(db_path, max_records=1000, write_key=args.write_key)
    collector.start()
    out = sys.stdout
    out.write(json.dumps({"url": collector.url, "pid": os.getpid(), "store": args.store}) + "\n")
    out.flush()
    done_at: list[float] = []
    watcher: threading.Thread | None = None
    try:
        for line in sys.stdin:
            msg = json.loads(line)
            if msg["cmd"] == "target":
                n = int(msg["n"])
                done_at.clear()

                def enough(c: Collector, n: int = n) -> bool:
                    if c.count() >= n:
                        if not done_at:
                            done_at.append(time.monotonic())
                        return True
                    return False

                watcher = threading.Thread(target=collector.wait_for, args=(enough, 3600.0), daemon=True)
                watcher.start()
                answer: dict[str, object] = {"ok": True}
            elif msg["cmd"] == "wait":
                if watcher is not None:
                    watcher.join(float(msg["timeout"]))
                answer = {"ok": bool(done_at), "count": collector.count(), "distinct": _distinct(collector, db_path),
                          "done_at": done_at[0] if done_at else None}
            elif msg["cmd"] == "stats":
                totals = collector.totals()
                cpu = os.times()
                answer = {"count": totals["events"], "requests": totals["requests"],
                          "errors": {str(k): v for k, v in totals["errors"].items()},
                          "distinct": _distinct(collector, db_path), "cpu": cpu.user + cpu.system}
            elif msg["cmd"] == "count":
                answer = {"count": collector.count()}
            elif msg["cmd"] == "stop":
                collector.stop()
                answer = {"ok": True}
            elif msg["cmd"] == "start":
                collector.start()
                answer = {"ok": True}
            elif msg["cmd"] == "timeline":
                answer = {"requests": [[r.arrived_at, r.events, r.status] for r in collector.requests()]}
            else:
                answer = {"error": f"unknown command {msg['cmd']!r}"}
            out.write(json.dumps(answer) + "\n")
            out.flush()
    finally:
        collector.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
