"""The delivery state machine, without a server: every transition of a batch through the
uploader, with httpx's ``MockTransport`` answering as an endpoint would.

A batch is accepted (OK), retried after 5xx/429/network errors (``Retry-After``
honoured), paused on 401/403/407 with the events kept, split on 413 until the
oversize event is alone, bisected on another 4xx until the refused event is isolated
and dead-lettered, and abandoned (left in the spool) when shutting down.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from mpsender._options import Options
from mpsender._sender._spool import Counters, Entry, Spool
from mpsender._sender._uploader import Answer, Outcome, Uploader

Handler = Callable[[list[dict[str, object]]], httpx.Response]


class Endpoint:
    """Answers each request with ``handler(events)``; keeps what it was sent and when."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[list[dict[str, object]]] = []
        self.times: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(gzip.decompress(request.content))
        self.requests.append(body["batch"])
        self.times.append(time.monotonic())
        return self.handler(body["batch"])

    def names(self) -> list[list[object]]:
        return [[e["event"] for e in batch] for batch in self.requests]


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., tuple[Uploader, Endpoint]]]:
    """An Uploader over a spool in tmp_path, its requests answered by an Endpoint."""
    made: list[Uploader] = []

    def build(handler: Handler, **options: object) -> tuple[Uploader, Endpoint]:
        opts = Options(write_key="k", endpoint="http://127.0.0.1:9", retry_base=0.01, retry_cap=0.05,
                       **options)  # type: ignore[arg-type]
        endpoint = Endpoint(handler)
        counters = Counters()
        uploader = Uploader(opts, Spool(str(tmp_path), counters), counters, on_commit=lambda: None,
                            doorbell=bytearray(1), transport=httpx.MockTransport(endpoint))
        made.append(uploader)
        return uploader, endpoint

    yield build
    for uploader in made:
        uploader._http.close()
        uploader.spool.close()


def batch(*names: str) -> list[Entry]:
    """Decoded entries, as the reading thread hands them to the poster."""
    out = []
    for i, name in enumerate(names, 1):
        mid = uuid.uuid4()
        wire = json.dumps({"type": "track", "event": name, "userId": "u", "messageId": str(mid)}).encode()
        out.append(Entry(None, i, b"", wire=wire, ts=time.time(), mid=mid.bytes))
    return out


def ok(events: list[dict[str, object]]) -> httpx.Response:
    return httpx.Response(200, json={"success": True})


def deadletters(uploader: Uploader) -> list[dict[str, object]]:
    path = Path(uploader.spool.dir) / "deadletter.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize(("answer", "outcome"), [
    (Answer(200), Outcome.OK), (Answer(204), Outcome.OK),
    (Answer(500), Outcome.RETRY), (Answer(503), Outcome.RETRY), (Answer(429), Outcome.RETRY),
    (Answer(None, error="ConnectError: refused"), Outcome.RETRY),
    (Answer(401), Outcome.PAUSE), (Answer(403), Outcome.PAUSE), (Answer(407), Outcome.PAUSE),
    (Answer(413), Outcome.SPLIT), (Answer(400, "request entity too large"), Outcome.SPLIT),
    (Answer(400, "bad event"), Outcome.BISECT), (Answer(422), Outcome.BISECT),
])
def test_each_answer_has_its_outcome(answer: Answer, outcome: Outcome) -> None:
    """The classification of an endpoint's answer, alone."""
    assert answer.outcome() is outcome


def test_accepted_batch_is_counted_and_sent_once(make) -> None:
    """2xx: one request, the batch counted as uploaded."""
    uploader, endpoint = make(ok)
    assert uploader.deliver(batch("a", "b", "c"))
    assert endpoint.names() == [["a", "b", "c"]]
    c = uploader.counters
    assert (c.uploaded, c.batches, c.requests, c.retries, c.last_status) == (3, 1, 1, 0, 200)


def test_server_errors_and_network_errors_are_retried(make) -> None:
    """503, then a network error, then 200: the same batch three times, two retries counted."""
    answers = iter([httpx.Response(503), None, httpx.Response(200)])

    def handler(events: list[dict[str, object]]) -> httpx.Response:
        answer = next(answers)
        if answer is None:
            raise httpx.ConnectError("refused")
        return answer

    uploader, endpoint = make(handler)
    assert uploader.deliver(batch("a", "b"))
    assert endpoint.names() == [["a", "b"]] * 3
    assert (uploader.counters.retries, uploader.counters.uploaded) == (2, 2)


