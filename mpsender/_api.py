"""Module-level functions: one Client per process, inherited by fork children."""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, Concatenate, ParamSpec

import msgpack

from . import _uncaught
from ._client import Client
from ._exceptions import NotInitializedError
from ._options import Options, env_disabled, resolve_options
from ._session import Session
from ._stats import Stats

logger = logging.getLogger(__name__)

P = ParamSpec("P")

#: set by init(): a 0600 file with the options, so spawn/forkserver children that never
#: call init() themselves find the same sender
CONFIG_ENV = "MPSENDER_CLIENT_CONFIG"

_client: Client | None = None
_lock = threading.RLock()  # re-entrant: a signal handler may call init() or track() inside init()


def init(*, write_key: str | None = None, endpoint: str | None = None, **options: Any) -> Client:
    """Configure this process (and its future children) to send through the host's sender.

    Idempotent: a second call with the same options returns the same client. Correct in
    a gunicorn master, in ``post_fork``, in Celery's ``worker_process_init``, at import
    time or in a script: every process of the app ends up on ONE sender per host. The
    first caller on the host starts the sender and waits up to ``start_timeout`` for it.
    """
    global _client
    explicit = {"write_key": write_key, "endpoint": endpoint, **options}
    if env_disabled():
        explicit["disabled"] = True
    opts = resolve_options(explicit)
    with _lock:
        current = _client
        if current is not None and current.options == opts:
            _exception_hooks(opts)  # again, after a shutdown() gave them back
            return current
        if current is not None and current._sink is not None and current._sink.survives_init:
            # inside mpsender.testing.capture(): take the options, keep the sink, start nothing
            current._configure(opts, current._sink)
            return current
        client = Client.from_options(opts)
        _client = client
    if current is not None:
        current.shutdown(timeout=0.0)
    _exception_hooks(opts)
    if not opts.disabled:
        _publish(client)
        client.start()
    return client


def _exception_hooks(opts: Options) -> None:
    if opts.capture_uncaught and not opts.disabled:  # disabled (a test run): nothing to report
        _uncaught.install()
    else:
        _uncaught.uninstall()


def _publish(client: Client) -> None:
    path = client.paths.client_config
    data = msgpack.packb(client.options.to_wire(), use_bin_type=True)
    try:
        fd = os.open(f"{path}.{os.getpid()}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(f"{path}.{os.getpid()}", path)
    except OSError as exc:
        logger.warning("cannot write %s (%s): spawned children must call init() themselves", path, exc)
        return
    os.environ[CONFIG_ENV] = str(path)


def _auto_client() -> Client:
    """The client for a process that never called init(): inherited config, or env."""
    global _client
    with _lock:
        if _client is not None:
            return _client
        if env_disabled():
            _client = Client.from_options(Options(disabled=True))
            return _client
        path = os.environ.get(CONFIG_ENV)
        if path:
            try:
                with open(path, "rb") as fh:
                    wire = msgpack.unpackb(fh.read())
                _client = Client.from_options(Options(**wire))
                if _client.options.capture_uncaught:
                    _uncaught.install()  # as the parent that wrote the file did
                return _client
            except (OSError, ValueError, TypeError) as exc:
                logger.warning("cannot read %s=%s (%s)", CONFIG_ENV, path, exc)
        if os.environ.get("MPSENDER_WRITE_KEY") and os.environ.get("MPSENDER_ENDPOINT"):
            _client = Client.from_options(resolve_options({}))
            return _client
    raise NotInitializedError(
        "mpsender is not initialised: call mpsender.init(write_key=..., endpoint=...) "
        "or set MPSENDER_WRITE_KEY and MPSENDER_ENDPOINT"
    )


def get_client() -> Client:
    """The process's client (initialising it from the environment if needed)."""
    return _client or _auto_client()


def _forward(method: Callable[Concatenate[Client, P], None]) -> Callable[P, None]:
    """The module-level twin of a ``Client`` method: the same signature and docstring
    (so mypy and editors check a user's call), run on the process's client."""

    def call(*args: P.args, **kwargs: P.kwargs) -> None:
        method(_client or _auto_client(), *args, **kwargs)

    functools.update_wrapper(call, method)
    call.__qualname__ = call.__name__ = method.__name__
    call.__module__ = "mpsender"
    del call.__wrapped__  # type: ignore[attr-defined]  # help() shows the signature below
    signature = inspect.signature(method)
    call.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=list(signature.parameters.values())[1:])
    return call


track = _forward(Client.track)
identify = _forward(Client.identify)
group = _forward(Client.group)
alias = _forward(Client.alias)
page = _forward(Client.page)
screen = _forward(Client.screen)
capture_error = _forward(Client.capture_error)


def session(session_id: str | None = None, *, user_id: str | None = None, anonymous_id: str | None = None,
            properties: Mapping[str, Any] | None = None) -> Session:
    """A session of the process's client, for a ``with`` block: see :meth:`Client.session`."""
    return (_client or _auto_client()).session(session_id, user_id=user_id, anonymous_id=anonymous_id,
                                               properties=properties)


def flush(timeout: float = 5.0) -> bool:
    """True once every event this process tracked before the call was accepted; False
    when ``timeout`` passes first. Never hangs. True at once if nothing was tracked."""
    client = _client
    return True if client is None else client.flush(timeout)


def shutdown(timeout: float = 5.0) -> bool:
    """End the open sessions, flush, then close this process's file and connection, and
    give back the exception hooks ``capture_uncaught`` installed. Idempotent."""
    _uncaught.uninstall()
    client = _client
    return True if client is None else client.shutdown(timeout)


async def aflush(timeout: float = 5.0) -> bool:
    """``flush()`` for async code: the event loop keeps running while it waits."""
    client = _client
    return True if client is None else await client.aflush(timeout)


async def ashutdown(timeout: float = 5.0) -> bool:
    """``shutdown()`` for async code: the event loop keeps running while it waits."""
    _uncaught.uninstall()
    client = _client
    return True if client is None else await client.ashutdown(timeout)


def stats(timeout: float = 1.0) -> Stats:
    """Counters of this process and of the sender (None if it does not answer)."""
    return get_client().stats(timeout)


def _reset_for_tests() -> None:
    """Forget the process's client (tests only)."""
    global _client
    client, _client = _client, None
    if client is not None and client._sink is not None:
        client._sink.close()
    os.environ.pop(CONFIG_ENV, None)


