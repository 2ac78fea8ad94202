"""The runtime directory: where the sender of a user lives when the default place is
taken, too long for a socket path, or deleted while the app runs.

Apps configured by the environment alone run as real subprocesses with their own
``TMPDIR`` and ``XDG_RUNTIME_DIR`` (short paths made by the test under /tmp, so that
only what the test sets is long), and must keep delivering: ``track()`` never raises
because of the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import REPO, check, kill_senders, live_sender_pids, run_app, without_mpsender

from mpsender._collector import Collector

_APP = """
    import json, logging, sys
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    import mpsender
    for i in range(20):
        mpsender.track("E", user_id=sys.argv[1], properties={"i": i})
    print(json.dumps({"flushed": mpsender.flush(timeout=20),
                      "base": str(mpsender.get_client().paths.base)}))
"""


@pytest.fixture
def places() -> Iterator[dict[str, Path]]:
    """A private TMPDIR and XDG_RUNTIME_DIR for the app; senders under them ended at teardown."""
    root = Path(tempfile.mkdtemp(prefix="mps-", dir="/tmp"))
    made = {"tmp": root / "t", "xdg": root / "x"}
    for path in made.values():
        path.mkdir(mode=0o700)
    try:
        yield made
    finally:
        kill_senders(root)
        shutil.rmtree(root, ignore_errors=True)


def _env(collector: Collector, tmpdir: Path, xdg: Path) -> dict[str, str]:
    env = without_mpsender()
    env.update(TMPDIR=str(tmpdir), XDG_RUNTIME_DIR=str(xdg), MPSENDER_ENDPOINT=collector.url,
               MPSENDER_WRITE_KEY="k", MPSENDER_FLUSH_INTERVAL="0.05", MPSENDER_LINGER="2",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])))
    return env


def _two_apps(collector: Collector, env: dict[str, str]) -> list[dict[str, object]]:
    """Two app processes one after the other; each one's result and its warnings."""
    out = []
    for name in ("first", "second"):
        proc = run_app(_APP, env, args=[name])
        result = json.loads(check(proc))
        result["warnings"] = [line for line in proc.stderr.splitlines() if line.startswith("WARNING")]
        out.append(result)
    return out


def _assert_delivered_through(collector: Collector, results: list[dict[str, object]], base: Path) -> None:
    assert all(r["flushed"] is True for r in results)
    assert {r["base"] for r in results} == {str(base)}
    events = collector.events()
    assert sorted((e["userId"], e["properties"]["i"]) for e in events) == sorted(
        (who, i) for who in ("first", "second") for i in range(20))
    assert len(live_sender_pids(base)) <= 1


@pytest.mark.skipif(os.getuid() != 0, reason="giving a directory to another uid needs root")
def test_a_default_runtime_dir_another_user_made_first_is_passed_over(
        places: dict[str, Path], collector: Collector) -> None:
    """<tmp>/mpsender-<uid> made first by another uid: every process of the app uses
    $XDG_RUNTIME_DIR/mpsender instead, warns once, and delivers; the other user's
    directory is left as it was."""
    squat = places["tmp"] / f"mpsender-{os.getuid()}"
    squat.mkdir(mode=0o777)
    os.chown(squat, 65534, 65534)
    results = _two_apps(collector, _env(collector, places["tmp"], places["xdg"]))
    _assert_delivered_through(collector, results, places["xdg"] / "mpsender")
    assert all(len(r["warnings"]) == 1 and str(squat) in r["warnings"][0] for r in results)
    assert squat.stat().st_uid == 65534 and not list(squat.iterdir())


def test_a_default_runtime_dir_that_is_not_a_directory_is_passed_over(
        places: dict[str, Path], collector: Collector) -> None:
    """A file where <tmp>/mpsender-<uid> should be (any local user can make one): the
    app falls back to $XDG_RUNTIME_DIR/mpsender and delivers."""
    (places["tmp"] / f"mpsender-{os.getuid()}").write_text("")
    results = _two_apps(collector, _env(collector, places["tmp"], places["xdg"]))
    _assert_delivered_through(collector, results, places["xdg"] / "mpsender")


def test_a_tmpdir_too_long_for_a_socket_path_is_passed_over(
        places: dict[str, Path], collector: Collector) -> None:
    """A TMPDIR so long that no socket path under it fits: the app falls back to
    $XDG_RUNTIME_DIR/mpsender and delivers, where it used to refuse to start."""
    long_tmp = places["tmp"] / ("d" * 100)
    long_tmp.mkdir()
    results = _two_apps(collector, _env(collector, long_tmp, places["xdg"]))
    _assert_delivered_through(collector, results, places["xdg"] / "mpsender")
    assert all("too long" in r["warnings"][0] for r in results)


def test_a_runtime_dir_deleted_while_the_app_runs_is_made_again(client_factory, collector: Collector,
                                                                runtime_dir: str) -> None:
    """The runtime directory removed (a /tmp cleaner) after events were sent: the next
    events are written to a spool made again and a new sender delivers them, once each
    (the old sender, still draining, leaves the new directory alone); flush() says so."""
    client = client_factory()
    client.track("before", user_id="u")
    assert client.flush(timeout=20)
    client.shutdown(timeout=5)
    shutil.rmtree(runtime_dir)
    for i in range(5):
        client.track("after", user_id="u", properties={"i": i})
    assert client.stats().process.dropped == {}
    assert client.flush(timeout=20)
    assert sorted(e["properties"].get("i", -1) for e in collector.events()) == [-1, 0, 1, 2, 3, 4]
