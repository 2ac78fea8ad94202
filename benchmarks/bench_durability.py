"""Durability figures (issue 3): replay after an outage and the sender's memory during one.

    .venv/bin/python benchmarks/bench_durability.py                       # ~2.5 min on 2 cores
    .venv/bin/python benchmarks/bench_durability.py --outage-seconds 15 --events 40000

1. Replay: the collector is down (its port refuses connections); ``--producers`` processes
   track ``--events`` events between them, flat out; the sender (started by them, retrying
   with backoff) is stopped with SIGTERM; the collector comes back; a fresh sender is started
   and the clock runs until the collector has stored every event. Replay events/s =
   events / (start of the new sender -> the last event stored).
2. Memory during an outage: the collector is down for ``--outage-seconds``;
   ``--rss-producers`` processes pace themselves to ``--outage-rate`` events/s between them;
   the sender's RSS (psutil) is sampled every second. Then the collector comes back and the
   backlog is delivered (checked: nothing lost).

Every producer is a fresh interpreter configured by ``MPSENDER_*``; the collector runs in a
process of its own (``_collector_proc.py``, SQLite store). Benchmarks only: figures, not a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    CollectorProcess,
    command_line,
    machine_line,
    proc_status,
)
from _producers import Producers, Run

# --- helpers ------------------------------------------------------------------------------------


def delivered(collector: CollectorProcess, sent: int) -> tuple[int, int]:
    """(lost, duplicated) at the collector against producers that sent seq 0..n-1 each."""
    pairs = collector.pairs()
    return sent - len(pairs), sum(pairs.values()) - len(pairs)


def stop_sender(pid: int, timeout: float = 15.0) -> str:
    """SIGTERM (the sender drains until shutdown_timeout, then exits); SIGKILL if it hangs."""
    try:
        proc = psutil.Process(pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout)
        return "SIGTERM"
    except psutil.NoSuchProcess:
        return "gone"
    except psutil.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        return f"SIGKILL (still running {timeout:g} s after SIGTERM)"


# --- 1. replay ------------------------------------------------------------------------------------


def bench_replay(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    collector = CollectorProcess(workdir)
    collector.stop()  # the outage: the port refuses connections
    run = Run(collector.url)
    producers: Producers | None = None
    try:
        per = args.events // args.producers
        total = per * args.producers
        producers = Producers(run.env, args.producers, events=per, rate=0)
        producers.go()
        results = producers.results(timeout=300)
        sent = sum(r["sent"] for r in results)
        track_s = max(r["t_last"] for r in results) - min(r["t_first"] for r in results)
        pid = run.sender(1.0)
        how = stop_sender(pid) if pid is not None else "none running"
        spool = run.spool_bytes()
        collector.start()
        t0 = time.monotonic()
        if not run.start_sender():
            raise RuntimeError("the fresh sender did not start")
        t_ready = time.monotonic()
        done = collector.wait_count(total, timeout=args.timeout)
        if not done["ok"]:
            raise RuntimeError(f"replay incomplete after {args.timeout} s: {done['count']} of {total}")
        lost, dups = delivered(collector, sent)
        return {"events": sent, "track_s": track_s, "stopped": how, "spool_bytes": spool,
                "start_s": t_ready - t0, "replay_s": done["done_at"] - t0,
                "rate": sent / (done["done_at"] - t0), "rate_from_ready": sent / (done["done_at"] - t_ready),
                "lost": lost, "duplicates": dups, "log": dict(run.log_problems())}
    finally:
        if producers is not None:
            producers.kill()
        run.close()
        collector.close()


# --- 2. RSS during an outage -----------------------------------------------------------------------


def slope_mb_per_min(points: list[tuple[float, float]]) -> float:
    n = len(points)
    if n < 2:
        return float("nan")
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    return 60.0 * sum((t - mx) * (v - my) for t, v in points) / var if var else float("nan")


def bench_rss(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    collector = CollectorProcess(workdir)
    collector.stop()
    run = Run(collector.url)
    producers: Producers | None = None
    try:
        rate = args.outage_rate / args.rss_producers
        producers = Producers(run.env, args.rss_producers, events=0, rate=rate)
        pid = run.sender()
        if pid is None:
            raise RuntimeError("no sender started")
        proc = psutil.Process(pid)
        rss0 = proc.memory_info().rss
        producers.go()
        t0 = time.monotonic()
        points: list[tuple[float, float]] = []
        disk: list[int] = []
        next_at = t0
        while True:
            now = time.monotonic()
            if now >= t0 + args.outage_seconds:
                break
            if now >= next_at:
                points.append((now - t0, proc.memory_info().rss / 2**20))
                disk.append(run.spool_bytes())
                next_at += 1.0
            time.sleep(max(0.0, min(next_at, t0 + args.outage_seconds) - time.monotonic()))
        points.append((time.monotonic() - t0, proc.memory_info().rss / 2**20))
        hwm = proc_status(pid).get("VmHWM")
        producers.stop()
        results = producers.results(timeout=60)
        sent = sum(r["sent"] for r in results)
        achieved = sent / (max(r["t_last"] for r in results) - min(r["t_first"] for r in results))
        same_sender = pid in run.senders()
        collector.start()
        t_back = time.monotonic()
        done = collector.wait_count(sent, timeout=args.timeout)
        lost, dups = delivered(collector, sent)
        first = _first_request_after(collector, t_back)
        values = sorted(v for _, v in points)
        tenth = max(1, len(points) // 10)
        steady = points[tenth:]  # after the first tenth: imports, first file, first connection
        return {
            "seconds": args.outage_seconds, "rate": achieved, "sent": sent, "rss_start_mb": rss0 / 2**20,
            "min": values[0], "median": statistics.median(values), "max": values[-1],
            "first": statistics.median(v for _, v in points[:tenth]),
            "last": statistics.median(v for _, v in points[-tenth:]),
            "slope": slope_mb_per_min(steady), "growth": steady[-1][1] - steady[0][1] if steady else 0.0,
            "hwm_mb": hwm / 1024 if hwm else None,
            "spool_mb": max(disk) / 2**20 if disk else 0.0, "same_sender": same_sender,
            "drain_s": (done["done_at"] - t_back) if done["ok"] else None, "first_request_s": first,
            "lost": lost, "duplicates": dups, "points": points, "log": dict(run.log_problems()),
        }
    finally:
        if producers is not None:
            producers.kill()
        run.close()
        collector.close()


def _first_request_after(collector: CollectorProcess, t_back: float) -> float | None:
    """Seconds from the collector's return to the first batch it stored (wall clock)."""
    rows = collector.sql("SELECT min(received_at) FROM requests WHERE status = 200")
    if not rows or rows[0][0] is None:
        return None
    # received_at is wall-clock; convert our monotonic mark through the current offset
    return float(rows[0][0]) - (time.time() - (time.monotonic() - t_back))


