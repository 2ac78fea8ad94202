"""Length- and checksum-framed records, as written to the spool.

A frame is ``<u32 length><u32 crc32(payload)><payload>`` (little-endian). Readers
skip a torn or corrupt region and resynchronise on the next frame whose length is
sane and whose checksum matches, so garbage never hides the records after it.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["HEADER", "MAX_FRAME", "FrameScan", "crc32", "frame", "scan"]

HEADER = struct.Struct("<II")
HEADER_SIZE = HEADER.size
#: no legitimate payload is larger (max_message_bytes is capped at 1 MB)
MAX_FRAME = 1_048_576

crc32: Callable[[Any], int]
try:  # optional (the ``fast`` extra): ISA-L's CRC-32, the same values as zlib's
    from isal.isal_zlib import crc32  # type: ignore[import-not-found,unused-ignore,no-redef]
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    crc32 = zlib.crc32
# ISA-L's CRC-32 is several times zlib's speed (benchmarks/README.md, "The fast extra"), and
# it is paid on every record: track() checksums each record it writes, the sender each it reads.
_crc32 = crc32
_pack = HEADER.pack


def frame(payload: bytes) -> bytes:
    return _pack(len(payload), _crc32(payload)) + payload


class FrameScan(NamedTuple):
    payloads: list[tuple[int, bytes]]   # (end offset relative to buffer start, payload)
    consumed: int                       # bytes of the buffer fully accounted for
    corrupt: int                        # corrupt regions skipped
    incomplete: bool                    # the tail looks like a frame still being written


def scan(buf: bytes | memoryview, *, final: bool) -> FrameScan:
    """Split ``buf`` into payloads.

    ``final`` says no more bytes will follow (the writer is gone): a tail that looks like
    a frame still being written is then counted as corrupt and consumed, not waited for.
    """
    mv = memoryview(buf)
    data = buf if type(buf) is bytes else bytes(mv)  # one copy per payload, not two
    n = len(mv)
    pos = 0
    out: list[tuple[int, bytes]] = []
    append = out.append
    unpack_from = HEADER.unpack_from
    corrupt = 0
    while n - pos >= HEADER_SIZE:
        length, crc = unpack_from(data, pos)
        end = pos + HEADER_SIZE + length
        if length <= MAX_FRAME:
            if end > n:
                if not final:
                    break  # may be a frame still being written: wait for more bytes
            else:
                payload = data[pos + HEADER_SIZE:end]
                if _crc32(payload) == crc:
                    append((end, payload))
                    pos = end
                    continue
        nxt = _resync(mv, pos + 1, n)
        if nxt is None:
            if not final:
                break  # garbage, then perhaps a frame in progress: look again later
            corrupt += 1
            pos = n
            break
        corrupt += 1
        pos = nxt
    if pos < n and final:
        corrupt += 1
        pos = n
    return FrameScan(out, pos, corrupt, pos < n)


def _resync(mv: memoryview, start: int, n: int) -> int | None:
    for pos in range(start, n - HEADER_SIZE + 1):
        length, crc = HEADER.unpack_from(mv, pos)
        end = pos + HEADER_SIZE + length
        if length <= MAX_FRAME and end <= n and _crc32(mv[pos + HEADER_SIZE:end]) == crc:
            return pos
    return None
