"""mpsender's payloads against the ones the peer SDKs produce for the same calls.

The peers (segment-analytics-python and posthog, test-only dependencies) send to a
small HTTP server on 127.0.0.1 in their sync mode, so what is compared is what they
really put on the wire. mpsender's side is built by a real Client (validation,
conversions, packing) and encoded by the sender's encoder into the request the
uploader sends (``get_encoder(...).encode`` + ``request_parts``, what
``_sender/_uploader.py`` does).

Events are compared field by field after removing ONLY the differences listed in
docs/destinations.md ("Compared with the vendors' SDKs"); each removal below is
named after one of them. The same message ids and timestamps are given to every
library, so the ids must be equal too.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgpack
import pytest

from mpsender._client import Client
from mpsender._options import Options
from mpsender._version import __version__
from mpsender._wire import get_encoder
from mpsender.testing import CapturedEvents, CaptureSink

segment_analytics = pytest.importorskip("segment.analytics")
posthog = pytest.importorskip("posthog")

KEY = "wk_123"
UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 23, 8, 7, 59, 123000, tzinfo=UTC)
PROPS: dict[str, Any] = {
    "plan": "pro", "price": Decimal("19.90"), "seats": 3, "trial": False, "coupon": None,
    "renews": dt.datetime(2027, 1, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
    "tags": {"b2b"}, "items": [{"sku": "A-1", "qty": 2}], "note": "naïve ☃",
}
ORDER_ID = uuid.UUID("7e1b1e4c-5a8b-4f6e-9d3a-0c2b8f9e1a77")
#: posthog-python sends these on every capture(): facts about the SDK's own host
POSTHOG_SYSTEM = ("$python_runtime", "$python_version", "$os", "$os_version", "$os_distro", "$is_server")


# --- a server that keeps what it is sent --------------------------------------------------


class Received:
    """Requests received: (path, lower-cased headers, decoded JSON body)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self.url = ""

    def events(self) -> list[dict[str, Any]]:
        return [event for _, _, body in self.requests for event in body["batch"]]


@pytest.fixture
def peer_server() -> Iterator[Received]:
    """An HTTP server on 127.0.0.1 answering 200 to every POST and keeping the body."""
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            headers = {k.lower(): v for k, v in self.headers.items()}
            received.requests.append((self.path, headers, json.loads(body)))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    received.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# --- mpsender's side: the same calls, encoded as the sender does ---------------------------------


class _Recorder(CaptureSink):
    """Keeps the packed records a Client writes, decoded as the sender decodes them."""

    def __init__(self, options: Options) -> None:
        super().__init__(CapturedEvents(), options)
        self.records: list[dict[str, Any]] = []

    def write(self, payload: bytes, now: float) -> None:
        self.records.append(msgpack.unpackb(payload, raw=False, strict_map_key=False))


def mpsender_request(fmt: str, calls: Callable[[Client], None]) -> tuple[str, dict[str, str], dict[str, Any]]:
    """Run ``calls`` on a real Client and return the request the sender would POST."""
    options = Client(KEY, "http://127.0.0.1:9", format=fmt, disabled=True).options
    recorder = _Recorder(options)
    client = Client.from_options(options, recorder)
    calls(client)
    encoder = get_encoder(fmt, write_key=KEY, library_name="mpsender", library_version=__version__)
    req = encoder.request_parts([encoder.encode(r) for r in recorder.records], sent_at=T0.timestamp() + 1)
    return req.path, {k.lower(): v for k, v in req.headers.items()}, json.loads(req.body)


def mid(n: int) -> str:
    """A message id shared by the libraries for the n-th call."""
    return str(uuid.UUID(int=0x1234_5678_9ABC_4DEF_8000_0000_0000_0000 + n))


