"""gunicorn requests/s with one analytics event per request: mpsender, no tracking, and the
peers (segment-analytics-python, posthog) with their default setup and their fork fix.

    .venv/bin/python benchmarks/bench_gunicorn.py                  # ~2 min on 2 cores
    .venv/bin/python benchmarks/bench_gunicorn.py --quick          # a smoke run
    .venv/bin/python benchmarks/bench_gunicorn.py --no-preload     # app imported in each worker

Every row serves the same tiny WSGI app (``/page`` tracks ``Order Completed`` with the
8 properties of ``_common.PROPERTIES``; ``/health`` tracks nothing) from a real gunicorn,
4 sync workers, ``--preload`` by default (a common production setting: the app is
imported once in the master, then forked). A load process (``--concurrency`` threads,
``http.client``) sends ``--warmup`` then ``--requests`` requests; req/s is the second
phase. Then gunicorn gets TERM (a graceful stop: ``worker_exit`` hooks run), and after at
most ``--settle`` seconds the collector (``mpsender._collector.Collector`` in a process
of its own, a fresh database per row) is asked how many distinct events it holds:
delivered/N, with N every tracked request.

req/s is what a busy 2-core machine gives, and moves with anything else running on it;
the CPU columns (gunicorn's master and workers, all their threads, so a peer's upload
thread counts; and mpsender's sender) are the steadier measure of the cost.
``bench_paced.py`` measures each row against a baseline in its own workers instead
(:func:`run_blocks`), which a row run apart cannot match.

Rows:

* no tracking: the app without any library (the baseline of the ratio);
* mpsender: ``gunicorn.conf.py`` imports ``on_starting, post_fork, worker_exit, on_exit``
  from ``mpsender.integrations.gunicorn``; defaults (``flush_interval`` 1 s);
* <peer>, client at import: the client made at module level, as the quickstarts show.
  With ``--preload`` that is in the master, and its upload thread does not exist in
  the forked workers;
* <peer>, client in post_fork: the fix for pre-fork servers (posthog-python#290: make
  the client after the fork), plus ``shutdown()`` in ``worker_exit`` so a stopping
  worker flushes.

Nothing is sent anywhere but 127.0.0.1. Figures are printed as Markdown.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    EVENT,
    PROPERTIES,
    PYTHON,
    REPO,
    USER_ID,
    WRITE_KEY,
    CollectorProcess,
    end_runtime_dir,
    machine_line,
    new_runtime_dir,
    proc_cpu,
    sender_pid,
)

#: (label, BENCH_LIB, where the peer's client is made, the gunicorn conf to use)
ROWS: list[tuple[str, str, str, str]] = [
    ("no tracking", "none", "-", "plain"),
    ("mpsender (integrations.gunicorn hooks)", "mpsender", "-", "mpsender"),
    ("segment, client at import (default)", "segment", "import", "plain"),
    ("segment, client in post_fork (fix)", "segment", "post_fork", "peer_fix"),
    ("posthog, client at import (default)", "posthog", "import", "plain"),
    ("posthog, client in post_fork (fix)", "posthog", "post_fork", "peer_fix"),
]

APP = '''
"""The benchmark app: /page tracks one event with the library BENCH_LIB names."""
import json
import os

LIB = os.environ["BENCH_LIB"]
URL = os.environ["BENCH_COLLECTOR"]
KEY = os.environ["BENCH_WRITE_KEY"]
EVENT = os.environ["BENCH_EVENT"]
USER_ID = os.environ["BENCH_USER_ID"]
PROPERTIES = json.loads(os.environ["BENCH_PROPERTIES"])
client = None


def make_client():
    global client
    if LIB == "segment":
        from segment.analytics import Client
        client = Client(KEY, host=URL)
    elif LIB == "posthog":
        from posthog import Posthog
        client = Posthog(KEY, host=URL)


def close_client():
    if client is not None:
        client.shutdown()  # segment: flush() then join(); posthog: flush and stop its threads


if LIB in ("segment", "posthog") and os.environ["BENCH_SETUP"] == "import":
    make_client()
if LIB == "mpsender":
    import mpsender


def track():
    if LIB == "mpsender":
        mpsender.track(EVENT, user_id=USER_ID, properties=PROPERTIES)
    elif LIB == "segment":
        client.track(user_id=USER_ID, event=EVENT, properties=PROPERTIES)
    elif LIB == "posthog":
        client.capture(EVENT, distinct_id=USER_ID, properties=PROPERTIES)


def app(environ, start_response):
    if environ.get("PATH_INFO") != "/health":
        track()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
    return [b"ok\\n"]
'''

CONFS = {
    "plain": '"""No hooks."""\n',
    "mpsender": "from mpsender.integrations.gunicorn import on_exit, on_starting, post_fork, worker_exit  # noqa: F401\n",
    "peer_fix": textwrap.dedent('''
        """The peers' fix for pre-fork servers: a client per worker, flushed when it leaves."""
        import bench_app


        def post_fork(server, worker):
            bench_app.make_client()


        def worker_exit(server, worker):
            bench_app.close_client()
        '''),
}


# --- the load process ---------------------------------------------------------------------


def load_main(port: int, n: int, concurrency: int, path: str = "/page") -> None:
    """``n`` GETs of ``path`` from ``concurrency`` threads; prints {"elapsed", "ok", "failed"}."""
    counter = iter(range(n))
    lock = threading.Lock()
    ok = [0]
    failed = [0]
    go = threading.Event()

    def run() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        go.wait()
        while True:
            with lock:
                if next(counter, None) is None:
                    break
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
                good = resp.status == 200
            except (OSError, http.client.HTTPException):
                conn.close()
                good = False
            with lock:
                (ok if good else failed)[0] += 1
        conn.close()

    threads = [threading.Thread(target=run) for _ in range(concurrency)]
    for t in threads:
        t.start()
    started = time.perf_counter()
    go.set()
    for t in threads:
        t.join()
    print(json.dumps({"elapsed": time.perf_counter() - started, "ok": ok[0], "failed": failed[0]}))


def run_load(port: int, n: int, concurrency: int, path: str = "/page") -> dict[str, Any]:
    out = subprocess.run([PYTHON, os.path.abspath(__file__), "--_load", str(port), str(n), str(concurrency), path],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"the load process failed:\n{out.stderr}")
    return json.loads(out.stdout)  # type: ignore[no-any-return]


# --- one row -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree_cpu(pid: int) -> float:
    """CPU seconds of gunicorn's master and its live workers (all threads)."""
    import psutil

    total = 0.0
    try:
        master = psutil.Process(pid)
        for p in [master, *master.children()]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                continue
    except psutil.NoSuchProcess:
        pass
    return total


def _tree_cpu_ns(pid: int) -> tuple[int, int]:
    """(CPU ns of every thread, CPU ns of the main threads) of gunicorn's master and its
    live workers, in ns (/proc's ticks are 10 ms): a process's from its CPU-time clock
    (Linux's MAKE_PROCESS_CPUCLOCK), a main thread's from the scheduler's
    ``/proc/PID/task/PID/schedstat`` (another process's thread clock cannot be read)."""
    import psutil

    total = main = 0
    try:
        pids = [pid, *(c.pid for c in psutil.Process(pid).children())]
    except psutil.NoSuchProcess:
        return 0, 0
    for p in pids:
        try:
            with open(f"/proc/{p}/task/{p}/schedstat", "rb") as fh:
                on_cpu = int(fh.read().split()[0])
            total += time.clock_gettime_ns(((~p) << 3) | 2)
            main += on_cpu
        except (OSError, ValueError, IndexError):
            continue  # gone
    return total, main


def run_blocks(port: int, pid: int, requests: int, pairs: int, concurrency: int,
               sender: int | None) -> dict[str, float]:
    """The library's CPU per tracked request, against a baseline in the same workers:
    ``pairs`` pairs of blocks of ``requests // pairs`` GETs, /health (nothing tracked) then
    /page (one event). b = the main threads' CPU in the /health blocks per request (the
    server and the app without the library); the library's cost = (every thread's CPU over
    all blocks - b x every request) / tracked requests, so a peer's upload thread is
    charged whenever it runs (as in bench_paced.py). Needs Linux's CPU-time clocks."""
    block = max(1, requests // pairs)
    total0, _ = _tree_cpu_ns(pid)
    sender0 = proc_cpu(sender) if sender else 0.0
    base_main = 0
    base_n = tracked = 0
    elapsed = 0.0
    for _ in range(pairs):
        m0 = _tree_cpu_ns(pid)[1]
        run_load(port, block, concurrency, "/health")
        base_main += _tree_cpu_ns(pid)[1] - m0
        base_n += block
        res = run_load(port, block, concurrency, "/page")
        tracked += res["ok"]
        elapsed += res["elapsed"]
    total1, _ = _tree_cpu_ns(pid)
    b = base_main / base_n
    return {"base_us": b / 1000, "net_us": (total1 - total0 - b * (base_n + tracked)) / tracked / 1000,
            "sender_us": (proc_cpu(sender) - sender0) / tracked * 1e6 if sender else 0.0,
            "rps": tracked / elapsed, "tracked": tracked}


def _healthy(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        conn.request("GET", "/health")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except (OSError, http.client.HTTPException):
        return False


def run_row(lib: str, setup: str, conf: str, args: argparse.Namespace, workdir: Path,
            blocks: int = 0) -> dict[str, Any]:
    """One gunicorn for one row. ``blocks``: measure with :func:`run_blocks` (that many
    pairs of baseline and tracked blocks in these workers) instead of /page alone; the
    result then has its ``blocks`` figures too."""
    collector = CollectorProcess(str(workdir))
    runtime_dir = new_runtime_dir()
    port = _free_port()
    log = workdir / f"gunicorn-{lib}-{setup}-{time.monotonic_ns()}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPSENDER_")}
    env.update({
        "BENCH_LIB": lib, "BENCH_SETUP": setup, "BENCH_COLLECTOR": collector.url,
        "BENCH_WRITE_KEY": WRITE_KEY, "BENCH_EVENT": EVENT, "BENCH_USER_ID": USER_ID,
        "BENCH_PROPERTIES": json.dumps(PROPERTIES),
        "MPSENDER_ENDPOINT": collector.url, "MPSENDER_WRITE_KEY": WRITE_KEY,
        "MPSENDER_RUNTIME_DIR": runtime_dir, "MPSENDER_LINGER": "2",
        "PYTHONPATH": os.pathsep.join([str(workdir), str(REPO), env.get("PYTHONPATH", "")]),
    })
    cmd = [PYTHON, "-m", "gunicorn", "-c", str(workdir / f"conf_{conf}.py"), "-w", str(args.workers),
           "-k", "sync", "-b", f"127.0.0.1:{port}", *_no_control_socket(), "--log-level", "warning",
           "--graceful-timeout", "30", "--chdir", str(workdir)]
    if args.preload:
        cmd.append("--preload")
    cmd.append("bench_app:app")
    total = args.warmup + args.requests
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=str(workdir), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not _healthy(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not start:\n{log.read_text()}")
            time.sleep(0.05)
        collector.target(total)
        if args.warmup:
            run_load(port, args.warmup, args.concurrency)
        sender = sender_pid(runtime_dir)
        in_row = run_blocks(port, proc.pid, args.requests, blocks, args.concurrency, sender) if blocks else None
        if in_row is not None:
            total = args.warmup + int(in_row["tracked"])
            collector.target(total)
        cpu0 = _tree_cpu(proc.pid)
        sender_cpu0 = proc_cpu(sender) if sender else 0.0
        res = run_load(port, args.requests, args.concurrency) if in_row is None else {
            "ok": in_row["tracked"], "elapsed": in_row["tracked"] / in_row["rps"], "failed": 0}
        app_cpu = _tree_cpu(proc.pid) - cpu0
        sender_cpu = proc_cpu(sender) - sender_cpu0 if sender else None
        stop_started = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            pass  # a worker stuck in flush(): the killpg below ends it; the row says so
        stop_s = time.monotonic() - stop_started
        done = collector.wait(args.settle)
        stats = collector.stats()
        return {
            "rps": res["ok"] / res["elapsed"], "failed": res["failed"], "total": total,
            "app_cpu_ms": 1000 * app_cpu / args.requests,
            "sender_cpu_ms": None if sender_cpu is None else 1000 * sender_cpu / args.requests,
            "delivered": stats["distinct"], "stop_s": stop_s, "stopped": proc.returncode is not None,
            "all_at": done["done_at"], "blocks": in_row,
        }
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # stopped already
        proc.wait()
        end_runtime_dir(runtime_dir)
        collector.close()


# --- the table -----------------------------------------------------------------------------


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--_load":
        load_main(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), *sys.argv[5:6])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="measured requests per round")
    parser.add_argument("--warmup", type=int, default=300, help="requests before measuring (tracked too)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="rounds; req/s is the median")
    parser.add_argument("--settle", type=float, default=10.0,
                        help="seconds after the stop to wait for the collector to have every event")
    parser.add_argument("--no-preload", dest="preload", action="store_false")
    parser.add_argument("--quick", action="store_true", help="--requests 600 --warmup 100 --rounds 1 --settle 5")
    parser.add_argument("--only", action="append", default=[], metavar="WORD",
                        help="run only the rows whose label contains WORD (repeatable; 'no tracking' always runs)")
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.warmup, args.rounds, args.settle = 600, 100, 1, 5.0

    rows = [r for r in ROWS if r[1] == "none" or not args.only or any(w in r[0] for w in args.only)]
    results: dict[str, list[dict[str, Any]]] = {label: [] for label, *_ in rows}
    with tempfile.TemporaryDirectory(prefix="bench-gunicorn-") as tmp:
        workdir = Path(tmp)
        (workdir / "bench_app.py").write_text(APP)
        for name, text in CONFS.items():
            (workdir / f"conf_{name}.py").write_text(text)
        for r in range(args.rounds):
            for label, lib, setup, conf in rows:  # rounds interleave the rows: drift hits all alike
                row = run_row(lib, setup, conf, args, workdir)
                results[label].append(row)
                print(f"round {r + 1}/{args.rounds}  {label:<40} {row['rps']:8.0f} req/s  "
                      f"delivered {row['delivered']}/{row['total']}", file=sys.stderr)

    print(f"\n{machine_line()}\n")
    print(f"gunicorn {_gunicorn_version()}, {args.workers} sync workers, "
          f"{'--preload' if args.preload else 'no --preload'}, {args.concurrency} client threads, "
          f"{args.requests} measured requests x {args.rounds} rounds (median), one event per request\n")
    base = statistics.median(r["rps"] for r in results["no tracking"])
    base_cpu = statistics.median(r["app_cpu_ms"] for r in results["no tracking"])
    print("| setup | req/s | vs no tracking | delivered / N | gunicorn CPU ms/req | sender CPU ms/req "
          "| CPU vs no tracking | graceful stop |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, lib, _setup, _conf in rows:
        runs = results[label]
        rps = statistics.median(r["rps"] for r in runs)
        ratio = rps / base
        if lib == "none":
            delivered = "-"
        else:
            got, total = sum(r["delivered"] for r in runs), sum(r["total"] for r in runs)
            delivered = f"{got}/{total} ({100 * got / total:.1f}%)"
        stop = max(r["stop_s"] for r in runs)
        stop_text = f"{stop:.1f} s" + ("" if all(r["stopped"] for r in runs) else " (hung: killed)")
        failed = sum(r["failed"] for r in runs)
        app_cpu = statistics.median(r["app_cpu_ms"] for r in runs)
        sender_cpus = [r["sender_cpu_ms"] for r in runs if r["sender_cpu_ms"] is not None]
        sender_cpu = f"{statistics.median(sender_cpus):.3f}" if sender_cpus else "-"
        cpu_ratio = (app_cpu + (statistics.median(sender_cpus) if sender_cpus else 0.0)) / base_cpu
        print(f"| {label} | {rps:,.0f} | {ratio:.2f} | {delivered} | {app_cpu:.3f} | {sender_cpu} "
              f"| {cpu_ratio:.2f} | {stop_text} |"
              + (f" {failed} failed requests" if failed else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    return 0


def _no_control_socket() -> list[str]:
    """Recent gunicorn (27 here) opens a control socket (and a thread) in the master: not
    part of what is measured."""
    from gunicorn.config import KNOWN_SETTINGS

    return ["--no-control-socket"] if any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS) else []


def _gunicorn_version() -> str:
    from importlib.metadata import version

    return version("gunicorn")


if __name__ == "__main__":
    raise SystemExit(main())
