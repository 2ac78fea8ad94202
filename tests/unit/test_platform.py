"""The platform seam: which implementation each mode and platform picks, the framed stream
connection that replaces SEQPACKET off Linux, and a platform where mpsender cannot run."""

from __future__ import annotations

import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import types

import pytest

import mpsender
from mpsender import _platform
from mpsender._exceptions import ConfigurationError
from mpsender._platform import FrameError, StreamConnection

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's native features")


def _fake_socket_module(**names: int) -> types.SimpleNamespace:
    return types.SimpleNamespace(**names)


@linux
def test_native_mode_on_linux_keeps_the_fast_paths() -> None:
    """On Linux the native mode uses SEQPACKET, SOCK_CLOEXEC, SO_PEERCRED and pipe2."""
    f = _platform.detect("native")
    assert (f.seqpacket, f.sock_cloexec, f.peercred, f.pipe2, f.unsupported) == (
        True, True, "SO_PEERCRED", True, "")


@linux
def test_portable_mode_on_linux_takes_every_fallback() -> None:
    """MPSENDER_PLATFORM=portable: a framed stream, set_inheritable, os.pipe + flags (the
    peer's uid still by SO_PEERCRED, which Linux has)."""
    f = _platform.detect("portable")
    assert (f.seqpacket, f.sock_cloexec, f.pipe2, f.peercred, f.unsupported) == (
        False, False, False, "SO_PEERCRED", "")


def test_the_mode_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """MPSENDER_PLATFORM picks the mode; an unknown value warns and means native."""
    monkeypatch.setenv(_platform.MODE_ENV, "portable")
    assert _platform.detect().mode == "portable"
    monkeypatch.setenv(_platform.MODE_ENV, "bogus")
    with caplog.at_level(logging.WARNING, logger="mpsender._platform"):
        assert _platform.detect().mode == "native"
    assert "MPSENDER_PLATFORM" in caplog.text


def test_macos_gets_a_stream_and_local_peercred() -> None:
    """On macOS (which names SOCK_SEQPACKET but has no AF_UNIX SEQPACKET, nor SOCK_CLOEXEC,
    SO_PEERCRED or pipe2) every fallback is taken, with LOCAL_PEERCRED for the uid."""
    mac = _fake_socket_module(AF_UNIX=1, SOCK_STREAM=1, SOCK_SEQPACKET=5, LOCAL_PEERCRED=1)
    f = _platform.detect("native", platform="darwin", sock=mac,
                         osmod=types.SimpleNamespace(getuid=os.getuid), have_fcntl=True)
    assert (f.seqpacket, f.sock_cloexec, f.peercred, f.pipe2, f.unsupported) == (
        False, False, "LOCAL_PEERCRED", False, "")


def test_windows_is_unsupported_and_says_how_to_run_disabled() -> None:
    """Without AF_UNIX or fcntl the features say mpsender cannot run, naming the platform
    and MPSENDER_DISABLED=1."""
    f = _platform.detect("native", platform="win32", sock=_fake_socket_module(SOCK_STREAM=1),
                         osmod=types.SimpleNamespace(), have_fcntl=False)
    assert "win32" in f.unsupported and "MPSENDER_DISABLED=1" in f.unsupported


def _windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_platform, "FEATURES", _platform.detect(
        "native", platform="win32", sock=_fake_socket_module(SOCK_STREAM=1),
        osmod=types.SimpleNamespace(), have_fcntl=False))


