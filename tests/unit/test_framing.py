"""Frames on disk: length + crc32, torn tails and garbage skipped and counted."""

from mpsender._framing import HEADER, frame, scan


def test_frames_round_trip() -> None:
    """Payloads come back in order with their end offsets."""
    data = frame(b"a") + frame(b"bb") + frame(b"")
    result = scan(data, final=False)
    assert [p for _, p in result.payloads] == [b"a", b"bb", b""]
    assert result.consumed == len(data)
    assert result.corrupt == 0 and not result.incomplete


def test_partial_tail_waits_while_writer_lives() -> None:
    """A tail that may still be being written is not consumed while not final."""
    whole = frame(b"x" * 100)
    result = scan(frame(b"a") + whole[:50], final=False)
    assert [p for _, p in result.payloads] == [b"a"]
    assert result.incomplete and result.corrupt == 0
    assert result.consumed == len(frame(b"a"))


def test_torn_tail_is_counted_when_final() -> None:
    """Once the writer is gone, a torn tail is skipped and counted as one corruption."""
    whole = frame(b"x" * 100)
    data = frame(b"a") + whole[:50]
    result = scan(data, final=True)
    assert [p for _, p in result.payloads] == [b"a"]
    assert result.corrupt == 1 and result.consumed == len(data)


def test_garbage_in_the_middle_is_skipped_and_the_rest_read() -> None:
    """Corruption between frames is counted once; the frames after it are recovered."""
    data = frame(b"first") + b"\x07garbage-bytes\xff\xff" + frame(b"second") + frame(b"third")
    result = scan(data, final=False)
    assert [p for _, p in result.payloads] == [b"first", b"second", b"third"]
    assert result.corrupt == 1


def test_bad_checksum_is_corruption() -> None:
    """A frame whose payload does not match its crc is not delivered."""
    good = frame(b"payload")
    bad = HEADER.pack(7, 12345) + b"payload"
    result = scan(bad + good, final=True)
    assert [p for _, p in result.payloads] == [b"payload"]
    assert result.corrupt == 1


def test_appended_garbage_at_the_end() -> None:
    """Garbage appended after valid frames costs only the garbage."""
    data = frame(b"one") + frame(b"two") + b"\xde\xad\xbe\xef" * 10
    result = scan(data, final=True)
    assert [p for _, p in result.payloads] == [b"one", b"two"]
    assert result.corrupt == 1 and result.consumed == len(data)


def test_the_checksum_is_zlibs_crc32_whatever_computes_it() -> None:
    """The fast extra's CRC-32 (ISA-L) gives zlib's values, so a spool written with one
    install is read by the other: bytes, memoryviews and slices alike."""
    import os
    import zlib

    from mpsender._framing import crc32

    for data in (b"", b"a", os.urandom(227), os.urandom(20_000)):
        assert crc32(data) == zlib.crc32(data)
        assert crc32(memoryview(data)[1:]) == zlib.crc32(data[1:])
    payload = os.urandom(300)
    assert frame(payload)[4:8] == zlib.crc32(payload).to_bytes(4, "little")
