"""FastAPI, Flask and Django on the real servers users run them with: N requests, N events
each once at a real collector, ONE sender.

Each server runs an example of ``examples/`` unchanged: FastAPI under gunicorn's
``UvicornWorker`` and under ``uvicorn --workers 2`` (``init()`` and ``await ashutdown()``
in the lifespan), Flask under gunicorn's ``gthread`` workers and Django (a view and a
middleware, each tracking) under gunicorn with ``--preload`` (mpsender's gunicorn hooks).
Every server is a process group of its own, killpg'ed at teardown; its output is shown
when a test fails.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest
from support import (
    REPO,
    HttpServer,
    SenderWatch,
    assert_delivered,
    free_port,
    gunicorn_control_args,
    one_sender,
    run_load,
)

from mpsender._collector import Collector

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]
EXAMPLES = REPO / "examples"
N = 200
_names = itertools.count()


def gunicorn(tmp_path: Path, env: dict[str, str], example: str, app: str, args: list[str]) -> HttpServer:
    port = free_port()
    cwd = EXAMPLES / example
    cmd = [sys.executable, "-m", "gunicorn", "--chdir", str(cwd), "-b", f"127.0.0.1:{port}",
           "--graceful-timeout", "20", *gunicorn_control_args(), *args, app]
    return HttpServer(cmd, env, cwd, tmp_path / f"gunicorn-{next(_names)}.log", port, name="gunicorn")


def _serve_and_count(server: HttpServer, servers: list[HttpServer], collector: Collector, runtime_dir: str,
                     *, per_request: tuple[str, ...] = ("",)) -> None:
    """N requests; each request's events (one per prefix in ``per_request``) arrive once,
    through one sender; a graceful stop adds nothing."""
    servers.append(server)
    server.start()
    with SenderWatch(runtime_dir) as watch:
        load = run_load(server.url, range(N))
    sent = {f"{p}{i}" for p in per_request for i in range(N)}
    ok = {f"{p}{i}" for p in per_request for i in load.ok()}
    assert_delivered(collector, sent, ok, server, exact=True)
    assert len(watch.seen) == 1, f"senders seen during the load: {watch.seen}"
    assert one_sender(runtime_dir) in watch.seen
    assert server.stop() == 0, server.output()
    assert len(set(collector.message_ids())) == len(sent)  # nothing more came with the stop


def _uvicorn_workers_missing() -> bool:
    import importlib.util

    return importlib.util.find_spec("uvicorn.workers") is None  # finds it without importing it (it warns)


@pytest.mark.parametrize("worker", [
    pytest.param("uvicorn.workers.UvicornWorker", marks=pytest.mark.skipif(
        _uvicorn_workers_missing(), reason="this uvicorn has no uvicorn.workers (moved to uvicorn-worker)")),
    "uvicorn_worker.UvicornWorker",
])
def test_fastapi_under_gunicorn_uvicorn_workers(
        worker: str, tmp_path: Path, collector: Collector, runtime_dir: str, env: dict[str, str],
        servers: list[HttpServer]) -> None:
    """FastAPI under gunicorn -k UvicornWorker (uvicorn's own, deprecated, and its successor
    package), 4 workers: N requests, N events, one sender."""
    server = gunicorn(tmp_path, env, "fastapi_app", "app:app", ["-w", "4", "-k", worker])
    _serve_and_count(server, servers, collector, runtime_dir)


def test_fastapi_under_uvicorn_workers(tmp_path: Path, collector: Collector, runtime_dir: str,
                                       env: dict[str, str], servers: list[HttpServer]) -> None:
    """FastAPI under uvicorn --workers 2 (spawned worker processes, not forked): N requests,
    N events, one sender; SIGTERM stops it cleanly through the lifespan's ashutdown."""
    port = free_port()
    cwd = EXAMPLES / "fastapi_app"
    cmd = [sys.executable, "-m", "uvicorn", "app:app", "--app-dir", str(cwd), "--host", "127.0.0.1",
           "--port", str(port), "--workers", "2", "--no-access-log"]
    server = HttpServer(cmd, env, cwd, tmp_path / f"uvicorn-{next(_names)}.log", port, name="uvicorn")
    _serve_and_count(server, servers, collector, runtime_dir)


def test_flask_under_gunicorn_gthread(tmp_path: Path, collector: Collector, runtime_dir: str,
                                      env: dict[str, str], servers: list[HttpServer]) -> None:
    """Flask under gunicorn -k gthread (4 workers of 4 threads, the example's conf): N
    requests, N events, one sender."""
    server = gunicorn(tmp_path, env, "flask_app", "app:app", ["-c", str(EXAMPLES / "flask_app" / "gunicorn.conf.py")])
    _serve_and_count(server, servers, collector, runtime_dir)


def test_django_view_and_middleware_under_gunicorn_preload(
        tmp_path: Path, collector: Collector, runtime_dir: str, env: dict[str, str],
        servers: list[HttpServer]) -> None:
    """Django loaded once in the master (--preload), a view and a middleware each tracking:
    N requests, 2N events (each once), one sender."""
    conf = EXAMPLES / "django_app" / "gunicorn.conf.py"
    server = gunicorn(tmp_path, env, "django_app", "mysite.wsgi:application", ["-c", str(conf)])
    _serve_and_count(server, servers, collector, runtime_dir, per_request=("", "mw-"))
