"""A real Celery prefork worker running examples/celery_app: every task's events arrive.

The worker runs the example's own ``tasks.py`` and ``celeryconfig.py`` in a session of its
own, ended with killpg at teardown; tasks are sent by a separate producer process; its
output is shown when a test fails. Each worker test runs twice: on kombu's filesystem
transport with a file result store (the example's default: no server needed), and on a
real Redis as broker and result store, the set-up most production workers use -- a
``redis-server`` the suite starts once on 127.0.0.1 (a free port, no persistence, a session
of its own, killed at the end). Where ``redis-server`` is not installed (.ci/run installs
it from the OS's packages), the Redis runs are skipped and say so.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
from support import (
    REPO,
    ServerProcess,
    app_env,
    check,
    free_port,
    live_sender_pids,
    run_app,
    wait_for,
    without_mpsender,
)

from mpsender._collector import Collector

EXAMPLE = REPO / "examples" / "celery_app"
_names = itertools.count()

TASK_EVENT = "Celery Task Finished"


class CeleryWorker(ServerProcess):
    """``celery -A tasks worker`` (prefork) in a session of its own."""

    name = "the worker"

    def __init__(self, tmp_path: Path, env: dict[str, str], args: list[str], *, pool: str = "prefork") -> None:
        n = next(_names)
        cmd = [
            sys.executable, "-m", "celery", "-A", "tasks", "worker", "--pool", pool,
            "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--hostname", f"w{n}@localhost", *args,
        ]
        super().__init__(cmd, env, EXAMPLE, tmp_path / f"celery-{n}.log")

    def start(self, timeout: float = 30.0) -> CeleryWorker:
        super().start(timeout)
        # the broker the worker says it uses (Celery masks a password as ":**@")
        scheme, _, where = self.env.get("CELERY_BROKER_URL", "filesystem://").partition("://")
        shown = re.search(r"transport:\s+(\S+)", self.log.read_text(errors="replace"))
        assert shown and shown[1].startswith(f"{scheme}://") and shown[1].endswith(where), self.output()
        return self

    def ready(self) -> bool:
        return " ready." in self.log.read_text(errors="replace")

    def stop(self, timeout: float = 60.0) -> int:
        """Warm shutdown (TERM): running tasks finish; the exit code. With the filesystem
        transport (a polling loop) an idle worker takes Celery about 6 s, mpsender or not."""
        return super().stop(timeout)


class RedisServer(ServerProcess):
    """``redis-server`` on 127.0.0.1 and ``port``: nothing saved to disk, in a session of
    its own; ready when it answers PING."""

    name = "redis-server"

    def __init__(self, binary: str, directory: Path, port: int) -> None:
        self.port = port
        cmd = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
               "--dir", str(directory), "--daemonize", "no", "--protected-mode", "yes", "--logfile", ""]
        super().__init__(cmd, dict(os.environ), directory, directory / f"redis-{port}.log")

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis.from_url(self.url(db), socket_timeout=5)

    def ready(self) -> bool:
        try:
            with self.client() as c:
                return bool(c.ping())
        except redis.ConnectionError:
            return False


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session (skipped, with the reason, where none can start);
    SIGKILLed by its process group at the end."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server; .ci/run installs it)")
    directory = tmp_path_factory.mktemp("redis")
    failures = []
    for _ in range(3):  # the free port may be taken between free_port() and the bind
        server = RedisServer(binary, directory, free_port())
        try:
            server.start(timeout=15)
            break
        except AssertionError as exc:
            server.kill()
            failures.append(str(exc))
    else:
        pytest.skip("redis-server could not start: " + failures[-1][-2000:])
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(params=["filesystem", "redis"])
def broker(request: pytest.FixtureRequest) -> dict[str, str]:
    """The example's broker and result store, as CELERY_* variables: kombu's filesystem
    transport and result files (no variables), or the session's Redis, emptied first."""
    if request.param == "filesystem":
        return {}
    server: RedisServer = request.getfixturevalue("redis_server")
    with server.client() as c:
        c.flushall()
    return {"CELERY_BROKER_URL": server.url(0), "CELERY_RESULT_BACKEND": server.url(1)}


