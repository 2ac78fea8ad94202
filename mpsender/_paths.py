"""Where a destination's sender lives: the rendezvous by name, not by inheritance.

Every process that calls ``init()`` with the same destination computes the same
directory, so a gunicorn master, a worker that only called ``init()`` in
``post_fork`` and an unrelated script all meet ONE sender.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import _layout as layout
from . import _platform
from ._exceptions import ConfigurationError
from ._options import OTLP_FORMATS, Options

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_SOCKET_PATH",
    "Paths",
    "destination_id",
    "ensure_private_dir",
    "paths_for",
    "prepare_paths",
    "resolve_runtime_dir",
    "runtime_dir_candidates",
]

#: the longest socket path bind() takes (the platform's, from ``_platform``)
MAX_SOCKET_PATH = _platform.MAX_SOCKET_PATH
#: what a runtime directory's socket path adds to it: "/<destination id>/sender.sock"
_SOCKET_TAIL = len("/0123456789abcdef/" + layout.SOCKET)

_warned_fallback = False


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
    if options.format in OTLP_FORMATS:
        # one sender speaks for one service (its resource); appended only here, so that
        # the ids of the other formats' destinations, and their spools, stay as they were
        parts.append(options.service_name or "")
        if options.resource_attributes:  # (only when there are any: the ids of before stay)
            parts.append(repr(sorted(options.resource_attributes.items())))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def default_runtime_dir() -> str:
    """Where the user's senders live when nothing says otherwise: ``<tmp>/mpsender-<uid>``."""
    return runtime_dir_candidates()[0]


def runtime_dir_candidates() -> list[str]:
    """The places a runtime directory may be, in the order every process of the user
    tries them: the temporary directory first (where every earlier version looked),
    then ``$XDG_RUNTIME_DIR`` (private to the user: nobody else can take it), then the
    conventional temporary directories by their short names, then the home directory."""
    uid = os.getuid()
    mine = f"mpsender-{uid}"
    out = []
    try:
        out.append(os.path.join(tempfile.gettempdir(), mine))
    except (OSError, FileNotFoundError):
        pass  # no temporary directory is writable: the others below may be
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(xdg):
        out.append(os.path.join(xdg, "mpsender"))
    out += [os.path.join(tmp, mine) for tmp in ("/tmp", "/var/tmp", "/dev/shm")]
    home = os.path.expanduser("~")
    if os.path.isabs(home):
        out.append(os.path.join(home, ".cache", "mpsender", socket_host()))
    return list(dict.fromkeys(os.path.abspath(p) for p in out))


def socket_host() -> str:
    """This host's name, as a directory name: a home directory may be shared between
    hosts (NFS), a runtime directory never."""
    name = socket.gethostname() or "localhost"
    return name.replace(os.sep, "_")


def resolve_runtime_dir(configured: str | None, *, candidates: list[str] | None = None,
                        warn: bool = True) -> str:
    """The runtime directory to use: ``configured`` as it is (``runtime_dir``,
    ``MPSENDER_RUNTIME_DIR``), else the first usable of ``candidates`` (default:
    :func:`runtime_dir_candidates`), made if need be.

    Every process of the user with the same environment comes to the same answer, so
    they still meet one sender when the default place is taken by another user, is
    not a directory, cannot be written, or is too long for a socket path (a long
    ``TMPDIR``). Moving on from the default is logged once per process. Raises
    ConfigurationError, naming ``MPSENDER_RUNTIME_DIR`` and what was wrong with each
    place, when none can be used.
    """
    global _warned_fallback
    if configured:
        return os.path.abspath(configured)
    tried = runtime_dir_candidates() if candidates is None else candidates
    problems: list[str] = []
    for place in tried:
        problem = _unusable(place)
        if problem is None:
            if problems and warn and not _warned_fallback:
                _warned_fallback = True
                logger.warning("the runtime directory %s; using %s instead (set MPSENDER_RUNTIME_DIR "
                               "to choose one)", "; ".join(problems), place)
            return place
        problems.append(f"{place} {problem}")
    raise ConfigurationError(
        "no usable runtime directory for mpsender's sender: "
        + "; ".join(problems or ["no place to try"])
        + ". Set MPSENDER_RUNTIME_DIR (or runtime_dir=) to a private directory with a short path"
    )


def _unusable(place: str) -> str | None:
    """Why ``place`` cannot be a runtime directory (making it if need be), or None."""
    if len(os.fsencode(place)) + _SOCKET_TAIL > MAX_SOCKET_PATH:
        return f"is too long: a socket path in it would pass {MAX_SOCKET_PATH} bytes"
    try:
        ensure_private_dir(Path(place))
    except ConfigurationError as exc:
        return f"cannot be used ({exc})"
    return None


@dataclass(frozen=True, slots=True)
class Paths:
    """The files of one destination."""

    base: Path        # the user's runtime directory (0700)
    dest: Path        # this destination's directory (0700)
    socket: Path      # the sender listens here (SEQPACKET, or a framed stream: _platform)
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


def paths_for(options: Options, *, base: str | None = None) -> Paths:
    """The files of ``options``' destination under the runtime directory ``base``
    (default: ``options.runtime_dir`` as given, else the default place, unresolved)."""
    root = Path(base or options.runtime_dir or default_runtime_dir())
    dest = root / destination_id(options)
    spool = Path(options.spool_dir) / destination_id(options) if options.spool_dir else dest / layout.SPOOL
    return Paths(
        base=root, dest=dest, socket=dest / layout.SOCKET, lock=dest / layout.LOCK,
        doorbell=dest / layout.DOORBELL, log=dest / layout.LOG, info=dest / layout.INFO,
        client_config=dest / layout.CLIENT_CONFIG, start_failure=dest / layout.START_FAILURE, spool=spool,
    )


def prepare_paths(options: Options) -> Paths:
    """The files of ``options``' destination, their directories made and checked: what
    ``init()`` does. Raises ConfigurationError naming the path and why."""
    paths = paths_for(options, base=resolve_runtime_dir(options.runtime_dir))
    paths.ensure()
    if len(os.fsencode(paths.socket)) > MAX_SOCKET_PATH:
        raise ConfigurationError(
            f"runtime_dir {str(paths.base)!r} is too long: the socket path {str(paths.socket)!r} must "
            f"fit in {MAX_SOCKET_PATH} bytes; choose a shorter runtime_dir (MPSENDER_RUNTIME_DIR)"
        )
    return paths


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
