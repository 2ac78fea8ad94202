"""A real gunicorn serving examples/gunicorn_app: every 200 has its event, ONE sender per server.

The servers run the example's own ``app.py`` and ``gunicorn.conf.py`` (other wirings of
``init()`` add a small conf or app module of their own); each server is a process group
of its own, ended with killpg at teardown, and its output is shown when a test fails.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
from pathlib import Path

import httpx
import psutil
import pytest
from support import (
    REPO,
    HttpServer,
    Load,
    SenderWatch,
    app_env,
    assert_delivered,
    assert_stuck_request_is_cut,
    free_port,
    gunicorn_control_args,
    live_sender_pids,
    one_sender,
    run_load,
    wait_for,
    without_mpsender,
)

from mpsender._collector import Collector

EXAMPLE = REPO / "examples" / "gunicorn_app"
_names = itertools.count()


class Gunicorn(HttpServer):
    """One gunicorn master (and its workers) in a session of its own."""

    name = "gunicorn"

    def __init__(self, tmp_path: Path, env: dict[str, str], args: list[str], *,
                 conf: Path = EXAMPLE / "gunicorn.conf.py", app: str = "app:app") -> None:
        port = free_port()
        cmd = [
            sys.executable, "-m", "gunicorn", "-c", str(conf), "--chdir", str(EXAMPLE),
            "--pythonpath", f"{EXAMPLE},{tmp_path}", "-b", f"127.0.0.1:{port}",
            "--graceful-timeout", "20", *gunicorn_control_args(), *args, app,
        ]
        super().__init__(cmd, env, EXAMPLE, tmp_path / f"gunicorn-{next(_names)}.log", port)

    def start(self, timeout: float = 30.0) -> Gunicorn:
        super().start(timeout)
        return self

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)


# --- init() wired every way ------------------------------------------------------------

POST_FORK_CONF = '''"""The user's own hook, nothing of mpsender.integrations."""
import mpsender


def post_fork(server, worker):
    mpsender.init()
'''

IMPORT_CONF = '"""No hooks: the app module calls init() at import."""\n'

IMPORT_APP = '''"""The example app, with init() at import (in the master with --preload)."""
import mpsender

mpsender.init()