@pytest.fixture
def workers() -> Iterator[list[CeleryWorker]]:
    """Every worker a test starts; each process group is SIGKILLed at teardown."""
    made: list[CeleryWorker] = []
    yield made
    for worker in made:
        worker.kill()


@pytest.fixture
def env(collector: Collector, runtime_dir: str, tmp_path: Path) -> dict[str, str]:
    """mpsender through MPSENDER_* (with pid enrichment); the example's broker in tmp_path."""
    env = app_env(collector.url, runtime_dir, flush_interval=0.05, linger=10, enrich=1)
    env["CELERY_DATA_DIR"] = str(tmp_path / "celery-data")
    env["PYTHONPATH"] = os.pathsep.join([str(EXAMPLE), env["PYTHONPATH"]])
    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        env.pop(name, None)  # the shell's own would take the example elsewhere
    return env


@pytest.fixture
def worker_env(env: dict[str, str], broker: dict[str, str]) -> dict[str, str]:
    """``env`` on each broker in turn (filesystem, then Redis)."""
    return {**env, **broker}


def send(env: dict[str, str], calls: str) -> list[str]:
    """Send tasks from a producer process of its own; the task ids, in order."""
    code = f"""
import tasks
results = [{calls}]
print(" ".join(r.id for r in results))
"""
    return check(run_app(code, env)).split()


def by_event(collector: Collector, name: str) -> list[dict[str, Any]]:
    return [e for e in collector.events() if e.get("event") == name]


def stored_results(env: dict[str, str]) -> Iterator[bytes]:
    """The raw result of every task, from the result files or from Redis."""
    url = env.get("CELERY_RESULT_BACKEND", "")
    if url.startswith("redis://"):
        with redis.Redis.from_url(url, socket_timeout=5) as c:
            for key in c.scan_iter("celery-task-meta-*"):
                raw = c.get(key)
                if raw is not None:
                    yield raw
        return
    for path in (Path(env["CELERY_DATA_DIR"]) / "results").glob("celery-task-meta-*"):
        yield path.read_bytes()


def results(env: dict[str, str], status: str) -> dict[str, dict[str, Any]]:
    """task id -> stored result, for every task whose stored result says ``status``."""
    out = {}
    for raw in stored_results(env):
        try:
            meta = json.loads(raw)
        except ValueError:
            continue  # being written: read at the next poll
        if meta["status"] == status:
            out[meta["task_id"]] = meta
    return out


def completed(env: dict[str, str]) -> dict[str, tuple[Any, datetime]]:
    """task id -> (result, when it was done), for every task the worker stored a success of."""
    out = {}
    for task_id, meta in results(env, "SUCCESS").items():
        at = datetime.fromisoformat(meta["date_done"])
        out[task_id] = (meta["result"], at if at.tzinfo else at.replace(tzinfo=timezone.utc))
    return out


def unique_per_key(events: list[dict[str, Any]], key: Any) -> dict[Any, set[str]]:
    out: dict[Any, set[str]] = {}
    for e in events:
        out.setdefault(key(e), set()).add(e["messageId"])
    return out