def instant(text: str) -> dt.datetime:
    """An ISO-8601 timestamp as an aware datetime ('Z' or an offset)."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


# --- Segment ------------------------------------------------------------------------------------


def segment_calls(client: Client) -> None:
    client.track("Order Completed", user_id="u1", properties=PROPS, context={"ip": "10.0.0.1"},
                 integrations={"Amplitude": False}, timestamp=T0, message_id=mid(1))
    client.track("Viewed", anonymous_id="anon-1", timestamp=T0, message_id=mid(2))
    client.identify("u1", anonymous_id="anon-1", traits={"email": "a@example.com", "plan": "pro"},
                    timestamp=T0, message_id=mid(3))
    client.group("acme", user_id="u1", traits={"name": "Acme", "employees": 11},
                 timestamp=T0, message_id=mid(4))
    client.alias("anon-1", user_id="u1", timestamp=T0, message_id=mid(5))
    client.page("Pricing", category="Docs", user_id="u1", properties={"url": "https://x.test/pricing"},
                timestamp=T0, message_id=mid(6))
    client.screen("Home", anonymous_id="anon-2", properties={"tab": 1}, timestamp=T0, message_id=mid(7))


def segment_peer_calls(url: str) -> None:
    peer = segment_analytics.Client(KEY, host=url, sync_mode=True, gzip=False)
    peer.track("u1", "Order Completed", PROPS, context={"ip": "10.0.0.1"},
               integrations={"Amplitude": False}, timestamp=T0, message_id=mid(1))
    peer.track(None, "Viewed", anonymous_id="anon-1", timestamp=T0, message_id=mid(2))
    peer.identify("u1", {"email": "a@example.com", "plan": "pro"}, anonymous_id="anon-1",
                  timestamp=T0, message_id=mid(3))
    peer.group("u1", "acme", {"name": "Acme", "employees": 11}, timestamp=T0, message_id=mid(4))
    peer.alias("anon-1", "u1", timestamp=T0, message_id=mid(5))
    peer.page("u1", "Docs", "Pricing", {"url": "https://x.test/pricing"}, timestamp=T0, message_id=mid(6))
    peer.screen(None, None, "Home", {"tab": 1}, anonymous_id="anon-2", timestamp=T0, message_id=mid(7))


def normalize_segment(event: dict[str, Any], library: str) -> dict[str, Any]:
    """Remove the documented differences from a Segment event (a copy)."""
    out = {k: v for k, v in event.items() if v is not None}  # D1: no null fields
    if out.get("integrations") == {}:  # D2: no empty integrations
        del out["integrations"]
    context = dict(out["context"])
    assert context.pop("library")["name"] == library  # D3: the library
    out["context"] = context
    out["timestamp"] = instant(out["timestamp"])  # D4: "Z" versus "+00:00"
    return out


def test_segment_events_match_analytics_python(peer_server: Received) -> None:
    """Every call type, with conversions, context and integrations, matches analytics-python
    field by field."""
    segment_peer_calls(peer_server.url)
    _, _, ours = mpsender_request("segment", segment_calls)
    theirs = peer_server.events()
    assert len(ours["batch"]) == len(theirs) == 7
    for mine, peer in zip(ours["batch"], theirs, strict=True):
        ours_n, theirs_n = normalize_segment(mine, "mpsender"), normalize_segment(peer, "analytics-python")
        assert ours_n == theirs_n, mine["type"]
    assert ours["batch"][0]["context"]["library"] == {"name": "mpsender", "version": __version__}


def test_segment_envelope_and_auth_match(peer_server: Received) -> None:
    """Same path, Basic auth and JSON body envelope as analytics-python; the key is not
    repeated in the body."""
    segment_peer_calls(peer_server.url)
    path, headers, body = mpsender_request("segment", segment_calls)
    peer_path, peer_headers, peer_body = peer_server.requests[0]
    assert path == peer_path == "/v1/batch"
    basic = "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()
    assert headers["authorization"] == peer_headers["authorization"] == basic
    assert headers["content-type"] == peer_headers["content-type"] == "application/json"
    assert set(peer_body) == {"batch", "sentAt", "writeKey"}
    assert set(body) == {"batch", "sentAt"}  # D5: writeKey only in the Authorization header
    assert instant(body["sentAt"]) == T0 + dt.timedelta(seconds=1)
    assert instant(peer_body["sentAt"]).tzinfo is not None


def test_naive_datetimes_are_utc_with_an_explicit_offset(peer_server: Received) -> None:
    """D6: a naive datetime property is taken as UTC and sent with "+00:00" (analytics-python
    sends it bare)."""
    naive = dt.datetime(2026, 1, 2, 3, 4, 5)
    segment_analytics.Client(KEY, host=peer_server.url, sync_mode=True).track(
        "u1", "A", {"when": naive}, timestamp=T0, message_id=mid(1))
    _, _, ours = mpsender_request("segment", lambda c: c.track(
        "A", user_id="u1", properties={"when": naive}, timestamp=T0, message_id=mid(1)))
    assert peer_server.events()[0]["properties"]["when"] == "2026-01-02T03:04:05"
    assert ours["batch"][0]["properties"]["when"] == "2026-01-02T03:04:05+00:00"


def test_generated_ids_and_timestamps_have_the_peers_form(peer_server: Received) -> None:
    """D12: without given ids, both send a UUID string messageId (different ones) and a
    millisecond UTC timestamp."""
    segment_analytics.Client(KEY, host=peer_server.url, sync_mode=True).track("u1", "A")
    _, _, ours = mpsender_request("segment", lambda c: c.track("A", user_id="u1"))
    mine, peer = ours["batch"][0], peer_server.events()[0]
    for event in (mine, peer):
        assert uuid.UUID(event["messageId"])
        stamp = instant(event["timestamp"])
        assert stamp.utcoffset() == dt.timedelta(0) and stamp.microsecond % 1000 == 0
    assert mine["messageId"] != peer["messageId"]


# --- PostHog ------------------------------------------------------------------------------------


PH_PROPS = {**{k: v for k, v in PROPS.items() if k != "coupon"}, "order_id": ORDER_ID}


def posthog_calls(client: Client) -> None:
    client.track("Order Completed", user_id="u1", properties=PH_PROPS, timestamp=T0, message_id=mid(1))
    client.track("Clicked", anonymous_id="anon-1", properties={"x": 1}, context={"ip": "10.0.0.1"},
                 timestamp=T0, message_id=mid(2))
    client.identify("u1", anonymous_id="anon-1", traits={"email": "a@example.com"},
                    timestamp=T0, message_id=mid(3))
    client.group("acme", user_id="u1", traits={"name": "Acme"}, timestamp=T0, message_id=mid(4))
    client.alias("anon-1", user_id="u1", timestamp=T0, message_id=mid(5))
    client.page("Pricing", user_id="u1", properties={"url": "https://x.test/pricing"},
                timestamp=T0, message_id=mid(6))
    client.screen("Home", user_id="u1", timestamp=T0, message_id=mid(7))


def posthog_peer_calls(url: str) -> None:
    peer = posthog.Posthog(KEY, host=url, sync_mode=True)
    try:
        peer.capture("Order Completed", distinct_id="u1", properties=PH_PROPS, timestamp=T0, uuid=mid(1))
        peer.capture("Clicked", distinct_id="anon-1", properties={"x": 1, "$ip": "10.0.0.1"},
                     timestamp=T0, uuid=mid(2), disable_geoip=False)
        # D9: posthog-python has no identify(); this is the $identify event posthog-js sends
        peer.capture("$identify", distinct_id="u1", timestamp=T0, uuid=mid(3),
                     properties={"$set": {"email": "a@example.com"}, "$anon_distinct_id": "anon-1"})
        peer.group_identify("company", "acme", {"name": "Acme"}, distinct_id="u1", timestamp=T0, uuid=mid(4))
        peer.alias("anon-1", "u1", timestamp=T0, uuid=mid(5))
        # D10: page/screen are the $pageview/$screen events posthog-js sends
        peer.capture("$pageview", distinct_id="u1", timestamp=T0, uuid=mid(6), properties={
            "url": "https://x.test/pricing", "$current_url": "https://x.test/pricing", "name": "Pricing"})
        peer.capture("$screen", distinct_id="u1", timestamp=T0, uuid=mid(7),
                     properties={"$screen_name": "Home", "name": "Home"})
    finally:
        peer.shutdown()


def normalize_posthog(event: dict[str, Any], library: str) -> dict[str, Any]:
    """Remove the documented differences from a PostHog event (a copy)."""
    out = dict(event)
    props = {k: v for k, v in out["properties"].items() if k not in POSTHOG_SYSTEM}  # D7
    assert props.pop("$lib") == library  # D3: the library
    props.pop("$lib_version")
    out["properties"] = props
    out["timestamp"] = instant(out["timestamp"])  # D4: "Z" versus "+00:00"
    return out


def test_posthog_events_match_posthog_python(peer_server: Received) -> None:
    """track, identify, group, alias, page and screen match posthog-python's events field by field."""
    posthog_peer_calls(peer_server.url)
    _, _, ours = mpsender_request("posthog", posthog_calls)
    theirs = peer_server.events()
    assert len(ours["batch"]) == len(theirs) == 7
    for mine, peer in zip(ours["batch"], theirs, strict=True):
        assert normalize_posthog(mine, "mpsender") == normalize_posthog(peer, "posthog-python"), mine["event"]
    assert ours["batch"][0]["properties"]["$lib_version"] == __version__
    assert [e["event"] for e in ours["batch"]] == [
        "Order Completed", "Clicked", "$identify", "$groupidentify", "$create_alias", "$pageview", "$screen"]


