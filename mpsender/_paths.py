"""Where a destination's sender lives: the rendezvous by name, not by inheritance.

Every process that calls ``init()`` with the same destination computes the same
directory, so a gunicorn master, a worker that only called ``init()`` in
``post_fork`` and an unrelated script all meet ONE sender.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ._exceptions import ConfigurationError
from ._options import Options

__all__ = ["START_FAILURE", "Paths", "destination_id", "ensure_private_dir", "paths_for"]

#: the file that records a sender's failed start (written by _start_failure, deleted by
#: the next sender that listens, read by ``mpsender status``)
START_FAILURE = "start-failure.json"

# sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107


def destination_id(options: Options) -> str:
    """A short stable hash of what makes two senders different."""
    parts = [
        options.endpoint.rstrip("/"),
        options.write_key,
        options.format,
        options.path or "",
        os.path.abspath(options.spool_dir) if options.spool_dir else "",
        repr(sorted(options.headers.items())),
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def default_runtime_dir() -> str:
    return os.path.join(tempfile.gettempdir(), f"mpsender-{os.getuid()}")


@dataclass(frozen=True, slots=True)
class Paths:
    """The files of one destination."""

    base: Path        # the user's runtime directory (0700)
    dest: Path        # this destination's directory (0700)
    socket: Path      # the sender listens here (SOCK_SEQPACKET)
    lock: Path        # held (flock) by the live sender for its whole life
    doorbell: Path    # one shared byte: "the sender is asleep, ring me"
    log: Path         # the sender's log
    info: Path        # the sender's pid, start time and destination (no key)
    client_config: Path  # options for spawned children that never call init() (0600)
    start_failure: Path  # the last failed start of a sender (mpsender status shows it)
    spool: Path       # write-ahead files of the application processes (0700)

    def ensure(self) -> None:
        """Create the directories, or raise ConfigurationError naming the path and why."""
        for path in (self.base, self.dest, self.spool):
            ensure_private_dir(path)


def paths_for(options: Options) -> Paths:
    base = Path(options.runtime_dir or default_runtime_dir())
    dest = base / destination_id(options)
    spool = Path(options.spool_dir) / destination_id(options) if options.spool_dir else dest / "spool"
    p = Paths(
        base=base, dest=dest, socket=dest / "sender.sock", lock=dest / "sender.lock",
        doorbell=dest / "doorbell", log=dest / "sender.log", info=dest / "sender.json",
        client_config=dest / "client.msgpack", start_failure=dest / START_FAILURE, spool=spool,
    )
    if len(os.fsencode(p.socket)) > _MAX_SOCKET_PATH:
        raise ConfigurationError(
            f"runtime_dir {str(base)!r} is too long: the socket path {str(p.socket)!r} must fit "
            f"in {_MAX_SOCKET_PATH} bytes; choose a shorter runtime_dir"
        )
    return p


def ensure_private_dir(path: Path) -> None:
    """Make ``path`` a directory owned by us with mode 0700, or say why it cannot be."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.lstat()
    except OSError as exc:
        raise ConfigurationError(f"cannot use directory {str(path)!r}: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigurationError(f"cannot use directory {str(path)!r}: it is not a directory")
    if st.st_uid != os.getuid():
        raise ConfigurationError(
            f"cannot use directory {str(path)!r}: it belongs to uid {st.st_uid}, not to us "
            f"(uid {os.getuid()}); another user could read the events"
        )
    if st.st_mode & 0o077:
        try:
            os.chmod(path, 0o700)
        except OSError as exc:
            raise ConfigurationError(f"cannot make {str(path)!r} private (0700): {exc.strerror}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigurationError(f"cannot use directory {str(path)!r}: not writable")
