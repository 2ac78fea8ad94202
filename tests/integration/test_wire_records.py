"""Records written as the wire's JSON (``wire_records=True``) go only to a sender that says
it reads them: a sender of an earlier version sharing the runtime directory gets packed
records, which every version reads (issue 15; mpsender/_wire_records.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from support import app_env, check, run_app

from mpsender._collector import Collector
from mpsender._framing import scan

pytestmark = [pytest.mark.timeout(60), pytest.mark.skipif(
    __import__("importlib").util.find_spec("orjson") is None, reason="wire records need orjson (the fast extra)")]

#: an application process: tracks, flushes, prints the first byte of each record it wrote
_APP = """
import os, mpsender
from mpsender._framing import scan
c = mpsender.init()
for i in range(3):
    mpsender.track("E", user_id="u", properties={"i": i, "who": "app"})
assert mpsender.flush(20)
(wal,) = c.paths.spool.glob(f"{os.getpid()}-*.wal")
print(" ".join(hex(p[0]) for _, p in scan(wal.read_bytes(), final=True).payloads))
"""


def _first_bytes(spool: Path) -> list[int]:
    (wal,) = spool.glob(f"{os.getpid()}-*.wal")
    return [p[0] for _, p in scan(wal.read_bytes(), final=True).payloads]


@pytest.mark.parametrize("change", ["no records listed", "not the listening sender's file"])
def test_wire_json_only_for_a_sender_that_reads_it(client_factory, collector: Collector, runtime_dir: str,
                                                   change: str) -> None:
    client = client_factory(linger=10.0, wire_records=True)
    assert client.start(wait=10)
    client.track("E", user_id="u", properties={"who": "test"})
    assert client.flush(timeout=20)
    assert _first_bytes(client.paths.spool) == [0xC1]  # this sender lists "wire-json"

    # What an earlier version's sender writes: no "records"; or a file another sender left
    info = json.loads(client.paths.info.read_text())
    if change == "no records listed":
        del info["records"]
    else:
        info["pid"] += 1
    client.paths.info.write_text(json.dumps(info))

    out = check(run_app(_APP, app_env(collector.url, runtime_dir, linger=10.0, wire_records=1)))
    assert out.split() == ["0x86"] * 3  # packed maps of six keys, never 0xc1
    assert collector.wait_for(lambda c: c.count() >= 4, timeout=20)
    assert sorted((e["properties"]["who"], e["properties"].get("i")) for e in collector.events()) == [
        ("app", 0), ("app", 1), ("app", 2), ("test", None)]


def test_a_value_orjson_refuses_is_packed_in_the_same_file_and_both_arrive(client_factory,
                                                                            collector: Collector) -> None:
    client = client_factory(wire_records=True)
    assert client.start(wait=10)
    client.track("E", user_id="u", properties={"i": 0})
    client.track("E", user_id="u", properties={"i": 1, "raw": b"bytes"})  # orjson refuses bytes
    client.track("E", user_id="u", properties={"i": 2})
    assert client.flush(timeout=20)
    first = _first_bytes(client.paths.spool)
    assert first[0] == first[2] == 0xC1 and first[1] != 0xC1
    events = sorted(collector.events(), key=lambda e: e["properties"]["i"])
    assert [e["properties"]["i"] for e in events] == [0, 1, 2]
    assert events[1]["properties"]["raw"] == "bytes"  # as the packed path has always sent it


def test_an_event_over_max_message_bytes_as_json_is_refused_at_the_call(client_factory) -> None:
    """The bound is on the JSON the endpoint would get, checked in track(), not in the sender."""
    import mpsender

    client = client_factory(max_message_bytes=1_000, wire_records=True)
    assert client.start(wait=10)
    client.track("E", user_id="u", properties={"blob": "x" * 700})  # under the bound as JSON too
    with pytest.raises(mpsender.EventTooLargeError, match=r"event is \d+ bytes as JSON, over the limit of 1000"):
        client.track("E", user_id="u", properties={"blob": "x" * 960})  # packed ~1,000 B, JSON ~1,150
    assert client.stats().process.rejected == 1


def test_packed_records_unless_asked(client_factory) -> None:
    """wire_records is off by default: track() packs, the sender decodes and encodes."""
    client = client_factory()
    assert client.start(wait=10)
    client.track("E", user_id="u", properties={"i": 0})
    assert client.flush(timeout=20)
    assert _first_bytes(client.paths.spool) == [0x86]
