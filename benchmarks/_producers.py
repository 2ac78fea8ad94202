"""Applications for the durability experiments: a fresh runtime directory and sender,
and producer processes calling ``mpsender.track()``. Benchmarks only.

A producer is a fresh interpreter configured by ``MPSENDER_*`` (``Run.env``); each
event carries the producer's number ``w`` and a sequence number ``seq`` in its
properties, so the collector's rows can be compared with what each ``track()``
returned for (``CollectorProcess.pairs``).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _common import PROPERTIES, PYTHON, REPO, WRITE_KEY, end_runtime_dir, new_runtime_dir
from support import app_env, live_sender_pids  # tests/, put on the path by _common


def wait_sender(runtime_dir: str, exclude: set[int], timeout: float) -> int | None:
    """The pid of a live sender under ``runtime_dir`` other than ``exclude``; None past ``timeout``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pids = live_sender_pids(runtime_dir) - exclude
        if pids:
            return int(min(pids))
        time.sleep(0.05)
    return None


def sender_log_problems(runtime_dir: str) -> Counter[str]:
    """WARNING and ERROR lines of the senders' log, by level and the start of the message."""
    found: Counter[str] = Counter()
    for log in Path(runtime_dir).glob("*/sender.log*"):
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            for level in (" WARNING ", " ERROR "):
                if level in line:
                    message = line.split(level, 1)[1].split(": ", 1)[-1]
                    found[f"{level.strip()} {message[:60]}"] += 1
    return found


#: run with a Run's env: starts (or finds) the sender and exits 0 once it listens
STARTER = r"""
import sys
import mpsender
sys.exit(0 if mpsender.get_client().start(wait=10.0) else 1)
"""


class Run:
    """Applications configured by ``MPSENDER_*`` in a fresh runtime directory (so a fresh
    sender and spool), cleaned up by pid."""

    def __init__(self, url: str, **options: object) -> None:
        self.dir = new_runtime_dir()
        self.env = app_env(url, self.dir, write_key=WRITE_KEY, **options)

    def sender(self, timeout: float = 10.0, exclude: set[int] | None = None) -> int | None:
        return wait_sender(self.dir, exclude or set(), timeout)

    def senders(self) -> set[int]:
        """The pids of the senders alive under this runtime directory now."""
        return live_sender_pids(self.dir)

    def start_sender(self) -> bool:
        return subprocess.run([PYTHON, "-c", STARTER], env=self.env, cwd=str(REPO), timeout=30,
                              check=False).returncode == 0

    def spool_bytes(self) -> int:
        return sum(f.stat().st_size for f in Path(self.dir).glob("*/spool/*.wal"))

    def log_problems(self) -> Counter[str]:
        return sender_log_problems(self.dir)

    def close(self) -> None:
        end_runtime_dir(self.dir)


# --- producers: fresh interpreters calling mpsender.track() --------------------------------------

PRODUCER = r"""
import json, os, signal, sys, time
import mpsender

spec = json.loads(sys.argv[1])
mpsender.init()   # every option from MPSENDER_*
stop = []
signal.signal(signal.SIGUSR1, lambda *_: stop.append(1))
print("ready", flush=True)
sys.stdin.readline()
w, n, rate, props = spec["w"], spec["n"], spec["rate"], spec["props"]
interval = 1.0 / rate if rate else 0.0
track = mpsender.track
seq = 0
t_first = time.monotonic()
while not stop and (n == 0 or seq < n):
    p = dict(props)
    p["w"] = w
    p["seq"] = seq
    track("Order Completed", user_id="user-8d2c41", properties=p)
    seq += 1   # track() returned for seq - 1
    if interval:
        delay = t_first + seq * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
t_last = time.monotonic()
print(json.dumps({"w": w, "sent": seq, "t_first": t_first, "t_last": t_last}), flush=True)
os._exit(0)   # as a SIGKILLed or recycled worker would: nothing is flushed at exit
"""


class Producers:
    """``count`` producer processes, each tracking ``events`` events (0: until ``stop()``)
    at ``rate`` events/s (0: flat out), numbered ``w`` in the properties with a ``seq``."""

    def __init__(self, env: dict[str, str], count: int, *, events: int, rate: float) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        for w in range(count):
            spec = {"w": w, "n": events, "rate": rate, "props": PROPERTIES}
            self.procs.append(subprocess.Popen(
                [PYTHON, "-c", PRODUCER, json.dumps(spec)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                text=True, env=env, cwd=str(REPO), start_new_session=True))
        for p in self.procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a producer did not start")

    def go(self) -> None:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()

    def stop(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGUSR1)

    def results(self, timeout: float) -> list[dict[str, Any]]:
        """Each producer's ``{"w", "sent", "t_first", "t_last"}`` once it has exited."""
        out = []
        for p in self.procs:
            stdout, _ = p.communicate(timeout=timeout)
            out.append(json.loads(stdout.strip().splitlines()[-1]))
        return out

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
