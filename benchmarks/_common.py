"""Shared pieces of the benchmarks: the event, the machine, the collector process, the
sender's pid, and how a worker process is started and read. Benchmarks only.

Every measured process is a fresh interpreter started with ``subprocess`` (the parent
has no threads, and nothing it imported leaks into a measured process). A worker
prints one JSON line with its results; the parent prints tables.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PYTHON = sys.executable
#: where the measured mpsender is imported from: this checkout, or another one given
#: by BENCH_LIBPATH (to measure a change against the same harness and collector)
LIBPATH = os.environ.get("BENCH_LIBPATH") or str(REPO)
if LIBPATH != str(REPO):
    sys.path.insert(0, LIBPATH)

sys.path.insert(0, str(REPO / "tests"))
from support import kill_senders  # noqa: E402

# --- the workload: the same event for every library ------------------------------------

EVENT = "Order Completed"
USER_ID = "user-8d2c41"
#: 8 properties of mixed types (str, int, float, bool, None, list, nested dict); the same
#: dict object is passed to every library.
PROPERTIES: dict[str, Any] = {
    "order_id": "ord-20261123-0042",
    "revenue": 49.95,
    "items": 3,
    "coupon": None,
    "first_order": False,
    "currency": "EUR",
    "skus": ["sku-1", "sku-22", "sku-333"],
    "shipping": {"method": "express", "days": 2},
}
WRITE_KEY = "bench-write-key"


def padded_properties(size: int) -> dict[str, Any]:
    """The 8 properties, with a ``note`` string making the packed record about ``size`` bytes."""
    base = dict(PROPERTIES)
    import msgpack  # the record's size as the app writes it

    overhead = len(msgpack.packb({"t": "track", "e": EVENT, "u": USER_ID, "m": b"x" * 16,
                                  "ts": 1.0, "p": {**base, "note": ""}}))
    base["note"] = "x" * max(0, size - overhead)
    return base


def realistic_properties(w: int, seq: int) -> dict[str, Any]:
    """A fresh, request-like property dict for event ``seq`` of producer ``w``: 20 keys,
    nested three deep, ~650 bytes as compact JSON, every value derived from ``(w, seq)`` so no two
    events are the same object or the same content (a library cannot win by caching).

    The paced benchmark builds one per event in the app loop AND in its no-tracking
    baseline, so the builder's cost cancels out of the figures.
    """
    k = seq * 7919 + w * 104_729
    return {
        "order_id": f"ord-{w}-{seq:09d}",
        "revenue": round(5 + (k % 20_000) / 100, 2),
        "currency": ("EUR", "USD", "GBP", "JPY")[seq % 4],
        "items": 1 + k % 7,
        "coupon": None if seq % 5 else f"SAVE{k % 40}",
        "first_order": seq % 11 == 0,
        "skus": [f"sku-{(k + j * 31) % 9973}" for j in range(1 + seq % 4)],
        "shipping": {"method": ("express", "standard", "pickup")[k % 3], "days": k % 6,
                     "address": {"city": ("Lyon", "Leeds", "Porto", "Graz")[k % 4],
                                 "country": ("FR", "GB", "PT", "AT")[k % 4], "zip": f"{k % 99_999:05d}"}},
        "page": {"path": f"/checkout/step-{seq % 4}", "referrer": f"/cart?s={k % 997}", "title": "Checkout"},
        "campaign": {"source": ("mail", "search", "social")[k % 3], "medium": "email",
                     "name": f"w{k % 12}"},
        "session_id": f"sess-{w}-{seq // 40:07d}",
        "request_id": f"{k:012x}",
        "latency_ms": round((k % 9_000) / 37, 2),
        "experiment": {"name": "checkout-v2", "variant": "ab"[seq % 2], "bucket": k % 100},
        "device": {"type": ("desktop", "mobile")[k % 2], "os": ("Linux", "iOS", "Android")[k % 3],
                   "browser": f"Firefox {120 + k % 14}"},
        "client_ts": time.time(),
        "locale": ("fr-FR", "en-GB", "pt-PT", "de-AT")[k % 4],
        "cart_eur": round((k % 50_000) / 97, 2),
        "w": w,
        "seq": seq,
    }


def realistic_user_id(w: int, seq: int) -> str:
    """A user id that varies as it would across requests (one user per ~25 events)."""
    return f"user-{w}-{(seq * 7919) % 40_000 // 25:05d}"


# --- the machine -------------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    # orjson, ormsgpack and isal: mpsender's optional `fast` extra ("-": not installed, slower)
    for name, dist in (("mpsender", "mpsender"), ("msgpack", "msgpack"), ("httpx", "httpx"),
                       ("orjson", "orjson"), ("ormsgpack", "ormsgpack"), ("isal", "isal"),
                       ("segment", "segment-analytics-python"), ("posthog", "posthog")):
        try:
            from importlib.metadata import version

            versions[name] = version(dist)
        except Exception:  # noqa: BLE001 - not installed: say so in the table
            versions[name] = "-"
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
    }


def command_line() -> str:
    """The command that ran this, as it could be typed again from here."""
    exe = os.path.relpath(PYTHON) if PYTHON.startswith(os.getcwd() + os.sep) else PYTHON
    return " ".join(shlex.quote(a) for a in [exe, *sys.argv])


def machine_line() -> str:
    m = machine()
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{m['date']} · {m['nproc']} cores ({m['cpu']}) · Python {m['python']} · "
            f"Linux {m['kernel']} · {m['versions']} · load average {load} at start")


# --- numbers ---------------------------------------------------------------------------


def summarize_ns(samples: Sequence[int]) -> dict[str, float]:
    """Median, p99, p99.9, mean and max in µs of per-call timings in ns."""
    s = sorted(samples)
    n = len(s)
    if not n:
        return {"median": float("nan"), "p99": float("nan"), "p999": float("nan"),
                "mean": float("nan"), "max": float("nan"), "n": 0}
    return {
        "median": s[n // 2] / 1000, "p99": s[min(n - 1, int(n * 0.99))] / 1000,
        "p999": s[min(n - 1, int(n * 0.999))] / 1000, "mean": sum(s) / n / 1000,
        "max": s[-1] / 1000, "n": n,
    }


def rss_kib() -> int:
    """This process's resident set now, in KiB."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of ``pid``, in KiB."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def proc_cpu(pid: int, tid: int | None = None) -> float:
    """User + system CPU seconds of ``pid`` (all its threads), or of its thread ``tid``."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick


# --- the collector, in its own process ------------------------------------------------------


#: the collector's store for bench_compare's and bench_scaling's end-to-end figures: "ids"
#: (the lean store of _lean_store.py: every check and answer, only the message ids kept, in memory) so that
#: the figures measure the libraries, not the collector's SQLite
DEFAULT_STORE = "ids"


class CollectorProcess:
    """``mpsender._collector.Collector`` on 127.0.0.1 in a child process with a fresh store.

    ``store``: ``"sqlite"`` (every event in a fresh database file; the default, for the
    scripts that do not say) or ``"ids"`` (lean: the message ids in memory).
    ``write_key``: checked by the collector when given (every library here sends
    ``WRITE_KEY``); ``None`` checks nothing.
    """

    def __init__(self, workdir: str, store: str = "sqlite", write_key: str | None = None) -> None:
        self.db = os.path.join(workdir, f"collector-{time.monotonic_ns()}.db")
        self.store = store
        self._sql: sqlite3.Connection | None = None
        cmd = [PYTHON, str(HERE / "_collector_proc.py"), self.db, "--store", store]
        if write_key is not None:
            cmd += ["--write-key", write_key]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(REPO),
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        hello = json.loads(self.proc.stdout.readline())
        self.url: str = hello["url"]
        self.pid: int = hello["pid"]

    def _ask(self, msg: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the collector process died")
        return json.loads(line)  # type: ignore[no-any-return]

    def target(self, n: int) -> None:
        """Note the moment ``n`` events are stored (from now on)."""
        self._ask({"cmd": "target", "n": n})

    def wait(self, timeout: float) -> dict[str, Any]:
        """Wait up to ``timeout`` for the target; ``done_at`` is when it was reached."""
        return self._ask({"cmd": "wait", "timeout": timeout})

    def wait_count(self, n: int, timeout: float) -> dict[str, Any]:
        """Wait up to ``timeout`` for ``n`` stored events in all: ``target`` then ``wait``."""
        self.target(n)
        return self.wait(timeout)

    def count(self) -> int:
        """Events stored so far (a counter in the collector; cheap)."""
        return int(self._ask({"cmd": "count"})["count"])

    def stop(self) -> None:
        """An outage: the collector stops serving; its port refuses connections."""
        self._ask({"cmd": "stop"})

    def start(self) -> None:
        """The end of the outage: serving again on the same port, with the same store."""
        self._ask({"cmd": "start"})

    def stats(self) -> dict[str, Any]:
        return self._ask({"cmd": "stats"})

    def timeline(self) -> list[list[Any]]:
        """``[arrived_at (monotonic), events, status]`` of the last 1,000 requests."""
        return self._ask({"cmd": "timeline"})["requests"]  # type: ignore[no-any-return]

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    # The SQLite store only: its database, read from this process (WAL: a reader never
    # blocks the collector's writes).

    def sql(self, query: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.store != "sqlite":
            raise RuntimeError(f"sql() needs the SQLite store, not {self.store!r}")
        if self._sql is None:
            self._sql = sqlite3.connect(self.db, timeout=30.0)
        return self._sql.execute(query, args).fetchall()

    def last_id(self) -> int:
        """The id of the last event stored (0: none)."""
        return int(self.sql("SELECT coalesce(max(id), 0) FROM events")[0][0])

    def pairs(self, since: int = 0) -> Counter[tuple[int, int]]:
        """How many times each (properties.w, properties.seq) was stored, in rows after ``since``."""
        rows = self.sql("SELECT json_extract(payload, '$.properties.w'), "
                        "json_extract(payload, '$.properties.seq'), count(*) FROM events WHERE id > ? "
                        "GROUP BY 1, 2", (since,))
        return Counter({(w, q): n for w, q, n in rows if w is not None and q is not None})

    def close(self) -> None:
        if self._sql is not None:
            self._sql.close()
            self._sql = None
        stop_collector_process(self.proc, self.db, timeout=10)


def stop_collector_process(proc: subprocess.Popen[str], db: str, timeout: float) -> None:
    """End a collector process (end of stdin asks it to stop; killed past ``timeout``) and
    remove its database files."""
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for suffix in ("", "-wal", "-shm"):
        try:
            os.unlink(db + suffix)
        except FileNotFoundError:
            pass


# --- the mpsender sender -----------------------------------------------------------------------


def new_runtime_dir() -> str:
    """A short private runtime directory (socket paths must fit in 107 bytes)."""
    return tempfile.mkdtemp(prefix="mpb-", dir="/tmp")


def sender_pid(runtime_dir: str) -> int | None:
    for info in Path(runtime_dir).glob("*/sender.json"):
        try:
            return int(json.loads(info.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            continue
    return None


def end_runtime_dir(runtime_dir: str) -> None:
    """Kill every sender started under ``runtime_dir`` (by pid) and remove it."""
    kill_senders(runtime_dir)
    shutil.rmtree(runtime_dir, ignore_errors=True)


# --- workers ---------------------------------------------------------------------------------------


@dataclass
class Worker:
    """A measured process running ``_worker.py`` with a JSON spec."""

    proc: subprocess.Popen[str]
    stderr_path: str

    @classmethod
    def start(cls, spec: dict[str, Any], workdir: str, *, pythonpath: str | None = None) -> Worker:
        stderr_path = os.path.join(workdir, f"worker-{time.monotonic_ns()}.err")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath or LIBPATH, env.get("PYTHONPATH", "")]))
        env.pop("PYTHONSTARTUP", None)
        with open(stderr_path, "w") as err:
            proc = subprocess.Popen(
                [PYTHON, str(HERE / "_worker.py"), json.dumps(spec)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                cwd=str(REPO), env=env, start_new_session=True,
            )
        return cls(proc, stderr_path)

    def readline(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline()

    def expect(self, word: str) -> None:
        line = self.readline().strip()
        if line != word:
            raise RuntimeError(f"worker said {line!r}, expected {word!r}\n{self.stderr()}")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def result(self, timeout: float) -> dict[str, Any]:
        line = self.readline()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if not line:
            raise RuntimeError(f"worker exited {self.proc.returncode} without a result\n{self.stderr()}")
        return json.loads(line)  # type: ignore[no-any-return]

    def stderr(self) -> str:
        try:
            return Path(self.stderr_path).read_text()[-4000:]
        except OSError:
            return ""

    def stderr_lines(self) -> int:
        try:
            with open(self.stderr_path) as fh:
                return sum(1 for _ in fh)
        except OSError:
            return 0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def fmt(value: float | None, spec: str = ".1f") -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return format(value, spec)
