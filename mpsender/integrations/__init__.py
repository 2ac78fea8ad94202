"""Ready-made wiring for the servers mpsender is built for.

Import the submodule you need; importing this package imports neither server:

* :mod:`mpsender.integrations.gunicorn`: server hooks for ``gunicorn.conf.py``;
* :mod:`mpsender.integrations.celery`: ``connect()`` for a Celery app's signals, with
  optional task instrumentation.

Neither is required: ``mpsender.init()`` anywhere (a master hook, ``post_fork``, a Celery
signal, at import) already ends with every process on ONE sender per host. The
integrations add what a production setup wants on top: a sender started before the
first worker, a bounded flush when a process leaves, never a hook that fails the server.
"""

from __future__ import annotations

__all__: list[str] = []