from app import app  # noqa: E402
'''


def _wiring(tmp_path: Path, how: str) -> tuple[Path, str]:
    """The gunicorn conf and app for each place init() can be called."""
    if how == "master":  # the example's own: on_starting, post_fork, worker_exit, on_exit
        return EXAMPLE / "gunicorn.conf.py", "app:app"
    if how == "post_fork":
        conf = tmp_path / "postfork_conf.py"
        conf.write_text(POST_FORK_CONF)
        return conf, "app:app"
    conf = tmp_path / "import_conf.py"
    conf.write_text(IMPORT_CONF)
    (tmp_path / "app_init_at_import.py").write_text(IMPORT_APP)
    return conf, "app_init_at_import:app"


CASES = [
    # worker class, --preload, where init() runs
    ("sync", False, "master"),
    ("sync", True, "master"),
    ("gthread", False, "master"),
    ("sync", False, "post_fork"),
    ("sync", True, "post_fork"),
    ("gthread", False, "post_fork"),
    ("sync", False, "import"),
    ("sync", True, "import"),
    ("gthread", True, "import"),
    # green threads (issue 14): every request is a greenlet; the worker monkey-patches
    # after the fork, so with --preload the app and mpsender were imported unpatched
    ("gevent", False, "master"),
    ("gevent", True, "master"),
    ("gevent", False, "post_fork"),
    ("gevent", True, "import"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("worker_class", "preload", "how"), CASES,
                         ids=[f"{k}-{'preload' if p else 'nopreload'}-{h}" for k, p, h in CASES])
def test_every_request_gives_one_event_through_one_sender(
        worker_class: str, preload: bool, how: str, tmp_path: Path, collector: Collector,
        runtime_dir: str, env: dict[str, str], servers: list[Gunicorn]) -> None:
    """N requests each tracking one event give exactly N unique events and one sender pid,
    whatever the worker class, --preload, and wherever init() is called; the master
    keeps no thread."""
    args = ["-w", "4", "-k", worker_class]
    if worker_class == "gthread":
        args += ["--threads", "4"]
    if worker_class == "gevent":
        args += ["--worker-connections", "50"]
    if preload:
        args.append("--preload")
    conf, app = _wiring(tmp_path, how)
    server = Gunicorn(tmp_path, env, args, conf=conf, app=app)
    servers.append(server)
    server.start()
    n = 160
    watch = _n_requests_n_events(server, collector, runtime_dir, n)
    assert one_sender(runtime_dir) in watch.seen
    # no thread in the master (Python 3.12+ warns at every fork of a threaded process)
    assert psutil.Process(server.pid).num_threads() == 1
    assert server.stop() == 0, server.output()
    assert len(set(collector.message_ids())) == n  # nothing more came with the stop


def _eventlet_worker_missing() -> str | None:
    from gunicorn.workers import SUPPORTED_WORKERS

    if "eventlet" not in SUPPORTED_WORKERS:
        import gunicorn

        return (f"gunicorn {gunicorn.__version__} has no eventlet worker (gunicorn.workers.SUPPORTED_WORKERS "
                "lists none: deprecated in 26.0, removed by benoitc/gunicorn#3623); eventlet itself "
                "is covered by test_green.py")
    return None


@pytest.mark.slow
@pytest.mark.parametrize("preload", [False, True], ids=["nopreload", "preload"])
def test_eventlet_workers_give_one_event_per_request_through_one_sender(
        preload: bool, tmp_path: Path, collector: Collector, runtime_dir: str, env: dict[str, str],
        servers: list[Gunicorn]) -> None:
    """-k eventlet, where the installed gunicorn still has it: N requests, N events, one sender."""
    missing = _eventlet_worker_missing()
    if missing:
        pytest.skip(missing)
    server = Gunicorn(tmp_path, env, ["-w", "4", "-k", "eventlet", *(["--preload"] if preload else [])])
    servers.append(server)
    server.start()
    _n_requests_n_events(server, collector, runtime_dir, 160)
    assert server.stop() == 0, server.output()


def _n_requests_n_events(server: Gunicorn, collector: Collector, runtime_dir: str, n: int) -> SenderWatch:
    """n requests under load: n events, each once, and one sender seen all along."""
    with SenderWatch(runtime_dir) as watch:
        load = run_load(server.url, range(n))
    assert_delivered(collector, set(range(n)), load.ok(), server, exact=True)
    assert len(watch.seen) == 1, f"senders seen during the load: {watch.seen}"
    return watch


EXPLICIT_APP = '''"""The example app, with init(...) options in code at import and nothing in the environment."""
import os

import mpsender

mpsender.init(write_key="code-key", endpoint=os.environ["APP_ENDPOINT"], runtime_dir=os.environ["APP_RUNTIME_DIR"],
              flush_interval=0.05)

from app import app  # noqa: E402
'''


@pytest.mark.slow
def test_hooks_without_configuration_warn_and_the_apps_own_init_works(
        tmp_path: Path, collector: Collector, runtime_dir: str, servers: list[Gunicorn]) -> None:
    """The example's hooks with no MPSENDER_* configuration: they log a warning, never stop
    gunicorn, and the app's own init(...) with options in code delivers every event."""
    env = without_mpsender(app_env(collector.url, runtime_dir))
    env.update(APP_ENDPOINT=collector.url, APP_RUNTIME_DIR=runtime_dir)
    (tmp_path / "explicit_app.py").write_text(EXPLICIT_APP)
    server = Gunicorn(tmp_path, env, ["-w", "2"], app="explicit_app:app")
    servers.append(server)
    server.start()
    n = 60
    load = run_load(server.url, range(n), concurrency=4)
    assert_delivered(collector, set(range(n)), load.ok(), server, exact=True)
    assert "on_starting did not initialise mpsender" in server.output()
    assert "post_fork did not initialise mpsender" in server.output()
    one_sender(runtime_dir)
    assert server.stop() == 0, server.output()


# --- workers that die --------------------------------------------------------------------


@pytest.mark.slow
def test_a_sigkilled_worker_mid_load_loses_no_answered_event(
        tmp_path: Path, collector: Collector, runtime_dir: str, env: dict[str, str],
        servers: list[Gunicorn]) -> None:
    """A worker SIGKILLed under load: the others keep delivering, every 200 has its event."""
    server = Gunicorn(tmp_path, env, ["-w", "4"])
    servers.append(server)
    server.start()
    n = 300
    victims: list[int] = []

    def kill_one(load: Load) -> None:
        load.wait_done(n // 3)
        victim = server.workers()[0]
        os.kill(victim, signal.SIGKILL)
        victims.append(victim)

    with SenderWatch(runtime_dir) as watch:
        load = run_load(server.url, range(n), during=kill_one)
    assert victims and victims[0] not in server.workers()
    ok = load.ok()
    assert len(ok) >= n - 8, f"only {len(ok)} of {n} answered\n{server.output()}"
    after_kill = [i for i in ok if i > 2 * n // 3]
    assert after_kill, "no request answered after the kill"
    assert_delivered(collector, set(range(n)), ok, server, exact=False)
    assert len(watch.seen) == 1, watch.seen


HANG_APP = '''"""The example app plus /hang, which tracks then hangs until gunicorn's --timeout kills it."""
import time

