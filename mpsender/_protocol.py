"""Frames on the connection between an application process and its sender.

An application process writes events to its own write-ahead file (see ``_wal``); the
connection carries everything else, one msgpack array per message (a SEQPACKET message
on Linux, a length-prefixed frame where there is none: see ``_platform``):

==============================================  =============================================
app -> sender                                    meaning
==============================================  =============================================
``[HELLO, pid, [wal names], version, drops]``    here I am; these are my write-ahead files;
                                                 ``drops`` ``{reason: n}``: events this
                                                 process lost (``spill_failed``) since its
                                                 last HELLO, added to the sender's persisted
                                                 ``dropped``. Optional: a 4-element HELLO
                                                 (older clients) reports none
``[WAKE]``                                       new data in my file, and the doorbell said you sleep
``[FLUSH, req, [[name, size], ...]]``            answer when everything up to these sizes is settled
``[STATS, req]``                                 answer with your counters
``[STOP, req]``                                  drain and exit (the CLI's ``mpsender stop``)
a msgpack map                                    an event, sent here only when the disk refused it
==============================================  =============================================

The sender answers ``[REPLY, req, payload]``. A HELLO is sent at each (re)connection and when
a process opens a new file; the drops it carries are counted once (the process remembers
what it reported), so an event a process could hand to no sender is still counted by one. :func:`connect` and
:func:`request` are the one client of this protocol: the application side (``_link``) and
the CLI both use them.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from typing import Any

import msgpack

from . import _platform
from ._platform import Connection
from ._platform import green_threads as _green

__all__ = [
    "FLUSH", "HELLO", "MAX_CONTROL", "REPLY", "STATS", "STOP", "WAKE", "WAKE_FRAME",
    "NoAnswer", "RequestFailed", "SenderGone", "connect", "request",
]

logger = logging.getLogger(__name__)

HELLO = 1
WAKE = 2
FLUSH = 3
STATS = 4
STOP = 5
REPLY = 10

WAKE_FRAME: bytes = msgpack.packb([WAKE])
#: largest control frame either side sends (a flush listing many files stays far below)
MAX_CONTROL = _platform.MAX_MESSAGE


class RequestFailed(Exception):
    """A control request got no answer."""


class NoAnswer(RequestFailed):
    """The deadline passed first (the sender is busy, stopped, or the answer is slow)."""


class SenderGone(RequestFailed):
    """The connection closed: the sender exited or was killed."""


def connect(path: str) -> Connection:
    """A non-blocking connection to the sender listening at ``path``; OSError if none does."""
    sock = _platform.unix_socket()
    sock.setblocking(False)  # a full listen queue fails at once rather than blocking
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return _platform.connection(sock)


def request(conn: Connection, kind: int, req: int, args: list[Any], deadline: float) -> Any:
    """Send ``[kind, req, *args]`` on ``sock`` and return the payload of its reply.

    Raises :class:`NoAnswer` when ``deadline`` (``time.monotonic()``) passes first and
    :class:`SenderGone` when the connection closes. Replies to other (earlier, timed out)
    requests and unreadable frames are skipped.
    """
    data = msgpack.packb([kind, req, *args])
    while True:
        try:
            conn.send(data)
            break
        except BlockingIOError:
            _wait(conn.sock, select.POLLOUT, deadline)
        except OSError as exc:
            raise SenderGone(exc.strerror or str(exc)) from None
    while True:
        if not conn.pending():
            _wait(conn.sock, select.POLLIN, deadline)
        try:
            got = conn.recv()
        except BlockingIOError:
            continue
        except OSError as exc:
            raise SenderGone(exc.strerror or str(exc)) from None
        if got is None:
            raise SenderGone("the sender closed the connection")
        data = got
        try:
            msg = msgpack.unpackb(data, raw=False)
        except Exception:  # noqa: BLE001 - a garbled reply is skipped, the wait goes on
            logger.warning("ignoring an unreadable reply from the sender")
            continue
        if isinstance(msg, list) and len(msg) == 3 and msg[0] == REPLY and msg[1] == req:
            return msg[2]


def _wait(sock: socket.socket, events: int, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise NoAnswer("no answer in time")
    if _green():
        ready = _wait_green(sock, events, remaining)
    else:
        poller = select.poll()
        poller.register(sock, events | select.POLLHUP)
        ready = bool(poller.poll(remaining * 1000))
    if not ready:
        raise NoAnswer("no answer in time")


def _wait_green(sock: socket.socket, events: int, remaining: float) -> bool:
    # select() for one descriptor: both libraries make it yield to their hub. (Its
    # FD_SETSIZE limit does not bite: the hubs do not use the C select underneath.)
    # A hang-up makes the descriptor readable, and the recv that follows sees it.
    want_read = [sock] if events & select.POLLIN else []
    want_write = [sock] if events & select.POLLOUT else []
    readable, writable, broken = select.select(want_read, want_write, [sock], remaining)
    return bool(readable or writable or broken)
