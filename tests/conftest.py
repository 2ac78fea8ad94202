from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from support import ServerProcess, app_env, kill_senders

import mpsender
from mpsender import _api, _platform
from mpsender._collector import Collector


@pytest.fixture
def runtime_dir() -> Iterator[str]:
    """A private runtime directory with a short path (socket paths must fit in 107 bytes);
    every sender started under it is ended at teardown."""
    path = tempfile.mkdtemp(prefix="mps-", dir="/tmp")
    try:
        yield path
    finally:
        kill_senders(path)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    """A real HTTP collector on 127.0.0.1 storing to SQLite."""
    c = Collector(tmp_path / "events.db")
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def make_client(runtime_dir: str) -> Iterator[Callable[..., mpsender.Client]]:
    """Build Clients for any endpoint (and format) under the test's runtime_dir; shut down at
    teardown. ``client_factory`` is the same pointed at the ``collector`` fixture."""
    made: list[mpsender.Client] = []

    def make(endpoint: str, **options: Any) -> mpsender.Client:
        options.setdefault("runtime_dir", runtime_dir)
        options.setdefault("linger", 2.0)
        options.setdefault("flush_interval", 0.05)
        client = mpsender.Client(endpoint=endpoint, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.shutdown(timeout=0.0)


@pytest.fixture
def client_factory(collector: Collector, make_client: Callable[..., mpsender.Client]) -> Callable[..., mpsender.Client]:
    """Build Clients pointed at the collector; shut down at teardown."""

    def make(**options: Any) -> mpsender.Client:
        options.setdefault("write_key", "test-key")
        return make_client(options.pop("endpoint", collector.url), **options)

    return make


#: what a developer's shell may export that would route the senders' requests elsewhere
_PROXY_VARIABLES = frozenset({"http_proxy", "https_proxy", "all_proxy", "no_proxy", "request_method"})


@pytest.fixture(autouse=True)
def _fresh_module_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with no process-wide client, no MPSENDER_* variables but the
    platform switch, no OpenTelemetry variables (the OTLP formats read some) and no proxy
    variables (the senders it starts inherit the environment)."""
    for name in list(os.environ):
        if name == _platform.MODE_ENV:
            continue  # CI's second run forces the portable fallbacks in every process it starts
        if name.startswith(("MPSENDER_", "OTEL_")) or name.lower() in _PROXY_VARIABLES:
            monkeypatch.delenv(name)
    _api._reset_for_tests()
    yield
    _api._reset_for_tests()


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    """Every server (gunicorn, uWSGI, uvicorn...) a test starts; each is stopped and its
    process group SIGKILLed at teardown."""
    made: list[ServerProcess] = []
    yield made
    for server in made:
        server.kill()


@pytest.fixture
def env(collector: Collector, runtime_dir: str) -> dict[str, str]:
    """mpsender configured through MPSENDER_* for the servers: a fast sender, a 10 s linger."""
    return app_env(collector.url, runtime_dir, flush_interval=0.05, linger=10)