import mpsender
from app import app as example


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/hang":
        mpsender.track("Hung", anonymous_id="hang", properties={"request_id": "hang"})
        time.sleep(3600)
    return example(environ, start_response)
'''


@pytest.mark.slow
def test_a_worker_killed_by_gunicorn_timeout_loses_nothing(
        tmp_path: Path, collector: Collector, runtime_dir: str, env: dict[str, str],
        servers: list[Gunicorn]) -> None:
    """A worker stuck past --timeout is aborted by gunicorn while the others serve a load:
    the stuck request's event arrives anyway, and so does every answered request's."""
    (tmp_path / "hang_app.py").write_text(HANG_APP)
    server = Gunicorn(tmp_path, env, ["-w", "3", "--timeout", "2"], app="hang_app:app")
    servers.append(server)
    server.start()

    def during(load: Load) -> None:
        assert_stuck_request_is_cut(server.url + "/hang", 30)  # gunicorn's timeout kills the worker
        load.wait_done(load.done + 40)  # and the server goes on answering
        load.stop()

    with SenderWatch(runtime_dir) as watch:
        load = run_load(server.url, itertools.count(), concurrency=2, interval=0.02, during=during)
    assert "WORKER TIMEOUT" in server.log.read_text(), server.output()
    sent, ok = load.sent(), load.ok()
    assert ok == sent, f"{len(sent - ok)} requests failed\n{server.output()}"
    assert_delivered(collector, {str(i) for i in sent} | {"hang"}, {str(i) for i in ok} | {"hang"},
                     server, exact=True)
    hung = [e for e in collector.events() if e["event"] == "Hung"]
    assert len({e["messageId"] for e in hung}) == 1
    assert len(watch.seen) == 1, watch.seen


@pytest.mark.slow
def test_max_requests_recycling_loses_nothing_and_keeps_one_sender(
        tmp_path: Path, collector: Collector, runtime_dir: str, env: dict[str, str],
        servers: list[Gunicorn]) -> None:
    """Workers recycled by max_requests during the load: exactly N events, one sender."""
    server = Gunicorn(tmp_path, env, ["-w", "4", "--max-requests", "20", "--max-requests-jitter", "5"])
    servers.append(server)
    server.start()
    first_workers = set(server.workers())
    n = 300
    with SenderWatch(runtime_dir) as watch:
        load = run_load(server.url, range(n))
    recycled = server.output().count("Autorestarting worker")
    assert recycled >= 8, f"only {recycled} recycles\n{server.output()}"
    assert not first_workers & set(server.workers())
    assert_delivered(collector, set(range(n)), load.ok(), server, exact=True)
    assert len(watch.seen) == 1, watch.seen


# --- the server reloaded, stopped, restarted -----------------------------------------------


@pytest.mark.slow
def test_hup_reload_under_load_loses_nothing(
        tmp_path: Path, collector: Collector, runtime_dir: str, env: dict[str, str],
        servers: list[Gunicorn]) -> None:
    """Two HUPs (new workers, old ones stopped gracefully) under load: no request fails,
    every event arrives once, and the sender stays the same."""
    server = Gunicorn(tmp_path, env, ["-w", "4"])
    servers.append(server)
    server.start()
    before = set(server.workers())
    n = 300

    def reload_twice(load: Load) -> None:
        for k in (1, 2):
            load.wait_done(k * n // 3)
            server.signal(signal.SIGHUP)

    with SenderWatch(runtime_dir) as watch:
        load = run_load(server.url, range(n), concurrency=4, interval=0.01, during=reload_twice)
    assert wait_for(lambda: server.output().count("Handling signal: hup") == 2, 20), server.output()
    assert wait_for(lambda: not before & set(server.workers()), 20), server.output()
    assert_delivered(collector, set(range(n)), load.ok(), server, exact=True)
    assert len(watch.seen) == 1, watch.seen


@pytest.mark.slow
def test_term_under_load_loses_nothing_and_a_quick_restart_reuses_the_sender(
        tmp_path: Path, collector: Collector, runtime_dir: str, env: dict[str, str],
        servers: list[Gunicorn]) -> None:
    """TERM (graceful stop) mid-load: every answered request has its event; a gunicorn
    started again within the sender's linger time uses that same sender."""
    server = Gunicorn(tmp_path, env, ["-w", "4"])
    servers.append(server)
    server.start()
    n = 150
    base = 1_000_000  # the restarted server's ids come after every id this load may send

    def stop(load: Load) -> None:
        # An open-ended load, so that it is still running when the stop takes effect,
        # however fast or loaded the machine: some requests are answered before the
        # stop, and the ones after it fail.
        load.wait_done(n)
        server.signal(signal.SIGTERM)
        assert server.proc is not None
        server.proc.wait(60)
        assert wait_for(lambda: load.sent() - load.ok(), timeout=10), "no request failed after the stop"
        load.stop()

    load = run_load(server.url, itertools.count(), during=stop)
    assert server.stop() == 0, server.output()
    sender = one_sender(runtime_dir)
    sent, ok = load.sent(), load.ok()
    assert len(ok) >= n and sent - ok
    assert_delivered(collector, sent, ok, server, exact=False)

    again = Gunicorn(tmp_path, env, ["-w", "4"])
    servers.append(again)
    again.start()
    more = run_load(again.url, range(base, base + 100))
    assert live_sender_pids(runtime_dir) == {sender}, "the restarted server started a new sender"
    assert_delivered(collector, sent | set(range(base, base + 100)), ok | more.ok(), again, exact=False)
    assert more.ok() == set(range(base, base + 100))


# --- uncaught exceptions (capture_uncaught) ------------------------------------------------

THREAD_CRASH_APP = '''"""The example app plus /crash-thread: a thread of the worker dies of an uncaught exception."""
import threading

