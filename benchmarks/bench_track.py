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
"""

from __future__ import annotations

import argparse
import array
import os
import sys
import time

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--realistic", action="store_true", help="a fresh request-like event per call")
    args = ap.parse_args()
    runtime_dir = new_runtime_dir()
    client = mpsender.Client(WRITE_KEY, "http://127.0.0.1:9", runtime_dir=runtime_dir, linger=0.5)
    try:
        if not client.start(wait=10.0):
            raise RuntimeError("the sender did not start")
        track, clock = client.track, time.perf_counter_ns
        times = array.array("q", bytes(8 * args.calls))
        medians = []
        for _ in range(args.rounds):
            if args.realistic:
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
