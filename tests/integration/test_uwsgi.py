"""A real uWSGI (compiled from PyPI's ``uwsgi``, in this virtualenv) serving
examples/uwsgi_app: every 200 has its event, exactly once, through ONE sender.

Issue 14: under uWSGI ``sys.executable`` is the uwsgi binary, and the sender was started
with the base Python, which lacks the virtualenv's packages: 0 events, no message. These
tests run the example's own ``app.py`` (``init()`` at import) and ``uwsgi.ini`` (master,
4 workers, nothing mpsender-specific) with uWSGI's defaults and with the settings users
change: ``lazy-apps``, ``enable-threads``, ``harakiri``, ``max-requests`` and a graceful
reload. Each master runs in a session of its own, is stopped with SIGINT (uWSGI 2.0 takes
TERM as a reload) and its process group SIGKILLed at teardown; its output is shown when a
test fails.
"""

from __future__ import annotations

import itertools
import os
import platform
import re
import signal
import sys
from pathlib import Path

import psutil
import pytest
from support import (
    REPO,
    HttpServer,
    Load,
    SenderWatch,
    assert_delivered,
    assert_stuck_request_is_cut,
    free_port,
    one_sender,
    run_load,
    wait_for,
)

from mpsender._collector import Collector

EXAMPLE = REPO / "examples" / "uwsgi_app"
#: the uwsgi binary that ``pip install uwsgi`` puts next to this interpreter (the test
#: extra installs it; pip compiles it from source)
UWSGI = Path(sys.executable).parent / "uwsgi"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(60),
    pytest.mark.skipif(not os.access(UWSGI, os.X_OK),
                       reason=f"uWSGI is not installed next to {sys.executable} (pip install uwsgi: "
                              "it compiles from source and needs a C compiler and Python's headers)"),
]
_names = itertools.count()


class Uwsgi(HttpServer):
    """One uWSGI master (and its workers) in a session of its own, serving HTTP itself."""

    name = "uwsgi"
    stop_signal = signal.SIGINT  # TERM is a "brutal reload" for uWSGI 2.0, not a stop

    def __init__(self, tmp_path: Path, env: dict[str, str], args: list[str], *,
                 ini: Path = EXAMPLE / "uwsgi.ini") -> None:
        port = free_port()
        cmd = [str(UWSGI), "--ini", str(ini), "--chdir", str(EXAMPLE), "--pythonpath", str(tmp_path),
               "--http-socket", f"127.0.0.1:{port}", "--disable-logging", *args]
        super().__init__(cmd, env, EXAMPLE, tmp_path / f"uwsgi-{next(_names)}.log", port)

    def text(self) -> str:
        """The whole log (``output()`` keeps only its end, for a failure message)."""
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGINT (a quick shutdown) to the master, then SIGKILL to whatever is left of the group."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(10)
            except Exception:  # noqa: BLE001 - TimeoutExpired: the killpg below ends it
                pass
        super().kill()


def start(servers: list[Uwsgi], server: Uwsgi) -> Uwsgi:
    servers.append(server)
    try:
        server.start()
    except AssertionError as exc:
        raise AssertionError(f"{exc}{_python_mismatch(server.text())}") from None
    return server


def _python_mismatch(log: str) -> str:
    """Why a uWSGI binary cannot load the app here, when it embeds another Python build: pip's
    wheel cache hands a uWSGI compiled for one CPython to another of the same minor version
    (pyenv's and the OS's, say), and its stdlib is not the one it was built for."""
    found = re.search(r"^Python version: (\S+)", log, re.MULTILINE)
    if found is None or found.group(1) == platform.python_version():
        return ""
    return (f"\n\nThis uWSGI embeds Python {found.group(1)}, this virtualenv's is {platform.python_version()}: "
            "a uWSGI wheel from pip's cache, built for another Python; rebuild it with "
            "`pip install --no-cache-dir --force-reinstall uwsgi` (docs/integrations.md, uWSGI)")


N = 200

CONFIGURATIONS = {
    # the settings under test, added to the example's uwsgi.ini (master, 4 workers)
    "defaults": [],
    "lazy-apps": ["--lazy-apps"],
    "enable-threads": ["--enable-threads"],
    "threads": ["--threads", "4"],  # 4 request threads per worker, tracking concurrently
    # workers then run Python's at-fork handlers (mpsender's own), which uWSGI skips by default
    "py-call-uwsgi-fork-hooks": ["--py-call-uwsgi-fork-hooks"],
}


