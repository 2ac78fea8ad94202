"""The uploader thread: cut batches from the spool, send them, commit what was accepted.

Batches are sent one at a time over one kept-alive ``httpx.Client``: the order of
commits follows the order of reads, and one rate-limit state covers the whole host.
A batch the endpoint refuses is split (413, or a 400 about size) or bisected (any other
permanent 4xx) until the refused events are isolated in the dead-letter file; 401/403
pause delivery and keep everything.
"""

from __future__ import annotations

import enum
import importlib
import json
import logging
import operator
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from .._events import unpack, written_at
from .._layout import DEADLETTER
from .._lograte import Throttle
from .._options import OTLP_FORMATS, Options, redact_url
from .._retry import (
    RateLimit,
    expired,
    is_auth_status,
    is_retryable_status,
    is_size_rejection,
    next_delay,
    parse_retry_after,
)
from .._version import __version__
from .._wire import SegmentEncoder, format_timestamp, get_encoder, gzip_compress
from .._wire_records import MARK as WIRE_MARK
from .._wire_records import read_record
from ._http import build_client
from ._spool import Counters, Entry, Spool

logger = logging.getLogger(__name__)
_throttle = Throttle(logger)  # warnings every batch or housekeeping pass can meet

#: how often the uploader looks for new files, enforces the disk bound, deletes
HOUSEKEEPING = 1.0
#: a partial batch is looked at again after this long at first, to learn how fast it fills
_PARTIAL_POLL = 0.05
#: and never sooner than this, whatever rate it fills at
_MIN_PARTIAL_WAIT = 0.005
_AUTH_PAUSE = 30.0
#: zlib level of request bodies. Level 1 deflates a batch of JSON events much faster than
#: level 6 for a few more bytes (benchmarks/README.md, "The fast extra"): the sender
#: shares the host's cores with the application, and the link is rarely the limit.


_entry_ts = operator.attrgetter("ts")


class Outcome(enum.Enum):
    """What to do with a batch after the endpoint's answer (one :class:`Answer`)."""

    OK = "ok"            # accepted (2xx): commit it
    RETRY = "retry"      # 5xx, 429, timeout, network error: keep it, send it again after a backoff
    PAUSE = "pause"      # 401/403/407: the key (or the proxy's credentials) refused: keep it, wait
    SPLIT = "split"      # too large (413, a 400 about size): send each half, dead-letter one event
    BISECT = "bisect"    # another permanent 4xx: halve until the refused events are isolated
    ABANDON = "abandon"  # shutting down before it was accepted: it stays in the spool


@dataclass(frozen=True, slots=True)
class Answer:
    """The endpoint's answer to one request: a status, or the network error instead."""

    status: int | None
    body: str = ""
    error: str | None = None
    retry_after: str | None = None
    partial: bool = False
    """A 2xx with OTLP's ``partialSuccess``: ``body`` is the server's message."""
    rejected: int = 0
    """Events that partial success refused all the same: dropped, not retried."""

    def outcome(self) -> Outcome:
        status = self.status
        if status is not None and 200 <= status < 300:
            return Outcome.OK
        if status is not None and is_auth_status(status):
            return Outcome.PAUSE
        if status is not None and is_size_rejection(status, self.body):
            return Outcome.SPLIT
        if status is None or is_retryable_status(status):
            return Outcome.RETRY
        return Outcome.BISECT


@dataclass(frozen=True, slots=True)
class Sent:
    """How sending one batch ended: OK, SPLIT, BISECT or ABANDON, and the last answer."""

    outcome: Outcome
    answer: Answer | None = None


