"""The runtime directory as the CLI sees it: destinations, their senders, a control client.

A destination is a subdirectory of the runtime directory (its name is the destination
id). Its sender is running when ``sender.json`` names a live process that psutil shows
running ``python -m mpsender._sender <that directory>`` (so a reused pid is not taken
for a sender). The control client speaks the application side of
``mpsender._protocol``: one connection, ``[STATS, req]`` or
``[STOP, req]``, answered ``[REPLY, req, payload]``. It never sends HELLO.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import psutil

from .. import _layout as layout
from .. import _protocol
from .._options import Options
from .._paths import paths_for
from .._protocol import STATS, STOP
from ._common import CliError

_OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(Options))


@dataclass
class Destination:
    id: str
    dir: Path
    info: dict[str, Any] | None          # sender.json, when present
    process: psutil.Process | None       # the live sender, if one runs

    @property
    def running(self) -> bool:
        return self.process is not None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def socket(self) -> Path:
        return self.dir / layout.SOCKET

    @property
    def label(self) -> str:
        """The destination, key redacted, as the sender or the saved options tell it."""
        if self.info and self.info.get("destination"):
            return str(self.info["destination"])
        opts = self.options(quiet=True)
        return opts.redacted_endpoint() if opts is not None else "(unknown destination)"

    def options(self, *, quiet: bool = False) -> Options | None:
        """The options saved by init() in ``client.msgpack`` (0600; holds the write key)."""
        path = self.dir / layout.CLIENT_CONFIG
        try:
            wire = msgpack.unpackb(path.read_bytes(), raw=False)
            opts = Options(**{k: v for k, v in wire.items() if k in _OPTION_NAMES})
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            if quiet:
                return None
            raise CliError(f"cannot read {path}: {exc}") from exc
        # the runtime directory may be seen under another name (a symlink, --runtime-dir)
        return dataclasses.replace(opts, runtime_dir=str(self.dir.parent))

    @property
    def spool(self) -> Path:
        if self.info and self.info.get("spool"):
            return Path(str(self.info["spool"]))
        opts = self.options(quiet=True)
        if opts is not None:
            return paths_for(opts).spool
        return self.dir / layout.SPOOL


def destinations(root: str) -> list[Destination]:
    """Every destination directory under the runtime directory ``root``."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise CliError(f"cannot read the runtime directory {root}: {exc.strerror or exc}") from exc
    out = []
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False):
            continue
        d = Path(entry.path)
        if not ((d / layout.LOCK).exists() or (d / layout.CLIENT_CONFIG).exists() or (d / layout.SPOOL).exists()):
            continue  # not a destination directory
        info = _read_info(d / layout.INFO)
        out.append(Destination(entry.name, d, info, _live_sender(d, info)))
    return out


def select(root: str, wanted: list[str] | None) -> list[Destination]:
    """The destinations named by id prefix in ``wanted`` (all when empty)."""
    found = destinations(root)
    if not wanted:
        return found
    chosen = []
    for prefix in wanted:
        match = [d for d in found if d.id.startswith(prefix)]
        if not match:
            raise CliError(f"no destination {prefix!r} under {root} (see `mpsender spool ls`)")
        if len(match) > 1:
            raise CliError(f"{prefix!r} names {len(match)} destinations under {root}; give more of the id")
        if match[0] not in chosen:
            chosen.append(match[0])
    return chosen


def _read_info(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _live_sender(dest: Path, info: dict[str, Any] | None) -> psutil.Process | None:
    if not info or not isinstance(info.get("pid"), int):
        return None
    try:
        proc = psutil.Process(info["pid"])
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        cmd = proc.cmdline()
    except psutil.Error:
        return None
    # the launcher's command line, kept by the sender it forked: a reused pid will not match
    real = os.path.realpath(dest)
    if "mpsender._sender" in cmd and any(a == str(dest) or os.path.realpath(a) == real for a in cmd):
        return proc
    return None


# --- control --------------------------------------------------------------------------------


class ControlError(Exception):
    pass


def control(sock_path: Path, kind: int, timeout: float) -> Any:
    """One round trip with a sender: ``[kind, 1]`` -> the reply's payload (the client of
    ``_protocol``, as the application side uses it)."""
    deadline = time.monotonic() + timeout
    try:
        sock = _protocol.connect(str(sock_path))
    except OSError as exc:
        raise ControlError(f"cannot reach {sock_path}: {exc.strerror or exc}") from exc
    try:
        return _protocol.request(sock, kind, 1, [], deadline)
    except _protocol.NoAnswer:
        raise ControlError(f"no answer within {timeout:g}s") from None
    except _protocol.SenderGone as exc:
        raise ControlError(f"connection lost: {exc}") from None
    finally:
        sock.close()


def sender_stats(dest: Destination, timeout: float = 2.0) -> dict[str, Any]:
    answer = control(dest.socket, STATS, timeout)
    if not isinstance(answer, dict):
        raise ControlError(f"unexpected answer {answer!r}")
    # "connections" counts the processes that said HELLO (the sender's ``_clients``): this
    # request's own connection never does, so the figure is the applications' as it is
    return answer


def stop_sender(dest: Destination, timeout: float = 2.0) -> None:
    if control(dest.socket, STOP, timeout) is not True:
        raise ControlError("the sender did not accept the stop request")
