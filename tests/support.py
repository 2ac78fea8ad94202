"""Helpers shared by the test suite: waiting without sleeping blindly, finding and
ending the senders a test started, running an application as a real subprocess, and
putting a real server (gunicorn, uWSGI) under load and counting its events."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import httpx
import psutil

from mpsender import _platform
from mpsender._collector import Collector

REPO = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until it is truthy or ``timeout`` passes; True if it became truthy."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        interval = min(interval * 1.5, 0.1)


def sender_infos(runtime_dir: str | os.PathLike[str]) -> list[dict[str, object]]:
    """The sender.json of every sender running under ``runtime_dir``."""
    out = []
    for info in Path(runtime_dir).glob("*/sender.json"):
        try:
            out.append(json.loads(info.read_text()))
        except (OSError, ValueError):
            continue
    return out


def live_sender_pids(runtime_dir: str | os.PathLike[str]) -> set[int]:
    """Pids of live sender processes whose socket lives under ``runtime_dir`` (not their
    short-lived launchers: only the sender renames itself ``mpsender-sender``)."""
    pids = set()
    root = str(runtime_dir)
    for proc in psutil.process_iter(["pid", "name", "cmdline", "status"]):
        cmd = proc.info["cmdline"] or []
        if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.info["name"] != "mpsender-sender":
            continue
        if not cmd:
            # Exiting: the kernel drops a process's memory, and with it its command line,
            # before it closes its files, so this one may still hold its sender.lock. It
            # cannot be told apart by its arguments any more, but by its open files: count
            # it while it holds one under root (not a sender of another test run's).
            if _holds_file_under(proc, root):
                pids.add(proc.info["pid"])
        elif "mpsender._sender" in cmd and any(arg.startswith(root) for arg in cmd):
            pids.add(proc.info["pid"])
    return pids


def _holds_file_under(proc: psutil.Process, root: str) -> bool:
    try:
        return any(f.path.startswith(root.rstrip("/") + "/") for f in proc.open_files())
    except psutil.Error:
        return False  # gone, or its files are closed already: it holds no lock


def kill_senders(runtime_dir: str | os.PathLike[str], timeout: float = 5.0) -> None:
    """End every sender (and launcher) under ``runtime_dir``, by pid."""
    root = str(runtime_dir)
    pids = {p.info["pid"] for p in psutil.process_iter(["pid", "cmdline"])
            if "mpsender._sender" in (p.info["cmdline"] or [])
            and any(arg.startswith(root) for arg in p.info["cmdline"] or [])}
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    # dead is enough: a zombie waits for its parent (or PID 1) to reap it, not for us
    wait_for(lambda: not any(_running(pid) for pid in pids), timeout)


def _running(pid: int) -> bool:
    proc = _proc(pid)
    try:
        return proc is not None and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _proc(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def without_mpsender(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) without MPSENDER_* configuration, but with the
    platform switch: in CI's portable run every process the tests start must speak the
    same kind of connection."""
    env = os.environ if env is None else env
    return {k: v for k, v in env.items() if not k.startswith("MPSENDER_") or k == _platform.MODE_ENV}


def sender_socket_kind() -> int:
    """The socket kind this run's senders listen with (a stream in the portable run)."""
    return socket.SOCK_SEQPACKET if _platform.FEATURES.seqpacket else socket.SOCK_STREAM


def send_message(sock: socket.socket, data: bytes) -> None:
    """One protocol message on a plain blocking socket of :func:`sender_socket_kind`."""
    sock.sendall(data if sock.type == socket.SOCK_SEQPACKET else struct.pack(">I", len(data)) + data)


def recv_message(sock: socket.socket) -> bytes:
    """One protocol message from a plain blocking socket; b"" when the sender closed it."""
    if sock.type == socket.SOCK_SEQPACKET:
        return sock.recv(1 << 20)
    head = _recv_exactly(sock, 4)
    return _recv_exactly(sock, struct.unpack(">I", head)[0]) if head else b""


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return b""
        buf += chunk
    return buf


