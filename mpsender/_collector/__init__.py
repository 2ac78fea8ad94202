"""A local ingestion collector: a real HTTP server for tests, benchmarks and ``mpsender collect``.

It accepts the wire formats the sender speaks (the format is chosen by the
request path; ``Content-Encoding: gzip`` is honoured):

* Segment, ``POST /v1/batch``: ``{"batch": [...], "sentAt": ...}``, HTTP Basic auth
  with the write key as user and an empty password;
* PostHog, ``POST /batch/``: ``{"api_key": ..., "batch": [...], "sent_at": ...}``;
* generic JSON, ``POST /json`` (any path ending in ``/json``): Segment-shaped,
  ``Authorization: Bearer <key>``.
* OTLP/HTTP logs, ``POST /v1/logs``: JSON, or protobuf by its ``Content-Type``; each
  LogRecord stored as the Segment-shaped event it was made from (``_otlp.py``),
  ``Authorization: Bearer <key>``.

Every accepted event is stored in SQLite (schema in ``docs/collector.md``), every
request is recorded in memory and in SQLite, and :class:`Faults` make the server
misbehave on purpose (outages, slow or hung answers, rejections) while it runs.

The server runs in threads of the calling process: one accept thread and one
thread per connection. SQLite's JSON functions do the per-event work, in C with
the GIL released: one query validates a body (outside the store's lock, so in
parallel with the writes) and one statement splits it into rows. The events of a
batch never become Python objects, unless the body holds what SQLite cannot read
(NaN, say) or SQLite was built without JSON support; then Python does both.

Where accepted events go is a :class:`Store` (``Collector(store=...)``); SQLite is
the only one shipped. The benchmarks plug in a lean one of their own
(``benchmarks/_lean_store.py``: only message ids, in memory).
"""

from ._model import CollectorTotals, Faults, RequestRecord
from ._server import Collector
from ._store import SqliteStore, Store

__all__ = ["Collector", "CollectorTotals", "Faults", "RequestRecord", "SqliteStore", "Store"]
