"""What is sent does not depend on whether the ``fast`` extra (ormsgpack) is installed.

``track()`` packs with ormsgpack when it can and with msgpack otherwise; the sender
unpacks the same way. Both paths must give the same JSON at the sender and the same
errors, for every value an application may put in an event (and the same bytes where
ormsgpack packs). The exceptions, by design, are in tests/unit/test_client.py
(``BAD_PROPERTIES``): without ormsgpack, colliding keys are found by the sender.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import uuid
from typing import Any

import msgpack
import pytest

from mpsender import _events, _wire
from mpsender._exceptions import UnserializableError

ormsgpack = pytest.importorskip("ormsgpack")


class Color(enum.Enum):
    RED = "red"
    TWO = 2


class Level(enum.IntEnum):
    HIGH = 5


class Name(str):
    pass


class Count(int):
    pass


class Attrs(dict):  # type: ignore[type-arg]
    pass


@dataclasses.dataclass
class Point:
    x: int = 1


_INTS = [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1,
         -1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1, -(2**63)]

#: every kind of value, including those only msgpack takes and those nobody takes
VALUES: list[Any] = [
    *_INTS,
    1.5, float("nan"), float("inf"), -0.0, True, False, None,
    "", "x" * 31, "x" * 32, "x" * 255, "x" * 256, "x" * 65536, "é€😀",
    b"", b"\x00\xff" * 150, bytearray(b"ab"), memoryview(b"ab"),
    [], (), [1, (2, 3)], {}, {"a": None, "b": [True, {"c": 1.25}]},
    {1: 2}, {(1, 2): 3}, {1.5: 2}, {None: 1}, {True: 1},
    dt.datetime(2026, 1, 2, 3, 4, 5), dt.datetime(2026, 1, 2, 3, 4, 5, 123456),
    dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc),
    dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
    dt.date(2026, 1, 2), uuid.UUID(int=5), Color.RED, Color.TWO, Level.HIGH,
    decimal.Decimal("1.25"), {1, 2}, frozenset(["a"]),
    Name("s"), Count(3), Attrs(a=1),
    # refused by both: the same error either way
    dt.time(1, 2), Point(), object(), 2**64, -(2**63) - 1, "\ud800",
]


def _outcome(fn: Any, record: dict[str, Any]) -> Any:
    try:
        return fn(record)
    except Exception as exc:  # noqa: BLE001 - compared below
        return type(exc)


@pytest.mark.parametrize("value", VALUES, ids=[f"{type(v).__name__}-{i}" for i, v in enumerate(VALUES)])
def test_both_paths_send_the_same_record_or_raise_the_same_error(value: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ormsgpack or with msgpack alone, a value (and the same value as a map key) reaches
    the sender as the same record, or track() raises the same error for it."""
    for record in ({"t": "track", "m": b"\x01" * 16, "ts": 1.5, "u": "u1", "e": "E", "p": {"v": value}},
                   {"t": "track", "p": {"k": {value: 1}}} if _hashable(value) else {"t": "track"}):
        fast = _sent(record)
        with monkeypatch.context() as m:
            m.setattr(_events, "_fast_packb", None)
            assert _sent(record) == fast
        if fast[0] == "sent":  # and ormsgpack's bytes are msgpack's for the record with string keys
            assert _events.pack(record) == _events._pack_msgpack(_events._checked(record))


def _sent(record: dict[str, Any]) -> tuple[Any, str]:
    """The JSON the sender makes of what track() writes, or the error track() raises."""
    try:
        payload = _events.pack(record)
    except (TypeError, ValueError, OverflowError) as exc:
        error = _events.explain_unpackable(record, exc)
        return type(error), str(error)
    return "sent", _wire._to_json_bytes(_events.unpack(payload)).decode()


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def test_the_fast_path_is_the_one_taken() -> None:
    """ormsgpack really packs (else the test above compares msgpack with itself)."""
    assert _events._fast_packb is ormsgpack.packb
    record = {"t": "track", "p": {"when": dt.datetime(2026, 1, 2), "c": Color.RED}}
    assert ormsgpack.packb(record, default=_events.convert, option=_events._FAST_OPTIONS) \
        == _events._pack_msgpack(record)


