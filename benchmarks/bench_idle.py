"""What the sender costs while it can do nothing: a flush waiting on an endpoint that hangs,
fails or refuses the key. Benchmarks only: figures, not a pass/fail test.

    .venv/bin/python benchmarks/bench_idle.py [--seconds 3]

For each endpoint behaviour, one event is tracked and ``flush(timeout=--seconds)`` waits
(and gives up: nothing is accepted); the sender's CPU over that wait is printed. A sender
with nothing to send should sleep: a waiting flush once kept its reading thread spinning
(a whole core for as long as the flush waited).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import WRITE_KEY, end_runtime_dir, machine_line, new_runtime_dir, proc_cpu

import mpsender
from mpsender._collector import Collector, Faults

CASES = {
    "hangs (no answer)": Faults(hang=True),
    "fails (503)": Faults(status=503),
    "refuses the key (401)": Faults(status=401),
}


def measure(faults: Faults, seconds: float, workdir: Path) -> tuple[float, float]:
    """(sender CPU seconds, wall seconds) over one flush that waits ``seconds``."""
    runtime = new_runtime_dir()
    collector = Collector(workdir / f"idle-{time.monotonic_ns()}.db")
    collector.start()
    try:
        collector.set_faults(faults)
        client = mpsender.Client(write_key=WRITE_KEY, endpoint=collector.url, runtime_dir=runtime,
                                 request_timeout=seconds * 10, linger=1.0)
        client.track("idle", user_id="u")
        if not client.start(wait=10):
            raise RuntimeError("the sender did not start")
        stats = client.stats(timeout=5).sender
        assert stats is not None
        before, started = proc_cpu(stats.pid), time.monotonic()
        client.flush(timeout=seconds)
        return proc_cpu(stats.pid) - before, time.monotonic() - started
    finally:
        end_runtime_dir(runtime)
        collector.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="how long each flush waits (0.5..30)")
    args = ap.parse_args()
    if not 0.5 <= args.seconds <= 30:
        ap.error("--seconds must be within 0.5..30")
    print(f"# bench_idle\n\n{machine_line()}\n")
    print("| endpoint | flush waited | sender CPU | share of a core |\n|---|---|---|---|")
    workdir = Path(new_runtime_dir())
    try:
        for name, faults in CASES.items():
            cpu, wall = measure(faults, args.seconds, workdir)
            print(f"| {name} | {wall:.2f} s | {cpu:.3f} s | {cpu / wall:.1%} |", flush=True)
    finally:
        end_runtime_dir(str(workdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
