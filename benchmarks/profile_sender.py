"""The sender's hot path in one process, without HTTP: spool read -> decode -> wire
encoding -> gzip -> commit. Prints CPU µs per event per stage and, with ``--profile``,
the top of a cProfile run (benchmarks only).

    .venv/bin/python benchmarks/profile_sender.py [--events 200000] [--batch-size 1000] [--profile]

The spool is filled with exactly the frames ``track()`` writes (same record, same
framing), split over ``--files`` write-ahead files as ``--files`` producers would. The
uploader is the real one; only its HTTP client is replaced by a stub answering 200, so
the figure is the sender's own CPU per event, which the end-to-end run cannot isolate
(there the collector shares the two cores). ``--http`` posts to a real local collector
(its lean in-memory store, as in ``bench_compare.py``) instead, to see the per-request
cost of httpx on top.

``--threads`` runs the uploader as the sender does: its own thread reading and encoding,
the posting thread gzipping, posting and committing, one batch handed over at a time. It
prints the CPU of each thread too; the difference from the default (one thread doing
every step in turn) is what the hand-over costs (benchmarks/profiles/sender.md).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import os
import pstats
import random
import shutil
import sys
import tempfile
import threading
import time
from typing import Any, ClassVar

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    EVENT,
    PROPERTIES,
    WRITE_KEY,
    CollectorProcess,
    padded_properties,
    proc_cpu,
    realistic_properties,
    realistic_user_id,
)

if "--no-orjson" in sys.argv or "--no-fast" in sys.argv:
    sys.modules["orjson"] = None  # type: ignore[assignment]  # as if the optional extra were not installed
if "--no-fast" in sys.argv:  # none of the fast extra: msgpack, json, zlib
    sys.modules["ormsgpack"] = None  # type: ignore[assignment]
    sys.modules["isal"] = None  # type: ignore[assignment]

from mpsender._events import pack
from mpsender._framing import frame
from mpsender._options import Options
from mpsender._sender.__main__ import SWITCH_INTERVAL, _collect_garbage_less_often
from mpsender._sender._spool import Counters, Spool
from mpsender._sender._uploader import Uploader


class _Response:
    status_code = 200
    text = '{"success":true}'
    content = b'{"success":true}'  # the uploader reads it for OTLP's partial success
    headers: ClassVar[dict[str, str]] = {}


class _StubHTTP:
    """Answers 200 at once; keeps the body sizes so the compression ratio can be shown."""

    def __init__(self) -> None:
        self.bytes = 0
        self.requests = 0

    def post(self, url: str, *, content: bytes, headers: dict[str, str]) -> _Response:
        self.bytes += len(content)
        self.requests += 1
        return _Response()

    def close(self) -> None:
        pass


def fill_spool(spool_dir: str, events: int, files: int, props: dict[str, Any] | None) -> int:
    """Write ``events`` frames as track() would, round-robin over ``files`` files;
    ``props`` None: a fresh request-like event each (``_common.realistic_properties``)."""
    prefix = os.urandom(8)
    seq = itertools.count(0x8000_0000_0000_0000)
    fds = [os.open(os.path.join(spool_dir, f"{1000 + i}-bench-{i}.wal"),
                   os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) for i in range(files)]
    size = 0
    chunks: list[list[bytes]] = [[] for _ in fds]
    now = time.time()
    rng = random.Random(1)
    for i in range(events):
        # what varies between real events varies here, so gzip sees a realistic ratio
        if props is None:
            rec = {"t": "track", "e": EVENT, "p": realistic_properties(i % files, i), "u": realistic_user_id(i % files, i),
                   "m": prefix + next(seq).to_bytes(8, "big"), "ts": now + i * 1e-4}
            data = frame(pack(rec))
            size += len(data)
            chunks[i % files].append(data)
            continue
        p = {**props, "order_id": f"ord-{rng.getrandbits(40):010x}", "revenue": round(rng.uniform(1, 500), 2),
             "items": rng.randrange(1, 9)}
        rec = {"t": "track", "e": EVENT, "p": p, "u": f"user-{rng.randrange(5000):04d}",
               "m": prefix + next(seq).to_bytes(8, "big"), "ts": now + i * 1e-4}
        data = frame(pack(rec))
        size += len(data)
        chunks[i % files].append(data)
    for fd, parts in zip(fds, chunks, strict=True):
        os.write(fd, b"".join(parts))
        os.close(fd)
    return size


def run(args: argparse.Namespace, url: str | None) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="mpb-spool-", dir="/tmp")
    try:
        props = None if args.realistic else padded_properties(args.size) if args.size else PROPERTIES
        spool_bytes = fill_spool(tmp, args.events, args.files, props)
        opts = Options(write_key=WRITE_KEY, endpoint=url or "http://127.0.0.1:9",
                       batch_size=args.batch_size, flush_interval=0.001, gzip=not args.no_gzip)
        counters = Counters()
        spool = Spool(tmp, counters)
        spool.discover()
        up = Uploader(opts, spool, counters, lambda: None, bytearray(64))
        stub = None
        if url is None:
            stub = _StubHTTP()
            up._http.close()
            up._http = stub  # type: ignore[assignment]
        up.urgent = True  # cut the last, partial batch at once
        prof = cProfile.Profile() if args.profile else None
        out: dict[str, Any] = {}
        c0 = time.process_time()
        t0 = time.perf_counter()
        if args.threads:
            done = _drain_threaded(up, counters, args.events)
        else:
            done = _drain_one_thread(up, args.events, prof)
        cpu = time.process_time() - c0
        wall = time.perf_counter() - t0
        if args.threads:
            out["threads_us_per_event"] = {t.name: proc_cpu(os.getpid(), t.native_id) / done * 1e6
                                           for t in threading.enumerate() if t.name.startswith("mpsender-")}
            up.stop(time.monotonic() + 5)
            up.join(10)
        out.update({"events": done, "cpu_us_per_event": cpu / max(done, 1) * 1e6,
                    "events_per_s_one_core": done / cpu if cpu else float("nan"),
                    "wall_s": wall, "spool_bytes": spool_bytes,
                    "wire_bytes": stub.bytes if stub else float("nan"),
                    "requests": stub.requests if stub else up.counters.requests})
        spool.close()
        if prof:
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(args.top)
            out["profile"] = s.getvalue()
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _drain_one_thread(up: Uploader, events: int, prof: cProfile.Profile | None) -> int:
    """Every step in turn in this thread, as one batch after another; events sent."""
    if prof:
        prof.enable()
    done = 0
    while done < events:
        batch = up._collect()
        if batch is None:
            break
        up.deliver(batch)
        done += sum(1 for e in batch if e.payload is not None)
    if prof:
        prof.disable()
    return done


def _drain_threaded(up: Uploader, counters: Counters, events: int) -> int:
    """The uploader's own two threads, until ``events`` are committed; events sent. Both
    threads start here, so their whole CPU time is this drain's."""
    delivered = threading.Event()

    def on_commit() -> None:
        if counters.uploaded >= events:
            delivered.set()

    up._on_commit = on_commit
    up.start()
    if not delivered.wait(120):
        raise RuntimeError(f"only {counters.uploaded} of {events} events delivered in 120 s")
    return counters.uploaded


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--realistic", action="store_true",
                    help="a fresh request-like event per record (20 keys, nested, as bench_paced.py)")
    ap.add_argument("--size", type=int, default=0, help="pad the record to about this many bytes")
    ap.add_argument("--no-gzip", action="store_true")
    ap.add_argument("--http", action="store_true", help="post to a real local collector")
    ap.add_argument("--threads", action="store_true",
                    help="the uploader's own two threads, as in the sender (CPU per thread shown)")
    ap.add_argument("--no-orjson", action="store_true", help="hide orjson, if installed")
    ap.add_argument("--no-fast", action="store_true", help="hide the whole fast extra (orjson, ormsgpack, isal)")
    ap.add_argument("--gc", default="", help="gc thresholds to set first, e.g. 50000,50,100; 'freeze' to "
                    "gc.freeze(); 'default' for CPython's (without it: the sender's own setting)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    if args.threads and args.profile:
        ap.error("--profile follows one thread: use it without --threads")
    if args.gc:
        import gc

        for part in args.gc.split("+"):
            if part == "freeze":
                gc.freeze()
            elif part != "default":
                gc.set_threshold(*(int(x) for x in part.split(",")))
    else:
        _collect_garbage_less_often()  # as the sender process does
    sys.setswitchinterval(SWITCH_INTERVAL)  # as the sender process does
    collector = None
    workdir = tempfile.mkdtemp(prefix="mpb-work-", dir="/tmp")
    try:
        if args.http:
            collector = CollectorProcess(workdir, store="ids", write_key=WRITE_KEY)
        res = run(args, collector.url if collector else None)
    finally:
        if collector:
            collector.close()
        shutil.rmtree(workdir, ignore_errors=True)
    prof = res.pop("profile", None)
    threads = res.pop("threads_us_per_event", None)
    mode = ", the uploader's two threads" if args.threads else ", one thread"
    print(f"{res['events']:,} events, batch_size {args.batch_size}, gzip {not args.no_gzip}, "
          f"{'HTTP to the local collector' if args.http else 'stub HTTP'}"
          f"{mode}: "
          f"{res['cpu_us_per_event']:.2f} µs CPU per event "
          f"({res['events_per_s_one_core']:,.0f} events/s on one core; {res['events'] / res['wall_s']:,.0f} "
          f"events/s wall), "
          f"{res['requests']} requests, spool {res['spool_bytes'] / res['events']:.0f} B/event, "
          f"wire {res['wire_bytes'] / max(res['events'], 1):.1f} B/event")
    if threads:
        print("  CPU µs per event by thread: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(threads.items())))
    if prof:
        print(prof)
    return 0


if __name__ == "__main__":
    sys.exit(main())
