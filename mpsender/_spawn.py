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

from . import _platform, _start_failure
from ._lograte import Throttle
from ._options import Options
from ._paths import Paths
from ._start_failure import StartFailure

logger = logging.getLogger(__name__)
_throttle = Throttle(logger)  # a sender that will not start fails at every attempt

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
    A sender that cannot start (an interpreter that cannot run it or import its
    dependencies, an error at start) is reported by ``_start_failure``: on stderr, with
    its own output and the fix, and for ``mpsender status``. Without a wait, the launcher's
    exit status is looked at by ``reap()``, from the next ``track()``.
    """
    config = msgpack.packb(
        {
            "options": options.to_wire(),
            "dest": str(paths.dest),
            "spool": str(paths.spool),
            "sys_path": [p for p in sys.path if isinstance(p, str)],
            "lock_fd": lock_fd,
            # MPSENDER_* is not passed on (below): the sender must speak its creator's kind
            # of connection, forced fallbacks included
            "platform": _platform.FEATURES.mode,
        },
        use_bin_type=True,
    )
    env = dict(os.environ)
    for name in list(env):
        if name.startswith("MPSENDER_"):
            del env[name]  # the sender's options come through the pipe, complete
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_package_root(), env.get("PYTHONPATH", "")]))
    env.pop("PYTHONSTARTUP", None)
    python = options.python or "python"
    log = os.open(paths.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        offset = os.fstat(log).st_size  # this start's output begins here
        python = find_python(options)
        proc = subprocess.Popen(
            [python, "-m", "mpsender._sender", str(paths.dest)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE if wait > 0 else subprocess.DEVNULL,
            stderr=log,
            close_fds=True,
            pass_fds=(lock_fd,),
            start_new_session=True,
            env=env,
            cwd="/",
        )
    except OSError as exc:
        _start_failure.report(paths, StartFailure(
            at=time.time(), pid=os.getpid(), python=python, output="",
            reason=f"cannot be executed: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")))
        raise
    finally:
        os.close(log)
    launch = _Launch(proc, paths, python, offset)
    assert proc.stdin is not None
    try:
        proc.stdin.write(config)
        proc.stdin.close()
    except OSError:
        for pipe in (proc.stdin, proc.stdout):  # not left to the garbage collector (a ResourceWarning)
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass  # a broken pipe's unwritten bytes: the descriptor is closed all the same
        launch.failed("exited before it read its configuration")
        _reap_later.append(launch)
        return False
    if wait <= 0:
        _reap_later.append(launch)
        return True
    assert proc.stdout is not None
    deadline = time.monotonic() + wait
    ready = b""
    try:
        while b"\n" not in ready:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                # still starting, perhaps (a loaded machine): not reported as a failure
                _throttle.warning("spawn", "the sender did not listen within %.1fs; see %s", wait, paths.log)
                return False
            readable, _, _ = select.select([proc.stdout], [], [], remaining)
            if readable:
                chunk = os.read(proc.stdout.fileno(), 64)
                if not chunk:
                    launch.failed("exited at start")
                    return False
                ready += chunk
        return ready.startswith(b"ready")
    finally:
        proc.stdout.close()
        _reap_later.append(launch)
        reap()


class _Launch:
    """A launcher (the Popen child, which forks the real sender and exits at once) and
    what is needed to report its failure."""

    def __init__(self, proc: subprocess.Popen[bytes], paths: Paths, python: str, offset: int) -> None:
        self.proc = proc
        self.paths = paths
        self.python = python
        self.offset = offset
        self.reported = False

    def failed(self, what: str) -> None:
        """Report this start as failed, with the launcher's exit status when it has one."""
        if self.reported:
            return
        self.reported = True
        try:
            code = self.proc.wait(EXIT_WAIT)  # its stderr is complete once it has exited
        except subprocess.TimeoutExpired:
            code = None
        if code is not None and code != 0:
            what = f"exited with status {code}" if code > 0 else f"was killed by signal {-code}"
        _start_failure.report(self.paths, StartFailure(
            at=time.time(), pid=os.getpid(), python=self.python, reason=what,
            output=_start_failure.tail(self.paths.log, self.offset)))

    def done(self) -> bool:
        """Reaped (a launcher that failed is reported once); False while it runs."""
        code = self.proc.poll()
        if code is None:
            return False
        if code != 0:
            self.failed("")
        return True


#: how long a failed launcher is waited for, so that its error output is complete
EXIT_WAIT = 1.0

# The Popen child is a short-lived launcher that forks the real sender and exits; it is
# reaped here (at the next spawn or check) so it does not linger as a zombie, and a
# launcher that exited with an error (a start without a wait) is reported then.
_reap_later: list[_Launch] = []


def reap() -> None:
    _reap_later[:] = [launch for launch in _reap_later if not launch.done()]
