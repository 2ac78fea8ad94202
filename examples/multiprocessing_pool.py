"""Events from a multiprocessing.Pool: fork, spawn or forkserver children, one sender.

    export MPSENDER_WRITE_KEY=...  MPSENDER_ENDPOINT=https://api.segment.io
    python examples/multiprocessing_pool.py --items 1000 --start-method spawn

The parent calls init() once. Forked children inherit the client; spawn and forkserver
children, fresh interpreters that never call init(), find the same options through the
file init() published (MPSENDER_CLIENT_CONFIG), so every child sends through the host's
one sender. A child needs no flush and no shutdown: its events are on disk when track()
returns, even if the pool terminates it (as ``with Pool(...)`` does on exit).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time

import mpsender


def handle(item: int) -> int:
    """The work of one item, in a pool process."""
    mpsender.track("Item Processed", anonymous_id="batch-job",
                   properties={"item": item, "worker_pid": os.getpid()})
    return item * item


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--start-method", choices=multiprocessing.get_all_start_methods(), default="spawn")
    args = parser.parse_args()

    mpsender.init()  # options from MPSENDER_*; starts (or finds) the host's sender
    started = time.monotonic()
    ctx = multiprocessing.get_context(args.start_method)
    with ctx.Pool(args.processes) as pool:
        total = sum(pool.map(handle, range(args.items), chunksize=16))
    mpsender.track("Batch Finished", anonymous_id="batch-job",
                   properties={"items": args.items, "seconds": time.monotonic() - started})
    # The parent's own events; the children's are in their spool files, and the sender
    # delivers them whether or not anyone waits.
    delivered = mpsender.flush(timeout=10.0)
    print(f"{args.items} items in {args.processes} {args.start_method} processes, "
          f"sum of squares {total}; parent's events confirmed: {delivered}")
    return 0 if delivered else 1


if __name__ == "__main__":
    raise SystemExit(main())