class Uploader(threading.Thread):
    def __init__(self, options: Options, spool: Spool, counters: Counters,
                 on_commit: Callable[[], None], doorbell: Any,
                 save_state: Callable[[], None] = lambda: None, *,
                 transport: httpx.BaseTransport | None = None) -> None:
        """``transport``: where requests go instead of the network (``httpx.MockTransport``
        in tests); by default the tuned, proxy-aware client of ``_http``."""
        super().__init__(name="mpsender-uploader", daemon=True)
        self.options = options
        self.spool = spool
        self.counters = counters
        self._on_commit = on_commit
        self._save_state = save_state
        self._bell = doorbell
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self.urgent = False
        # Applications that disconnected, and how many of them the uploader has read the
        # spool after: while they differ, a partial batch is not held back.
        self._departures = 0
        self._departures_read = 0
        self.deadline: float | None = None
        self.rate_limit = RateLimit()
        self.encoder = get_encoder(
            options.format, write_key=options.write_key, library_name="mpsender",
            library_version=__version__, path=options.path, headers=options.headers,
            service_name=options.service_name, resource_attributes=options.resource_attributes,
        )
        self.url = options.endpoint.rstrip("/") + self.encoder.path
        # OTLP has no per-event limit, and its attributes spell out what msgpack packs tight
        # (track() has checked max_message_bytes): there an event need only fit a request
        self._max_event = options.batch_bytes if options.format in OTLP_FORMATS else options.max_message_bytes
        #: what a batch's events may take of batch_bytes: the rest is the request's envelope
        #: (Segment's ``{"batch":[...],"sentAt":...}``, PostHog's key, OTLP's resource and
        #: scope); and what each event takes besides its own bytes (a comma, a protobuf tag
        #: and length)
        self._budget = options.batch_bytes - self.encoder.envelope_bytes(options.batch_bytes)
        self._per_event = self.encoder.per_event_bytes(self._max_event)
        self._url = httpx.URL(self.url)  # parsed once: httpx would parse the string per request
        self._headers: tuple[dict[str, str], httpx.Headers] | None = None
        setup = build_client(options, transport=transport)
        self._http = setup.client
        self._secrets = setup.secrets
        #: direct, or through which proxy and why (no credentials): for the log and status
        self.route = setup.route
        logger.info("sending to %s %s", redact_url(self.url), setup.route)
        self._pending: deque[Entry] = deque()
        #: events in _pending (corrupt regions not counted) and their wire bytes (with a
        #: comma each): whether a batch is full is known without a pass over them
        self._pending_count = 0
        self._pending_bytes = 0
        self._handoff: queue.Queue[list[Entry] | None] = queue.Queue(maxsize=1)
        self._next_housekeeping = 0.0
        self._next_fsync = 0.0
        self._deadletter_path = os.path.join(spool.dir, DEADLETTER)
        self._auth_warned = False
        self._hooks = {name: _load_hook(getattr(options, name), name) for name in ("on_error", "on_delivery")}
        #: (monotonic start, events) of the request being sent, None between requests. Set
        #: by the posting thread only; the IO thread reads it for stats (one attribute,
        #: replaced whole), so a hanging endpoint shows while it hangs, not only after
        #: ``request_timeout`` as a retry.
        self.in_flight: tuple[float, int] | None = None

    # --- control from the IO thread --------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def client_left(self, *, application: bool) -> None:
        """A client disconnected: its file may be deletable now. An application's last
        events need not wait for ``flush_interval``: the next batch leaves as soon as
        what is in the spool has been read, however small."""
        self._next_housekeeping = 0.0
        if application:
            self._departures += 1
        self._wake.set()

    def stop(self, deadline: float) -> None:
        """Send what can be sent before ``deadline`` (monotonic), then end."""
        self.deadline = deadline
        self._stopping.set()
        self._wake.set()

    # --- main loop ----------------------------------------------------------------------

    def run(self) -> None:
        """Read and encode batches here; a poster thread sends them, one at a time, in
        order. Encoding the next batch while the previous one is gzipped, sent and
        answered (zlib and socket waits release the GIL) is what lets the sender and the
        endpoint work at the same time (benchmarks/README.md, History: the poster thread)."""
        poster = threading.Thread(target=self._post_loop, name="mpsender-poster", daemon=True)
        poster.start()
        try:
            while True:
                batch = self._collect()
                if batch is None:
                    break
                self._hand_over(batch, poster)
        finally:
            self._hand_over(None, poster)
            poster.join(self._time_left(default=None))
            self._http.close()
            try:
                self.spool.finish_files()  # delete what this sender finished, before it goes
            except Exception:
                logger.exception("final clean-up of the spool failed")

    def _time_left(self, default: float | None) -> float | None:
        if self._stopping.is_set() and self.deadline is not None:
            return max(0.0, self.deadline - time.monotonic())
        return default

    def _hand_over(self, batch: list[Entry] | None, poster: threading.Thread) -> None:
        """Queue ``batch`` for the poster (one waits at most), doing the housekeeping while
        the poster is busy: during an outage it retries for as long as the outage lasts,
        and that is when the spool grows."""
        while True:
            if not poster.is_alive():
                if batch is None:
                    return
                # cannot happen short of a bug; exiting lets a new sender take over
                raise RuntimeError("the posting thread died")
            try:
                self._handoff.put(batch, timeout=HOUSEKEEPING)
                return
            except queue.Full:
                pass
            left = self._time_left(default=1.0)
            if left is not None and left <= 0:
                return  # shutting down: what was not handed over stays in the spool
            self._housekeeping(time.monotonic())

    def _post_loop(self) -> None:
        abandoned = False
        while True:
            batch = self._handoff.get()
            if batch is None:
                return
            if abandoned:
                continue  # a later batch must not commit past one left unsent
            while True:
                try:
                    abandoned = not self.deliver(batch)
                    if self.counters.dirty:
                        self._save_state()  # loss accounting survives even a SIGKILL
                    break
                except Exception:  # noqa: BLE001 - logged, and the same batch is tried again
                    _throttle.error("deliver", "delivering a batch failed; trying it again", exc_info=True)
                    if self._interruptible_wait(1.0) and self._time_left(default=1.0) == 0:
                        abandoned = True
                        break

    def _housekeeping(self, now: float) -> None:
        if now < self._next_housekeeping:
            return
        self._next_housekeeping = now + HOUSEKEEPING
        spool = self.spool
        spool.discover()
        spool.finish_files()
        spool.check_files()  # sizes, and files truncated or replaced under us
        excess = spool.unread_bytes() - self.options.max_spool_bytes
        if excess > 0:
            n = spool.drop_oldest(excess)
            if n:
                self.counters.drop("spool_full", n)
                _throttle.warning("spool_full", "spool over max_spool_bytes: dropped the %d oldest events", n)
        if self.options.fsync_interval is not None and now >= self._next_fsync:
            self._next_fsync = now + self.options.fsync_interval
            spool.fsync()

    def _collect(self) -> list[Entry] | None:
        """The next batch: full, or as old as flush_interval, or wanted by a flush."""
        opts = self.options
        first_at: float | None = None
        while True:
            now = time.monotonic()
            departures = self._departures  # before reading: a later one is seen next time
            self._housekeeping(now)
            if len(self._pending) < opts.batch_size:
                self._decode(self.spool.read(opts.batch_size))
            if self._pending and first_at is None:
                first_at = now
            batch = self._cut(force=False)
            if batch:
                return batch
            if self._pending and (self.urgent or self._departures != self._departures_read
                                  or self._stopping.is_set()
                                  or (first_at is not None and now - first_at >= opts.flush_interval)):
                return self._cut(force=True)
            if not self._pending:
                if self._stopping.is_set():
                    return None
                self._departures_read = departures  # what they wrote was read and is on its way
                first_at = None
                self._on_commit()  # let waiting flushes see that nothing is left
            if first_at is None:
                self._sleep(HOUSEKEEPING)
            else:
                # A partial batch is waiting for its age, without the doorbell (writers do
                # not wake us for every event): look again when it is that old, or when it
                # should be full at the rate it has been filling, whichever comes first.
                self._wake.wait(self._partial_wait(now, first_at))
                self._wake.clear()

    def _partial_wait(self, now: float, first_at: float) -> float:
        """How long a partial batch first seen at ``first_at`` can wait before the next
        look: until it is ``flush_interval`` old, or until the events and bytes that came
        in since ``first_at`` would have filled it at the same rate. Each look costs a read
        of the spool and a pass of this loop; one per batch is what it should take."""
        opts = self.options
        left = first_at + opts.flush_interval - now
        elapsed = now - first_at
        count, size = self._pending_count, self._pending_bytes
        if elapsed < _PARTIAL_POLL or not count:
            return max(0.0, min(_PARTIAL_POLL, left))  # no rate to go by yet
        to_full = elapsed * min((opts.batch_size - count) / count, (self._budget - size) / size)
        return max(0.0, min(left, max(_MIN_PARTIAL_WAIT, to_full)))

    def _sleep(self, timeout: float) -> None:
        """Idle: raise the doorbell so the next writer wakes us, then wait. A flush that
        waits (``urgent``) is no reason to stay awake: with nothing to read, its batch is
        with the poster, and a new flush request wakes us."""
        bell = self._bell
        bell[0] = 1
        if self.spool.has_unread() or self._stopping.is_set():
            bell[0] = 0
            return
        self._wake.wait(timeout)
        self._wake.clear()
        bell[0] = 0

    def _decode(self, entries: list[Entry]) -> None:
        """Unpack and encode what was read, and queue it (corrupt regions too, in order,
        for the commit). The hot loop of the sender: one pass, nothing per event that a
        batch-wide value can do."""
        opts = self.options
        max_bytes = self._max_event
        per_event = self._per_event
        now = time.time()
        too_old = now - opts.max_event_age if opts.max_event_age is not None else None
        encode = self.encoder.encode
        # wire records are the Segment format's events; another format's sender (it cannot
        # meet one: the format is part of the destination) dead-letters them as undecodable
        wire_ok = isinstance(self.encoder, SegmentEncoder)
        received = queued = queued_bytes = 0
        for e in entries:
            payload = e.payload
            if payload is None:
                continue  # a corrupt region, skipped
            received += 1
            try:
                if payload[0] == WIRE_MARK and wire_ok:  # written as the wire's JSON: nothing to decode
                    e.ts, e.mid, wire = read_record(payload)
                    rec = None
                else:
                    rec = unpack(payload)
                    e.ts = written_at(rec, now)
                if too_old is not None and e.ts < too_old:
                    self.counters.drop("expired")
                    e.payload = None
                    continue
                if rec is not None:
                    e.mid = rec["m"]  # no id: undecodable, as before (the encoder formats it)
                    e.wire = wire = encode(rec)
                else:
                    e.wire = wire
            except Exception as exc:  # noqa: BLE001 - a record we cannot read is dead-lettered, not retried
                self._dead_letter([e], None, f"undecodable record: {exc!r}")
                self.counters.drop("undecodable")
                e.payload = None
                continue
            if len(wire) > max_bytes:
                self._dead_letter([e], None, f"event is {len(wire)} bytes encoded, over {max_bytes}")
                self.counters.drop("oversize")
                e.payload = None
                continue
            e.payload = b""  # decoded: free the packed bytes
            queued += 1
            queued_bytes += len(wire) + per_event
        self.counters.received += received
        self._pending.extend(entries)
        self._pending_count += queued
        self._pending_bytes += queued_bytes

    def _cut(self, *, force: bool) -> list[Entry]:
        """Take a batch off the front of the pending records, keeping their order."""
        opts = self.options
        budget = self._budget
        per_event = self._per_event
        pending = self._pending
        if (not force and 0 < self._pending_count < opts.batch_size
                and self._pending_bytes <= budget):
            return []  # not full yet: wait for more (known without a pass over them)
        batch: list[Entry] = []
        count = size = 0
        full = False
        while pending:
            e = pending[0]
            if e.payload is not None:
                # (the first event always goes: one that fills a batch alone still leaves)
                if count and (count >= opts.batch_size or size + len(e.wire) + per_event > budget):
                    full = True
                    break
                count += 1
                size += len(e.wire) + per_event
            batch.append(pending.popleft())
        if full or count >= opts.batch_size or force or (batch and count == 0):
            self._pending_count -= count
            self._pending_bytes -= size
            return batch
        # not full yet: put it back and wait for more
        pending.extendleft(reversed(batch))
        return []

    # --- delivery -----------------------------------------------------------------------

    def deliver(self, batch: list[Entry]) -> bool:
        """Send and commit ``batch``; False when shutting down left it unsent (it stays
        in the spool for the next sender). The posting thread's one call per batch."""
        events = [e for e in batch if e.payload is not None]
        if events and not self._send_all(events):
            return False
        self.spool.commit(batch)
        self._on_commit()
        return True

    def _send_all(self, events: list[Entry]) -> bool:
        """Send ``events``, halving what the endpoint refuses until the refused events are
        isolated and dead-lettered. False when shutting down left some unsent."""
        stack = [events]
        while stack:
            part = stack.pop()
            sent = self._send(part)
            if sent.outcome is Outcome.OK:
                continue
            if sent.outcome is Outcome.ABANDON:
                return False
            if len(part) > 1:
                mid = len(part) // 2
                stack.append(part[mid:])
                stack.append(part[:mid])
                continue
            answer = sent.answer or Answer(None)
            reason = "oversize" if sent.outcome is Outcome.SPLIT else "rejected"
            self._dead_letter(part, answer.status, answer.body)
            self.counters.drop(reason, len(part))
            self._report(part, answer.status, answer.body[:500], ok=False, will_retry=False)
        return True

    def _send(self, events: list[Entry]) -> Sent:
        """Send one batch until the endpoint takes it (OK), refuses it for good (SPLIT,
        BISECT), or shutting down leaves it unsent (ABANDON); retry and pause in between."""
        attempt = 0
        while True:
            if self._stopping.is_set() and self.deadline is not None and time.monotonic() >= self.deadline:
                return Sent(Outcome.ABANDON)
            wait = self.rate_limit.remaining(time.monotonic())
            if wait > 0:
                self._interruptible_wait(min(wait, HOUSEKEEPING))
                continue
            events = self._drop_expired(events)
            if not events:
                return Sent(Outcome.OK)
            answer = self._post(events)
            c = self.counters
            c.requests += 1
            c.last_status = answer.status
            c.last_error = answer.error
            detail = answer.error or answer.body[:500]
            outcome = answer.outcome()
            if outcome is Outcome.OK:
                refused = min(answer.rejected, len(events))
                if refused:
                    # which ones the answer does not say, and OTLP forbids sending them again
                    c.drop("rejected", refused)
                    _throttle.warning("partial", "the endpoint took a batch of %d but refused %d of its "
                                      "events (partial success): %s", len(events), refused, answer.body[:200])
                elif answer.partial:
                    _throttle.warning("partial", "the endpoint took a batch with a warning: %s", answer.body[:200])
                c.uploaded += len(events) - refused
                c.batches += 1
                c.last_success_at = time.time()
                self._auth_warned = False
                self._report(events, answer.status, None, ok=True, will_retry=False)
                return Sent(outcome, answer)
            # A refused batch (split or bisected) is reported by _send_all once its
            # refused events are isolated; a failure that keeps the events, here.
            if outcome is Outcome.PAUSE:
                c.incident("auth_failures")
                self._report(events, answer.status, detail, ok=False, will_retry=True)
                self._warn_paused(answer.status)
                if not self._interruptible_wait(min(_AUTH_PAUSE, next_delay(
                        attempt, retry_after=None, base=self.options.retry_base, cap=self.options.retry_cap))):
                    attempt += 1
                continue
            if outcome is Outcome.RETRY:
                now = time.time()
                ra = parse_retry_after(answer.retry_after, now) if answer.retry_after is not None else None
                delay = next_delay(attempt, retry_after=ra, base=self.options.retry_base, cap=self.options.retry_cap)
                # one rate-limit state for the host: nothing goes out before it expires
                self.rate_limit.hold(delay, time.monotonic())
                c.retries += 1
                attempt += 1
                self._report(events, answer.status, detail, ok=False, will_retry=True)
                logger.info("delivery failed (%s); retry %d in %.2fs", answer.error or answer.status, attempt, delay)
                continue
            return Sent(outcome, answer)

    def _warn_paused(self, status: int | None) -> None:
        if self._auth_warned:
            return
        self._auth_warned = True
        if status == 407:
            logger.error("the proxy refused its credentials (HTTP 407): delivery paused, "
                         "events kept in the spool; check the proxy option or HTTP(S)_PROXY")
        else:
            logger.error("the endpoint refused the write key (HTTP %s): delivery paused, "
                         "events kept in the spool; check write_key", status)

    def _drop_expired(self, events: list[Entry]) -> list[Entry]:
        max_age = self.options.max_event_age
        if max_age is None:
            return events
        now = time.time()
        if not events or min(map(_entry_ts, events)) >= now - max_age:
            return events  # the common case: nothing near the limit, no pass in Python
        keep = []
        for e in events:
            if expired(e.ts, now, max_age):
                e.payload = None
            else:
                keep.append(e)
        self.counters.drop("expired", len(events) - len(keep))
        return keep

    def _post(self, events: list[Entry]) -> Answer:
        req = self.encoder.request_parts([e.wire for e in events], sent_at=time.time())
        body = req.body
        if self.options.gzip:
            body = gzip_compress(body)
        self.in_flight = (time.monotonic(), len(events))
        try:
            resp = self._http.post(self._url, content=body, headers=self._http_headers(req.headers))
        except httpx.TimeoutException as exc:
            return Answer(None, error=f"timeout: {type(exc).__name__}")
        except httpx.HTTPError as exc:
            # the one place network errors become text (status, logs, hooks): no proxy password
            return Answer(None, error=self._scrub(f"{type(exc).__name__}: {exc}"))
        finally:
            self.in_flight = None
        retry_after = resp.headers.get("retry-after")
        if 200 <= resp.status_code < 300:
            partial = self.encoder.partial_success(resp.content, resp.headers.get("content-type", ""))
            if partial is not None:
                return Answer(resp.status_code, partial[1][:2000], None, retry_after, partial=True, rejected=partial[0])
        return Answer(resp.status_code, resp.text[:2000], None, retry_after)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def in_flight_now(self, now: float) -> tuple[float, int]:
        """(seconds the request in flight has waited, events it carries); (0, 0) when none."""
        current = self.in_flight
        if current is None:
            return 0.0, 0
        return max(0.0, now - current[0]), current[1]

    def _http_headers(self, headers: dict[str, str]) -> httpx.Headers:
        """The encoder's headers (the same for every request) as httpx's own type, built
        once: httpx normalizes a plain dict again on every request, a visible share of what
        a request costs the sender (benchmarks/README.md, "The fast extra")."""
        cached = self._headers
        if cached is None or cached[0] != headers:
            built = httpx.Headers(headers)
            if self.options.gzip:
                built["Content-Encoding"] = "gzip"
            cached = self._headers = (headers, built)
        return cached[1]

    def _interruptible_wait(self, seconds: float) -> bool:
        """Wait, but return early (True) when stopping and the deadline is near."""
        if self._stopping.is_set() and self.deadline is not None:
            seconds = min(seconds, max(0.0, self.deadline - time.monotonic()))
        return self._stopping.wait(seconds)

    # --- outcomes -------------------------------------------------------------------------

    def _dead_letter(self, events: list[Entry], status: int | None, body: str) -> None:
        lines = []
        at = format_timestamp(time.time())
        for e in events:
            lines.append(json.dumps({"at": at, "status": status, "reason": body[:2000],
                                     "message_id": e.message_id,
                                     "event": self.encoder.loads(e.wire) if e.wire else None}))
        try:
            fd = os.open(self._deadletter_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, ("\n".join(lines) + "\n").encode())
            finally:
                os.close(fd)
        except OSError as exc:
            _throttle.error("deadletter", "cannot write the dead-letter file %s: %s", self._deadletter_path, exc)
        _throttle.warning("refused", "%d event(s) refused by the endpoint (HTTP %s): %s; see %s",
                       len(events), status, body[:200], self._deadletter_path)

    def _report(self, events: list[Entry], status: int | None, error: str | None, *,
                ok: bool, will_retry: bool) -> None:
        """Tell the user's hooks how a batch went: on_error for a failure, on_delivery always.

        ``will_retry``: the events stay in the spool and are sent again (5xx, 429,
        network errors, 401/403); False: they are delivered or dropped for good.
        """
        if self._hooks["on_error"] is None and self._hooks["on_delivery"] is None:
            return
        outcome = {"ok": ok, "status": status, "error": error, "count": len(events),
                   "message_ids": [e.message_id for e in events], "will_retry": will_retry}
        if not ok:
            self._hook("on_error", dict(outcome))
        self._hook("on_delivery", outcome)

    def _hook(self, name: str, outcome: dict[str, Any]) -> None:
        fn = self._hooks[name]
        if fn is None:
            return
        try:
            fn(outcome)
        except Exception:  # noqa: BLE001 - a user's hook must not stop delivery
            self.counters.incident("hook_errors")
            _throttle.error(f"hook-{name}", "%s hook raised; delivery goes on", name, exc_info=True)


def _load_hook(path: str | None, name: str) -> Callable[[dict[str, Any]], Any] | None:
    if not path:
        return None
    module, _, attr = path.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except Exception:
        logger.exception("cannot import the %s hook %r; running without it", name, path)
        return None
    if not callable(fn):
        logger.error("the %s hook %r is not callable; running without it", name, path)
        return None
    return fn  # type: ignore[no-any-return]
