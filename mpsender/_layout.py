"""The on-disk contract: the names of a destination's files, and the formats of the
spool's ``commits.log`` and ``state.json``.

One home for what the application side, the sender and the CLI all read or write, so
they cannot drift apart::

    <runtime dir>/<destination id>/     (0700)
        sender.sock  sender.lock  doorbell  sender.log  sender.json
        client.msgpack  start-failure.json
        spool/                          (0700; or <spool_dir>/<destination id>)
            <pid>-<tag>-<n>.wal         write-ahead files of the applications (0600)
            commits.log                 msgpack [name, offset] records; offset None: deleted
            state.json                  the sender's persisted totals
            deadletter.jsonl            events the endpoint refused for good
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from typing import Any

import msgpack

__all__ = [
    "CLIENT_CONFIG", "COMMITS", "DEADLETTER", "DOORBELL", "INFO", "LOCK", "LOG", "SOCKET",
    "SPOOL", "START_FAILURE", "STATE", "WAL_SUFFIX", "commit_record", "is_wal_name",
    "parse_commits", "parse_state", "read_state", "write_commits", "write_state",
]

# --- a destination's directory ------------------------------------------------------------
SOCKET = "sender.sock"            # the sender listens here (SEQPACKET, or a framed stream: _platform)
LOCK = "sender.lock"              # held (flock) by the live sender for its whole life
DOORBELL = "doorbell"             # one shared byte: "the sender is asleep, ring me"
LOG = "sender.log"                # the sender's log (and its launcher's stderr)
INFO = "sender.json"              # the live sender's pid, start time, destination (no key)
CLIENT_CONFIG = "client.msgpack"  # options for spawned children that never call init() (0600)
START_FAILURE = "start-failure.json"  # a sender's failed start, until the next one listens
SPOOL = "spool"                   # the spool directory, unless spool_dir is given

# --- a spool directory ----------------------------------------------------------------------
WAL_SUFFIX = ".wal"
COMMITS = "commits.log"
STATE = "state.json"
DEADLETTER = "deadletter.jsonl"

#: the plain totals ``state.json`` keeps (besides ``dropped`` and ``incidents``)
_TOTALS = ("uploaded", "batches", "requests", "retries")


def is_wal_name(name: object) -> bool:
    """A write-ahead file's name (not a hidden temporary one, not a path)."""
    return (isinstance(name, str) and name.endswith(WAL_SUFFIX) and not name.startswith(".")
            and "/" not in name)


# --- commits.log ----------------------------------------------------------------------------

def commit_record(name: str, offset: int | None) -> bytes:
    """One ``commits.log`` record: ``name`` is committed up to ``offset`` (None: deleted,
    or to be read again from the start)."""
    return msgpack.packb([name, offset])  # type: ignore[no-any-return]


def parse_commits(data: bytes) -> tuple[dict[str, int], bool]:
    """Committed offset per file from the bytes of ``commits.log`` (records
    ``[name, offset]``, ``offset`` None once the file is deleted), and whether the log
    ends in a torn record (a sender killed mid-write: what came before it stands)."""
    out: dict[str, int] = {}
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    try:
        for item in unpacker:
            if isinstance(item, list) and len(item) == 2 and isinstance(item[0], str):
                name, offset = item
                if offset is None:
                    out.pop(name, None)
                elif isinstance(offset, int):
                    out[name] = max(offset, out.get(name, 0))
    except (ValueError, msgpack.ExtraData):
        return out, True
    return out, False


def write_commits(spool: str | os.PathLike[str], offsets: Iterable[tuple[str, int]]) -> None:
    """Replace ``commits.log`` with one record per file, atomically."""
    path = os.path.join(spool, COMMITS)
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        for name, offset in offsets:
            fh.write(commit_record(name, offset))
    os.replace(tmp, path)


# --- state.json -----------------------------------------------------------------------------

def parse_state(data: Any) -> dict[str, Any]:
    """The totals of a ``state.json`` document: ``uploaded``, ``batches``, ``requests``,
    ``retries``, ``dropped`` and ``incidents``. Files written before the counters were
    one set keep corrupt regions under ``"corrupt"`` and the spool's incidents under
    ``"spool"``: they are folded into ``dropped`` and ``incidents``, so nothing counted
    before an upgrade is lost. What is not a count reads as none."""
    if not isinstance(data, dict):
        data = {}
    out: dict[str, Any] = {key: _count(data.get(key)) for key in _TOTALS}
    dropped = _tally(data.get("dropped"))
    incidents = _tally(data.get("incidents"))
    corrupt = _count(data.get("corrupt"))
    if corrupt:
        dropped["corrupt"] = dropped.get("corrupt", 0) + corrupt
    for reason, n in _tally(data.get("spool")).items():
        incidents[reason] = incidents.get(reason, 0) + n
    out["dropped"] = dropped
    out["incidents"] = incidents
    return out


def read_state(spool: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The saved totals of a spool (:func:`parse_state`); None when none were saved.
    Raises OSError or ValueError when the file cannot be read or is not JSON."""
    try:
        with open(os.path.join(spool, STATE)) as fh:
            return parse_state(json.load(fh))
    except FileNotFoundError:
        return None


def write_state(spool: str | os.PathLike[str], totals: dict[str, Any]) -> None:
    """Save ``totals`` (``Counters.totals()``) as ``state.json``, atomically."""
    path = os.path.join(spool, STATE)
    with open(path + ".tmp", "w") as fh:
        json.dump({**totals, "saved_at": time.time()}, fh)
    os.replace(path + ".tmp", path)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _tally(value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        return {}
    return {str(k): n for k, v in value.items() if (n := _count(v))}