def test_init_on_an_unsupported_platform_raises_one_configuration_error(
        monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    """init() where mpsender cannot run raises ConfigurationError naming the platform and
    MPSENDER_DISABLED, and starts nothing."""
    _windows(monkeypatch)
    with pytest.raises(ConfigurationError, match=r"win32.*MPSENDER_DISABLED=1"):
        mpsender.init(write_key="k", endpoint="http://127.0.0.1:9", runtime_dir=str(tmp_path))


def test_disabled_mode_works_on_an_unsupported_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    """With MPSENDER_DISABLED=1, init() and track() work where mpsender cannot run."""
    _windows(monkeypatch)
    monkeypatch.setenv("MPSENDER_DISABLED", "1")
    client = mpsender.init(write_key="k", endpoint="http://127.0.0.1:9")
    mpsender.track("Signed Up", user_id="u1", properties={"plan": "pro"})
    assert client.options.disabled
    assert mpsender.flush(timeout=1.0)


def test_import_works_without_fcntl_or_af_unix() -> None:
    """``import mpsender`` succeeds in a Python without fcntl, AF_UNIX, fork hooks, pipe2 or
    poll (as on Windows); init() then says why it cannot run, and disabled mode and
    ``testing.capture()`` work."""
    code = "\n".join([
        "import os, select, socket, sys",
        "sys.modules['fcntl'] = None",
        "for mod, names in ((socket, ['AF_UNIX', 'SOCK_SEQPACKET', 'SOCK_CLOEXEC', 'SO_PEERCRED',",
        "                              'MSG_DONTWAIT']),",
        "                   (os, ['register_at_fork', 'pipe2', 'getuid', 'fork']), (select, ['poll'])):",
        "    for name in names:",
        "        if hasattr(mod, name):",
        "            delattr(mod, name)",
        "import mpsender, mpsender.testing",
        "from mpsender import _platform",
        "assert _platform.FEATURES.unsupported, _platform.FEATURES",
        "try:",
        "    mpsender.init(write_key='k', endpoint='http://127.0.0.1:9')",
        "except mpsender.ConfigurationError as exc:",
        "    assert 'MPSENDER_DISABLED=1' in str(exc), exc",
        "else:",
        "    raise SystemExit('init() did not refuse')",
        "os.environ['MPSENDER_DISABLED'] = '1'",
        "mpsender.init(write_key='k', endpoint='http://127.0.0.1:9')",
        "mpsender.track('Signed Up', user_id='u1')",
        "with mpsender.testing.capture() as events:",
        "    mpsender.track('Captured', user_id='u1')",
        "assert [e['event'] for e in events] == ['Captured'], list(events)",
        "print('ok')",
    ])
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPSENDER_")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.parametrize("mode", ["native", "portable"])
def test_sockets_and_pipes_of_each_mode(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """Each mode makes the socket kind it says, closed on exec, and a non-blocking pipe."""
    features = _platform.detect(mode)
    monkeypatch.setattr(_platform, "FEATURES", features)
    sock = _platform.unix_socket()
    try:
        want = socket.SOCK_SEQPACKET if features.seqpacket else socket.SOCK_STREAM
        assert sock.type == want and not os.get_inheritable(sock.fileno())
        conn = _platform.connection(sock)
        assert isinstance(conn, StreamConnection) is (want == socket.SOCK_STREAM)
    finally:
        sock.close()
    r, w = _platform.nonblocking_pipe()
    try:
        for fd in (r, w):
            assert not os.get_blocking(fd) and not os.get_inheritable(fd)
        with pytest.raises(BlockingIOError):
            os.read(r, 1)
    finally:
        os.close(r)
        os.close(w)


# --- the framed stream --------------------------------------------------------------------

@pytest.fixture
def pair() -> object:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def _frame(msg: bytes) -> bytes:
    return struct.pack(">I", len(msg)) + msg


def test_a_message_sent_byte_by_byte_is_reassembled(pair: tuple[socket.socket, socket.socket]) -> None:
    """A message arriving one byte at a time comes out whole, once, and only when complete."""
    a, b = pair
    reader = StreamConnection(b, bytearray(_platform.MAX_MESSAGE + 1))
    frame = _frame(b"\x92\x02\xa5hello")
    for byte in frame[:-1]:
        a.send(bytes([byte]))
        with pytest.raises(BlockingIOError):
            reader.recv()
    a.send(frame[-1:])
    assert reader.recv() == b"\x92\x02\xa5hello"
    with pytest.raises(BlockingIOError):
        reader.recv()


def test_several_messages_in_one_read_come_out_one_by_one(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """Messages that arrive together (and one cut in half) are returned in order, one per
    call, with pending() saying when one is already buffered."""
    a, b = pair
    reader = StreamConnection(b)
    data = _frame(b"one") + _frame(b"") + _frame(b"three") + _frame(b"four")[:3]
    a.send(data)
    assert reader.recv() == b"one"
    assert reader.pending()
    assert reader.recv() == b""
    assert reader.recv() == b"three"
    assert not reader.pending()
    with pytest.raises(BlockingIOError):
        reader.recv()
    a.send(_frame(b"four")[3:])
    assert reader.recv() == b"four"


def test_a_connection_closed_mid_message_ends_without_it(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """A peer that closes in the middle of a message: the half message is dropped and the
    connection reads as ended."""
    a, b = pair
    reader = StreamConnection(b)
    a.send(_frame(b"whole") + _frame(b"half a message")[:7])
    a.close()
    assert reader.recv() == b"whole"
    assert reader.recv() is None


def test_an_oversize_frame_is_a_frame_error(pair: tuple[socket.socket, socket.socket]) -> None:
    """A length past MAX_MESSAGE is refused before anything is buffered for it."""
    a, b = pair
    reader = StreamConnection(b)
    a.send(struct.pack(">I", _platform.MAX_MESSAGE + 1) + b"x" * 100)
    with pytest.raises(FrameError):
        reader.recv()


def test_send_frames_messages_whole_and_replies_read_back(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """Connection.send frames each message so the other side's recv returns it whole."""
    a, b = pair
    writer, reader = StreamConnection(a), StreamConnection(b)
    for msg in (b"a", b"bb" * 1000, b"c"):
        writer.send(msg)
    assert [reader.recv(), reader.recv(), reader.recv()] == [b"a", b"bb" * 1000, b"c"]


def test_a_partial_send_is_finished_while_the_peer_reads(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """A message larger than the free buffer still arrives whole when the peer reads."""
    a, b = pair
    writer, reader = StreamConnection(a), StreamConnection(b)
    big = os.urandom(_platform.MAX_MESSAGE)
    got: list[bytes | None] = []

    def read() -> None:
        b.setblocking(True)
        b.settimeout(5.0)
        while not got:
            try:
                msg = reader.recv()
            except BlockingIOError:
                continue
            got.append(msg)

    t = threading.Thread(target=read)
    t.start()
    writer.send(big)
    t.join(10.0)
    assert got == [big]


def test_a_partial_send_the_peer_never_takes_breaks_only_that_connection(
        pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch) -> None:
    """When the peer does not read, a half-sent message shuts the connection down within
    STREAM_STALL: the peer reads what came before, then the end, never a torn message."""
    monkeypatch.setattr(_platform, "STREAM_STALL", 0.05)
    a, b = pair
    writer, reader = StreamConnection(a), StreamConnection(b)
    writer.send(b"before")
    with pytest.raises(OSError):
        writer.send(os.urandom(_platform.MAX_MESSAGE))
    assert reader.recv() == b"before"
    b.setblocking(True)
    b.settimeout(5.0)
    assert reader.recv() is None


# --- the peer's credentials ---------------------------------------------------------------

def test_xucred_is_parsed_for_the_uid() -> None:
    """LOCAL_PEERCRED's struct xucred gives the uid; another version gives none."""
    xucred = struct.pack("=Iih2x16I", 0, 501, 1, *([20] + [0] * 15))
    assert _platform.parse_xucred(xucred) == 501
    assert _platform.parse_xucred(struct.pack("=Ii", 7, 501)) is None
    assert _platform.parse_xucred(b"\0") is None


@linux
def test_so_peercred_gives_this_process(pair: tuple[socket.socket, socket.socket],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """SO_PEERCRED names this process and its uid, in either mode."""
    monkeypatch.setattr(_platform, "FEATURES", _platform.detect("portable"))
    assert _platform.peer_credentials(pair[0]) == (os.getpid(), os.getuid())


def test_without_a_way_to_ask_the_uid_is_unknown_and_said_once(
        pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A platform with no peer-credential call: the uid is None (the sender accepts), and
    the warning is logged once, not per connection."""
    monkeypatch.setattr(_platform, "FEATURES", _platform.detect(
        "native", platform="plan9", sock=_fake_socket_module(AF_UNIX=1, SOCK_STREAM=1),
        osmod=types.SimpleNamespace(getuid=os.getuid), have_fcntl=True))
    monkeypatch.setattr(_platform, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="mpsender._platform"):
        assert _platform.peer_credentials(pair[0]) == (0, None)
        assert _platform.peer_credentials(pair[1]) == (0, None)
    assert len([r for r in caplog.records if "0700" in r.getMessage()]) == 1
