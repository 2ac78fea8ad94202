"""mpsender against segment-analytics-python and posthog, in ONE run, one table.

    .venv/bin/python benchmarks/bench_compare.py            # ~2 min on 2 cores (the peers: 80 s)
    .venv/bin/python benchmarks/bench_compare.py --quick    # smaller counts, a smoke test

Same event (8 properties of mixed types, the same dict), same local collector
(``mpsender._collector.Collector`` on 127.0.0.1, in its own process, fresh per row,
checking the write key), each library with its defaults and with its fastest
documented setting.

* the collector's store: every row but one runs against its lean mode
  (``--store ids``, ``_lean_store.py``: the same checks, auth, gzip, JSON, the ``batch`` shape, and the
  same answers, but only the message ids kept, in memory), so the figures measure the
  libraries rather than SQLite. One row, marked ``sqlite``, runs mpsender against the
  full SQLite store, as the earlier runs did. ``--store sqlite`` puts every row on it.

* track() cost: one fresh process, ``--calls`` calls (100k), each timed alone with
  ``perf_counter_ns`` in the calling thread; the library's own machinery (mpsender's
  sender, a peer's upload thread) runs meanwhile, against the collector, as in production.
* end to end: ``--producers`` (4) processes x ``--events`` (50k), started together;
  events/s = all events / (first track() in any producer -> the collector has stored
  them all). Peers create their client in each producer (their documented fork
  advice) and flush()/shut down at the end; mpsender's producers just exit.
  Delivered = distinct message ids at the collector. ``--e2e-runs N`` runs each row N
  times and shows the median run (every run's events/s in the details table).
* RSS: peak RSS of a producer (ru_maxrss) and its growth from the first tenth of the
  calls to the last; peak RSS (VmHWM) of mpsender's sender.
* CPU: of the producers (every thread: a peer's upload thread is charged there) and of
  mpsender's sender, per 1,000 events.
* the floor: ``msgpack.packb`` of mpsender's record, a bare ``send()`` of its frame on a
  SOCK_SEQPACKET socket, an ``os.write`` of it to an O_APPEND file, same timing loop.
* the limit: the collector alone, in each store, fed ready-made gzipped batches of 1000
  over one kept-alive connection (``--limit-runs N`` repeats it; ``--limits-only`` runs
  nothing else).

Figures are printed as Markdown; ``--json FILE`` keeps the raw results.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    DEFAULT_STORE,
    WRITE_KEY,
    CollectorProcess,
    Worker,
    end_runtime_dir,
    fmt,
    machine_line,
    new_runtime_dir,
    proc_cpu,
    proc_status,
    sender_pid,
)

#: (label, library, options, collector store). "fast" = the library's fastest documented
#: setting, chosen by measuring its documented knobs on this machine (see
#: benchmarks/README.md). A store of None = ``--store`` (the lean "ids" by default).
CONFIGS: list[tuple[str, str, dict[str, Any], str | None]] = [
    ("mpsender (defaults)", "mpsender", {}, None),
    ("mpsender (batch_size=1000)", "mpsender", {"batch_size": 1000}, None),
    ("segment (defaults)", "segment", {}, None),
    ("segment (fast)", "segment", {"max_queue_size": 1_000_000, "upload_size": 1000}, None),
    ("posthog (defaults)", "posthog", {}, None),
    ("posthog (fast)", "posthog", {"max_queue_size": 1_000_000, "flush_at": 1000, "gzip": True}, None),
    # the same as the second row, against the full SQLite store: what the earlier runs measured
    ("mpsender (batch_size=1000), SQLite collector", "mpsender", {"batch_size": 1000}, "sqlite"),
]

#: mpsender options that act in the sender only: a row changing only these has no
#: track() figures of its own (they would be the defaults' row again)
_SENDER_ONLY = {"batch_size", "batch_bytes", "flush_interval"}

#: mpsender's sender exits this long after its last client; the benchmark ends it anyway
_LINGER = 5.0


class Sender:
    """mpsender's sender for one row, started by this (thread-free) parent with the
    row's options, so the producers find it running as they would in production."""

    def __init__(self, url: str, opts: dict[str, Any]) -> None:
        import mpsender

        self.runtime_dir = new_runtime_dir()
        self.client = mpsender.Client(WRITE_KEY, url, runtime_dir=self.runtime_dir, linger=_LINGER, **opts)
        if not self.client.start(wait=10.0):
            raise RuntimeError("the sender did not start")
        self.pid = sender_pid(self.runtime_dir)
        self.cpu0 = proc_cpu(self.pid) if self.pid else float("nan")

    def cpu(self) -> float:
        return proc_cpu(self.pid) - self.cpu0 if self.pid else float("nan")

    def peak_rss(self) -> int | None:
        return proc_status(self.pid).get("VmHWM") if self.pid else None

    def close(self) -> None:
        self.client.shutdown(timeout=0.0)
        end_runtime_dir(self.runtime_dir)