# --- output ------------------------------------------------------------------------------------------


def f(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None or value != value else format(value, spec)


def print_replay(r: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"## 1. Replay from the spool after an outage\n\n{args.producers} producers tracked "
          f"{r['events']:,} events while the collector was down ({r['events'] / r['track_s']:,.0f} events/s "
          f"into the spool, {r['spool_bytes'] / 2**20:.1f} MiB on disk); the sender was stopped ({r['stopped']}); "
          f"the collector came back; a fresh sender was started.\n")
    print("| events | new sender listening | all stored | replay events/s (from the start) "
          "| replay events/s (once listening) | lost | duplicated |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {r['events']:,} | {r['start_s']:.2f} s | {r['replay_s']:.2f} s | {r['rate']:,.0f} "
          f"| {r['rate_from_ready']:,.0f} | {r['lost']:,} | {r['duplicates']:,} |")
    _print_log(r["log"])
    print()


def print_rss(r: dict[str, Any], args: argparse.Namespace) -> None:
    # flat: after the first tenth, RSS moves by less than 2 MiB over the whole outage
    verdict = "flat" if abs(r["slope"]) * r["seconds"] / 60 < 2.0 else ("growing" if r["slope"] > 0 else "shrinking")
    target = "met" if r["max"] < 80 and verdict == "flat" else "NOT met"
    print(f"## 2. Sender memory during a {r['seconds']:g} s outage\n\n{args.rss_producers} producer(s) pacing "
          f"themselves to {args.outage_rate:,.0f} events/s in all (achieved {r['rate']:,.0f}); the collector "
          f"down the whole time; the sender's RSS sampled every second ({len(r['points'])} samples); "
          f"RSS before the outage {r['rss_start_mb']:.1f} MiB.\n")
    print("| events tracked | RSS min | median | max | first 10% → last 10% (median) | trend "
          "| peak RSS (VmHWM) | spool on disk at most | target: flat, < 80 MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {r['sent']:,} | {r['min']:.1f} MiB | {r['median']:.1f} MiB | {r['max']:.1f} MiB "
          f"| {r['first']:.1f} → {r['last']:.1f} MiB | {r['slope']:+.2f} MiB/min after the first tenth ({verdict}) "
          f"| {f(r['hwm_mb'], '.1f')} MiB | {r['spool_mb']:.1f} MiB | {target} |")
    print()
    print(f"After the outage: first batch stored {f(r['first_request_s'], '.1f')} s after the collector came back "
          f"(the sender's retry backoff, capped by retry_cap), backlog delivered in {f(r['drain_s'], '.1f')} s; "
          f"lost {r['lost']:,}, duplicated {r['duplicates']:,}; same sender throughout: {r['same_sender']}.")
    every = max(1, len(r["points"]) // 12)
    print("RSS (MiB) over time: " + ", ".join(f"{t:.0f}s {v:.1f}" for t, v in r["points"][::every]))
    _print_log(r["log"])
    print()


def _print_log(log: dict[str, int]) -> None:
    if log:
        items = "; ".join(f"{n}× {m}" for m, n in sorted(log.items(), key=lambda x: -x[1])[:4])
        print(f"The sender logged: {items}")


# --- main ------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--producers", type=int, default=4, help="1: producer processes (default: %(default)s)")
    ap.add_argument("--events", type=int, default=100_000,
                    help="1: events tracked during the outage, in all (default: %(default)s)")
    ap.add_argument("--outage-seconds", type=float, default=60.0,
                    help="2: length of the outage (default: %(default)s)")
    ap.add_argument("--outage-rate", type=float, default=5000.0,
                    help="2: events/s tracked during it, in all (default: %(default)s)")
    ap.add_argument("--rss-producers", type=int, default=2, help="2: producer processes (default: %(default)s)")
    ap.add_argument("--only", choices=["replay", "rss"], nargs="+", help="run some parts only")
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="longest wait for the collector to have everything (default: %(default)s)")
    ap.add_argument("--json", metavar="FILE", help="also write the raw results here")
    args = ap.parse_args()
    if not 1 <= args.producers <= 16 or not 1 <= args.rss_producers <= 16:
        ap.error("--producers and --rss-producers must be within 1..16")
    if not 1_000 <= args.events <= 2_000_000:
        ap.error("--events must be within 1,000..2,000,000")
    if not 1 <= args.outage_seconds <= 600 or not 1 <= args.outage_rate <= 50_000:
        ap.error("--outage-seconds must be within 1..600 and --outage-rate within 1..50,000")
    parts = args.only or ["replay", "rss"]

    print(f"# bench_durability\n\n`{command_line()}`\n\n{machine_line()}\n", flush=True)
    workdir = tempfile.mkdtemp(prefix="mpb-du-")
    results: dict[str, Any] = {"command": command_line(), "machine": machine_line()}
    try:
        if "replay" in parts:
            results["replay"] = bench_replay(args, workdir)
            print_replay(results["replay"], args)
        if "rss" in parts:
            results["rss"] = bench_rss(args, workdir)
            print_rss(results["rss"], args)
        sys.stdout.flush()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
