"""``mpsender demo``: see it work in one command, offline.

A collector (``mpsender collect`` in a child process), a sender started by this
process, then ``--workers`` processes forked from it — the way a gunicorn master
forks its workers — each tracking ``--events`` events. Then the numbers: what was
tracked against what the collector stored, end-to-end latency, a per-worker table,
the sender's own counters, and where the SQLite file is.

The collector runs in a child process, not a thread: this process forks its
workers, and forking a process that runs threads is unsafe (Python 3.12+ warns).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, NoReturn

import psutil

from .._client import Client
from .._options import Options
from . import _common as c
from ._runtime import ControlError, Destination, destinations, sender_stats
from ._stop import stop_one

EVENT = "Demo Event"


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "demo", parents=[common], help="see it work: a collector, one sender, forked workers, the numbers",
        description="Start a local collector, start a sender, fork worker processes that track "
                    "events, then show tracked against delivered, end-to-end latency, a per-worker "
                    "table and the sender's counters. Offline; touches none of your senders (it uses "
                    "its own temporary runtime directory); stops everything it started.",
    )
    p.add_argument("--workers", type=int, default=4, metavar="N", help="worker processes to fork (default: %(default)s)")
    p.add_argument("--events", type=int, default=2000, metavar="N", help="events per worker (default: %(default)s)")
    p.add_argument("--rate", type=float, default=1000.0, metavar="PER_SECOND",
                   help="events per second per worker; 0: as fast as possible (default: %(default)s)")
    p.add_argument("--fail-rate", type=float, default=0.0, metavar="FRACTION",
                   help="make the collector answer 503 to this fraction of requests, to watch retries")
    p.add_argument("--db", metavar="PATH", help="SQLite file for the collector (kept; default: a temporary file)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (SQLite file, sender log)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(run=run)


@dataclass
class _Run:
    base: str
    runtime: str
    db: str
    run_id: str
    collector: subprocess.Popen[bytes] | None = None
    collector_url: str = ""
    client: Client | None = None
    workers: dict[int, int] = field(default_factory=dict)   # pid -> index
    sender: Destination | None = None


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.workers <= 256:
        raise c.CliError("--workers must be within 1..256", c.EXIT_USAGE)
    if args.events < 1:
        raise c.CliError("--events must be at least 1", c.EXIT_USAGE)
    if args.rate < 0:
        raise c.CliError("--rate must be 0 or more", c.EXIT_USAGE)
    if not 0 <= args.fail_rate < 1:
        raise c.CliError("--fail-rate must be within [0, 1)", c.EXIT_USAGE)
    base = tempfile.mkdtemp(prefix="mpsender-demo-")
    if len(os.path.join(base, "run", "0123456789abcdef", "sender.sock")) > 100:
        shutil.rmtree(base)  # $TMPDIR is too long for a socket path: /tmp is not
        base = tempfile.mkdtemp(prefix="mpsender-demo-", dir="/tmp")
    r = _Run(base=base, runtime=args.runtime_dir or os.path.join(base, "run"),
             db=os.path.abspath(args.db) if args.db else os.path.join(base, "events.db"),
             run_id=uuid.uuid4().hex[:12])
    try:
        return _demo(r, args)
    finally:
        _cleanup(r, keep=args.keep)


def _demo(r: _Run, args: argparse.Namespace) -> int:
    out = sys.stdout
    total = args.workers * args.events
    quiet = args.json
    if not quiet:
        out.write(f"mpsender demo: {args.workers} worker process(es) x {c.count(args.events)} events, "
                  f"one sender, a local collector\n")
        out.flush()
    _start_collector(r, args.fail_rate)
    # Options built here, not read from MPSENDER_*: the demo must not depend on the
    # user's environment, nor touch their senders (a runtime directory of its own).
    opts = Options(write_key=f"demo-{r.run_id}", endpoint=r.collector_url, runtime_dir=r.runtime)
    r.client = Client.from_options(opts)
    if not r.client.start(wait=15.0):
        raise c.CliError(f"the sender did not start; see {r.runtime}/*/sender.log (--keep keeps it)")
    r.sender = _own_sender(r)
    if not quiet:
        out.write(f"  collector  {r.collector_url}  (pid {r.collector.pid if r.collector else '?'})\n")
        out.write(f"  sender     pid {r.sender.pid if r.sender else '?'}, started by this process; "
                  f"workers forked after it find it by name\n")
        out.flush()

    started = time.monotonic()
    results = _run_workers(r, args)
    tracked = sum(w.get("tracked", 0) for w in results.values())
    delivered_rows = _wait_delivered(r, tracked)
    elapsed = time.monotonic() - started

    sender_info = _sender_summary(r)
    if r.sender is not None and r.sender.running:
        stop_one(r.sender, 10.0, kill=True, quiet=True)
    _stop_collector(r)

    summary = _summarise(r, args, results, delivered_rows, sender_info, elapsed, total)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print(summary, args)
    ok = summary["lost"] == 0 and not summary["worker_errors"]
    return c.EXIT_OK if ok else c.EXIT_FAILED


# --- collector --------------------------------------------------------------------------------


def _start_collector(r: _Run, fail_rate: float) -> None:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "mpsender", "collect", "--port", "0", "--db", r.db, "--quiet"]
    if fail_rate:
        cmd += ["--fail-rate", str(fail_rate)]
    log_path = os.path.join(r.base, "collect.log")
    with open(log_path, "wb") as log:
        # own session: a Ctrl-C meant for the demo does not hit it; the demo stops it
        r.collector = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                                       env=env, start_new_session=True, close_fds=True)
    assert r.collector.stdout is not None
    fd = r.collector.stdout.fileno()
    deadline = time.monotonic() + 20.0
    seen = b""
    while b"listening on " not in seen or not seen.split(b"listening on ", 1)[1].count(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise c.CliError(f"the collector did not start within 20s; see {log_path} (--keep keeps it)")
        chunk = os.read(fd, 4096)
        if not chunk:
            with open(log_path, errors="replace") as fh:
                last = (fh.read().strip().splitlines() or ["(no output)"])[-1]
            raise c.CliError(f"the collector exited at start: {last}")
        seen += chunk
    r.collector_url = seen.split(b"listening on ", 1)[1].split(b"\n", 1)[0].decode().strip()


def _stop_collector(r: _Run) -> None:
    proc = r.collector
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5.0)


# --- workers ------------------------------------------------------------------------------------


def _run_workers(r: _Run, args: argparse.Namespace) -> dict[int, dict[str, Any]]:
    assert r.client is not None
    sys.stdout.flush()
    sys.stderr.flush()
    rfd, wfd = os.pipe()
    for index in range(args.workers):
        pid = os.fork()
        if pid == 0:
            os.close(rfd)
            _worker(r.client, index, args.events, args.rate, r.run_id, wfd)
        r.workers[pid] = index
    os.close(wfd)
    total = args.workers * args.events
    bar = None if args.json else c.Progress("tracking", total, unit="events")
    counts = {i: 0 for i in range(args.workers)}
    results: dict[int, dict[str, Any]] = {}
    expected = (args.events / args.rate if args.rate else 1.0) + 60.0
    deadline = time.monotonic() + expected
    buf = b""
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise c.CliError(f"the workers did not finish within {expected:.0f}s")
            if not select.select([rfd], [], [], min(remaining, 0.2))[0]:
                if bar:
                    bar.update(sum(counts.values()))
                continue
            chunk = os.read(rfd, 65536)
            if not chunk:
                break  # every worker has exited
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                kind, _, rest = line.decode().partition(" ")
                if kind == "p":
                    i, n = rest.split()
                    counts[int(i)] = int(n)
                elif kind == "done":
                    item = json.loads(rest)
                    results[item["index"]] = item
                    counts[item["index"]] = item["tracked"]
                elif kind == "error":
                    i, _, msg = rest.partition(" ")
                    results[int(i)] = {"index": int(i), "error": msg, "tracked": counts[int(i)]}
            if bar:
                bar.update(sum(counts.values()))
    finally:
        os.close(rfd)
    if bar:
        bar.close()
    for pid, index in list(r.workers.items()):
        _, status = os.waitpid(pid, 0)
        del r.workers[pid]
        code = os.waitstatus_to_exitcode(status)
        item = results.setdefault(index, {"index": index, "tracked": counts[index], "error": "exited early"})
        item["pid"] = pid
        item["exit"] = code
        if code != 0 and "error" not in item:
            item["error"] = f"flush did not finish (exit {code})" if code == 3 else f"exit {code}"
    return results


def _worker(client: Client, index: int, events: int, rate: float, run_id: str, wfd: int) -> NoReturn:
    """Runs in a forked child: track, report through the pipe, leave with os._exit."""
    code = 0
    try:
        interval = 1.0 / rate if rate else 0.0
        costs = []
        start = time.perf_counter()
        next_report = start
        track = client.track
        perf = time.perf_counter
        for j in range(events):
            if interval:
                ahead = start + j * interval - perf()
                if ahead > 0.002:
                    time.sleep(ahead)  # pacing the workload, like requests arriving
            t0 = time.time()
            c0 = perf()
            track(EVENT, user_id=f"user-{index}-{j % 50}",
                  properties={"run": run_id, "worker": index, "seq": j, "t0": t0})
            now = perf()
            costs.append(now - c0)
            if now >= next_report:
                next_report = now + 0.05
                os.write(wfd, f"p {index} {j + 1}\n".encode())
        f0 = perf()
        flushed = client.flush(timeout=30.0)
        costs.sort()
        # the median: on a busy machine a worker preempted inside one call would dominate a mean
        result = {"index": index, "pid": os.getpid(), "tracked": events, "track_us": costs[len(costs) // 2] * 1e6,
                  "track_us_p99": _percentile(costs, 99) * 1e6,
                  "track_seconds": f0 - start, "flush_seconds": perf() - f0, "flushed": flushed}
        os.write(wfd, f"done {json.dumps(result)}\n".encode())
        code = 0 if flushed else 3
    except BaseException as exc:  # noqa: BLE001 - a worker reports through the pipe and its exit code
        try:
            os.write(wfd, f"error {index} {type(exc).__name__}: {exc}\n"[:4000].encode())
        except OSError:
            pass  # the demo has gone: the exit code still tells
        code = 1
    finally:
        os._exit(code)


# --- numbers ------------------------------------------------------------------------------------


def _query(r: _Run) -> list[tuple[float, str]]:
    try:
        db = sqlite3.connect(f"file:{r.db}?mode=ro", uri=True)
    except sqlite3.Error:
        return []
    try:
        return db.execute("SELECT received_at, payload FROM events WHERE instr(payload, ?) > 0",
                          (f'"run":"{r.run_id}"',)).fetchall()
    except sqlite3.Error:
        return []
    finally:
        db.close()


def _count(r: _Run) -> int:
    try:
        db = sqlite3.connect(f"file:{r.db}?mode=ro", uri=True)
    except sqlite3.Error:
        return 0
    try:
        row = db.execute("SELECT count(DISTINCT message_id) FROM events WHERE instr(payload, ?) > 0",
                         (f'"run":"{r.run_id}"',)).fetchone()
        return int(row[0])
    except sqlite3.Error:
        return 0
    finally:
        db.close()


def _wait_delivered(r: _Run, tracked: int, timeout: float = 30.0) -> list[tuple[float, str]]:
    """Wait until the collector holds every tracked event (the workers flushed, so
    usually at once); a bar when it takes a while."""
    deadline = time.monotonic() + timeout
    bar = None
    while True:
        n = _count(r)
        if n >= tracked or time.monotonic() >= deadline:
            break
        if bar is None:
            bar = c.Progress("delivering", tracked, unit="events")
        bar.update(n)
        time.sleep(0.1)  # the collector is another process: polling its file is what we have
    if bar is not None:
        bar.update(n)
        bar.close()
    return _query(r)


def _sender_summary(r: _Run) -> dict[str, Any]:
    d = r.sender
    if d is None or not d.running:
        return {}
    out: dict[str, Any] = {"pid": d.pid}
    try:
        stats = sender_stats(d, timeout=3.0)
        for key in ("received", "uploaded", "batches", "requests", "retries", "pending", "dropped",
                    "last_status", "spool_bytes"):
            out[key] = stats.get(key)
    except ControlError as exc:
        out["error"] = str(exc)
    try:
        assert d.process is not None
        with d.process.oneshot():
            out["rss_bytes"] = d.process.memory_info().rss
            t = d.process.cpu_times()
            out["cpu_seconds"] = t.user + t.system
    except psutil.Error:
        pass  # it exited meanwhile: the counters above are what there is
    return out


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def _summarise(r: _Run, args: argparse.Namespace, results: dict[int, dict[str, Any]],
               rows: list[tuple[float, str]], sender: dict[str, Any], elapsed: float, total: int) -> dict[str, Any]:
    seen: set[str] = set()
    per_worker: dict[int, list[float]] = {i: [] for i in range(args.workers)}
    latencies: list[float] = []
    duplicates = 0
    for received_at, payload in rows:
        ev = json.loads(payload)
        mid = ev.get("messageId")
        if mid in seen:
            duplicates += 1
            continue
        seen.add(mid)
        props = ev.get("properties") or {}
        lat = received_at - float(props.get("t0", received_at))
        latencies.append(lat)
        per_worker.setdefault(int(props.get("worker", -1)), []).append(lat)
    latencies.sort()
    tracked = sum(int(w.get("tracked", 0)) for w in results.values())
    workers = []
    for i in range(args.workers):
        w = results.get(i, {})
        lats = sorted(per_worker.get(i, []))
        workers.append({
            "worker": i, "pid": w.get("pid"), "tracked": int(w.get("tracked", 0)), "delivered": len(lats),
            "track_us": w.get("track_us"), "track_us_p99": w.get("track_us_p99"), "flush_seconds": w.get("flush_seconds"),
            "latency_p50_ms": _percentile(lats, 50) * 1000 if lats else None,
            "latency_p99_ms": _percentile(lats, 99) * 1000 if lats else None,
            "error": w.get("error"),
        })
    costs = [w["track_us"] for w in workers if w["track_us"] is not None]
    return {
        "workers": workers, "tracked": tracked, "expected": total, "delivered": len(seen),
        "duplicates": duplicates, "lost": max(0, tracked - len(seen)), "seconds": elapsed,
        "latency_ms": {name: _percentile(latencies, q) * 1000 if latencies else None
                       for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))},
        "track_us_median": sorted(costs)[len(costs) // 2] if costs else None,
        "sender": sender, "collector": r.collector_url,
        "sqlite": r.db, "sqlite_kept": bool(args.keep or args.db),
        "worker_errors": [f"worker {w['worker']}: {w['error']}" for w in workers if w["error"]],
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _print(s: dict[str, Any], args: argparse.Namespace) -> None:
    out = sys.stdout
    pct = s["delivered"] / s["tracked"] * 100 if s["tracked"] else 0.0
    out.write("\n")
    out.write(f"tracked {c.count(s['tracked'])} · delivered {c.count(s['delivered'])} ({pct:.1f}%) · "
              f"lost {c.count(s['lost'])} · duplicates {c.count(s['duplicates'])} · in {s['seconds']:.1f}s\n")
    lat = s["latency_ms"]
    out.write(f"end-to-end latency, track() to collector: p50 {_ms(lat['p50'])} ms · p90 {_ms(lat['p90'])} ms · "
              f"p99 {_ms(lat['p99'])} ms · max {_ms(lat['max'])} ms\n")
    if s["track_us_median"] is not None:
        out.write(f"track() in the workers: {s['track_us_median']:.1f} µs per call (median of the workers' medians)\n")
    out.write("\n")
    rows = [["worker", "pid", "tracked", "delivered", "track() µs p50/p99", "flush", "latency p50 ms", "p99 ms"]]
    for w in s["workers"]:
        rows.append([str(w["worker"]), str(w["pid"] or "-"), c.count(w["tracked"]), c.count(w["delivered"]),
                     "-" if w["track_us"] is None else f"{w['track_us']:.1f} / {w['track_us_p99']:.1f}",
                     "-" if w["flush_seconds"] is None else c.duration(w["flush_seconds"]),
                     _ms(w["latency_p50_ms"]), _ms(w["latency_p99_ms"])])
    c.table(rows, out)
    out.write("\n")
    snd = s["sender"]
    if snd.get("error") or not snd:
        out.write(f"sender: {snd.get('error', 'not found')}\n")
    else:
        out.write(f"sender pid {snd['pid']}: received {c.count(snd['received'] or 0)} · uploaded "
                  f"{c.count(snd['uploaded'] or 0)} in {c.count(snd['requests'] or 0)} request(s) · retries "
                  f"{c.count(snd['retries'] or 0)} · dropped {c.dropped(snd['dropped'])} · last answer "
                  f"{snd['last_status']}")
        if "rss_bytes" in snd:
            out.write(f" · rss {c.size(snd['rss_bytes'])} · cpu {snd['cpu_seconds']:.2f}s")
        out.write("\n")
    for err in s["worker_errors"]:
        out.write(f"problem: {err}\n")
    where = s["sqlite"]
    if s["sqlite_kept"]:
        out.write(f"SQLite file: {where}\n")
        out.write(f'  look inside: sqlite3 {where} "SELECT event, count(*) FROM events GROUP BY 1"\n')
    else:
        out.write(f"SQLite file: {where} (removed with the demo's temporary directory; --keep keeps it)\n")
    out.flush()


def _own_sender(r: _Run) -> Destination | None:
    """The demo's sender, if it runs; never another one (``--runtime-dir`` may be shared)."""
    if r.client is None or not os.path.isdir(r.runtime):
        return None
    mine = r.client.paths.dest.name
    return next((d for d in destinations(r.runtime) if d.id == mine and d.running), None)


# --- cleanup -----------------------------------------------------------------------------------


def _cleanup(r: _Run, *, keep: bool) -> None:
    """Stop everything this demo started, by pid, whatever happened before."""
    for pid in list(r.workers):
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass  # already gone
    if r.client is not None:
        r.client.shutdown(timeout=0.0)
    sender = _own_sender(r)
    if sender is not None:
        stop_one(sender, 10.0, kill=True, quiet=True)
    _stop_collector(r)
    if r.collector is not None and r.collector.stdout is not None:
        r.collector.stdout.close()
    if keep:
        print(f"kept {r.base} (runtime directory, sender log, collector log"
              + (", SQLite file)" if r.db.startswith(r.base) else ")"), file=sys.stderr)
    else:
        shutil.rmtree(r.base, ignore_errors=True)
