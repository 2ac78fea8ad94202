"""gunicorn server hooks: ONE sender for the whole server (sync and gthread workers alike).

In ``gunicorn.conf.py``::

    from mpsender.integrations.gunicorn import on_starting, post_fork, worker_exit, on_exit

and configure mpsender through ``MPSENDER_*`` environment variables
(``MPSENDER_WRITE_KEY``, ``MPSENDER_ENDPOINT``, ...), which ``mpsender.init()`` reads.

If you prefer options in code, call ``mpsender.init(...)`` yourself in your own
``on_starting`` (or ``post_fork``, or at import with ``--preload``): the hooks here find
the client you made and keep it, so ``post_fork``/``worker_exit`` can still be imported.

The hooks and the process each one runs in:

=============== ========= ============================================================
hook            process   what it does
=============== ========= ============================================================
``on_starting`` master    ``init()``: starts the sender (waiting at most the
                          ``start_timeout`` option for it to listen) and keeps one idle
                          connection to it for the master's life, so the sender outlives
                          every worker restart. Starts no thread in the master.
``post_fork``   worker    Keeps the client inherited from the master, or calls ``init()``
                          if there is none, then connects without waiting. Sets
                          ``MPSENDER_GUNICORN_WORKER`` (for the ``enrich`` option).
``worker_exit`` worker    ``mpsender.shutdown()`` bounded by :data:`EXIT_FLUSH_TIMEOUT`.
``on_exit``     master    The same for the master's own events (``--preload`` apps that
                          track at import).
=============== ========= ============================================================

The exit hooks only shorten the delay: an event is on disk, in the worker's spool file,
the moment ``track()`` returns, so a worker that is SIGKILLed, OOM-killed or killed by
gunicorn's ``--timeout`` loses nothing; the sender delivers what it left.

No hook ever raises into gunicorn: a problem is logged in gunicorn's error log and the
server runs on (``track()`` still raises on a missing configuration, at the call site).
"""

from __future__ import annotations

import os
from typing import Protocol

import mpsender
from mpsender import _api

__all__ = ["EXIT_FLUSH_TIMEOUT", "WORKER_ENV", "on_exit", "on_starting", "post_fork", "worker_exit"]

#: Seconds ``worker_exit``/``on_exit`` wait for the endpoint to accept what the process
#: tracked. Short on purpose: gunicorn SIGKILLs a worker that is slow to leave after a
#: ``--timeout`` abort, and nothing is lost when the wait ends early. Set it in
#: ``gunicorn.conf.py`` to change it.
EXIT_FLUSH_TIMEOUT = 1.0

#: set by ``post_fork`` to gunicorn's worker number (``worker.age``); with the ``enrich``
#: option every event's context then carries ``gunicorn_worker``
WORKER_ENV = "MPSENDER_GUNICORN_WORKER"


class _Log(Protocol):
    def info(self, msg: str, *args: object) -> None: ...

    def warning(self, msg: str, *args: object) -> None: ...

    def exception(self, msg: str, *args: object) -> None: ...


class Arbiter(Protocol):
    """What the hooks use of gunicorn's ``Arbiter`` (the ``server`` argument)."""

    log: _Log


class Worker(Protocol):
    """What the hooks use of a gunicorn worker (the ``worker`` argument)."""

    pid: int


def on_starting(server: Arbiter) -> None:
    """Master process, once, before the first worker is forked: start the sender.

    Calls ``mpsender.init()`` (``MPSENDER_*`` configuration) unless the application has
    initialised mpsender already (``--preload`` with ``init()`` at import, or your own
    master hook). Waits at most the ``start_timeout`` option for a new sender.
    """
    _ensure_client(server, "on_starting")


def post_fork(server: Arbiter, worker: Worker) -> None:
    """Worker process, just after the fork (before the app is loaded unless ``--preload``).

    A client inherited from the master is kept: its connection was let go at the fork and
    is reopened here without waiting. Otherwise ``mpsender.init()`` runs: the first
    process on the host to find no sender starts it and waits for it (at most the
    ``start_timeout`` option); every other worker connects to that same sender.
    """
    # gunicorn's worker number, for the ``enrich`` option's context ("gunicorn_worker")
    os.environ[WORKER_ENV] = str(getattr(worker, "age", worker.pid))
    _ensure_client(server, "post_fork")


def worker_exit(server: Arbiter, worker: Worker) -> None:
    """Worker process, as it leaves (graceful stop, HUP, ``max_requests``, ``--timeout``).

    ``mpsender.shutdown(EXIT_FLUSH_TIMEOUT)``: waits that long at most for the endpoint to
    accept this worker's events, then closes its spool file and connection. What is not
    confirmed by then is on disk and is delivered by the sender. gunicorn also calls this
    hook in the master for a worker that was already gone; it does nothing there.
    """
    if worker.pid != os.getpid():
        return  # the master, cleaning up after a dead worker: not our events
    _shutdown(server, "worker_exit")


def on_exit(server: Arbiter) -> None:
    """Master process, last: ``mpsender.shutdown(EXIT_FLUSH_TIMEOUT)`` for the master's own
    events; the sender then drains, lingers and exits on its own."""
    _shutdown(server, "on_exit")


def _ensure_client(server: Arbiter, hook: str) -> None:
    try:
        client = _api._client
        if client is None:
            client = mpsender.init()  # reads MPSENDER_*; waits for a new sender at most start_timeout
        else:
            client.start(wait=0.0)  # inherited (or made by the app): connect, never wait
    except mpsender.ConfigurationError as exc:
        server.log.warning(
            "mpsender: %s did not initialise mpsender: %s. Set MPSENDER_WRITE_KEY and "
            "MPSENDER_ENDPOINT, or call mpsender.init(...) yourself and import only worker_exit.",
            hook, exc,
        )
    except Exception:
        server.log.exception("mpsender: %s failed; the server runs on without it", hook)


def _shutdown(server: Arbiter, hook: str) -> None:
    try:
        if not mpsender.shutdown(timeout=EXIT_FLUSH_TIMEOUT):
            server.log.info(
                "mpsender: %s: not every event of pid %d was confirmed within %.1fs; "
                "they are in the spool and the sender delivers them", hook, os.getpid(),
                EXIT_FLUSH_TIMEOUT,
            )
    except Exception:
        server.log.exception("mpsender: %s failed", hook)