def test_posthog_envelope_and_auth_match(peer_server: Received) -> None:
    """Same path, api_key in the body and no Authorization header, as posthog-python."""
    posthog_peer_calls(peer_server.url)
    path, headers, body = mpsender_request("posthog", posthog_calls)
    peer_path, peer_headers, peer_body = peer_server.requests[0]
    assert path == peer_path == "/batch/"
    assert body["api_key"] == peer_body["api_key"] == KEY
    assert "authorization" not in headers and "authorization" not in peer_headers
    assert set(body) == {"api_key", "batch", "sent_at"}
    assert set(peer_body) - set(body) == {"historical_migration"}  # D8
    assert instant(body["sent_at"]) == T0 + dt.timedelta(seconds=1)


def test_values_the_peers_cannot_send(peer_server: Received) -> None:
    """D11: a UUID and an Enum member are sent as str(uuid) and the member's value; analytics-python
    drops a UUID-valued key (logging a warning), posthog-python sends null for an Enum member."""
    import enum

    class Plan(enum.Enum):
        PRO = "pro"

    props = {"order_id": ORDER_ID, "plan": Plan.PRO}
    segment_analytics.Client(KEY, host=peer_server.url, sync_mode=True).track("u1", "A", props)
    peer = posthog.Posthog(KEY, host=peer_server.url, sync_mode=True)
    try:
        peer.capture("A", distinct_id="u1", properties=props)
    finally:
        peer.shutdown()
    segment_peer, posthog_peer = peer_server.events()
    assert segment_peer["properties"] == {"plan": "pro"}
    assert posthog_peer["properties"]["plan"] is None
    assert posthog_peer["properties"]["order_id"] == str(ORDER_ID)
    for fmt in ("segment", "posthog"):
        _, _, ours = mpsender_request(fmt, lambda c: c.track("A", user_id="u1", properties=props))
        mine = ours["batch"][0]["properties"]
        assert (mine["order_id"], mine["plan"]) == (str(ORDER_ID), "pro")
