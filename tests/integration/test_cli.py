"""The command line, run as a user runs it: ``python -m mpsender ...`` in a subprocess,
its output and exit code checked against what really happened (SQLite, processes, files)."""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import os
import re
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from support import REPO, app_env, check, live_sender_pids, run_app, wait_for, without_mpsender

from mpsender._collector import Collector, Faults

pytestmark = pytest.mark.timeout(90)


# --- helpers ---------------------------------------------------------------------------------


def cli_env(**extra: str) -> dict[str, str]:
    """The user's environment without MPSENDER_*, with this checkout importable."""
    env = without_mpsender()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60.0,
        stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mpsender", *args], env=env or cli_env(), input=stdin,
                          capture_output=True, text=True, timeout=timeout, cwd=str(REPO))


def show(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def one_line_error(proc: subprocess.CompletedProcess[str], text: str) -> None:
    """A failure a user can act on: non-zero, one line naming it, no traceback."""
    assert proc.returncode != 0, show(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, show(proc)
    assert lines[0].startswith("mpsender: ") and text in lines[0], show(proc)
    assert "Traceback" not in proc.stderr


def app_sending(endpoint: str, runtime_dir: str, n: int, name: str = "Signed Up", *, flush: float = 10.0,
                **options: object) -> bool:
    """Run an application process that tracks ``n`` events and flushes; True if the flush completed."""
    code = f"""
        import mpsender
        mpsender.init()
        for i in range({n}):
            mpsender.track({name!r}, user_id=f"user-{{i}}", properties={{"i": i}})
        print(mpsender.flush({flush}))
    """
    return check(run_app(code, app_env(endpoint, runtime_dir, **options))).strip() == "True"


class Collect:
    """``python -m mpsender collect`` in its own session; ready once it printed its URL."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mpsender", "collect", *args], env=cli_env(), cwd=str(REPO),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
        self.out = b""
        self.err = b""
        self.url = ""

    def wait_ready(self, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(rb"listening on (http://\S+)\n", self.out)
            if match:
                self.url = match.group(1).decode()
                return self.url
            remaining = deadline - time.monotonic()
            assert remaining > 0 and self.proc.poll() is None, f"collect did not start:\n{self.output()}"
            self._read(remaining)

    def _read(self, timeout: float) -> None:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        ready, _, _ = select.select([self.proc.stdout, self.proc.stderr], [], [], timeout)
        for stream in ready:
            chunk = os.read(stream.fileno(), 65536)
            if stream is self.proc.stdout:
                self.out += chunk
            else:
                self.err += chunk

    def read_until(self, pattern: bytes, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.out):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None:
                return False
            self._read(min(remaining, 0.2))
        return True

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, as a service manager would; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            out, err = self.proc.communicate()
        self.out += out
        self.err += err
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.communicate()

    def output(self) -> str:
        return f"stdout:\n{self.out.decode(errors='replace')}\nstderr:\n{self.err.decode(errors='replace')}"


@pytest.fixture
def collect() -> Iterator[type[Collect]]:
    """Start ``mpsender collect`` subprocesses; every one is ended at teardown."""
    started: list[Collect] = []

    class Tracked(Collect):
        def __init__(self, *args: str) -> None:
            super().__init__(*args)
            started.append(self)

    yield Tracked
    for c in started:
        c.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# --- demo ------------------------------------------------------------------------------------


def test_readme_demo_command_as_written() -> None:
    """`python -m mpsender demo`, exactly as the README has it, delivers everything and leaves nothing behind.

    The README's line is `pip install -e . && python -m mpsender demo`; CI has already run the
    install, so this runs the second half, with the project's interpreter and no options."""
    proc = subprocess.run([sys.executable, "-m", "mpsender", "demo"], env=cli_env(), capture_output=True,
                          text=True, timeout=60, cwd=str(REPO))
    pids = {int(pid) for pid in re.findall(r"\(pid (\d+)\)|sender\s+pid (\d+)", proc.stdout)
            for pid in pid if pid}
    try:
        assert proc.returncode == 0, show(proc)
        assert "tracked 8,000 · delivered 8,000 (100.0%) · lost 0" in proc.stdout, show(proc)
        assert re.search(r"p50 [\d.]+ ms · p90 [\d.]+ ms · p99 [\d.]+ ms", proc.stdout), show(proc)
        assert "uploaded 8,000" in proc.stdout, show(proc)
        assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, show(proc)
        db = re.search(r"SQLite file: (\S+)", proc.stdout)
        assert db, show(proc)
        assert not Path(db.group(1)).parent.exists(), "the demo left its temporary directory"
        assert len(pids) == 2, show(proc)  # the collector and the sender
        assert all(gone(pid) for pid in pids), "the demo left a process running"
    finally:
        for pid in pids:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_demo_numbers_match_the_sqlite_file(tmp_path: Path, runtime_dir: str) -> None:
    """Every number the demo prints (totals, per-worker rows, latency) is what the SQLite file holds."""
    db = tmp_path / "demo.db"
    proc = cli("demo", "--workers", "3", "--events", "400", "--rate", "2000", "--db", str(db),
               "--runtime-dir", runtime_dir)
    assert proc.returncode == 0, show(proc)
    with contextlib.closing(sqlite3.connect(db)) as conn:  # `with conn` alone does not close it
        rows = conn.execute("SELECT message_id, received_at, payload FROM events").fetchall()
    distinct = {mid for mid, _, _ in rows}
    per_worker: dict[int, int] = {}
    latencies = []
    for _, received_at, payload in rows:
        props = json.loads(payload)["properties"]
        per_worker[props["worker"]] = per_worker.get(props["worker"], 0) + 1
        latencies.append((received_at - props["t0"]) * 1000)
    assert len(rows) == len(distinct) == 1200
    head = re.search(r"tracked ([\d,]+) · delivered ([\d,]+) \(100\.0%\) · lost 0 · duplicates 0", proc.stdout)
    assert head and head.group(1) == head.group(2) == "1,200", show(proc)
    table = re.findall(r"^(\d+)\s+(\d+)\s+([\d,]+)\s+([\d,]+)\s", proc.stdout, re.M)
    assert {int(w): int(d.replace(",", "")) for w, _, _, d in table} == per_worker == {0: 400, 1: 400, 2: 400}
    assert all(t == "400" for _, _, t, _ in table)
    printed = re.search(r"max ([\d.]+) ms", proc.stdout)
    assert printed and float(printed.group(1)) == pytest.approx(max(latencies), abs=0.06), show(proc)
    assert f"SQLite file: {db}" in proc.stdout
    assert not live_sender_pids(runtime_dir), "the demo's sender is still running"


# --- collect ----------------------------------------------------------------------------------


def test_collect_stores_the_three_formats_and_rejects_bad_requests(tmp_path: Path, collect: type[Collect]) -> None:
    """collect stores Segment, PostHog and JSON batches (gzip or not), checks the key, answers 400 with a reason."""
    db = tmp_path / "c.db"
    server = collect("--port", "0", "--db", str(db), "--write-key", "s3cret", "--tail")
    url = server.wait_ready()
    basic = "Basic " + base64.b64encode(b"s3cret:").decode()
    seg = {"batch": [{"type": "track", "event": "Seg Event", "userId": "u1", "messageId": "m-1"}],
           "sentAt": "2026-01-01T00:00:00.000Z"}
    with httpx.Client(base_url=url, timeout=10) as http:
        r = http.post("/v1/batch", content=gzip.compress(json.dumps(seg).encode()),
                      headers={"Authorization": basic, "Content-Encoding": "gzip",
                               "Content-Type": "application/json"})
        assert r.status_code == 200, r.text
        r = http.post("/batch/", json={"api_key": "s3cret", "batch": [
            {"event": "PH Event", "distinct_id": "u2", "uuid": "m-2", "properties": {}}]})
        assert r.status_code == 200, r.text
        r = http.post("/json", json={"batch": [{"type": "track", "event": "Json Event", "userId": "u3",
                                               "messageId": "m-3"}]},
                      headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200, r.text
        r = http.post("/v1/batch", json=seg, headers={"Authorization": "Basic " +
                                                      base64.b64encode(b"wrong:").decode()})
        assert r.status_code == 401 and "wrong write key" in r.json()["error"]
        r = http.post("/v1/batch", content=b"{not json", headers={"Authorization": basic})
        assert r.status_code == 400 and r.json()["error"] == "body is not valid JSON"
        r = http.post("/v1/batch", content=b"\x1f\x8bnot gzip",
                      headers={"Authorization": basic, "Content-Encoding": "gzip"})
        assert r.status_code == 400 and "gzip" in r.json()["error"]
        r = http.post("/json", json={"batch": [{"type": "track", "event": "After", "userId": "u4"}]},
                      headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200, "the server must survive bad requests"
    assert server.read_until(rb"After"), server.output()
    assert server.stop() == 0, server.output()
    out = server.out.decode()
    for name in ("Seg Event", "PH Event", "Json Event", "After"):
        assert f'"{name}"' in out, server.output()
    assert "! 400 /v1/batch: body is not valid JSON" in out
    assert "! 401 /v1/batch: wrong write key" in out
    assert "4 event(s) stored" in server.err.decode(), server.output()
    with contextlib.closing(sqlite3.connect(db)) as conn:  # `with conn` alone does not close it
        stored = conn.execute("SELECT format, event, user_id, message_id FROM events ORDER BY id").fetchall()
        statuses = [s for (s,) in conn.execute("SELECT status FROM requests ORDER BY id")]
    assert stored == [("segment", "Seg Event", "u1", "m-1"), ("posthog", "PH Event", "u2", "m-2"),
                      ("json", "Json Event", "u3", "m-3"), ("json", "After", "u4", None)]
    assert statuses == [200, 200, 200, 401, 400, 400, 200]


@pytest.mark.parametrize("fmt", ["otlp", "otlp-proto"])
def test_collect_lists_otlp_events_from_a_real_sender(fmt: str, tmp_path: Path, runtime_dir: str,
                                                      collect: type[Collect]) -> None:
    """collect takes OTLP/HTTP logs from a sender (format otlp, JSON or protobuf) and lists and
    stores each LogRecord as the track event it was, as for the other formats."""
    db = tmp_path / "o.db"
    server = collect("--port", "0", "--db", str(db), "--write-key", "s3cret", "--tail")
    url = server.wait_ready()
    assert server.read_until(rb"OTLP  POST " + re.escape(url.encode()) + rb"/v1/logs"), server.output()
    assert app_sending(url, runtime_dir, 3, write_key="s3cret", format=fmt, service_name="shop")
    assert server.read_until(rb"user-2"), server.output()
    assert server.stop() == 0, server.output()
    lines = [line for line in server.out.decode().splitlines() if '"Signed Up"' in line]
    assert len(lines) == 3, server.output()
    for i, line in enumerate(lines):
        assert re.search(rf'{re.escape(fmt)}\s+track\s+"Signed Up"  user-{i}  [0-9a-f-]{{36}}  {{"i":{i}}}$', line), line
    with contextlib.closing(sqlite3.connect(db)) as conn:  # `with conn` alone does not close it
        rows = conn.execute("SELECT format, type, event, user_id, message_id, payload FROM events").fetchall()
    assert [(f, t, e, u) for f, t, e, u, _, _ in rows] == [(fmt, "track", "Signed Up", f"user-{i}") for i in range(3)]
    assert len({m for *_, m, _ in rows}) == 3
    payload = json.loads(rows[0][5])
    assert payload["otlp"]["resource"]["service.name"] == "shop" and payload["properties"] == {"i": 0}


def test_collect_port_in_use_is_one_line() -> None:
    """collect on a port already taken says so in one line and exits 2, without a traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = cli("collect", "--port", str(port), "--db", ":memory:", timeout=30)
    one_line_error(proc, f"port {port} is in use; choose another with --port")
    assert proc.returncode == 2


def test_collect_faults_make_the_sender_retry(tmp_path: Path, runtime_dir: str, collect: type[Collect]) -> None:
    """collect --fail-first/--retry-after fail the first requests; the sender retries and everything arrives."""
    server = collect("--port", "0", "--db", str(tmp_path / "f.db"), "--fail-first", "2", "--retry-after", "0")
    url = server.wait_ready()
    assert server.read_until(rb"faults: first 2 batch\(es\) answered 503, Retry-After: 0"), server.output()
    assert app_sending(url, runtime_dir, 20, retry_base=0.05)
    status = cli("status", "--json", "--runtime-dir", runtime_dir)
    assert status.returncode == 0, show(status)
    (report,) = json.loads(status.stdout)
    assert report["retries"] == 2 and report["uploaded"] == 20 and report["last_status"] == 200
    assert server.stop() == 0
    with contextlib.closing(sqlite3.connect(tmp_path / "f.db")) as conn:  # `with conn` alone does not close it
        assert conn.execute("SELECT count(DISTINCT message_id) FROM events").fetchone()[0] == 20
        assert [s for (s,) in conn.execute("SELECT status FROM requests ORDER BY id")][:2] == [503, 503]


# --- status and stop --------------------------------------------------------------------------


def test_status_shows_a_live_sender(collector: Collector, runtime_dir: str) -> None:
    """status finds the running sender and reports its pid, redacted destination, counters and process figures."""
    assert app_sending(collector.url, runtime_dir, 25, write_key="supersecretwritekey", linger=60)
    (pid,) = live_sender_pids(runtime_dir)
    proc = cli("status", env=cli_env(MPSENDER_RUNTIME_DIR=runtime_dir))
    assert proc.returncode == 0, show(proc)
    assert proc.stdout.startswith(f"sender {pid}  {collector.url} (segment, key supe…)"), show(proc)
    assert "supersecretwritekey" not in proc.stdout
    assert "received 25 · uploaded 25 · undelivered 0 (0 B)" in proc.stdout, show(proc)
    assert re.search(r"up [\d.]+\w* · rss [\d.]+ MiB · cpu [\d.]+% \([\d.]+s total\)", proc.stdout), show(proc)
    assert "last answer 200" in proc.stdout and "dropped   none" in proc.stdout
    reports: list[dict[str, object]] = []

    def no_app_connected() -> bool:  # the app has exited; the sender may not have seen it close yet
        js = cli("status", "--json", "--runtime-dir", runtime_dir)
        assert js.returncode == 0 and "supersecretwritekey" not in js.stdout, show(js)
        reports[:] = json.loads(js.stdout)
        return reports[0]["connections"] == 0  # the status request's own connection is not counted

    assert wait_for(no_app_connected, 10.0), reports
    (report,) = reports
    assert report["pid"] == pid and report["uploaded"] == 25 and report["answering"] is True
    assert isinstance(report["rss_bytes"], int) and report["rss_bytes"] > 1_000_000 and report["dropped"] == {}


def test_status_without_a_sender_says_so(runtime_dir: str) -> None:
    """status with no sender running: one line naming the problem, exit 1; --json prints []."""
    proc = cli("status", "--runtime-dir", runtime_dir)
    one_line_error(proc, f"no sender running under {runtime_dir}")
    assert proc.returncode == 1 and proc.stdout == ""
    js = cli("status", "--json", "--runtime-dir", runtime_dir)
    assert js.returncode == 1 and json.loads(js.stdout) == []


def test_stop_ends_the_sender(collector: Collector, runtime_dir: str) -> None:
    """stop asks the sender to drain and exit, waits until its pid is gone, then finds none to stop."""
    assert app_sending(collector.url, runtime_dir, 10, linger=60)
    (pid,) = live_sender_pids(runtime_dir)
    proc = cli("stop", "--runtime-dir", runtime_dir)
    assert proc.returncode == 0, show(proc)
    assert f"stopped sender {pid} " in proc.stdout and "nothing left undelivered" in proc.stdout, show(proc)
    assert gone(pid) and not live_sender_pids(runtime_dir)
    again = cli("stop", "--runtime-dir", runtime_dir)
    one_line_error(again, "no sender running under")


# --- spool ------------------------------------------------------------------------------------


def test_spool_replay_delivers_what_an_outage_left(collector: Collector, runtime_dir: str) -> None:
    """After an outage, spool ls/show list the undelivered events and spool replay delivers exactly them."""
    collector.stop()  # the outage: nothing listens on the collector's port
    assert not app_sending(collector.url, runtime_dir, 40, name="Order Completed", flush=0.2, shutdown_timeout=0.5)
    stopped = cli("stop", "--runtime-dir", runtime_dir)
    assert stopped.returncode == 0 and "40 event(s) left in the spool" in stopped.stdout, show(stopped)

    ls = cli("spool", "ls", "--runtime-dir", runtime_dir)
    assert ls.returncode == 0 and "40 event(s) undelivered" in ls.stdout and "no sender running" in ls.stdout, \
        show(ls)
    shown = cli("spool", "show", "--json", "--limit", "0", "--runtime-dir", runtime_dir)
    events = [json.loads(line) for line in shown.stdout.splitlines()]
    assert len(events) == 40 and {e["event"] for e in events} == {"Order Completed"}
    assert not any(e["_delivered"] for e in events)
    text = cli("spool", "show", "--runtime-dir", runtime_dir, "--limit", "5")
    assert text.stdout.count('track    "Order Completed"  user-') == 5 and "35 more" in text.stderr, show(text)

    collector.start()  # back, on the same port
    replay = cli("spool", "replay", "--runtime-dir", runtime_dir)
    assert replay.returncode == 0, show(replay)
    assert "replaying 40 event(s)" in replay.stdout and "the endpoint accepted 40 event(s)" in replay.stdout
    assert re.search(r"replay\s+\[#+\] 100% 40/40 events", replay.stderr), show(replay)
    assert sorted(collector.message_ids()) == sorted(e["messageId"] for e in events)
    after = cli("spool", "ls", "--json", "--runtime-dir", runtime_dir)
    assert json.loads(after.stdout)[0]["pending_events"] == 0


def test_spool_purge_asks_first_and_counts_what_it_dropped(runtime_dir: str) -> None:
    """purge refuses while a sender runs, deletes nothing when the answer is no, and counts what it deleted."""
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert not app_sending(endpoint, runtime_dir, 15, flush=0.2, shutdown_timeout=0.5, linger=60)
    running = cli("spool", "purge", "--yes", "--runtime-dir", runtime_dir)
    one_line_error(running, "is running for")
    assert cli("stop", "--runtime-dir", runtime_dir).returncode == 0
    declined = cli("spool", "purge", "--runtime-dir", runtime_dir, stdin="n\n")
    assert declined.returncode == 1 and "15 undelivered event(s)" in declined.stdout, show(declined)
    assert "Delete them?" in declined.stderr and "nothing deleted" in declined.stderr
    assert list(Path(runtime_dir).glob("*/spool/*.wal"))
    purged = cli("spool", "purge", "--yes", "--runtime-dir", runtime_dir)
    assert purged.returncode == 0 and "15 event(s) in 1 file(s) deleted" in purged.stdout, show(purged)
    assert not list(Path(runtime_dir).glob("*/spool/*.wal"))
    (state,) = Path(runtime_dir).glob("*/spool/state.json")
    assert json.loads(state.read_text())["dropped"]["purged"] == 15


def test_spool_deadletter_lists_refused_events(collector: Collector, runtime_dir: str) -> None:
    """Events the endpoint refused for good are listed by spool deadletter, with status and reason."""
    collector.set_faults(Faults(reject_event="Bad Event"))
    assert app_sending(collector.url, runtime_dir, 1, name="Bad Event")
    proc = cli("spool", "deadletter", "--runtime-dir", runtime_dir)
    assert proc.returncode == 0, show(proc)
    assert "1 dead-lettered event(s)" in proc.stdout and 'HTTP 400  "Bad Event"' in proc.stdout, show(proc)
    assert "rejected" in proc.stdout


def test_unreadable_spool_is_one_line_unless_debug(runtime_dir: str) -> None:
    """A spool that cannot be read is named in one line (exit 1); --debug adds the traceback."""
    spool = Path(runtime_dir) / "0123456789abcdef" / "spool"
    spool.parent.mkdir()
    spool.write_text("not a directory")
    proc = cli("spool", "ls", "--runtime-dir", runtime_dir)
    one_line_error(proc, f"cannot read the spool {spool}: Not a directory")
    assert proc.returncode == 1
    debug = cli("spool", "ls", "--debug", "--runtime-dir", runtime_dir)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_usage_errors_and_the_console_script() -> None:
    """No command prints the usage (exit 2); the `mpsender` console script runs the same CLI."""
    proc = cli()
    assert proc.returncode == 2 and "usage: mpsender" in proc.stderr
    script = Path(sys.executable).with_name("mpsender")
    assert script.exists(), "pip install -e . installs the mpsender console script"
    version = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=30,
                             env=cli_env())
    assert version.returncode == 0 and version.stdout.startswith("mpsender "), version.stderr