from app import app as example


def _export():
    try:
        {}["report"]
    except KeyError as exc:
        raise RuntimeError("export failed") from exc


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/crash-thread":
        thread = threading.Thread(target=_export, name="report-exporter")
        thread.start()
        thread.join()
    return example(environ, start_response)
'''


@pytest.mark.slow
@pytest.mark.parametrize("preload", [False, True], ids=["nopreload", "preload"])
def test_an_uncaught_exception_in_a_worker_thread_arrives_as_an_error(
        preload: bool, tmp_path: Path, collector: Collector, runtime_dir: str, env: dict[str, str],
        servers: list[Gunicorn]) -> None:
    """capture_uncaught in the environment: a thread started by a worker that dies of an
    uncaught exception sends $error (severity ``error``: the worker lives on) with its
    thread name and cause chain, from the worker's pid; the thread's traceback is still
    logged, and the worker goes on serving. (gunicorn catches whatever escapes a request,
    the app's import or a hook in a worker's main thread, so a thread is where an
    uncaught exception of a worker reaches the hooks.)"""
    (tmp_path / "thread_crash_app.py").write_text(THREAD_CRASH_APP)
    env = {**env, "MPSENDER_CAPTURE_UNCAUGHT": "1", "MPSENDER_ENRICH": "1"}
    server = Gunicorn(tmp_path, env, ["-w", "2", *(["--preload"] if preload else [])], app="thread_crash_app:app")
    servers.append(server)
    server.start()
    assert httpx.get(server.url + "/crash-thread", params={"id": "c1"}, timeout=30).status_code == 200
    assert httpx.get(server.url + "/page", params={"id": "after"}, timeout=30).status_code == 200
    assert collector.wait_for(lambda c: any(e["event"] == "$error" for e in c.events()), 20), server.output()
    [error] = [e for e in collector.events() if e["event"] == "$error"]
    props = error["properties"]
    assert (props["severity"], props["thread"], props["uncaught"], props["error_message"]) == (
        "error", "report-exporter", True, "export failed")
    assert [c["type"] for c in props["causes"]] == ["KeyError"]
    assert error["context"]["pid"] in server.workers() and error["context"]["pid"] != server.pid
    assert "Exception in thread report-exporter" in server.output()  # the previous hook still prints
    assert server.stop() == 0, server.output()