def app_env(endpoint: str, runtime_dir: str, **options: object) -> dict[str, str]:
    """Environment for an application subprocess configured through MPSENDER_*."""
    env = without_mpsender()
    env["MPSENDER_ENDPOINT"] = endpoint
    env["MPSENDER_WRITE_KEY"] = str(options.pop("write_key", "test-key"))
    env["MPSENDER_RUNTIME_DIR"] = runtime_dir
    for name, value in options.items():
        env[f"MPSENDER_{name.upper()}"] = str(value)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    # The app's own temporary files in the (short) runtime directory, whatever the shell's
    # TMPDIR: multiprocessing's forkserver binds an AF_UNIX socket there, and a long TMPDIR
    # makes Python itself fail ("AF_UNIX path too long"), mpsender or not.
    env["TMPDIR"] = runtime_dir
    return env


def run_app(code: str, env: Mapping[str, str], timeout: float = 60.0,
            args: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (dedented) in a fresh interpreter; its output is returned, not printed."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *(args or [])],
        env=dict(env), capture_output=True, text=True, timeout=timeout, cwd=str(REPO),
    )


def check(proc: subprocess.CompletedProcess[str]) -> str:
    """Assert a subprocess succeeded, showing its output when it did not."""
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


class ServerProcess:
    """A server (a gunicorn master, a Celery worker) in a session of its own, its output
    in a log file; ``kill()`` ends its whole process group. Subclasses say when it is ready."""

    name = "server"
    #: what ``stop()`` sends for a graceful stop (uWSGI 2.0 takes TERM as a reload)
    stop_signal = signal.SIGTERM

    def __init__(self, cmd: list[str], env: Mapping[str, str], cwd: Path, log: Path) -> None:
        self.cmd = cmd
        self.env = dict(env)
        self.cwd = cwd
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> ServerProcess:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=str(self.cwd), stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        if not wait_for(self._ready, timeout):
            raise AssertionError(f"{self.name} was not ready within {timeout}s\n{self.output()}")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}\n{self.output()}")
        return self.ready()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 30.0) -> int:
        """Graceful stop (``stop_signal``); the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, self.stop_signal)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} did not stop within {timeout}s\n{self.output()}") from None

    def kill(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # the group is gone already
        self.proc.wait(10)

    def output(self) -> str:
        try:
            return f"{self.name} output:\n" + self.log.read_text(errors="replace")[-20000:]
        except OSError as exc:
            return f"(no {self.name} output: {exc})"


# --- servers under load ----------------------------------------------------------------


class HttpServer(ServerProcess):
    """A server of an example app on ``port`` of 127.0.0.1, ready once ``/health`` answers."""

    def __init__(self, cmd: list[str], env: Mapping[str, str], cwd: Path, log: Path, port: int, *,
                 name: str | None = None) -> None:
        if name is not None:
            self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        super().__init__(cmd, env, cwd, log)

    def ready(self) -> bool:
        try:
            return httpx.get(self.url + "/health", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def workers(self) -> list[int]:
        """Live worker pids (children of the master that are not a sender launcher)."""
        out = []
        for child in psutil.Process(self.pid).children():
            try:
                if child.status() != psutil.STATUS_ZOMBIE and "mpsender._sender" not in child.cmdline():
                    out.append(child.pid)
            except psutil.NoSuchProcess:
                continue
        return out


def gunicorn_control_args() -> list[str]:
    """Recent gunicorn (25+) opens a control socket (in $HOME), served by a thread in the
    master: not wanted here (the master must stay thread-free; servers must not share it)."""
    from gunicorn.config import KNOWN_SETTINGS

    names = {s.name for s in KNOWN_SETTINGS}
    return ["--no-control-socket"] if "control_socket_disable" in names else []


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Load:
    """GET /page?id=N for every id from ``concurrency`` client threads, in the background.

    ``interval`` paces each thread so that a load spans the event a test makes happen
    (a reload, a timeout); ``stop()`` ends an open-ended load early. Without
    ``keepalive`` each request asks for its connection to be closed: uWSGI's http-socket
    closes it after every response without saying so, and a client that reuses it races
    the close (a reset, a request that never got an answer).
    """

    def __init__(self, url: str, ids: Iterable[int], *, concurrency: int = 8, interval: float = 0.0,
                 keepalive: bool = True) -> None:
        self.url = url
        self._headers = {} if keepalive else {"Connection": "close"}
        self.results: dict[int, int | None] = {}
        self._ids = iter(ids)
        self._interval = interval
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(concurrency)]

    def start(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    def _next(self) -> int | None:
        if self._stopped.is_set():
            return None
        with self._lock:
            return next(self._ids, None)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30.0, headers=self._headers) as client:
            while (i := self._next()) is not None:
                try:
                    status: int | None = client.get(
                        "/page", params={"id": str(i), "visitor": f"v{i % 9}"}).status_code
                except httpx.HTTPError:
                    status = None  # refused, reset: the request may or may not have been tracked
                with self._lock:
                    self.results[i] = status
                if self._interval:
                    self._stopped.wait(self._interval)  # pacing, not waiting for something

    @property
    def done(self) -> int:
        with self._lock:
            return len(self.results)

    def wait_done(self, n: int, timeout: float = 60.0) -> None:
        assert wait_for(lambda: self.done >= n, timeout), f"only {self.done} requests done"

    def join(self, timeout: float = 120.0) -> dict[int, int | None]:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._threads), "the load did not finish"
        return dict(self.results)

    def sent(self) -> set[int]:
        return set(self.results)

    def ok(self) -> set[int]:
        return {i for i, status in self.results.items() if status == 200}


def assert_stuck_request_is_cut(url: str, timeout: float) -> None:
    """GET ``url`` (a request that hangs its worker) and wait: the server kills the stuck
    worker within ``timeout``, so the request ends without a 200 (an error or a 5xx)."""
    result: list[object] = []

    def get() -> None:
        try:
            result.append(httpx.get(url, timeout=timeout * 2).status_code)
        except httpx.HTTPError as exc:
            result.append(exc)

    getter = threading.Thread(target=get, daemon=True)
    getter.start()
    getter.join(timeout)  # returns once the server has killed the stuck worker
    assert not getter.is_alive() and result and result[0] != 200, result


def run_load(url: str, ids: Iterable[int], *, concurrency: int = 8, interval: float = 0.0,
             during: Callable[[Load], None] | None = None, keepalive: bool = True) -> Load:
    load = Load(url, ids, concurrency=concurrency, interval=interval, keepalive=keepalive).start()
    if during is not None:
        try:
            during(load)
        except BaseException:
            load.stop()
            load.join()
            raise
    load.join()
    return load


def assert_delivered(collector: Collector, sent: set[int] | set[str], ok: set[int] | set[str], server: ServerProcess,
                     *, exact: bool, timeout: float = 30.0) -> None:
    """Every request answered 200 has its event at the collector, once; nothing else came.

    With ``exact``, every request sent was answered and counts; otherwise a request that
    failed (its worker was killed) may or may not have an event.
    """
    def request_ids() -> dict[str, set[str]]:
        by_request: dict[str, set[str]] = {}
        for e in collector.events():
            by_request.setdefault(str(e["properties"].get("request_id")), set()).add(e["messageId"])
        return by_request

    wanted = {str(i) for i in ok}
    arrived = collector.wait_for(lambda c: wanted <= set(request_ids()), timeout)
    by_request = request_ids()
    missing = sorted(wanted - set(by_request), key=lambda r: (len(r), r))
    assert arrived and not missing, f"{len(missing)} answered requests have no event: {missing[:20]}\n{server.output()}"
    unexpected = set(by_request) - {str(i) for i in sent}
    assert not unexpected, f"events for requests never sent: {sorted(unexpected)[:20]}"
    doubled = {r: ids for r, ids in by_request.items() if len(ids) != 1}
    assert not doubled, f"requests tracked more than once: {doubled}"
    unique = set(collector.message_ids())
    assert len(unique) == len(by_request)
    if exact:
        assert ok == sent, f"{len(sent - ok)} requests failed\n{server.output()}"
        assert len(unique) == len(sent)


def one_sender(runtime_dir: str) -> int:
    pids = live_sender_pids(runtime_dir)
    assert len(pids) == 1, f"senders: {pids}"
    infos = sender_infos(runtime_dir)
    assert [i["pid"] for i in infos] == list(pids), infos
    return next(iter(pids))


class SenderWatch:
    """Samples the live sender pids while a load runs: the union must be ONE pid."""

    def __init__(self, runtime_dir: str) -> None:
        self.runtime_dir = runtime_dir
        self.seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SenderWatch:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.seen |= live_sender_pids(self.runtime_dir)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.seen |= live_sender_pids(self.runtime_dir)
