"""What analytics costs the host at request-like rates (issue 15, point 1): CPU per event of
the app processes and of mpsender's sender, side by side with segment-analytics-python
and posthog, in ONE run.

    .venv/bin/python benchmarks/bench_paced.py            # ~5 min on 2 cores
    .venv/bin/python benchmarks/bench_paced.py --quick    # 1.5 s per row, no gunicorn: a smoke run
    .venv/bin/python benchmarks/bench_paced.py --seconds 10 --rates 1000 --only mpsender

A tight loop says what one call costs; a web app tracks a few events per request, so at
100 to 10,000 events/s in all the sender's fixed costs (waking up, a request per batch)
are spread over few events. Each row: ``--rates`` events/s in total over 1 and 4 producer
processes (``--producers``), each a fresh interpreter that paces itself (event i at
``t0 + i / rate``, absolute deadlines) for ``--seconds`` (or ``--max-events`` per
producer, whichever is fewer events), building a fresh request-like event per deadline
(``_common.realistic_properties``: 20 keys, nested, ~650 B as JSON, values varying).

Each producer alternates blocks of ~``--block`` seconds (a whole number of events, the
same in every block): a baseline block, where each event is built and dropped, then a
tracked block, where each is built and tracked, and so on, as many of each. So the
baseline runs in the same process as the library, interleaved with it, and both see the
same caches, the same load of the machine and the same moment. (A baseline row run
apart, in other processes and earlier, made the app's cost the difference of two noisy
figures, its noise many times the cost of a call: benchmarks/README.md.) The row's rate
counts both kinds: the tracked events come at that rate during a tracked block and at
half of it on average, and every per-event figure below divides by them alone.

* app µs/event, per producer: b = the CPU of its main thread (``time.thread_time_ns``)
  in its baseline blocks / their events: building and pacing one event. Then

      app = (CPU of the whole process, every thread, from the first paced event to the
             end of the library's exit flush  -  b × every paced event, both kinds)
            / tracked events

  summed over the producers. What is left is what the library costs the app: the calls,
  its threads whenever they run (a peer's upload thread that delivers a tracked block's
  events during the next baseline block is counted, as it should be) and its exit
  flush. One thing is not counted: if a library's thread slows the main thread's own
  building and pacing (caches, the GIL's hand-offs), b grows by as much in both kinds of
  block and that cost is subtracted with it. mpsender runs no thread in the app, so this
  can only understate a peer's cost. A row that fell behind (see below) paces less
  exactly: its baseline blocks run flat out catching up.
* (1st / 2nd half): the same over the first and the second half of the pairs of blocks
  (the second takes the odd pair), each with its share of the exit flush: their spread
  is the row's noise.
* of which calling thread: the main thread's CPU in tracked blocks less b per tracked
  event: the part paid in the request's own thread (all of it for mpsender).
* the ``none`` rows (no tracking, null check) run the same blocks with nothing tracked in
  either kind: their app figure should be 0, and what it is instead is the method's
  noise at that rate; their baseline is the cost of building and pacing one event.
* sender µs/event: CPU of mpsender's sender process (every thread, ns clock) from the
  start signal until the collector holds every event, per tracked event; 0 for the
  peers (they have no sender process: their upload threads are in the app column).
* host µs/event = app + sender: what the host pays. The collector (the local stand-in
  for the endpoint, in its own process) is not counted.
* delivered/tracked: distinct message ids at the collector over events tracked (the
  producers' warm-up event included); ✗ marks a row missing any. "(behind)": the
  producers made less than 95% of the rate (the library, or the busy machine, could not
  keep up; deadlines are absolute, so a late producer runs flat out until it catches up).
* sender, loop only: its CPU until every producer's loop has ended, before the drain of
  the last partial batch and the clean-up after its clients leave (fixed costs of a row
  that a long-lived worker does not pay per event).

``--json FILE`` keeps every producer's blocks (kind, main thread's CPU, process's CPU, in
ns) beside the figures computed from them.

mpsender's sender is started by this parent with the row's options as in
``bench_compare.py``; a peer makes its client in each producer and flushes at the end.
A second table shows where the sender's CPU goes per event: its IO thread
(connections, control, doorbells), its uploader thread (tail the spool, decode, encode,
cut batches) and its poster thread (gzip, POST, commit), told apart by creation order.

Then the gunicorn benchmark's CPU per request (``bench_gunicorn.run_row``, 3,000 tracked
requests: 4 sync workers, one event per request, flat out), against a baseline in the same
workers the same way (``bench_gunicorn.run_blocks``: three pairs of blocks, /health then
/page; b from the main threads' CPU in the /health blocks, read from the scheduler in ns),
its no-tracking row a null check; unless ``--no-gunicorn``. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import WRITE_KEY, CollectorProcess, Worker, command_line, fmt, machine_line
from bench_compare import _LINGER, Sender

#: (label, library, options): each library's defaults and its fastest documented setting
#: (chosen in bench_compare.py, see benchmarks/README.md)
LIBS: list[tuple[str, str, dict[str, Any]]] = [
    ("mpsender (defaults)", "mpsender", {}),
    ("segment (defaults)", "segment", {}),
    ("segment (fast)", "segment", {"max_queue_size": 1_000_000, "upload_size": 1000}),
    ("posthog (defaults)", "posthog", {}),
    ("posthog (fast)", "posthog", {"max_queue_size": 1_000_000, "flush_at": 1000, "gzip": True}),
]


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, every thread) of another process, from its CPU-time
    clock (ns; /proc's ticks are 10 ms). The clock id is Linux's MAKE_PROCESS_CPUCLOCK."""
    try:
        return time.clock_gettime(((~pid) << 3) | 2)
    except OSError:
        return float("nan")


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds per thread id of ``pid`` (/proc/<pid>/task/*/schedstat, ns)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out[int(task.name)] = int((task / "schedstat").read_text().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            continue
    return out


#: the sender's threads in creation order: main (IO), then the uploader, which starts the poster
SENDER_THREADS = ("io", "uploader", "poster")


def run_row(label: str, lib: str, opts: dict[str, Any], rate: float, producers: int, block: int, pairs: int,
            workdir: str, settle: float) -> dict[str, Any]:
    """``producers`` paced producers at ``rate / producers`` events/s each, of ``pairs`` pairs
    of blocks of ``block`` events (a baseline block, then a tracked one)."""
    collector = CollectorProcess(workdir, "ids", WRITE_KEY)
    sender = Sender(collector.url, opts) if lib == "mpsender" else None
    workers: list[Worker] = []
    try:
        for w in range(producers):
            spec = {"role": "paced", "lib": lib, "opts": opts, "url": collector.url, "w": w,
                    "block": block, "pairs": pairs, "rate": rate / producers,
                    "runtime_dir": sender.runtime_dir if sender else None}
            if lib == "mpsender":
                spec["opts"] = {**opts, "linger": _LINGER}
            workers.append(Worker.start(spec, workdir))
        for wk in workers:
            wk.expect("ready")
        # only the tracked blocks' events are sent (+ each producer's warm-up event)
        tracked = producers * (pairs * block + 1) if lib != "none" else 0
        collector.target(tracked)
        s_cpu0 = process_cpu(sender.pid) if sender and sender.pid else 0.0
        s_threads0 = thread_cpu(sender.pid) if sender and sender.pid else {}
        for wk in workers:
            wk.go()
        results = [wk.result(timeout=2 * pairs * block / (rate / producers) + 120) for wk in workers]
        # every loop has ended (mpsender's producers exit at once): the sender's steady cost,
        # before the drain and the clean-up after its clients leave
        s_cpu_loop = process_cpu(sender.pid) - s_cpu0 if sender and sender.pid else 0.0
        done = collector.wait(settle if lib != "none" else 0.0)
        requests = collector.stats()["requests"]
        out: dict[str, Any] = {"requests": requests, "label": label, "lib": lib, "rate": rate, "producers": producers,
                               "block": block, "pairs": pairs, "tracked": tracked, "delivered": done["distinct"],
                               "stored": done["count"], "producer_results": results,
                               "stderr_lines": sum(wk.stderr_lines() for wk in workers)}
        if sender is not None and sender.pid:
            out["sender_cpu"] = process_cpu(sender.pid) - s_cpu0
            out["sender_cpu_loop"] = s_cpu_loop
            after = thread_cpu(sender.pid)
            tids = sorted(after)
            out["sender_threads"] = {SENDER_THREADS[i] if i < len(SENDER_THREADS) else f"thread-{i}":
                                     after[t] - s_threads0.get(t, 0.0) for i, t in enumerate(tids)}
            out["sender_delivered_at"] = done["done_at"]
        out["figures"] = per_event(out)
        return out
    finally:
        for wk in workers:
            wk.kill()
        if sender is not None:
            sender.close()
        collector.close()


def tracked_events(r: dict[str, Any]) -> int:
    """Events the producers tracked in their tracked blocks (the warm-ups left out): what
    every per-event figure divides by."""
    return int(r["producers"] * r["pairs"] * r["block"])


def app_cost(res: list[dict[str, Any]], part: slice, flush: float) -> dict[str, float]:
    """The library's CPU per tracked event in the producers over the blocks ``part`` (each
    producer's own: the list of its blocks in order), plus ``flush`` × its exit flush's CPU.

    Each producer: its baseline cost per paced event, b = this thread's CPU in the part's
    baseline blocks / their events; then (the process's CPU, every thread, over the part
    - b × every paced event of the part, both kinds) / the part's tracked events. Summed
    over the producers (each has the same number of events)."""
    lib_ns = base_ns = base_ev = tracked_ev = calling_ns = 0.0
    for p in res:
        blocks = p["blocks"][part]
        n0 = sum(1 for kind, _, _ in blocks if not kind) * p["block"]
        n1 = sum(1 for kind, _, _ in blocks if kind) * p["block"]
        b0 = sum(th for kind, th, _ in blocks if not kind)
        b1 = sum(th for kind, th, _ in blocks if kind)
        proc = sum(pr for _, _, pr in blocks) + flush * (p["cpu"] - p["cpu_loop"]) * 1e9
        if not n0 or not n1:
            return {"app": float("nan"), "baseline": float("nan"), "calling": float("nan")}
        b = b0 / n0
        lib_ns += proc - b * (n0 + n1)
        calling_ns += b1 - b * n1
        base_ns, base_ev, tracked_ev = base_ns + b0, base_ev + n0, tracked_ev + n1
    return {"app": lib_ns / tracked_ev / 1e3, "baseline": base_ns / base_ev / 1e3,
            "calling": calling_ns / tracked_ev / 1e3}


def per_event(r: dict[str, Any]) -> dict[str, float]:
    """The row's CPU figures in µs per tracked event (the warm-ups left out), the baseline's
    per paced event."""
    events = tracked_events(r)
    res = r["producer_results"]
    loop = max(p["t_loop"] - p["t_first"] for p in res)
    whole = app_cost(res, slice(None), flush=1.0)
    # the spread: the first and the second half of the pairs (the second has the odd one),
    # each with its share of the exit flush (which delivers what is left of both), so the
    # halves differ by noise and not by the flush
    mid = 2 * (r["pairs"] // 2)
    share = (r["pairs"] // 2) / r["pairs"]
    first = app_cost(res, slice(0, mid), flush=share) if mid else {"app": float("nan")}
    second = app_cost(res, slice(mid, None), flush=1.0 - share) if mid else {"app": float("nan")}
    loop_only = app_cost(res, slice(None), flush=0.0)
    return {"app": whole["app"], "app_first_half": first["app"], "app_second_half": second["app"],
            "app_loop": loop_only["app"], "baseline": whole["baseline"], "calling": whole["calling"],
            "sender": r.get("sender_cpu", 0.0) / events * 1e6,
            "sender_loop": r.get("sender_cpu_loop", 0.0) / events * 1e6,
            "achieved": sum(p["paced"] for p in res) / loop if loop > 0 else float("nan"),
            "late": sum(p["late"] for p in res), "dropped": sum(p["dropped"] for p in res)}


def render(rows: list[dict[str, Any]], gunicorn: list[dict[str, Any]] | None, args: argparse.Namespace) -> str:
    lines = ["| rate ev/s | producers | library (setting) | achieved ev/s | baseline µs/ev (in process) "
             "| app µs/ev (1st / 2nd half) | of which calling thread | sender µs/ev (to delivery) "
             "| sender µs/ev (loop only) | host µs/ev | × mpsender host | delivered / tracked |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    host_mp = {(r["rate"], r["producers"]): r["figures"]["app"] + r["figures"]["sender"]
               for r in rows if r["lib"] == "mpsender"}
    for r in rows:
        key = (r["rate"], r["producers"])
        pe = r["figures"]
        app = f"{fmt(pe['app'], '.1f')} ({fmt(pe['app_first_half'], '.1f')} / {fmt(pe['app_second_half'], '.1f')})"
        if r["lib"] == "none":
            sender = sender_loop = host = ratio = "-"
            delivered = "- (null check: nothing tracked)"
        else:
            sender = fmt(pe["sender"], ".1f") if r["lib"] == "mpsender" else "0"
            sender_loop = fmt(pe["sender_loop"], ".1f") if r["lib"] == "mpsender" else "0"
            host_v = pe["app"] + pe["sender"]
            host = fmt(host_v, ".1f")
            mp = host_mp.get(key)
            ratio = fmt(host_v / mp, ".1f") + "×" if mp and mp > 0 else "-"
            ok = r["delivered"] == r["tracked"]
            delivered = f"{r['delivered']:,}/{r['tracked']:,} {'✓' if ok else '✗ INCOMPLETE'}"
            if r["stored"] != r["delivered"]:
                delivered += f" ({r['stored'] - r['delivered']} dup)"
            if pe["dropped"]:
                delivered += f" ({pe['dropped']:,} dropped in app)"
        achieved = fmt(pe["achieved"], ",.0f") + (" (behind)" if pe["achieved"] < 0.95 * r["rate"] else "")
        lines.append(f"| {r['rate']:,.0f} | {r['producers']} | {r['label']} | {achieved} | {fmt(pe['baseline'], '.1f')} "
                     f"| {app} | {fmt(pe['calling'], '.1f')} | {sender} | {sender_loop} | {host} | {ratio} "
                     f"| {delivered} |")
    if gunicorn:
        for g in gunicorn:
            # against a baseline in the same workers (bench_gunicorn.run_blocks): the baseline
            # column is b, a /health request's CPU in the main threads; the app column the
            # library's CPU per tracked request; the no-tracking row a null check
            g_sender = "-" if g["sender_us"] is None else fmt(g["sender_us"], ".1f")
            lines.append(f"| flat out ({g['rps']:,.0f} req/s) | {args.gunicorn_workers} gunicorn workers "
                         f"| {g['label']} | - | {fmt(g['app_us'], '.1f')} | {fmt(g['net_us'], '.1f')} | - "
                         f"| {g_sender} | - | {fmt(g['host_us'], '.1f')} | - "
                         f"| {delivered_text(g['delivered'], g['total'])} |")
    return "\n".join(lines)


def delivered_text(delivered: int | None, total: int | None) -> str:
    if delivered is None or total is None:
        return "- (null check: nothing tracked)"
    return f"{delivered:,}/{total:,} {'✓' if delivered == total else '✗ INCOMPLETE'}"


def render_threads(rows: list[dict[str, Any]]) -> str:
    lines = ["| rate ev/s | producers | sender µs/ev | IO thread (connections, doorbells, control) "
             "| uploader (tail, decode, encode, cut) | poster (gzip, POST, commit) | requests (events/request) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "sender_threads" not in r:
            continue
        events = tracked_events(r)
        th = r["sender_threads"]
        cells = " | ".join(fmt(th.get(k, float("nan")) / events * 1e6, ".2f") for k in SENDER_THREADS)
        req = r["requests"]
        lines.append(f"| {r['rate']:,.0f} | {r['producers']} | {r['sender_cpu'] / events * 1e6:.2f} | {cells} "
                     f"| {req:,} ({r['stored'] / max(1, req):,.0f}) |")
    return "\n".join(lines)


def gunicorn_rows(args: argparse.Namespace, workdir: str) -> list[dict[str, Any]]:
    """bench_gunicorn's rows, each against a baseline in its own workers
    (``bench_gunicorn.run_blocks``: blocks of /health and /page requests in turn); the
    no-tracking row runs the same blocks as a null check."""
    import bench_gunicorn as bg

    # one round of bench_gunicorn's default counts (CPU from the kernel's ns clocks)
    g_args = argparse.Namespace(requests=args.gunicorn_requests, warmup=300, concurrency=8,
                                workers=args.gunicorn_workers, settle=5.0, preload=True)
    wd = Path(workdir) / "gunicorn"
    wd.mkdir()
    (wd / "bench_app.py").write_text(bg.APP)
    for name, text in bg.CONFS.items():
        (wd / f"conf_{name}.py").write_text(text)
    wanted = [r for r in bg.ROWS if r[1] == "none" or r[2] in ("-", "post_fork")]
    out = []
    for label, lib, setup, conf in wanted:
        res = bg.run_row(lib, setup, conf, g_args, wd, blocks=GUNICORN_PAIRS)
        blk = res["blocks"]
        sender_us = blk["sender_us"] if lib == "mpsender" else 0.0
        if lib == "none":
            out.append({"label": f"gunicorn: {label} (null check)", "rps": blk["rps"], "app_us": blk["base_us"],
                        "net_us": blk["net_us"], "sender_us": None, "host_us": None, "delivered": None,
                        "total": None})
            continue
        out.append({"label": f"gunicorn: {label}", "rps": blk["rps"], "app_us": blk["base_us"],
                    "net_us": blk["net_us"], "sender_us": sender_us, "host_us": blk["net_us"] + sender_us,
                    "delivered": res["delivered"], "total": res["total"]})
        print(f"  gunicorn {label}: done", file=sys.stderr, flush=True)
    return out


#: pairs of /health and /page blocks per gunicorn row
GUNICORN_PAIRS = 3


def blocks_of(rate: float, seconds: float, block_s: float, max_events: int) -> tuple[int, int]:
    """(events per block, pairs of blocks) for one producer at ``rate`` events/s: about
    ``block_s`` per block, at least two pairs when there are events enough (the halves),
    ``seconds`` in all (rounded down to whole pairs, at least one)."""
    paced = max(2, round(seconds * rate))
    if max_events:
        paced = max(2, min(paced, max_events))
    block = max(1, min(round(block_s * rate), paced // 4))
    return block, max(1, paced // (2 * block))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="100,1000,10000", help="total events/s, comma-separated")
    ap.add_argument("--producers", default="1,4", help="producer processes, comma-separated")
    ap.add_argument("--seconds", type=float, default=4.0,
                    help="paced seconds per row, baseline and tracked blocks together")
    ap.add_argument("--block", type=float, default=0.25, help="seconds per block (rounded to whole events)")
    ap.add_argument("--max-events", type=int, default=0,
                    help="cap on paced events per producer, both kinds (0: none)")
    ap.add_argument("--settle", type=float, default=15.0, help="seconds to wait for delivery after the loop")
    ap.add_argument("--only", default="", help="comma-separated substrings of library labels")
    ap.add_argument("--no-gunicorn", dest="gunicorn", action="store_false")
    ap.add_argument("--gunicorn-workers", type=int, default=4)
    ap.add_argument("--gunicorn-requests", type=int, default=3000, help="measured requests per gunicorn row")
    ap.add_argument("--no-sender-threads", dest="sender_threads", action="store_false",
                    help="leave out the table of mpsender's sender CPU by thread")
    ap.add_argument("--quick", action="store_true", help="--seconds 1.5 --no-gunicorn")
    ap.add_argument("--json", help="write the raw results here")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.gunicorn = 1.5, False
    rates = [float(x) for x in args.rates.split(",") if x]
    counts = [int(x) for x in args.producers.split(",") if x]
    wanted = [s for s in args.only.split(",") if s]
    libs = [c for c in LIBS if not wanted or any(s in c[0] for s in wanted)]
    started = time.monotonic()
    header = machine_line()
    print(header, flush=True)
    workdir = tempfile.mkdtemp(prefix="mpb-work-", dir="/tmp")
    rows: list[dict[str, Any]] = []
    gunicorn = None
    try:
        for rate in rates:
            for producers in counts:
                block, pairs = blocks_of(rate / producers, args.seconds, args.block, args.max_events)
                for label, lib, opts in [("no tracking (null check)", "none", {}), *libs]:
                    row = run_row(label, lib, opts, rate, producers, block, pairs, workdir, args.settle)
                    rows.append(row)
                    print(f"  {rate:,.0f}/s × {producers}: {label}: {row['delivered']}/{row['tracked']}, "
                          f"app {fmt(row['figures']['app'], '.1f')} µs/ev, "
                          f"at {time.monotonic() - started:.0f} s, load {os.getloadavg()[0]:.1f}",
                          file=sys.stderr, flush=True)
        if args.gunicorn:
            gunicorn = gunicorn_rows(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"`{command_line()}`")
    print()
    print(f"Paced: {args.seconds:g} s per row (fewer with --max-events), fresh ~650 B events of 20 keys, in "
          f"~{args.block:g} s blocks alternating between a baseline (built, not tracked) and tracked, in each "
          "producer; CPU in µs per tracked event; app: the producers' CPU (every thread, to the end of the "
          "exit flush) less their baseline blocks' CPU per event × every paced event; "
          "host = app + sender (the collector not counted).")
    print()
    print(render(rows, gunicorn, args))
    if not args.gunicorn:
        print("\n(gunicorn's CPU per request: run without --no-gunicorn, or "
              "`.venv/bin/python benchmarks/bench_gunicorn.py --quick`.)")
    if args.sender_threads:
        print()
        print(render_threads(rows))
    print(f"\n(run took {time.monotonic() - started:.0f} s; load average at the end "
          f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": header, "command": command_line(), "rows": rows, "gunicorn": gunicorn}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
