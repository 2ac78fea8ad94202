"""A real gunicorn serving examples/gunicorn_app: every 200 has its event, ONE sender per server.

The servers run the example's own ``app.py`` and ``gunicorn.conf.py`` (other wirings of
``init()`` add a small conf or app module of their own); each server is a process group
of its own, ended with killpg at teardown, and its output is shown when a test fails.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from mpsender._collector import Collector
from support import REPO, ServerProcess, app_env, live_sender_pids, sender_infos, wait_for

EXAMPLE = REPO / "examples" / "gunicorn_app"
_names = itertools.count()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _control_socket_args() -> list[str]:
    """Recent gunicorn (27 here) opens a control socket (in $HOME), served by a thread in
    the master: not wanted here (the master must stay thread-free; servers must not share it)."""
    from gunicorn.config import KNOWN_SETTINGS

    names = {s.name for s in KNOWN_SETTINGS}
    return ["--no-control-socket"] if "control_socket_disable" in names else []


class Gunicorn(ServerProcess):
    """One gunicorn master (and its workers) in a session of its own."""

    name = "gunicorn"

    def __init__(self, tmp_path: Path, env: dict[str, str], args: list[str], *,
                 conf: Path = EXAMPLE / "gunicorn.conf.py", app: str = "app:app") -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable, "-m", "gunicorn", "-c", str(conf), "--chdir", str(EXAMPLE),
            "--pythonpath", f"{EXAMPLE},{tmp_path}", "-b", f"127.0.0.1:{self.port}",
            "--graceful-timeout", "20", *_control_socket_args(), *args, app,
        ]
        super().__init__(cmd, env, EXAMPLE, tmp_path / f"gunicorn-{next(_names)}.log")

    def start(self, timeout: float = 30.0) -> Gunicorn:
        super().start(timeout)
        return self

    def ready(self) -> bool:
        try:
            return httpx.get(self.url + "/health", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def workers(self) -> list[int]:
        """Live worker pids (children of the master that are not a sender launcher)."""
        out = []
        for child in psutil.Process(self.pid).children():
            try:
                if child.status() != psutil.STATUS_ZOMBIE and "mpsender._sender" not in child.cmdline():
                    out.append(child.pid)
            except psutil.NoSuchProcess:
                continue
        return out

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)


@pytest.fixture
def servers() -> Iterator[list[Gunicorn]]:
    """Every gunicorn a test starts; each process group is SIGKILLed at teardown."""
    made: list[Gunicorn] = []
    yield made
    for server in made:
        server.kill()


@pytest.fixture
def env(collector: Collector, runtime_dir: str) -> dict[str, str]:
    """mpsender configured through MPSENDER_* for the servers: a fast sender, a 10 s linger."""
    return app_env(collector.url, runtime_dir, flush_interval=0.05, linger=10)


class Load:
    """GET /page?id=N for every id from ``concurrency`` client threads, in the background.

    ``interval`` paces each thread so that a load spans the event a test makes happen
    (a reload, a timeout); ``stop()`` ends an open-ended load early.
    """

    def __init__(self, url: str, ids: Iterable[int], *, concurrency: int = 8, interval: float = 0.0) -> None:
        self.url = url
        self.results: dict[int, int | None] = {}
        self._ids = iter(ids)
        self._interval = interval
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(concurrency)]

    def start(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    def _next(self) -> int | None:
        if self._stopped.is_set():
            return None
        with self._lock:
            return next(self._ids, None)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30.0) as client:
            while (i := self._next()) is not None:
                try:
                    status: int | None = client.get(
                        "/page", params={"id": str(i), "visitor": f"v{i % 9}"}).status_code
                except httpx.HTTPError:
                    status = None  # refused, reset: the request may or may not have been tracked
                with self._lock:
                    self.results[i] = status
                if self._interval:
                    self._stopped.wait(self._interval)  # pacing, not waiting for something

    @property
    def done(self) -> int:
        with self._lock:
            return len(self.results)

    def wait_done(self, n: int, timeout: float = 60.0) -> None:
        assert wait_for(lambda: self.done >= n, timeout), f"only {self.done} requests done"

    def join(self, timeout: float = 120.0) -> dict[int, int | None]:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._threads), "the load did not finish"
        return dict(self.results)

    def sent(self) -> set[int]:
        return set(self.results)

    def ok(self) -> set[int]:
        return {i for i, status in self.results.items() if status == 200}


def run_load(url: str, ids: Iterable[int], *, concurrency: int = 8, interval: float = 0.0,
             during: Callable[[Load], None] | None = None) -> Load:
    load = Load(url, ids, concurrency=concurrency, interval=interval).start()
    if during is not None:
        try:
            during(load)
        except BaseException:
            load.stop()
            load.join()
            raise
    load.join()
    return load


def assert_delivered(collector: Collector, sent: set[int] | set[str], ok: set[int] | set[str], server: Gunicorn,
                     *, exact: bool, timeout: float = 30.0) -> None:
    """Every request answered 200 has its event at the collector, once; nothing else came.

    With ``exact``, every request sent was answered and counts; otherwise a request that
    failed (its worker was killed) may or may not have an event.
    """
    def request_ids() -> dict[str, set[str]]:
        by_request: dict[str, set[str]] = {}
        for e in collector.events():
            by_request.setdefault(str(e["properties"].get("request_id")), set()).add(e["messageId"])
        return by_request

    wanted = {str(i) for i in ok}
    arrived = collector.wait_for(lambda c: wanted <= set(request_ids()), timeout)
    by_request = request_ids()
    missing = sorted(wanted - set(by_request), key=lambda r: (len(r), r))
    assert arrived and not missing, f"{len(missing)} answered requests have no event: {missing[:20]}\n{server.output()}"
    unexpected = set(by_request) - {str(i) for i in sent}
    assert not unexpected, f"events for requests never sent: {sorted(unexpected)[:20]}"
    doubled = {r: ids for r, ids in by_request.items() if len(ids) != 1}
    assert not doubled, f"requests tracked more than once: {doubled}"
    unique = set(collector.message_ids())
    assert len(unique) == len(by_request)
    if exact:
        assert ok == sent, f"{len(sent - ok)} requests failed\n{server.output()}"
        assert len(unique) == len(sent)


def one_sender(runtime_dir: str) -> int:
    pids = live_sender_pids(runtime_dir)
    assert len(pids) == 1, f"senders: {pids}"
    infos = sender_infos(runtime_dir)
    assert [i["pid"] for i in infos] == list(pids), infos
    return next(iter(pids))


class SenderWatch:
    """Samples the live sender pids while a load runs: the union must be ONE pid."""

    def __init__(self, runtime_dir: str) -> None:
        self.runtime_dir = runtime_dir
        self.seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SenderWatch:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.seen |= live_sender_pids(self.runtime_dir)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.seen |= live_sender_pids(self.runtime_dir)


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
    if preload:
        args.append("--preload")
    conf, app = _wiring(tmp_path, how)
    server = Gunicorn(tmp_path, env, args, conf=conf, app=app)
    servers.append(server)
    server.start()
    n = 160
    with SenderWatch(runtime_dir) as watch:
        load = run_load(server.url, range(n))
    assert_delivered(collector, set(range(n)), load.ok(), server, exact=True)
    assert len(watch.seen) == 1, f"senders seen during the load: {watch.seen}"
    assert one_sender(runtime_dir) in watch.seen
    # no thread in the master (Python 3.12+ warns at every fork of a threaded process)
    assert psutil.Process(server.pid).num_threads() == 1
    assert server.stop() == 0, server.output()
    assert len(set(collector.message_ids())) == n  # nothing more came with the stop


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
    env = {k: v for k, v in app_env(collector.url, runtime_dir).items() if not k.startswith("MPSENDER_")}
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
    hang_result: list[object] = []

    def hang() -> None:
        try:
            hang_result.append(httpx.get(server.url + "/hang", timeout=60).status_code)
        except httpx.HTTPError as exc:
            hang_result.append(exc)

    def during(load: Load) -> None:
        hanger = threading.Thread(target=hang, daemon=True)
        hanger.start()
        hanger.join(30)  # returns once gunicorn has killed the stuck worker
        assert not hanger.is_alive() and hang_result and hang_result[0] != 200, hang_result
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
    n = 300

    def stop(load: Load) -> None:
        load.wait_done(n // 2)
        server.signal(signal.SIGTERM)

    load = run_load(server.url, range(n), during=stop)
    assert server.stop() == 0, server.output()
    sender = one_sender(runtime_dir)
    ok = load.ok()
    assert n // 2 <= len(ok) < n, f"{len(ok)} answered: the stop came too late to test anything"
    assert_delivered(collector, set(range(n)), ok, server, exact=False)

    again = Gunicorn(tmp_path, env, ["-w", "4"])
    servers.append(again)
    again.start()
    more = run_load(again.url, range(n, n + 100))
    assert live_sender_pids(runtime_dir) == {sender}, "the restarted server started a new sender"
    assert_delivered(collector, set(range(n + 100)), ok | more.ok(), again, exact=False)
    assert more.ok() == set(range(n, n + 100))
