"""Starting the sender: a fresh interpreter, its own session, no inherited descriptors.

Not a ``multiprocessing.Process``: a child of the app would be sent SIGTERM by
multiprocessing's exit handler when a gunicorn worker leaves through ``sys.exit``, and
would share state copied from the app. The write key goes through a pipe (stdin),
never argv or the environment.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import shutil
import subprocess
import sys
import time

import msgpack

from ._options import Options
from ._paths import Paths

logger = logging.getLogger(__name__)

__all__ = ["find_python", "spawn_sender"]


def find_python(options: Options) -> str:
    """The interpreter to run the sender with: the ``python`` option, else the Python
    whose packages this process imports (see ``choose_python``)."""
    if options.python:
        return options.python
    found = choose_python(
        executable=sys.executable, prefix=sys.prefix, base_prefix=sys.base_prefix,
        exec_prefix=sys.exec_prefix, base_executable=getattr(sys, "_base_executable", ""),
        version=sys.version_info[:2],
    )
    if found is None:
        raise FileNotFoundError(errno.ENOENT, "no Python interpreter found for the sender; set the 'python' "
                                              "option or MPSENDER_PYTHON")
    return found


def choose_python(*, executable: str, prefix: str, base_prefix: str, exec_prefix: str,
                  base_executable: str, version: tuple[int, int]) -> str | None:
    """The first of these that is an executable Python:

    1. ``sys.executable``, when it is Python. Under uWSGI (and other embedders) it is the
       server's own binary, which would not run ``-m mpsender._sender``.
    2. In a virtualenv (``prefix != base_prefix``), its own ``bin/python``: the sender
       needs the packages installed there (msgpack, httpx, psutil). NOT
       ``sys._base_executable``: under uWSGI in a virtualenv that is the base
       installation's Python, which lacks them (issue 14: the sender died on
       ``No module named 'msgpack'``, unseen).
    3. The installation's ``bin/python`` (``exec_prefix``), then ``_base_executable``
       outside a virtualenv.
    4. ``pythonX.Y`` / ``python3`` on PATH, and last the base installation's Python (a
       virtualenv with system site packages may work with it; if not, the failure is
       reported loudly by ``spawn_sender``).
    """
    names = [f"python{version[0]}.{version[1]}", f"python{version[0]}", "python"]
    in_venv = os.path.realpath(prefix) != os.path.realpath(base_prefix)
    candidates: list[str] = []
    if _named_python(executable):
        candidates.append(executable)
    for root in dict.fromkeys([prefix, exec_prefix]):
        candidates += [os.path.join(root, "bin", name) for name in names]
    if not in_venv and _named_python(base_executable):
        candidates.append(base_executable)
    candidates += [found for name in names[:2] if (found := shutil.which(name))]
    if _named_python(base_executable):
        candidates.append(base_executable)
    for exe in candidates:
        if os.path.isfile(exe) and os.access(exe, os.X_OK):
            return exe
    return None


def _named_python(path: str) -> bool:
    """Is this the path of a Python interpreter (python, python3, python3.11), not of a
    server that embeds one (uwsgi, httpd)?"""
    return bool(path) and os.path.basename(path).startswith("python")


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
        logger.warning("the sender exited before it read its configuration; see %s", paths.log)
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
                logger.warning("the sender did not listen within %.1fs; see %s", wait, paths.log)
                return False
            readable, _, _ = select.select([proc.stdout], [], [], remaining)
            if readable:
                chunk = os.read(proc.stdout.fileno(), 64)
                if not chunk:
                    logger.warning("the sender exited at start; see %s", paths.log)
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