@pytest.mark.slow
@pytest.mark.parametrize("concurrency", [2, 4])
def test_max_tasks_per_child_1_every_task_gives_its_events(
        concurrency: int, tmp_path: Path, collector: Collector, runtime_dir: str,
        worker_env: dict[str, str], workers: list[CeleryWorker]) -> None:
    """Prefork, max_tasks_per_child=1 (every child leaves through os._exit after one task):
    N tasks give exactly N task events and N task-finished events, through one sender."""
    worker = CeleryWorker(tmp_path, worker_env, ["--concurrency", str(concurrency), "--max-tasks-per-child", "1"])
    workers.append(worker)
    worker.start()
    n = 24
    _every_task_gives_its_two_events(worker, worker_env, collector, n)
    for e in by_event(collector, TASK_EVENT):
        p = e["properties"]
        assert (p["task"], p["state"], p["queue"], p["retries"]) == ("tasks.signup", "SUCCESS", "celery", 0)
        assert 0 < p["duration"] < 10
        assert e["anonymousId"].startswith("celery:w")
    # every task ran in a child of its own, and they all met one sender
    pids = {e["context"]["pid"] for e in by_event(collector, "Signed Up")}
    assert len(pids) == n, f"{len(pids)} child pids for {n} tasks"
    assert len(live_sender_pids(runtime_dir)) == 1


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_thread_and_solo_pools_give_every_task_its_events(
        pool: str, tmp_path: Path, collector: Collector, runtime_dir: str,
        worker_env: dict[str, str], workers: list[CeleryWorker]) -> None:
    """--pool threads (4 threads in the main process) and --pool solo: N tasks give exactly
    N task events and N task-finished events, through one sender."""
    args = ["--concurrency", "4"] if pool == "threads" else []
    worker = CeleryWorker(tmp_path, worker_env, args, pool=pool)
    workers.append(worker)
    worker.start()
    _every_task_gives_its_two_events(worker, worker_env, collector, 24)
    assert len(live_sender_pids(runtime_dir)) == 1


def _every_task_gives_its_two_events(worker: CeleryWorker, env: dict[str, str], collector: Collector,
                                     n: int) -> None:
    """Send ``n`` signup tasks: each gives one "Signed Up" and one task-finished event,
    once each, and nothing else comes."""
    ids = send(env, f"tasks.signup.delay(f'user-{{i}}', 'pro') for i in range({n})")
    assert collector.wait_for(
        lambda c: len({e["messageId"] for e in by_event(c, TASK_EVENT)}) >= n, 60), worker.output()
    signups = unique_per_key(by_event(collector, "Signed Up"), lambda e: e["userId"])
    assert signups.keys() == {f"user-{i}" for i in range(n)}, worker.output()
    assert all(len(m) == 1 for m in signups.values()), signups
    finished = unique_per_key(by_event(collector, TASK_EVENT), lambda e: e["properties"]["task_id"])
    assert finished.keys() == set(ids)
    assert all(len(m) == 1 for m in finished.values()), finished
    assert len(set(collector.message_ids())) == 2 * n  # nothing else came


@pytest.mark.slow
def test_warm_shutdown_under_load_delivers_every_completed_task(
        tmp_path: Path, collector: Collector, runtime_dir: str, worker_env: dict[str, str],
        workers: list[CeleryWorker]) -> None:
    """TERM (warm shutdown) while tasks run: the tasks in progress finish, and every task
    that completed (before or during the shutdown) has its events, once each.

    Without max_tasks_per_child: with it, Celery's warm shutdown SIGKILLs the children
    that are mid-task (and restores their messages), mpsender or not."""
    worker = CeleryWorker(tmp_path, worker_env, ["--concurrency", "3"])
    workers.append(worker)
    worker.start()
    n = 60
    send(worker_env, f"tasks.export_report.delay(f'user-{{i}}', 0.3) for i in range({n})")
    # TERM while a task runs (task_track_started: its result says STARTED)
    assert wait_for(lambda: len(completed(worker_env)) >= 6 and results(worker_env, "STARTED"), 60), worker.output()
    term_at = datetime.now(timezone.utc)
    assert worker.stop() == 0, worker.output()
    done = completed(worker_env)
    assert 6 <= len(done) < n, f"{len(done)} of {n} completed: the stop came too late to test anything"
    finished_late = [t for t, (_, at) in done.items() if at > term_at]
    assert finished_late, "no task was in progress at the TERM: nothing tested"

    users = {user for user, _ in done.values()}
    assert collector.wait_for(
        lambda c: users <= {e["userId"] for e in by_event(c, "Report Exported")}
        and set(done) <= {e["properties"]["task_id"] for e in by_event(c, TASK_EVENT)}, 30), worker.output()
    exported = unique_per_key(by_event(collector, "Report Exported"), lambda e: e["userId"])
    assert all(len(m) == 1 for m in exported.values()), exported
    assert set(exported) == users  # no task that did not complete has an event
    finished = unique_per_key(by_event(collector, TASK_EVENT), lambda e: e["properties"]["task_id"])
    assert set(finished) == set(done) and all(len(m) == 1 for m in finished.values()), finished
    assert len(live_sender_pids(runtime_dir)) == 1


