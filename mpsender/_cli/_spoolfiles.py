"""Reading a spool from outside the sender, without changing it.

The same files the sender reads (docs/architecture.md): ``*.wal`` frames from
``mpsender._framing``, ``commits.log`` (msgpack ``[name, offset]`` records, a None
offset meaning the file was deleted), ``state.json`` (persisted counters) and
``deadletter.jsonl`` (events the endpoint refused for good).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from .._events import unpack
from .._framing import scan
from .._layout import COMMITS, DEADLETTER, is_wal_name, parse_commits, read_state
from ._common import CliError

_CHUNK = 1 << 20


@dataclass
class WalInfo:
    name: str
    path: Path
    size: int
    committed: int          # bytes delivered (or settled for good) from the start
    writer_pid: int | None  # from the name: <pid>-<tag>-<n>.wal
    writer_alive: bool

    @property
    def pending_bytes(self) -> int:
        return max(0, self.size - self.committed)


def unreadable(path: Path, exc: OSError) -> CliError:
    return CliError(f"cannot read the spool {path}: {exc.strerror or exc}")


def commits(spool: Path) -> dict[str, int]:
    """Committed offset per file, as ``commits.log`` says (read-only)."""
    try:
        data = (spool / COMMITS).read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise unreadable(spool, exc) from exc
    return parse_commits(data)[0]


def wal_files(spool: Path) -> list[WalInfo]:
    """The write-ahead files of a spool, oldest first."""
    try:
        entries = [e for e in os.scandir(spool) if is_wal_name(e.name)]
        stats = [(e, e.stat()) for e in entries]
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise unreadable(spool, exc) from exc
    done = commits(spool)
    out = []
    for entry, st in sorted(stats, key=lambda es: (es[1].st_mtime, es[0].name)):
        pid_text = entry.name.split("-", 1)[0]
        pid = int(pid_text) if pid_text.isdigit() else None
        out.append(WalInfo(entry.name, Path(entry.path), st.st_size, min(done.get(entry.name, 0), st.st_size),
                           pid, pid is not None and psutil.pid_exists(pid)))
    return out


def records(path: Path, start: int = 0) -> Iterator[tuple[int, int, bytes | None]]:
    """``(start, end, payload)`` for each frame from offset ``start``; payload None for a
    corrupt region (skipped by the sender, as here)."""
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise unreadable(path.parent, exc) from exc
    with fh:
        fh.seek(start)
        base = start
        carry = b""
        while True:
            try:
                chunk = fh.read(_CHUNK)
            except OSError as exc:
                raise unreadable(path.parent, exc) from exc
            final = not chunk
            buf = carry + chunk
            if not buf:
                return
            result = scan(buf, final=final)
            pos = 0
            for end, payload in result.payloads:
                frame_start = end - len(payload) - 8
                if frame_start > pos:
                    yield base + pos, base + frame_start, None
                yield base + frame_start, base + end, payload
                pos = end
            if result.consumed > pos:
                yield base + pos, base + result.consumed, None
            base += result.consumed
            carry = buf[result.consumed:]
            if final:
                return


def pending_events(wal: WalInfo) -> int:
    return sum(1 for _, _, payload in records(wal.path, wal.committed) if payload is not None)


def decode(payload: bytes) -> dict[str, Any]:
    rec = unpack(payload)
    if not isinstance(rec, dict):
        raise ValueError(f"a record is a map, not {type(rec).__name__}")
    return rec


def deadletter(spool: Path) -> list[dict[str, Any]]:
    path = spool / DEADLETTER
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise unreadable(spool, exc) from exc
    out = []
    for line in lines:
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            item = {"reason": "unreadable dead-letter line", "raw": line[:200]}
        out.append(item if isinstance(item, dict) else {"raw": item})
    return out


def state(spool: Path) -> dict[str, Any]:
    """The saved totals (``state.json``), an older file's keys folded in; {} when none were saved."""
    try:
        return read_state(spool) or {}
    except (OSError, ValueError):
        return {}
