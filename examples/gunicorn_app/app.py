"""A tiny WSGI app that tracks one event per request.

It never calls ``mpsender.init()``: ``gunicorn.conf.py`` does, through the hooks of
``mpsender.integrations.gunicorn``. ``track()`` returns in microseconds; the event is on
disk before the response is written, and the host's one sender uploads it.

    cd examples/gunicorn_app && gunicorn -c gunicorn.conf.py app:app
    curl 'http://127.0.0.1:8000/checkout?id=42&visitor=v-1'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

import mpsender


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO") or "/"
    if path == "/health":  # load balancer checks are not analytics
        return _respond(start_response, b"ok\n")
    query = parse_qs(environ.get("QUERY_STRING", ""))
    mpsender.track(
        "Page Viewed",
        anonymous_id=query.get("visitor", ["anonymous"])[0],
        properties={"path": path, "request_id": query.get("id", [None])[0]},
    )
    return _respond(start_response, b"tracked\n")


def _respond(start_response: Callable[..., Any], body: bytes) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
