"""Starting the sender: a fresh interpreter, its own session, no inherited descriptors.

Not a ``multiprocessing.Process``: a child of the app would be sent SIGTERM by
multiprocessing's exit handler when a gunicorn worker leaves through ``sys.exit``, and
would share state copied from the app. The write key goes through a pipe (stdin),
never argv or the environment.
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import subprocess
import sys
import time

import msgpack

from ._lograte import Throttle
from ._options import Options
from ._paths import Paths

logger = logging.getLogger(__name__)
_throttle = Throttle(logger)  # a sender that will not start fails at every attempt

__all__ = ["find_python", "spawn_sender"]


def find_python(options: Options) -> str:
    """The interpreter to run the sender with.

    Under uWSGI and some embedders ``sys.executable`` is the server binary, not Python.
    """
    if options.python:
        return options.python
    candidates = [sys.executable, getattr(sys, "_base_executable", "")]
    for exe in candidates:
        if exe and os.path.basename(exe).startswith("python") and os.access(exe, os.X_OK):
            return exe
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    for name in (os.path.join(sys.exec_prefix, "bin", version), os.path.join(sys.exec_prefix, "bin", "python3")):
        if os.access(name, os.X_OK):
            return name
    found = shutil.which(version) or shutil.which("python3")
    if found:
        return found
    raise FileNotFoundError("no Python interpreter found for the sender; set the 'python' option")


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def spawn_sender(options: Options, paths: Paths, lock_fd: int, *, wait: float) -> bool:
    """Start the sender holding ``lock_fd``'s lock; with ``wait`` > 0, wait until it listens.

    Returns True when the sender said it is listening (or when not waiting and it started).
    """
    config = msgpack.packb(
        {
            "options": options.to_wire(),
            "dest": str(paths.dest),
            "spool": str(paths.spool),
            "sys_path": [p for p in sys.path if isinstance(p, str)],
            "lock_fd": lock_fd,
        },
        use_bin_type=True,
    )
    env = dict(os.environ)
    for name in list(env):
        if name.startswith("MPSENDER_"):
            del env[name]  # the sender's options come through the pipe, complete
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_package_root(), env.get("PYTHONPATH", "")]))
    env.pop("PYTHONSTARTUP", None)
    log = os.open(paths.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        proc = subprocess.Popen(
            [find_python(options), "-m", "mpsender._sender", str(paths.dest)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE if wait > 0 else subprocess.DEVNULL,
            stderr=log,
            close_fds=True,
            pass_fds=(lock_fd,),
            start_new_session=True,
            env=env,
            cwd="/",
        )
    finally:
        os.close(log)
    assert proc.stdin is not None
    try:
        proc.stdin.write(config)
        proc.stdin.close()
    except OSError:
        _throttle.warning("spawn", "the sender exited before it read its configuration; see %s", paths.log)
        return False
    if wait <= 0:
        _reap_later.append(proc)
        return True
    assert proc.stdout is not None
    deadline = time.monotonic() + wait
    ready = b""
    try:
        while b"\n" not in ready:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _throttle.warning("spawn", "the sender did not listen within %.1fs; see %s", wait, paths.log)
                return False
            readable, _, _ = select.select([proc.stdout], [], [], remaining)
            if readable:
                chunk = os.read(proc.stdout.fileno(), 64)
                if not chunk:
                    _throttle.warning("spawn", "the sender exited at start; see %s", paths.log)
                    return False
                ready += chunk
        return ready.startswith(b"ready")
    finally:
        proc.stdout.close()
        _reap_later.append(proc)
        reap()


# The Popen child is a short-lived launcher that forks the real sender and exits; it is
# reaped here (at the next spawn or check) so it does not linger as a zombie.
_reap_later: list[subprocess.Popen[bytes]] = []


def reap() -> None:
    _reap_later[:] = [p for p in _reap_later if p.poll() is None]
