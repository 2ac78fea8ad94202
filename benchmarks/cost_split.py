"""Where the sender's CPU per event goes, stage by stage (issue 15, point 4).

    .venv/bin/python benchmarks/cost_split.py [--events-per-request 560] [--rounds 5]

Each stage of the sender's hot path is run on its own, in this process, on the paced
benchmark's request-like events (``_common.realistic_properties``: 20 keys, nested, ~650 B
as JSON), one request's worth at a time, keeping what the sender keeps (the wire bytes of a
batch until it is sent), so glibc's heap behaves as in the sender:

* read: ``_framing.scan`` of the frames as the spool holds them (length, CRC-32, slicing);
* decode: for a wire record (what ``track()`` writes for the Segment format with orjson
  installed, ``_wire_records``), reading its header and slicing out the JSON; for a packed
  record (``--packed``: without orjson, or another format), ``_events.unpack``;
* encode: nothing for a wire record (``track()`` made the JSON: its cost, ``app encode``, is
  shown apart, paid in the application); for a packed record ``SegmentEncoder.encode`` (the
  Segment event dict, its id and time, orjson);
* gzip: joining a request's events into the body and deflating it;
* HTTP: one POST of that body to a local collector process (httpx, the sender's client
  settings), the posting thread's CPU, spread over the request's events.

Not in the sender's total, for comparison: the same POST with the standard library's
``http.client`` on a kept-alive connection (what a leaner HTTP path than httpx's client
would save; the sender keeps httpx for its proxies, timeouts and TLS).

The figure per stage is the median of ``--rounds`` rounds, CPU time per event. What the
sender spends beyond their sum in ``bench_paced.py`` (its "sender µs/ev" less this total)
is waking up, looking at the spool (``stat``, ``pread``), cutting batches, committing,
housekeeping (``fsync`` once a second) and handing batches between its threads, and the
cold caches of doing all that a few times a second instead of in a loop.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import LIBPATH, CollectorProcess, realistic_properties, realistic_user_id

sys.path.insert(0, LIBPATH)

import httpx

from mpsender._events import MessageIds, pack, unpack
from mpsender._framing import frame, scan
from mpsender._version import __version__
from mpsender._wire import get_encoder, gzip_compress
from mpsender._wire_records import encode_record, read_record

_ENCODER = get_encoder("segment", write_key="k", library_name="mpsender", library_version=__version__)


def _records(n: int, offset: int) -> list[dict[str, Any]]:
    ids = MessageIds()
    now = time.time()
    return [{"t": "track", "e": "Order Completed", "p": realistic_properties(1, offset + i),
             "u": realistic_user_id(1, offset + i), "m": ids.next(), "ts": now + i * 1e-3}
            for i in range(n)]


def _wire(rec: dict[str, Any]) -> bytes:
    payload = encode_record(_ENCODER, rec, rec["ts"])  # type: ignore[arg-type]
    assert payload is not None
    return payload


def _cpu(fn: Callable[[], object]) -> float:
    t0 = time.thread_time_ns()
    fn()
    return (time.thread_time_ns() - t0) / 1000


def _round(enc: Any, client: httpx.Client, plain: http.client.HTTPConnection, url: httpx.URL, n: int, offset: int,
           packed: bool) -> dict[str, float]:
    """CPU µs of each stage for one request's worth of ``n`` events."""
    recs = _records(n, offset)
    payloads: list[bytes] = []
    app = _cpu(lambda: payloads.extend(pack(r) if packed else _wire(r) for r in recs))
    spool = b"".join(frame(p) for p in payloads)
    found: list[tuple[int, bytes]] = []
    records: list[Any] = []
    wires: list[bytes] = []
    if packed:
        times = {
            "read": _cpu(lambda: found.extend(scan(spool, final=True).payloads)),
            "decode": _cpu(lambda: records.extend(unpack(p) for _, p in found)),
            "encode": _cpu(lambda: wires.extend(enc.encode(rec) for rec in records)),
        }
    else:
        times = {
            "read": _cpu(lambda: found.extend(scan(spool, final=True).payloads)),
            "decode": _cpu(lambda: wires.extend(read_record(p)[2] for _, p in found)),
            "encode": 0.0,
        }
    req = enc.request_parts(wires, sent_at=time.time())
    body: list[bytes] = []
    times["gzip"] = _cpu(lambda: body.append(gzip_compress(req.body)))
    headers = {**req.headers, "Content-Encoding": "gzip"}
    answer: list[float] = []

    def post() -> None:
        answer.append(_cpu(lambda: client.post(url, content=body[0], headers=headers).raise_for_status()))

    t = threading.Thread(target=post)  # the posting thread's CPU alone
    t.start()
    t.join()
    times["HTTP"] = answer[0]

    def post_plain() -> None:
        def once() -> None:
            plain.request("POST", url.raw_path.decode("ascii"), body=body[0], headers=headers)
            reply = plain.getresponse()
            reply.read()
            assert reply.status == 200, reply.status

        answer.append(_cpu(once))

    t = threading.Thread(target=post_plain)
    t.start()
    t.join()
    times["http.client"] = answer[1]
    times["app encode"] = app
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events-per-request", type=int, default=560,
                    help="events per request (bench_paced.py's rows: ~550 at the default limits)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--packed", action="store_true",
                    help="packed records (the sender decodes and encodes), as without orjson")
    args = ap.parse_args()
    n = args.events_per_request
    enc = get_encoder("segment", write_key="k", library_name="mpsender", library_version=__version__)
    stages: dict[str, list[float]] = {k: [] for k in ("read", "decode", "encode", "gzip", "HTTP", "app encode",
                                                      "http.client")}
    workdir = tempfile.mkdtemp(prefix="mpb-split-")
    collector = CollectorProcess(workdir, "ids")
    try:
        client = httpx.Client(timeout=10.0)
        url = httpx.URL(collector.url.rstrip("/") + enc.path)
        plain = http.client.HTTPConnection(url.host, url.port, timeout=10.0)
        for r in range(args.rounds + 1):  # the first round warms up
            times = _round(enc, client, plain, url, n, r * n, args.packed)
            if r:
                for k, v in times.items():
                    stages[k].append(v / n)
        client.close()
        plain.close()
    finally:
        collector.close()
        shutil.rmtree(workdir, ignore_errors=True)
    total = 0.0
    print(f"CPU µs per event, {n} request-like events per request, median of {args.rounds} rounds "
          f"(mpsender from {LIBPATH}):")
    kind = "packed records" if args.packed else "wire records"
    for k, v in stages.items():
        m = statistics.median(v)
        if k == "app encode":
            print(f"  {'sender':<10} {total:6.2f}   ({kind})")
            print(f"  {k:<10} {m:6.2f}   (in track(): {'pack' if args.packed else 'encode_record'})")
            continue
        if k == "http.client":
            print(f"  {k:<10} {m:6.2f}   (the same POST with the standard library, for comparison: "
                  f"not in the sender's total; min {min(v):.2f}, max {max(v):.2f})")
            continue
        total += m
        print(f"  {k:<10} {m:6.2f}   (min {min(v):.2f}, max {max(v):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
