"""Helpers shared by the test suite: waiting without sleeping blindly, finding and
ending the senders a test started, running an application as a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import psutil

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
            # cannot be told apart by its arguments any more: count it until it is a zombie.
            pids.add(proc.info["pid"])
        elif "mpsender._sender" in cmd and any(arg.startswith(root) for arg in cmd):
            pids.add(proc.info["pid"])
    return pids


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


def app_env(endpoint: str, runtime_dir: str, **options: object) -> dict[str, str]:
    """Environment for an application subprocess configured through MPSENDER_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPSENDER_")}
    env["MPSENDER_ENDPOINT"] = endpoint
    env["MPSENDER_WRITE_KEY"] = str(options.pop("write_key", "test-key"))
    env["MPSENDER_RUNTIME_DIR"] = runtime_dir
    for name, value in options.items():
        env[f"MPSENDER_{name.upper()}"] = str(value)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
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
        """Graceful stop (TERM); the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
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