@pytest.mark.slow
def test_a_failing_task_sends_its_error_event(
        tmp_path: Path, collector: Collector, runtime_dir: str, worker_env: dict[str, str],
        workers: list[CeleryWorker]) -> None:
    """With task instrumentation on, a task that raises gives a $error event naming the
    exception type and a task-finished event in state FAILURE; a task killed at its hard
    time limit gives one $error event (from the main process) and one in state TERMINATED."""
    worker = CeleryWorker(tmp_path, worker_env, ["--concurrency", "2"])
    workers.append(worker)
    worker.start()
    ok_id, failed_id, killed_id = send(
        worker_env, "tasks.charge.delay('u1', 500), tasks.charge.delay('u2', 200_000), "
             "tasks.export_report.apply_async(('u3', 60), time_limit=1)")
    assert collector.wait_for(lambda c: len(by_event(c, TASK_EVENT)) >= 2 and len(by_event(c, "$error")) >= 2,
                              30), worker.output()
    errors = {e["properties"]["task_id"]: e for e in by_event(collector, "$error")}
    assert errors.keys() == {failed_id, killed_id}
    assert len({e["messageId"] for e in by_event(collector, "$error")}) == 2  # one per failed task
    props = errors[failed_id]["properties"]
    assert props["error_type"] == "tasks.PaymentDeclined"
    assert re.search(r"card of u2 refused for 200000 cents", props["error_message"])
    assert (props["task"], props["queue"]) == ("tasks.charge", "celery")
    assert props["stack"] and props["fingerprint"]
    killed = errors[killed_id]["properties"]
    assert (killed["error_type"], killed["task"]) == ("billiard.exceptions.TimeLimitExceeded", "tasks.export_report")
    # the child terminated at the time limit says so on its way out
    assert collector.wait_for(lambda c: len(by_event(c, TASK_EVENT)) >= 3, 10), worker.output()
    states = {e["properties"]["task_id"]: e["properties"]["state"] for e in by_event(collector, TASK_EVENT)}
    assert states == {ok_id: "SUCCESS", failed_id: "FAILURE", killed_id: "TERMINATED"}
    assert [e["userId"] for e in by_event(collector, "Payment Charged")] == ["u1"]
    assert not by_event(collector, "Report Exported")


def test_connecting_twice_sends_each_event_once(collector: Collector, runtime_dir: str, env: dict[str, str]) -> None:
    """connect() called again (here on top of the example's own call) changes nothing:
    a task run through Celery's tracer (apply) gives one task event and one $error; after
    disconnect() it gives none."""
    code = """
import mpsender, mpsender.integrations.celery as mc
import tasks
mc.connect(tasks.app, instrument_tasks=True)
mc.connect(tasks.app, instrument_tasks=True)
assert tasks.signup.apply(("u1", "pro")).successful()
assert tasks.charge.apply(("u2", 200_000)).failed()
mc.disconnect()
assert tasks.signup.apply(("u3", "pro")).successful()
assert mpsender.flush(20)
print("ok")
"""
    assert check(run_app(code, env)).strip() == "ok"
    finished = by_event(collector, TASK_EVENT)
    assert sorted(e["properties"]["state"] for e in finished) == ["FAILURE", "SUCCESS"]
    errors = by_event(collector, "$error")
    assert [e["properties"]["error_type"] for e in errors] == ["tasks.PaymentDeclined"]
    assert [e["userId"] for e in by_event(collector, "Signed Up")] == ["u1", "u3"]
    # two Signed Up, two task events (none after disconnect()), one $error: no doubles
    assert len(collector.message_ids()) == 5


