"""Entry point of the sender process.

Started by an application process as ``python -m mpsender._sender <dest-dir>``, with
its configuration (write key included) on stdin, the destination's lock on an
inherited descriptor, and stdout a pipe on which it says ``ready`` once it listens.
It forks once more so that it is nobody's child: the launcher exits at once and is
reaped by the app, and the sender lives on in its own session.
"""

from __future__ import annotations

import gc
import logging
import logging.handlers
import os
import sys

import msgpack

from .. import _platform, _start_failure
from .._layout import START_FAILURE
from .._options import Options


def main() -> int:
    os.umask(0o077)
    dest = sys.argv[1]
    config = msgpack.unpackb(sys.stdin.buffer.read(), raw=False)
    options = Options(**config["options"])
    lock_fd = int(config["lock_fd"])
    _platform.use(str(config.get("platform", _platform.NATIVE)))  # before any socket or pipe
    for entry in config.get("sys_path", []):
        if entry not in sys.path:
            sys.path.append(entry)  # so on_error/on_delivery import paths resolve
    # Make sure the lock we were handed is held (started by hand: take it ourselves).
    try:
        _platform.lock(lock_fd, wait=False)
    except OSError:
        print(f"mpsender sender: another sender holds {dest}/sender.lock", file=sys.stderr)
        return 1
    if os.fork():
        os._exit(0)  # the launcher: its parent reaps it; the sender is adopted by init
    _set_process_name(PROCESS_NAME)
    sys.setswitchinterval(SWITCH_INTERVAL)
    _collect_garbage_less_often()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    _setup_logging(os.path.join(dest, "sender.log"), options.log_level)
    from ._server import Server  # imports httpx: after the fork, once

    log = logging.getLogger("mpsender.sender")
    try:
        server = Server(options, dest, config["spool"])
        server.listen()
    except Exception:
        log.exception("the sender could not start")
        return 1
    log.info("sender %d listening on %s for %s", os.getpid(), server.socket_path, options.redacted_endpoint())
    _start_failure.forget(os.path.join(dest, START_FAILURE))  # status shows this sender now
    try:
        os.write(1, b"ready\n")
    except OSError:
        pass  # nobody waits for us: started from track(), not init()
    os.dup2(devnull, 1)
    os.close(devnull)
    try:
        server.serve()
    except Exception:
        log.exception("the sender failed")
        return 1
    return 0


#: what ``ps -e``, ``top`` and psutil's ``name()`` show for a sender (its launcher, which
#: exits at once, keeps the interpreter's name)
PROCESS_NAME = "mpsender-sender"


def _set_process_name(name: str) -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass  # not Linux, or no prctl: only the name in ps is lost


#: The posting thread must get the GIL back promptly when an answer arrives, not after the
#: encoding thread's 5 ms slice (CPython's default): measured to matter for the overlap to
#: pay off (benchmarks/profiles/sender.md).
SWITCH_INTERVAL = 0.0005

#: the garbage collector's first threshold in the sender (CPython's default: 700)
GC_THRESHOLD = 10_000


def _collect_garbage_less_often() -> None:
    """Each batch decodes about 1,000 records into some 5,000 dicts and lists that live
    until they are encoded: at the default threshold that is several young collections
    per batch walking them. The sender makes no reference cycles on its hot path, so
    collecting less often costs little memory (benchmarks/profiles/sender.md)."""
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])


def _setup_logging(path: str, level: str) -> None:
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=5 * 1024 * 1024, backupCount=1)
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(threadName)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
