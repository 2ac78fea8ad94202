"""The platform switch reaches the sender: it listens with the connection kind of the
process that started it, and a connection of the other kind is refused, not misread.

CI runs the integration suite twice, natively and with MPSENDER_PLATFORM=portable; this
file says which of the two a run really exercised.
"""

from __future__ import annotations

import errno
import socket
import sys

import pytest

from mpsender import _platform
from mpsender._collector import Collector


def _connects(path: str, kind: int) -> bool:
    sock = socket.socket(socket.AF_UNIX, kind)
    try:
        sock.connect(path)
    except OSError as exc:
        assert exc.errno in (errno.EPROTOTYPE, errno.ECONNREFUSED), exc
        return False
    finally:
        sock.close()
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SEQPACKET is Linux's")
def test_the_sender_listens_with_its_creators_connection_kind(client_factory, collector: Collector) -> None:
    """The sender a client starts accepts exactly the socket kind of the client's mode, and
    a request and events go through it."""
    client = client_factory()
    assert client.start(wait=20.0)
    path = str(client.paths.socket)
    stream = not _platform.FEATURES.seqpacket
    assert _connects(path, socket.SOCK_STREAM) is stream
    assert _connects(path, socket.SOCK_SEQPACKET) is not stream
    for i in range(20):
        client.track("E", user_id="u", properties={"i": i})
    assert client.flush(timeout=20)
    assert len(set(collector.message_ids())) == 20
    assert client.stats().sender is not None