def test_without_redis_server_the_redis_runs_are_skipped_with_the_reason(tmp_path: Path) -> None:
    """A developer without redis-server (``pip install -e '.[test]' && pytest`` alone) gets
    the Redis runs skipped, with how to install it, not failed."""
    env = {k: v for k, v in without_mpsender().items() if not k.startswith("PYTEST_")}
    env["PATH"] = str(tmp_path)  # no redis-server on it (the worker runs through sys.executable)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-k", "failing_task and redis",
         str(Path(__file__))], cwd=str(REPO), env=env, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 skipped" in proc.stdout and "redis-server is not installed" in proc.stdout, proc.stdout


# --- uncaught exceptions (capture_uncaught) --------------------------------------------------

CRASH_TASKS = '''"""A task of the example app whose own thread dies of an uncaught exception."""
import threading

import mpsender
from tasks import app


def _upload(user_id):
    with mpsender.session(user_id=user_id):
        try:
            {}["bucket"]
        except KeyError as exc:
            raise OSError("upload failed") from exc


@app.task
def upload_in_thread(user_id):
    thread = threading.Thread(target=_upload, args=(user_id,), name="uploader")
    thread.start()
    thread.join()
    return user_id
'''


@pytest.mark.slow
def test_an_uncaught_exception_in_a_pool_child_thread_arrives_as_an_error(
        tmp_path: Path, collector: Collector, runtime_dir: str, env: dict[str, str],
        workers: list[CeleryWorker]) -> None:
    """capture_uncaught in the environment: the hooks installed by the worker's main process
    are the pool child's too; a thread of a task that dies of an uncaught exception sends
    $error (severity ``error``: the child lives on) from the child, with its cause chain and
    the session the thread was in, which ends ``error``; the task itself succeeds. (Celery
    catches what escapes a task, and billiard what escapes a child's main loop, so a thread
    is where an uncaught exception of a child reaches the hooks.)"""
    (tmp_path / "crash_tasks.py").write_text(CRASH_TASKS)
    env = {**env, "MPSENDER_CAPTURE_UNCAUGHT": "1",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])}
    worker = CeleryWorker(tmp_path, env, ["--concurrency", "1", "-I", "crash_tasks"])
    workers.append(worker)
    worker.start()
    [task_id] = check(run_app("import crash_tasks\nprint(crash_tasks.upload_in_thread.delay('u7').id)", env)).split()
    assert collector.wait_for(lambda c: by_event(c, "$error") and by_event(c, TASK_EVENT)
                              and by_event(c, "Session Ended"), 60), worker.output()
    [error] = by_event(collector, "$error")
    props = error["properties"]
    assert (props["severity"], props["thread"], props["uncaught"], props["error_message"]) == (
        "error", "uploader", True, "upload failed")
    assert [c["type"] for c in props["causes"]] == ["KeyError"] and error["userId"] == "u7"
    [ended] = by_event(collector, "Session Ended")
    assert ended["properties"]["outcome"] == "error"
    assert props["session_id"] == ended["properties"]["session_id"]
    assert error["context"]["pid"] != worker.pid  # the pool child, not the main process
    [finished] = by_event(collector, TASK_EVENT)
    assert (finished["properties"]["task_id"], finished["properties"]["state"]) == (task_id, "SUCCESS")
    # the previous hook still prints (Celery logs the child's stderr, a write at a time)
    printed = worker.output()
    assert "Exception in thread" in printed and "OSError" in printed and "upload failed" in printed, printed