def _spec(lib: str, opts: dict[str, Any], url: str, runtime_dir: str | None, n: int, **extra: Any) -> dict[str, Any]:
    spec = {"role": "run", "lib": lib, "opts": opts, "url": url, "runtime_dir": runtime_dir, "n": n}
    if lib == "mpsender":
        spec["opts"] = {**opts, "linger": _LINGER}
    spec.update(extra)
    return spec


def track_cost(lib: str, opts: dict[str, Any], calls: int, workdir: str, size: int | None = None,
               store: str = DEFAULT_STORE) -> dict[str, Any]:
    """One process, ``calls`` timed calls; its library delivers to the collector meanwhile."""
    collector = CollectorProcess(workdir, store, WRITE_KEY)
    sender = Sender(collector.url, opts) if lib == "mpsender" else None
    try:
        w = Worker.start(_spec(lib, opts, collector.url, sender.runtime_dir if sender else None, calls,
                              sync=False, finish=False, size=size), workdir)
        try:
            w.expect("ready")
            res = w.result(timeout=120)
            res["stderr_lines"] = w.stderr_lines()
        finally:
            w.kill()
        return res
    finally:
        if sender is not None:
            sender.close()
        collector.close()


def end_to_end(lib: str, opts: dict[str, Any], producers: int, events: int, workdir: str,
               size: int | None = None, timeout: float = 90.0, store: str = DEFAULT_STORE) -> dict[str, Any]:
    """``producers`` processes x ``events``, started together; until the collector has all."""
    total = producers * events
    collector = CollectorProcess(workdir, store, WRITE_KEY)
    sender = Sender(collector.url, opts) if lib == "mpsender" else None
    workers: list[Worker] = []
    try:
        for _ in range(producers):
            workers.append(Worker.start(_spec(lib, opts, collector.url, sender.runtime_dir if sender else None,
                                              events, sync=True, finish=True, size=size), workdir))
        for w in workers:
            w.expect("ready")
        collector.target(total)
        ccpu0 = collector.cpu()
        if sender is not None:
            sender.cpu0 = proc_cpu(sender.pid) if sender.pid else float("nan")
        for w in workers:
            w.go()
        deadline = time.monotonic() + timeout
        results = [w.result(timeout=max(1.0, deadline - time.monotonic())) for w in workers]
        # mpsender's producers are gone before the sender has sent everything; a peer's
        # flush() returned, so what is missing now is missing for good (a short grace).
        grace = max(1.0, deadline - time.monotonic()) if lib == "mpsender" else 3.0
        done = collector.wait(grace)
        ccpu = collector.cpu() - ccpu0
        cstats = collector.stats()
        timeline = collector.timeline()
        t0 = min(r["t_first"] for r in results)
        elapsed = (done["done_at"] - t0) if done["done_at"] else None
        out: dict[str, Any] = {
            "lib": lib, "store": store, "total": total, "elapsed": elapsed,
            "events_per_s": total / elapsed if elapsed else None,
            "delivered": done["distinct"], "stored": done["count"],
            "producers": results, "collector_cpu": ccpu, "requests": cstats["requests"],
            "request_errors": cstats["errors"], "timeline": timeline,
            "dropped_in_app": sum(r["dropped"] for r in results),
            "stderr_lines": sum(w.stderr_lines() for w in workers),
        }
        if sender is not None:
            out["sender_cpu"] = sender.cpu()
            out["sender_peak_rss"] = sender.peak_rss()
        return out
    finally:
        for w in workers:
            w.kill()
        if sender is not None:
            sender.close()
        collector.close()


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median events/s (an incomplete run counts as the slowest), with
    every run's events/s under ``"runs"``: on a shared machine one run is one sample."""
    ordered = sorted(runs, key=lambda r: r["events_per_s"] or 0.0)
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["runs"] = [r["events_per_s"] for r in runs]
    return chosen