def test_retry_after_holds_the_next_request(make) -> None:
    """429 with Retry-After: 1 holds the next request for at least that second (longer
    than the 0.05 s backoff cap)."""
    answers = iter([httpx.Response(429, headers={"Retry-After": "1"}), httpx.Response(200)])
    uploader, endpoint = make(lambda events: next(answers))
    assert uploader.deliver(batch("a"))
    assert len(endpoint.times) == 2 and endpoint.times[1] - endpoint.times[0] >= 0.95


@pytest.mark.parametrize("status", [401, 403, 407])
def test_refused_credentials_pause_and_keep_the_events(make, status: int) -> None:
    """401/403/407: the batch is kept and sent again once the key works; nothing dropped."""
    answers = iter([httpx.Response(status), httpx.Response(status), httpx.Response(200)])
    uploader, endpoint = make(lambda events: next(answers))
    assert uploader.deliver(batch("a", "b"))
    assert endpoint.names() == [["a", "b"]] * 3
    c = uploader.counters
    assert c.incidents == {"auth_failures": 2} and c.dropped == {} and c.uploaded == 2


def test_too_large_batch_is_split_until_the_oversize_event_is_alone(make) -> None:
    """413 for any batch holding the big event: halves are sent, the big one is dead-lettered
    as oversize, every other event is delivered."""
    def handler(events: list[dict[str, object]]) -> httpx.Response:
        return httpx.Response(413) if any(e["event"] == "big" for e in events) else httpx.Response(200)

    uploader, endpoint = make(handler)
    assert uploader.deliver(batch("a", "b", "big", "c"))
    accepted = [n for names in endpoint.names() if "big" not in names for n in names]
    assert sorted(accepted) == ["a", "b", "c"]
    assert uploader.counters.dropped == {"oversize": 1} and uploader.counters.uploaded == 3
    [letter] = deadletters(uploader)
    assert letter["status"] == 413 and letter["event"]["event"] == "big"  # type: ignore[index]


def test_a_refused_event_is_isolated_by_bisection(make) -> None:
    """400 naming one event: the batch is halved until it is alone and dead-lettered as
    rejected with the endpoint's reason; the others are delivered."""
    def handler(events: list[dict[str, object]]) -> httpx.Response:
        if any(e["event"] == "poison" for e in events):
            return httpx.Response(400, text="event poison is invalid")
        return httpx.Response(200)

    uploader, endpoint = make(handler)
    assert uploader.deliver(batch("a", "b", "c", "poison", "d", "e", "f", "g"))
    assert uploader.counters.dropped == {"rejected": 1} and uploader.counters.uploaded == 7
    [letter] = deadletters(uploader)
    assert letter["reason"] == "event poison is invalid"
    assert endpoint.names()[0] == ["a", "b", "c", "poison", "d", "e", "f", "g"]


def test_shutting_down_abandons_a_batch_the_endpoint_will_not_take(make) -> None:
    """An endpoint that keeps failing, and a stop with a deadline: deliver() gives up by the
    deadline, returns False, and commits nothing (the batch stays in the spool)."""
    uploader, endpoint = make(lambda events: httpx.Response(503))
    committed: list[list[Entry]] = []
    uploader.spool.commit = committed.append  # type: ignore[method-assign]
    stopper = threading.Timer(0.2, lambda: uploader.stop(time.monotonic() + 0.1))
    stopper.start()
    try:
        assert uploader.deliver(batch("a")) is False
    finally:
        stopper.cancel()
    assert committed == [] and len(endpoint.requests) >= 1 and uploader.counters.uploaded == 0


def test_expired_events_are_dropped_before_sending(make) -> None:
    """An event written longer than max_event_age ago is dropped as expired, not sent."""
    uploader, endpoint = make(ok, max_event_age=60.0)
    events = batch("old", "new")
    events[0].ts = time.time() - 3600
    assert uploader.deliver(events)
    assert endpoint.names() == [["new"]] and uploader.counters.dropped == {"expired": 1}
