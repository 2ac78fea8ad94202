"""A local ingestion collector: a real HTTP server for tests, benchmarks and ``mpsender collect``.

It accepts the three wire formats the sender speaks (the format is chosen by the
request path; ``Content-Encoding: gzip`` is honoured):

* Segment, ``POST /v1/batch``: ``{"batch": [...], "sentAt": ...}``, HTTP Basic auth
  with the write key as user and an empty password;
* PostHog, ``POST /batch/``: ``{"api_key": ..., "batch": [...], "sent_at": ...}``;
* generic JSON, ``POST /json`` (any path ending in ``/json``): Segment-shaped,
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

``Collector(store="ids")`` is the lean mode, for throughput benchmarks: the same
checks (auth, gzip, JSON, the ``batch`` shape per format, the faults), the same
answers, but no SQLite at all. A body is parsed by orjson when it is importable
(by ``json`` otherwise) and only the message ids of accepted events are kept, in
memory; ``events()`` is not available in that mode.
"""

from ._model import CollectorTotals, Faults, RequestRecord
from ._server import Collector

__all__ = ["Collector", "CollectorTotals", "Faults", "RequestRecord"]
