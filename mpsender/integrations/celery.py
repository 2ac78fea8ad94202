"""Celery: one call wires mpsender into a worker; task instrumentation is opt-in.

In the module that makes your Celery app::

    import mpsender.integrations.celery

    app = Celery("tasks", broker=...)
    mpsender.integrations.celery.connect(app, instrument_tasks=True)

and configure mpsender through ``MPSENDER_*`` environment variables, or pass options
(``connect(app, write_key=..., endpoint=...)``); they go to ``mpsender.init()``.
``connect()`` only connects signal receivers, each with a ``dispatch_uid``, so calling it
again (a module imported twice, a second app) replaces the settings instead of
doubling the events. Nothing starts until the worker does.

The signals and the process each receiver runs in:

=========================== ========== ==================================================
signal                      process    what the receiver does
=========================== ========== ==================================================
``worker_init``             main       ``init()``: starts the sender (waiting at most the
                                       ``start_timeout`` option) before the pool forks, so
                                       the children find it listening.
``worker_process_init``     pool child Keeps the client inherited from the main process
                                       (or makes one) and connects **without waiting**:
                                       Celery kills a child that takes 4 s here.
``worker_process_shutdown`` pool child ``mpsender.shutdown()`` bounded by ``exit_timeout``
                                       (``max_tasks_per_child``, ``max_memory_per_child``,
                                       pool shrink, worker stop).
``worker_shutdown``         main       The same for the main process.
=========================== ========== ==================================================

Billiard ends a pool child with ``os._exit``, so nothing registered with ``atexit`` runs
and a background thread holding events would lose them. mpsender holds none: an event
is in the child's spool file when ``track()`` returns, and the sender delivers it after
the child is gone. The shutdown receivers only make the wait for the endpoint shorter.

With ``instrument_tasks=True`` every task that finishes (success, failure, retry,
rejection) sends one ``task_event`` track event with the properties ``task`` (name),
``task_id``, ``state``, ``duration`` (seconds, float), ``queue`` (the delivery routing
key: the queue's name with Celery's default routing), ``retries`` and ``worker``. A task
whose child is terminated mid-run (hard time limit, ``revoke(terminate=True)``) sends it
with state ``TERMINATED`` on its way out; a SIGKILLed child sends none. A failing task
also sends ``capture_error()``'s ``$error`` event with the same task properties, once per
task, also for failures only the main process notices (a hard time limit). Both are
attributed to ``anonymous_id="celery:<worker node name>"`` unless ``user_id`` (a function
of the task, for example reading a header) returns a user.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import signals  # type: ignore[import-untyped,import-not-found,unused-ignore]

import mpsender
from mpsender import _api
from mpsender._lograte import Throttle

__all__ = ["DEFAULT_TASK_EVENT", "TERMINATED", "connect", "disconnect"]

logger = logging.getLogger(__name__)
_throttle = Throttle(logger)  # a failure in a task hook repeats at every task

DEFAULT_TASK_EVENT = "Celery Task Finished"
#: the ``state`` of a task whose process was terminated before it had an outcome
TERMINATED = "TERMINATED"

_UID = "mpsender.integrations.celery."


@dataclass(frozen=True)
class _Settings:
    app: Any
    instrument_tasks: bool
    task_event: str
    exit_timeout: float
    user_id: Callable[[Any], str | None] | None
    init_options: dict[str, Any]


_settings: _Settings | None = None
# task id -> perf_counter at task_prerun; a pool child runs one task at a time, but the
# threads pool and eager calls run several, so the dict is shared under a lock.
_started: dict[str, float] = {}
_started_lock = threading.Lock()
# Celery 5.5+ sends task_failure twice in the main process for a hard time limit (from
# on_timeout, then again when the pool reports the job): one $error per task is enough.
_failed: OrderedDict[str, None] = OrderedDict()
_FAILED_KEPT = 1024


def connect(
    app: Any = None,
    *,
    instrument_tasks: bool = False,
    task_event: str = DEFAULT_TASK_EVENT,
    exit_timeout: float = 1.0,
    user_id: Callable[[Any], str | None] | None = None,
    **init_options: Any,
) -> None:
    """Connect mpsender to Celery's worker signals (idempotent; the last call's settings win).

    ``app``: when given, task events are sent for that app's tasks only.
    ``instrument_tasks``: one ``task_event`` per finished task, ``$error`` per failure.
    ``exit_timeout``: seconds a leaving process waits for the endpoint (nothing is lost
    when it is short). ``user_id``: called with the task (``task.request`` is the running
    request) to attribute task events to a user; ``None`` means anonymous.
    ``init_options`` go to ``mpsender.init()`` where it is called; validated here.
    """
    global _settings
    if not isinstance(task_event, str) or not task_event:
        raise mpsender.ConfigurationError("task_event must be a non-empty str")
    if isinstance(exit_timeout, bool) or not isinstance(exit_timeout, (int, float)) or exit_timeout < 0:
        raise mpsender.ConfigurationError(f"exit_timeout must be seconds >= 0, got {exit_timeout!r}")
    if user_id is not None and not callable(user_id):
        raise mpsender.ConfigurationError("user_id must be callable or None")
    if init_options:
        # fail at connect() (import time), not in a worker signal where it could only be logged
        from mpsender._options import resolve_options

        resolve_options(init_options)
    _settings = _Settings(app, instrument_tasks, task_event, float(exit_timeout), user_id, dict(init_options))
    signals.worker_init.connect(_on_worker_init, weak=False, dispatch_uid=_UID + "worker_init")
    signals.worker_process_init.connect(
        _on_worker_process_init, weak=False, dispatch_uid=_UID + "worker_process_init")
    signals.worker_process_shutdown.connect(
        _on_worker_process_shutdown, weak=False, dispatch_uid=_UID + "worker_process_shutdown")
    signals.worker_shutdown.connect(_on_worker_shutdown, weak=False, dispatch_uid=_UID + "worker_shutdown")
    if instrument_tasks:
        signals.task_prerun.connect(_on_task_prerun, weak=False, dispatch_uid=_UID + "task_prerun")
        signals.task_postrun.connect(_on_task_postrun, weak=False, dispatch_uid=_UID + "task_postrun")
        signals.task_failure.connect(_on_task_failure, weak=False, dispatch_uid=_UID + "task_failure")
    else:
        _disconnect_tasks()


def disconnect() -> None:
    """Undo :func:`connect` (the process's mpsender client is left as it is)."""
    global _settings
    _settings = None
    signals.worker_init.disconnect(dispatch_uid=_UID + "worker_init")
    signals.worker_process_init.disconnect(dispatch_uid=_UID + "worker_process_init")
    signals.worker_process_shutdown.disconnect(dispatch_uid=_UID + "worker_process_shutdown")
    signals.worker_shutdown.disconnect(dispatch_uid=_UID + "worker_shutdown")
    _disconnect_tasks()


def _disconnect_tasks() -> None:
    signals.task_prerun.disconnect(dispatch_uid=_UID + "task_prerun")
    signals.task_postrun.disconnect(dispatch_uid=_UID + "task_postrun")
    signals.task_failure.disconnect(dispatch_uid=_UID + "task_failure")


# --- worker lifecycle --------------------------------------------------------------------


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    """Main process, before the pool starts: make the client and start the sender."""
    _ensure_client(wait=True)


def _on_worker_process_init(sender: Any = None, **_: Any) -> None:
    """Pool child, after the fork: must return fast (Celery allows 4 s), so never waits."""
    _ensure_client(wait=False)


def _on_worker_process_shutdown(sender: Any = None, pid: Any = None, exitcode: Any = None, **_: Any) -> None:
    """Pool child, on its way to ``os._exit``: a bounded flush."""
    _shutdown("worker_process_shutdown")


def _on_worker_shutdown(sender: Any = None, **_: Any) -> None:
    """Main process, at warm or cold shutdown: a bounded flush."""
    _shutdown("worker_shutdown")


def _ensure_client(*, wait: bool) -> None:
    settings = _settings
    if settings is None:
        return
    try:
        client = _api._client
        if client is None:
            options = dict(settings.init_options)
            if not wait:
                options["start_timeout"] = 0.0  # a new sender is found at the first track()
            mpsender.init(**options)
        else:
            client.start(wait=0.0)  # inherited from the main process: reconnect, never wait
    except mpsender.ConfigurationError as exc:
        logger.warning(
            "mpsender is not initialised in pid %d: %s (set MPSENDER_WRITE_KEY and "
            "MPSENDER_ENDPOINT, or pass them to connect())", os.getpid(), exc)
    except Exception:
        logger.exception("mpsender could not be initialised in pid %d", os.getpid())


def _shutdown(signal_name: str) -> None:
    settings = _settings
    timeout = settings.exit_timeout if settings is not None else 1.0
    try:
        if not mpsender.shutdown(timeout=timeout):
            logger.info("%s: events of pid %d not confirmed within %.1fs stay in the spool; "
                        "the sender delivers them", signal_name, os.getpid(), timeout)
    except Exception:
        logger.exception("%s: mpsender.shutdown failed", signal_name)


# --- task instrumentation ---------------------------------------------------------------


def _wanted(task: Any) -> _Settings | None:
    settings = _settings
    if settings is None or not settings.instrument_tasks:
        return None
    if settings.app is not None and getattr(task, "app", None) is not settings.app:
        return None
    return settings


def _on_task_prerun(sender: Any = None, task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task_id is not None and _wanted(task or sender) is not None:
        with _started_lock:
            _started[task_id] = time.perf_counter()


def _on_task_postrun(sender: Any = None, task_id: str | None = None, task: Any = None,
                     state: str | None = None, **_: Any) -> None:
    task = task or sender
    settings = _wanted(task)
    with _started_lock:
        started = _started.pop(task_id, None) if task_id is not None else None
    if settings is None:
        return
    try:
        props = _task_properties(task, task_id)
        # None: the task never reached an outcome; its child was terminated (hard time
        # limit, revoke(terminate=True)) and sends this on its way out
        props["state"] = state or TERMINATED
        if started is not None:
            props["duration"] = time.perf_counter() - started
        user_id, anonymous_id = _identity(settings, task)
        mpsender.track(settings.task_event, properties=props, user_id=user_id, anonymous_id=anonymous_id)
    except Exception:  # noqa: BLE001 - a task's outcome must not change because of analytics
        _throttle.error("task-event", "could not send the task event of %s", task_id, exc_info=True)


def _on_task_failure(sender: Any = None, task_id: str | None = None, exception: BaseException | None = None,
                     **_: Any) -> None:
    settings = _wanted(sender)
    if settings is None or exception is None:
        return
    if task_id is not None:
        with _started_lock:
            if task_id in _failed:
                return  # the same failure reported again
            _failed[task_id] = None
            if len(_failed) > _FAILED_KEPT:
                _failed.popitem(last=False)
    try:
        user_id, anonymous_id = _identity(settings, sender)
        mpsender.capture_error(exception, properties=_task_properties(sender, task_id),
                               user_id=user_id, anonymous_id=anonymous_id)
    except Exception:  # noqa: BLE001 - a task's outcome must not change because of analytics
        _throttle.error("error-event", "could not send the error event of %s", task_id, exc_info=True)


def _task_properties(task: Any, task_id: str | None) -> dict[str, Any]:
    request = getattr(task, "request", None)
    delivery = getattr(request, "delivery_info", None) or {}
    return {
        "task": getattr(task, "name", None) or type(task).__name__,
        "task_id": task_id,
        "queue": delivery.get("routing_key") or delivery.get("exchange") or None,
        "retries": getattr(request, "retries", 0) or 0,
        "worker": getattr(request, "hostname", None),
    }


def _identity(settings: _Settings, task: Any) -> tuple[str | None, str | None]:
    """(user_id, anonymous_id) of a task's events: the user_id function's answer, else
    the worker node."""
    if settings.user_id is not None:
        try:
            uid = settings.user_id(task)
        except Exception:  # noqa: BLE001 - fall back to the anonymous worker identity
            _throttle.error("user-id", "the user_id function given to connect() raised", exc_info=True)
            uid = None
        if uid:
            return str(uid), None
    node = getattr(getattr(task, "request", None), "hostname", None) or socket.gethostname()
    return None, f"celery:{node}"
