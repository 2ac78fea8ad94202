"""How a control request waits: ``poll`` in a plain process, the green library's
``select.select`` once gevent or eventlet replaced it (they yield to their hub there)."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from mpsender import _platform, _protocol


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def green_select(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """``select.select`` replaced by a Python function, as monkey-patching does; its calls."""
    calls: list[tuple[Any, ...]] = []
    real = select.select

    def patched(*args: Any) -> Any:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(select, "select", patched)
    return calls


def test_a_plain_process_waits_with_poll(pair: tuple[socket.socket, socket.socket]) -> None:
    """Unpatched, select.select is the C function, and _wait does not go through it."""
    assert not _protocol._green()
    a, b = pair
    b.send(b"x")
    _protocol._wait(a, select.POLLIN, time.monotonic() + 1.0)


def test_a_patched_select_is_what_the_wait_goes_through(
        pair: tuple[socket.socket, socket.socket], green_select: list[tuple[Any, ...]]) -> None:
    """Patched, a ready socket returns at once through select.select, and a silent one
    raises NoAnswer at its deadline, not before."""
    assert _protocol._green()
    a, b = pair
    b.send(b"x")
    _protocol._wait(a, select.POLLIN, time.monotonic() + 1.0)
    assert len(green_select) == 1 and green_select[0][0] == [a]
    a.recv(16)
    started = time.monotonic()
    with pytest.raises(_protocol.NoAnswer):
        _protocol._wait(a, select.POLLIN, started + 0.2)
    assert 0.15 <= time.monotonic() - started < 2.0
    _protocol._wait(a, select.POLLOUT, time.monotonic() + 1.0)  # writable: returns at once
    assert green_select[-1][1] == [a]


def test_a_patched_wait_sees_the_sender_hang_up(
        pair: tuple[socket.socket, socket.socket], green_select: list[tuple[Any, ...]]) -> None:
    """The sender closing its end wakes the wait (readable), so request() reports it gone."""
    a, b = pair
    b.close()
    _protocol._wait(a, select.POLLIN, time.monotonic() + 1.0)
    with pytest.raises(_protocol.SenderGone):
        _protocol.request(_platform.connection(a), _protocol.STATS, 1, [], time.monotonic() + 1.0)