def collector_ceiling(total: int, workdir: str, store: str = DEFAULT_STORE) -> dict[str, Any]:
    """events/s the collector stores when fed ready-made batches of 1000 over one connection."""
    collector = CollectorProcess(workdir, store, WRITE_KEY)
    w = Worker.start({"role": "blast", "n": total, "url": collector.url}, workdir)
    try:
        w.expect("ready")
        collector.target(total)
        ccpu0 = collector.cpu()
        w.go()
        res = w.result(timeout=120)
        done = collector.wait(10.0)
        elapsed = done["done_at"] - res["t_first"] if done["done_at"] else None
        return {"events_per_s": total / elapsed if elapsed else None, "delivered": done["distinct"],
                "total": total, "collector_cpu": collector.cpu() - ccpu0, "store": store,
                "load": os.getloadavg()[0]}
    finally:
        w.kill()
        collector.close()


def floor(calls: int, workdir: str) -> dict[str, Any]:
    w = Worker.start({"role": "floor", "n": calls, "workdir": workdir}, workdir)
    try:
        return w.result(timeout=120)
    finally:
        w.kill()


# --- the table ------------------------------------------------------------------------------


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def rss_growth(res: dict[str, Any]) -> int:
    """KiB of RSS gained between the first tenth of the calls and the end."""
    rss = res["rss"]
    return rss[-1] - rss[0] if len(rss) >= 2 else 0


def render_limits(ceilings: list[dict[str, Any]]) -> str:
    """The collector alone, every run of each store."""
    lines = ["| the collector alone (gzip batches of 1000, one connection) | store | events/s | delivered "
             "| collector CPU µs/event | load (1 min) |", "|---|---|---:|---:|---:|---:|"]
    for c in ceilings:
        ok = "✓" if c["delivered"] == c["total"] else "✗"
        lines.append(f"| limit | {c['store']} | {fmt(c['events_per_s'], ',.0f')} | {c['delivered']:,}/{c['total']:,} {ok} "
                     f"| {c['collector_cpu'] / c['total'] * 1e6:.1f} | {c['load']:.1f} |")
    return "\n".join(lines)


