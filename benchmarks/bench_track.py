"""track() alone, in this process: a quick A/B tool for the calling-thread cost.

    .venv/bin/python benchmarks/bench_track.py [--calls 200000] [--rounds 5]
    BENCH_LIBPATH=/tmp/other-checkout .venv/bin/python benchmarks/bench_track.py

A ``Client`` with the benchmark's event (``_common.PROPERTIES``); each call timed alone
with ``perf_counter_ns`` into a preallocated array, ``--rounds`` rounds of ``--calls``,
the median and p99 of each round printed. A sender is started for the client (its
endpoint is a closed port on 127.0.0.1, so it keeps the events in the spool and retries):
what ``track()`` costs does not depend on the endpoint. ``bench_compare.py`` measures the
same thing in a fresh process with a live collector, against the peers; this one is
for comparing two versions of the library quickly (run them interleaved).

``--realistic``: each call tracks a fresh request-like event (``_common.realistic_properties``:
20 keys, nested, ~650 B as JSON, and a varying user id), built just before the call and
outside the timed region, as a request handler would build it (issue 15's event).

``--paced RATE``: the realistic event, one call every 1/RATE s (sleeping to absolute
deadlines, as ``bench_paced.py`` paces), so each call starts with what a request handler
has after waiting for its next request: caches that other work has had time to evict.
What one call costs then, not in a tight loop (benchmarks/README.md, "Request-like rates").

    .venv/bin/python benchmarks/bench_track.py --paced 250 --calls 1000 --rounds 3

``--floor``: instead of ``track()``, time what it cannot do without: pack the record
(``_events.pack``), frame it (length, CRC-32) and append it to a file with one ``os.write``;
with ``--paced``, at that pace. ``track()`` less this is what its checks, ids, clock and
Python cost.
"""

from __future__ import annotations

import argparse
import array
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    EVENT,
    PROPERTIES,
    USER_ID,
    WRITE_KEY,
    end_runtime_dir,
    new_runtime_dir,
    realistic_properties,
    realistic_user_id,
)

import mpsender


def _floor(directory: str) -> Any:
    """A stand-in for ``track()`` doing only what it must: pack, frame, one append."""
    from mpsender._events import MessageIds, pack
    from mpsender._framing import frame

    fd = os.open(os.path.join(directory, "floor.wal"), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    ids = MessageIds()

    def write(event: str, *, user_id: str, properties: dict[str, Any]) -> None:
        rec = {"t": "track", "e": event, "p": properties, "u": user_id, "m": ids.next(), "ts": time.time()}
        os.write(fd, frame(pack(rec)))

    return write


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--realistic", action="store_true", help="a fresh request-like event per call")
    ap.add_argument("--paced", type=float, default=0.0, metavar="RATE",
                    help="calls per second, paced (implies --realistic; use fewer --calls)")
    ap.add_argument("--floor", action="store_true",
                    help="time pack + frame + one os.write of the realistic record instead of track()")
    args = ap.parse_args()
    runtime_dir = new_runtime_dir()
    client = mpsender.Client(WRITE_KEY, "http://127.0.0.1:9", runtime_dir=runtime_dir, linger=0.5)
    try:
        if not client.start(wait=10.0):
            raise RuntimeError("the sender did not start")
        track, clock = client.track, time.perf_counter_ns
        if args.floor:
            track = _floor(runtime_dir)
        times = array.array("q", bytes(8 * args.calls))
        medians = []
        for _ in range(args.rounds):
            if args.paced:
                per, start = 1.0 / args.paced, time.monotonic()
                for i in range(args.calls):
                    deadline = start + i * per
                    while (left := deadline - time.monotonic()) > 0:
                        time.sleep(left)
                    props, user = realistic_properties(0, i), realistic_user_id(0, i)
                    t0 = clock()
                    track(EVENT, user_id=user, properties=props)
                    times[i] = clock() - t0
            elif args.realistic:
                for i in range(args.calls):
                    props, user = realistic_properties(0, i), realistic_user_id(0, i)
                    t0 = clock()
                    track(EVENT, user_id=user, properties=props)
                    times[i] = clock() - t0
            else:
                for i in range(args.calls):
                    t0 = clock()
                    track(EVENT, user_id=USER_ID, properties=PROPERTIES)
                    times[i] = clock() - t0
            ordered = sorted(times)
            median, p99 = ordered[len(ordered) // 2] / 1000, ordered[int(len(ordered) * 0.99)] / 1000
            medians.append(median)
            print(f"track() median {median:.2f} µs, p99 {p99:.2f} µs ({args.calls:,} calls)", flush=True)
        print(f"medians: {' / '.join(f'{m:.2f}' for m in medians)} µs · mpsender from "
              f"{os.path.dirname(os.path.dirname(mpsender.__file__))}")
    finally:
        client.shutdown(timeout=0.0)
        end_runtime_dir(runtime_dir)  # kills the sender by pid, removes the directory
    return 0


if __name__ == "__main__":
    sys.exit(main())
