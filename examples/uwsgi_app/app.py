"""A tiny WSGI app for uWSGI that tracks one event per request.

mpsender needs nothing from uWSGI: call ``mpsender.init()`` once at import, as here.
Without ``lazy-apps`` (the default) this runs in the master before it forks the workers:
the master starts the host's one sender, and each worker, a fork of it, notices that it
is new at its first ``track()`` and opens its own file and connection. With ``lazy-apps``
each worker imports this itself and finds the same sender. mpsender starts no thread in
the app, so ``enable-threads`` is not needed either; no ``postfork`` hook, no atexit.

    pip install uwsgi          # compiles uWSGI: needs a C compiler and Python's headers
    cd examples/uwsgi_app
    uwsgi --ini uwsgi.ini --http-socket 127.0.0.1:8000
    curl 'http://127.0.0.1:8000/checkout?id=42&visitor=v-1'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

import mpsender

mpsender.init()  # options from MPSENDER_*; starts (or finds) the host's sender


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
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
