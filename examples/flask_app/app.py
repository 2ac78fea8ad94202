"""A Flask app that tracks one event per request, under gunicorn's gthread workers.

``gunicorn.conf.py`` beside it imports mpsender's gunicorn hooks, so the app only tracks;
``track()`` is safe from any of a worker's threads at once.

    export MPSENDER_WRITE_KEY=...  MPSENDER_ENDPOINT=https://api.segment.io
    gunicorn -c gunicorn.conf.py app:app
"""

from __future__ import annotations

from flask import Flask, request

import mpsender

app = Flask(__name__)


@app.get("/health")
def health() -> str:
    return "ok"  # load balancer checks are not analytics


@app.get("/page")
def page() -> str:
    mpsender.track(
        "Page Viewed",
        anonymous_id=request.args.get("visitor", "anonymous"),
        properties={"path": request.path, "request_id": request.args.get("id")},
    )
    return "tracked\n"
