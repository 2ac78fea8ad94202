"""The benchmarks' lean collector store: only the message ids of accepted events, in memory.

Benchmarks only. ``Collector(store=IdStore())`` does every check and answer of the
shipped collector (routing, auth, gzip, the ``batch`` shape, the faults: all before the
store), but a body is parsed by orjson when it is importable (by ``json`` otherwise)
and only each accepted event's ``messageId`` (``uuid`` for PostHog) is kept, so that
the collector costs little next to the libraries the end-to-end figures measure.
``events()`` raises: there are none to give back.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from mpsender._collector._body import _Shape, _shape_doc, _shape_python, _text
from mpsender._collector._model import POSTHOG, _Batch

_orjson: Any  # the json module does the same work, slower
try:
    import orjson as _orjson  # type: ignore[import-not-found,unused-ignore,no-redef]
except ImportError:  # depends on the environment
    _orjson = None


class IdStore:
    """A :class:`mpsender._collector.Store` that keeps the message ids of accepted events.

    An id is kept as the SQLite store's ``message_id`` column would hold it (text).
    What orjson refuses and the json module reads (NaN, infinities, lone surrogates,
    integers past 64 bits) goes through the collector's own Python reader, so this
    store accepts and refuses the same bodies as the SQLite one, for the same reasons.
    """

    initial_events = 0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: list[str] = []

    def shape(self, text: str, fmt: str, reject: str | None) -> _Shape:
        if _orjson is None:
            return _shape_python(text, fmt, reject)
        try:
            doc = _orjson.loads(text)
        except _orjson.JSONDecodeError:
            return _shape_python(text, fmt, reject)
        return _shape_doc(doc, fmt, reject)

    def write(self, *, received_at: float, path: str, status: int | None, body_bytes: int, gzip: bool,
              error: str | None, batch: _Batch | None) -> int:
        """Keep the ids of the batch's events, if any; return the events accepted."""
        if batch is None or not batch.count:
            return 0
        events = batch.events
        if events is None:  # not expected: shape() always decodes
            events = json.loads(batch.text)["batch"]
        key = "uuid" if batch.fmt == POSTHOG else "messageId"
        ids = [m if type(m) is str else str(_text(m)) for ev in events if (m := ev.get(key)) is not None]
        with self._lock:
            self._ids.extend(ids)
        return batch.count

    def events(self) -> list[dict[str, Any]]:
        raise RuntimeError("events() needs the SQLite store: this collector keeps only message ids "
                           "(message_ids(), count(), requests())")

    def message_ids(self) -> list[str]:
        with self._lock:
            return list(self._ids)

    def before_serving(self) -> None:
        pass

    def after_serving(self) -> None:
        pass

    def close(self) -> None:
        pass
