"""gunicorn configuration with mpsender: ONE sender for the whole server.

Configure mpsender in the environment, then start gunicorn:

    export MPSENDER_WRITE_KEY=...  MPSENDER_ENDPOINT=https://api.segment.io
    gunicorn -c gunicorn.conf.py app:app

on_starting (master) starts the sender before the first fork; post_fork (each worker)
connects to it; worker_exit and on_exit (leaving processes) wait at most a second for
the endpoint. Events are on disk the moment track() returns, so a worker that is
SIGKILLed, recycled by max_requests or killed by --timeout loses none of them.
"""

from mpsender.integrations.gunicorn import on_exit, on_starting, post_fork, worker_exit  # noqa: F401

bind = "127.0.0.1:8000"
workers = 4
worker_class = "sync"  # or "gthread" with threads = N: the hooks are the same
