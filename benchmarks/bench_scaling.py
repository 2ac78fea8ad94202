"""How mpsender scales with producer processes and with the size of an event.

    .venv/bin/python benchmarks/bench_scaling.py                       # the full matrix, ~2-3 min
    .venv/bin/python benchmarks/bench_scaling.py --producers 1,4 --sizes 200
    .venv/bin/python benchmarks/bench_scaling.py --store sqlite        # against the full SQLite store

Each row is the end-to-end run of ``bench_compare.py`` (producers started together,
events/s from the first track() to the collector having stored them all, delivered =
distinct message ids), for 1, 2, 4, 8, 16 producer processes and events of about
200 B, 2 KB and 20 KB (the packed record; the 8 properties plus a padding string).
The total per row is fixed by size (``--events-200`` etc.) and split over the
producers, so every row moves about the same number of bytes and stays well under 20 s.
The collector runs with the lean store (``--store ids``, ``_lean_store.py``: every check and answer, only the
message ids kept) unless ``--store sqlite`` says otherwise, and checks the write key.

track() figures are per call in each producer, timed as in bench_compare.py, while
all producers, the sender and the collector share the machine: the median is the
middle producer's median, p99 the worst producer's p99.

Segment limits what a batch may hold (32 KB per event, 500 KB per request): at 20 KB a
request holds at most 24 events whatever ``batch_size`` says.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import DEFAULT_STORE, fmt, machine_line
from bench_compare import end_to_end


def row(producers: int, size: int, total: int, opts: dict[str, Any], workdir: str,
        store: str = DEFAULT_STORE) -> dict[str, Any]:
    per = max(1, total // producers)
    e = end_to_end("mpsender", opts, producers, per, workdir, size=size, timeout=60.0, store=store)
    prods = e["producers"]
    return {
        "producers": producers, "size": size, "total": e["total"],
        "events_per_s": e["events_per_s"], "delivered": e["delivered"],
        "mb_per_s": (e["events_per_s"] or 0) * size / 1e6,
        "track_median": statistics.median(p["times"]["median"] for p in prods),
        "track_p99": max(p["times"]["p99"] for p in prods),
        "sender_cpu_per_1k": e["sender_cpu"] / e["total"] * 1e6,
        "collector_cpu_per_1k": e["collector_cpu"] / e["total"] * 1e6,
        "app_cpu_per_1k": sum(p["cpu"] for p in prods) / e["total"] * 1e6,
        "elapsed": e["elapsed"],
    }


def render(rows: list[dict[str, Any]], opts: dict[str, Any], store: str = DEFAULT_STORE) -> str:
    lines = [f"mpsender {', '.join(f'{k}={v}' for k, v in opts.items()) or 'defaults'}; "
             f"collector store '{store}'; CPU columns are ms per 1,000 events", "",
             "| event size | producers | events | e2e events/s | MB/s (records) | delivered | track() median µs "
             "| track() p99 µs (worst producer) | app CPU | sender CPU | collector CPU |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ok = "✓" if r["delivered"] == r["total"] else f"✗ {r['delivered']:,}"
        lines.append(
            f"| {r['size']:,} B | {r['producers']} | {r['total']:,} | {fmt(r['events_per_s'], ',.0f')} "
            f"| {r['mb_per_s']:.1f} | {ok} | {r['track_median']:.2f} | {r['track_p99']:.1f} "
            f"| {r['app_cpu_per_1k']:.1f} | {r['sender_cpu_per_1k']:.1f} | {r['collector_cpu_per_1k']:.1f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--producers", default="1,2,4,8,16")
    ap.add_argument("--sizes", default="200,2000,20000", help="approximate packed event sizes, bytes")
    ap.add_argument("--events-200", type=int, default=100_000, help="events per row at ~200 B")
    ap.add_argument("--events-2000", type=int, default=30_000, help="events per row at ~2 KB")
    ap.add_argument("--events-20000", type=int, default=4_000, help="events per row at ~20 KB")
    ap.add_argument("--batch-size", type=int, default=1000,
                    help="mpsender batch_size (Segment's 500 KB request limit still applies)")
    ap.add_argument("--store", choices=("ids", "sqlite"), default=DEFAULT_STORE,
                    help="the collector's store (default: ids, the lean mode)")
    ap.add_argument("--json", help="write the raw results here")
    args = ap.parse_args()
    totals = {200: args.events_200, 2000: args.events_2000, 20000: args.events_20000}
    opts = {"batch_size": args.batch_size}
    workdir = tempfile.mkdtemp(prefix="mpb-work-", dir="/tmp")
    started = time.monotonic()
    rows = []
    try:
        print(machine_line(), flush=True)
        for size in (int(s) for s in args.sizes.split(",")):
            total = totals.get(size) or max(1000, 20_000_000 // size)
            for producers in (int(p) for p in args.producers.split(",")):
                r = row(producers, size, total, opts, workdir, args.store)
                rows.append(r)
                print(f"  {size} B x {producers} producers: {fmt(r['events_per_s'], ',.0f')} events/s "
                      f"({time.monotonic() - started:.0f} s, load {os.getloadavg()[0]:.1f})",
                      file=sys.stderr, flush=True)
        print()
        print(render(rows, opts, args.store))
        print(f"\n(run took {time.monotonic() - started:.0f} s; load average at the end "
              f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())})")
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"machine": machine_line(), "opts": opts, "store": args.store, "rows": rows}, fh, indent=1)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
