"""Optional context enrichment (the ``enrich`` option): host, process, worker ids."""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

__all__ = ["enrichment"]

_host = socket.gethostname()
_static: tuple[int, dict[str, Any]] = (-1, {})


def enrichment() -> dict[str, Any]:
    """Context fields known in this process right now. Runs inside track(): keep it cheap."""
    global _static
    pid = os.getpid()
    if _static[0] != pid:
        _static = (pid, {"host": _host, "pid": pid})
    out = dict(_static[1])
    worker = os.environ.get("MPSENDER_GUNICORN_WORKER")  # set by the gunicorn hooks
    if worker:
        out["gunicorn_worker"] = int(worker) if worker.isdigit() else worker
    celery = sys.modules.get("celery")
    if celery is not None:
        task = getattr(celery, "current_task", None)
        request = getattr(task, "request", None) if task else None
        task_id = getattr(request, "id", None)
        if task_id:
            out["celery_task_id"] = task_id
            out["celery_task"] = getattr(task, "name", None)
    return out