def render(rows: list[dict[str, Any]], fl: dict[str, Any] | None, ceilings: list[dict[str, Any]],
           args: argparse.Namespace) -> str:
    lines = []
    mp = next((r for r in rows if r["lib"] == "mpsender"), None)
    mp_median = mp["track"]["times"]["median"] if mp and mp.get("track") else None
    lines.append(f"{args.calls:,} track() calls, 8 properties · end to end {args.producers} producers × "
                 f"{args.events:,} events to the local collector · collector store: "
                 f"'{args.store}' unless the row says otherwise")
    lines.append("")
    lines.append("| library (setting) | collector store | track() median µs | track() p99 µs | × mpsender median "
                 "| e2e events/s | delivered | app peak RSS MiB | app RSS growth KiB "
                 "| sender peak RSS MiB | app CPU ms/1k ev | sender CPU ms/1k ev | collector CPU ms/1k ev |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        t = r.get("track")
        e = r.get("e2e")
        tm = t["times"] if t else None
        ratio = (tm["median"] / mp_median) if (tm and mp_median) else None
        if e:
            total = e["total"]
            ev = fmt(e["events_per_s"], ",.0f") if e["events_per_s"] else f"incomplete ({e['delivered']:,})"
            delivered = f"{e['delivered']:,}/{total:,}" + (" ✓" if e["delivered"] == total else " ✗")
            if e["stored"] != e["delivered"]:
                delivered += f" ({e['stored'] - e['delivered']} dup)"
            peak = max(p["peak_rss"] for p in e["producers"])
            app_cpu = sum(p["cpu"] for p in e["producers"]) / total * 1e6
            sender_cpu = fmt(e["sender_cpu"] / total * 1e6, ".1f") if "sender_cpu" in e else "(in app)"
            sender_rss = _mib(e.get("sender_peak_rss")) if "sender_cpu" in e else "(in app)"
            coll_cpu = fmt(e["collector_cpu"] / total * 1e6, ".1f")
            store = e.get("store", "-")
        else:
            ev = delivered = sender_cpu = sender_rss = coll_cpu = "-"
            store = r.get("store") or "-"
            peak = None
            app_cpu = None
        if t and peak is None:
            peak = t["peak_rss"]
        lines.append(
            f"| {r['label']} | {store} | {fmt(tm['median'] if tm else None, '.2f')} "
            f"| {fmt(tm['p99'] if tm else None, '.1f')} "
            f"| {fmt(ratio, '.1f')}× | {ev} | {delivered} | {_mib(peak)} | "
            f"{rss_growth(t) if t else '-'} | {sender_rss} | {fmt(app_cpu, '.1f')} | {sender_cpu} | {coll_cpu} |"
        )
    if fl is not None:
        for key, label in (("packb", "floor: msgpack.packb(record)"), ("packer", "floor: reused Packer.pack(record)"),
                           ("send", "floor: SEQPACKET send(frame)"), ("write", "floor: os.write(O_APPEND, frame)")):
            tm = fl[key]
            ratio = mp_median / tm["median"] if mp_median else None
            lines.append(f"| {label} | | {fmt(tm['median'], '.2f')} | {fmt(tm['p99'], '.1f')} "
                         f"| (track is {fmt(ratio, '.1f')}× this) | | | | | | | | |")
    for c in ceilings:
        ok = "✓" if c["delivered"] == c["total"] else "✗"
        lines.append(f"| limit: the collector alone (ready-made gzip batches of 1000, one connection) "
                     f"| {c['store']} | | | | {fmt(c['events_per_s'], ',.0f')} "
                     f"| {c['delivered']:,}/{c['total']:,} {ok} | | | | | | "
                     f"{c['collector_cpu'] / c['total'] * 1e6:.1f} |")
    lines.append("")
    if fl is not None:
        lines.append(f"Record: {fl['record_bytes']} bytes framed; timer overhead (two perf_counter_ns calls) "
                     f"median {fl['timer']['median']:.2f} µs, included in every figure.")
        lines.append("")
    lines.append("Details (end to end): producer time in track() loop / in the exit flush, s; app drops; "
                 "requests the collector answered (refused ones: 4xx/5xx)")
    lines.append("")
    lines.append("| library (setting) | track loop s (slowest producer) | exit flush s (slowest) "
                 "| dropped in app | stderr lines | track() p99.9 µs | track() max µs | e2e elapsed s "
                 "| requests (events/request) | refused requests | e2e events/s, every run |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        e = r.get("e2e")
        t = r.get("track")
        if not e:
            continue
        loop = max(p["t_tracked"] - p["t_first"] for p in e["producers"])
        fl_s = max(p["t_finished"] - p["t_tracked"] for p in e["producers"])
        lines.append(f"| {r['label']} | {loop:.2f} | {fl_s:.2f} | {e['dropped_in_app']:,} | {e['stderr_lines']:,} "
                     f"| {fmt(t['times']['p999'] if t else None, '.1f')} | {fmt(t['times']['max'] if t else None, '.0f')} "
                     f"| {fmt(e['elapsed'], '.2f')} | {e['requests']:,} ({e['stored'] / max(1, e['requests']):,.0f}) "
                     f"| {sum(e['request_errors'].values()) or 0} "
                     f"| {' / '.join(fmt(x, ',.0f') if x else 'incomplete' for x in e.get('runs', []))} |")
    return "\n".join(lines)


def targets(rows: list[dict[str, Any]]) -> str:
    out = ["Targets:"]

    def line(ok: bool | None, text: str) -> None:
        out.append(f"  [{'met' if ok else ('MISSED' if ok is not None else 'n/a')}] {text}")

    by = {r["label"]: r for r in rows}
    mp = by.get("mpsender (defaults)")
    mp_t = mp["track"]["times"] if mp and mp.get("track") else None
    if mp is not None and mp_t:
        line(mp_t["median"] <= 5.0, f"issue 2: track() median ≤ 5 µs: {mp_t['median']:.2f} µs")
        line(mp_t["median"] <= 3.0, f"issue 6: track() median ≤ 3 µs: {mp_t['median']:.2f} µs")
        line(mp_t["p99"] <= 30.0, f"issue 6: track() p99 ≤ 30 µs: {mp_t['p99']:.1f} µs")
        for r in rows:
            if r["lib"] != "mpsender" and r.get("track"):
                ratio = r["track"]["times"]["median"] / mp_t["median"]
                line(ratio >= 5.0, f"issue 6: ≥ 5× lower median than {r['label']}: {ratio:.1f}×")
        growth = rss_growth(mp["track"])
        line(growth <= 1024, f"issue 6: app RSS does not grow with events tracked: "
                             f"+{growth} KiB over the last 90% of {mp['track']['n']:,} calls")
    for r in rows:
        if r["lib"] != "mpsender" or not r.get("e2e"):
            continue
        e = r["e2e"]
        rate = e["events_per_s"] or 0.0
        complete = e["delivered"] == e["total"]
        where = f"{r['label']} [collector {e['store']}]"
        line(rate >= 100_000 and complete, f"issue 2: e2e ≥ 100k events/s, all delivered, {where}: "
                                           f"{rate:,.0f}/s, {e['delivered']:,}/{e['total']:,}")
        line(rate >= 150_000 and complete, f"issue 6: e2e ≥ 150k events/s, all delivered, {where}: "
                                           f"{rate:,.0f}/s, {e['delivered']:,}/{e['total']:,}")
        if "sender_cpu" in e:
            out.append(f"  [report] sender CPU per 1,000 events, {r['label']}: "
                       f"{e['sender_cpu'] / e['total'] * 1e6:.1f} ms")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=100_000, help="track() calls in the cost test")
    ap.add_argument("--producers", type=int, default=4)
    ap.add_argument("--events", type=int, default=50_000, help="events per producer, end to end")
    ap.add_argument("--only", default="", help="comma-separated substrings of row labels to run")
    ap.add_argument("--quick", action="store_true", help="10k calls, 4 x 10k events")
    ap.add_argument("--store", choices=("ids", "sqlite"), default=DEFAULT_STORE,
                    help="the collector's store for every row that does not name its own (default: ids)")
    ap.add_argument("--limit-runs", type=int, default=1, help="runs of the collector-alone limit, per store")
    ap.add_argument("--limits-only", action="store_true", help="measure only the collector alone, in both stores")
    ap.add_argument("--e2e-runs", type=int, default=1,
                    help="end-to-end runs per row; the row shows the median run, the details every run")
    ap.add_argument("--json", help="write the raw results here")
    args = ap.parse_args()
    if args.quick:
        args.calls, args.events = 10_000, 10_000
    workdir = tempfile.mkdtemp(prefix="mpb-work-", dir="/tmp")
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    try:
        print(machine_line(), flush=True)
        ceilings = [collector_ceiling(args.producers * args.events, workdir, store)
                    for _ in range(args.limit_runs) for store in ("ids", "sqlite")]
        if args.limits_only:
            print()
            print(render_limits(ceilings))
            print(f"\n(run took {time.monotonic() - started:.0f} s; load average at the end "
                  f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())})")
            return 0
        fl = floor(args.calls, workdir)
        wanted = [s for s in args.only.split(",") if s]
        for label, lib, opts, row_store in CONFIGS:
            if wanted and not any(s in label for s in wanted):
                continue
            store = row_store or args.store
            if row_store is not None and row_store == args.store and any(
                    r["lib"] == lib and r["opts"] == opts for r in rows):
                continue  # --store sqlite: that row is already the one above
            row: dict[str, Any] = {"label": label, "lib": lib, "opts": opts, "store": store}
            # the calling-thread cost does not depend on the sender's options (batch_size)
            if not (lib == "mpsender" and opts and set(opts) <= _SENDER_ONLY):
                row["track"] = track_cost(lib, opts, args.calls, workdir, store=store)
            row["e2e"] = median_run([end_to_end(lib, opts, args.producers, args.events, workdir, store=store)
                                     for _ in range(max(1, args.e2e_runs))])
            rows.append(row)
            print(f"  {label} [{store}]: done at {time.monotonic() - started:.0f} s · "
                  f"load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
        print()
        print(render(rows, fl, ceilings, args))
        print()
        print(targets(rows))
        print(f"\n(run took {time.monotonic() - started:.0f} s; load average at the end "
              f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())})")
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"machine": machine_line(), "floor": fl, "ceilings": ceilings, "rows": rows}, fh, indent=1)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