@pytest.mark.parametrize("value", [v for v in VALUES if _outcome(_events._pack_msgpack, {"v": v}) is not TypeError
                                   and not isinstance(_outcome(_events._pack_msgpack, {"v": v}), type)])
def test_unpack_reads_either_library_the_same(value: Any) -> None:
    """The sender's unpack gives what msgpack gives with map keys made strings, arrays
    aside (lists or tuples: the same JSON), for every record track() can write."""
    payload = _events._pack_msgpack({"t": "track", "p": {"v": value}})
    reference = _events._checked(msgpack.unpackb(payload, raw=False, strict_map_key=False, use_list=False))
    got = _events.unpack(payload)
    assert _tuples(got) == _tuples(reference) or _nan_equal(got, reference)


def _tuples(value: Any) -> Any:
    if isinstance(value, dict):
        return {_tuples(k): _tuples(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(_tuples(v) for v in value)
    return value


def _nan_equal(a: Any, b: Any) -> bool:
    return repr(_tuples(a)) == repr(_tuples(b))  # nan != nan, but its repr is stable


def test_unpack_refuses_malformed_records_with_value_error() -> None:
    with pytest.raises(ValueError):
        _events.unpack(b"\x81\xa1a\xa2\xff\xfe")  # a string that is not UTF-8
    with pytest.raises(ValueError):
        _events.unpack(b"\xc1")  # a byte msgpack never uses


def test_bad_input_names_the_key_on_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """With and without the extra: the same error and message, and the events around it kept."""
    import mpsender
    from mpsender.testing import capture

    messages = []
    for fast in (ormsgpack.packb, None):
        monkeypatch.setattr(_events, "_fast_packb", fast)
        with capture() as events:
            mpsender.track("Before", user_id="u", properties={"when": dt.date(2026, 1, 2)})
            with pytest.raises(UnserializableError) as info:
                mpsender.track("Bad", user_id="u", properties={"cart": [{"price": object()}]})
            mpsender.track("After", user_id="u", properties={"ids": {3, 1}})
            messages.append(str(info.value))
            assert [e["event"] for e in events] == ["Before", "After"]
            assert events[0]["properties"] == {"when": "2026-01-02"}
            assert sorted(events[1]["properties"]["ids"]) == [1, 3]
    assert messages[0] == messages[1]
    assert "properties.cart[0].price" in messages[0]


def test_unpack_without_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """msgpack alone reads a record with non-str keys (an install without ormsgpack wrote
    it) and makes them the strings track() makes with it; colliding keys are a ValueError."""
    monkeypatch.setattr(_events, "_fast_unpackb", None)
    payload = _events._pack_msgpack({"t": "track", "p": {"a": [1, 2], "k": {(1, 2): "x"}}})
    assert _events.unpack(payload) == {"t": "track", "p": {"a": [1, 2], "k": {"(1, 2)": "x"}}}
    payload = _events._pack_msgpack({"t": "track", "p": {"a": (1, 2)}})
    assert _events.unpack(payload) == {"t": "track", "p": {"a": (1, 2)}}  # str keys: as msgpack reads it
    with pytest.raises(ValueError, match=r"properties.k.1 \(key\): becomes the JSON key '1'"):
        _events.unpack(_events._pack_msgpack({"t": "track", "p": {"k": {1: "a", "1": "b"}}}))


def test_an_event_ages_from_when_it_was_written_not_from_its_timestamp() -> None:
    """written_at: "w" when the record has a timestamp of its own, else "ts", else the default."""
    assert _events.written_at({"ts": 100.0}, 5.0) == 100.0
    assert _events.written_at({"ts": 100.0, "w": 2e9}, 5.0) == 2e9
    assert _events.written_at({"ts": "2001-01-01T00:00:00Z"}, 5.0) == 5.0
    assert _events.written_at({}, 5.0) == 5.0