@pytest.mark.parametrize("settings", list(CONFIGURATIONS))
def test_every_request_gives_one_event_through_one_sender(
        settings: str, tmp_path: Path, collector: Collector, runtime_dir: str, env: dict[str, str],
        servers: list[Uwsgi]) -> None:
    """N requests give exactly N events, each once, through one sender started with this
    virtualenv's Python: with uWSGI's defaults (app loaded in the master, no threads, no
    at-fork handlers in the workers), lazy-apps (each worker loads it), enable-threads,
    4 threads per worker, and the at-fork handlers run."""
    server = start(servers, Uwsgi(tmp_path, env, CONFIGURATIONS[settings]))
    with SenderWatch(runtime_dir) as watch:
        load = run_load(server.url, range(N), keepalive=False)
    assert_delivered(collector, set(range(N)), load.ok(), server, exact=True)
    assert len(watch.seen) == 1, f"senders seen during the load: {watch.seen}"
    sender = psutil.Process(one_sender(runtime_dir))
    assert sender.cmdline()[0].startswith(sys.prefix), sender.cmdline()  # the venv's Python
    if settings == "defaults":
        assert psutil.Process(server.pid).num_threads() == 1  # mpsender put no thread in the master
    assert server.stop() == 0, server.output()
    assert len(set(collector.message_ids())) == N  # nothing more came with the stop


HANG_APP = '''"""The example app plus /hang, which tracks then hangs until uWSGI's harakiri kills it."""
import time

import mpsender
from app import application as example


def application(environ, start_response):
    if environ.get("PATH_INFO") == "/hang":
        mpsender.track("Hung", anonymous_id="hang", properties={"request_id": "hang"})
        time.sleep(3600)
    return example(environ, start_response)
'''


def test_a_worker_killed_by_harakiri_loses_nothing(
        tmp_path: Path, collector: Collector, runtime_dir: str, env: dict[str, str],
        servers: list[Uwsgi]) -> None:
    """A worker stuck past harakiri is killed by the master while the others serve a load:
    the stuck request's event arrives anyway, and so does every answered request's."""
    (tmp_path / "hang_app.py").write_text(HANG_APP)
    ini = tmp_path / "hang.ini"  # the example's, serving hang_app (a second module option adds an app)
    ini.write_text((EXAMPLE / "uwsgi.ini").read_text().replace("module = app:application",
                                                               "module = hang_app:application"))
    server = start(servers, Uwsgi(tmp_path, env, ["--harakiri", "1"], ini=ini))

    def during(load: Load) -> None:
        assert_stuck_request_is_cut(server.url + "/hang", 20)  # harakiri kills the worker
        load.wait_done(load.done + 40)  # and the server goes on answering
        load.stop()

    with SenderWatch(runtime_dir) as watch:
        load = run_load(server.url, itertools.count(), concurrency=2, interval=0.01, during=during,
                        keepalive=False)
    assert "HARAKIRI ON WORKER" in server.text(), server.output()
    sent, ok = load.sent(), load.ok()
    assert ok == sent, f"{len(sent - ok)} requests failed\n{server.output()}"
    assert_delivered(collector, {str(i) for i in sent} | {"hang"}, {str(i) for i in ok} | {"hang"},
                     server, exact=True)
    assert len({e["messageId"] for e in collector.events() if e["event"] == "Hung"}) == 1
    assert len(watch.seen) == 1, watch.seen


def test_max_requests_recycling_loses_nothing_and_keeps_one_sender(
        tmp_path: Path, collector: Collector, runtime_dir: str, env: dict[str, str],
        servers: list[Uwsgi]) -> None:
    """Workers recycled by max-requests during the load: exactly N events, one sender."""
    # min-worker-lifetime (default 10 s) would keep every worker of a short test alive
    server = start(servers, Uwsgi(tmp_path, env, ["--max-requests", "20", "--min-worker-lifetime", "0"]))
    first_workers = set(server.workers())
    with SenderWatch(runtime_dir) as watch:
        load = run_load(server.url, range(N), keepalive=False)
    recycled = server.text().count("Respawned uWSGI worker")
    # uWSGI sleeps 2 s before respawning "too fast": at least every first worker went
    assert recycled >= 4, f"only {recycled} recycles\n{server.output()}"
    assert not first_workers & set(server.workers())
    assert_delivered(collector, set(range(N)), load.ok(), server, exact=True)
    assert len(watch.seen) == 1, watch.seen


def test_graceful_reload_under_load_loses_nothing(
        tmp_path: Path, collector: Collector, runtime_dir: str, env: dict[str, str],
        servers: list[Uwsgi]) -> None:
    """Two SIGHUPs (graceful reload: the master lets the workers finish, execs itself,
    imports the app and init() again) under load: no request fails, every event arrives
    once, and the sender stays the same."""
    server = start(servers, Uwsgi(tmp_path, env, []))
    before = set(server.workers())

    def reload_twice(load: Load) -> None:
        for k in (1, 2):
            load.wait_done(k * N // 3)
            os.kill(server.pid, signal.SIGHUP)
            # the master has exec'd itself, imported the app (init() again) and forked new workers
            assert wait_for(lambda k=k: server.text().count("spawned uWSGI worker 4 ") == k + 1, 20), \
                server.output()

    with SenderWatch(runtime_dir) as watch:
        load = run_load(server.url, range(N), concurrency=4, interval=0.02, during=reload_twice,
                        keepalive=False)
    assert server.text().count("...gracefully killing workers...") == 2, server.output()
    assert not before & set(server.workers()), server.output()
    assert_delivered(collector, set(range(N)), load.ok(), server, exact=True)
    assert len(watch.seen) == 1, watch.seen
