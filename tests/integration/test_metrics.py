"""Loss metrics for ops: ``mpsender status --prometheus`` and the ``metrics_file`` a real
sender writes, parsed with Prometheus' own parser and checked against what really
happened at the collector (uploads, requests, refusals) and in the processes."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import wait_for
from test_cli import cli, show

from mpsender._collector import Collector, Faults
from mpsender._layout import START_FAILURE
from mpsender._metrics import DROP_REASONS

pytestmark = pytest.mark.timeout(90)

#: destination -> metric (family name, "_total" dropped) -> {reason or "": value}
Parsed = dict[str, dict[str, dict[str, float]]]


def parse(text: str) -> Parsed:
    out: Parsed = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            per = out.setdefault(s.labels["destination"], {}).setdefault(family.name, {})
            per[s.labels.get("reason", "")] = s.value
    return out


def scrape(runtime_dir: str) -> tuple[int, str, Parsed]:
    proc = cli("status", "--prometheus", "--runtime-dir", runtime_dir)
    assert "Traceback" not in proc.stderr, show(proc)
    return proc.returncode, proc.stdout, parse(proc.stdout)


def value(parsed: Parsed, dest: str, name: str, reason: str = "") -> float:
    return parsed[dest][name][reason]


def counters(metrics: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The totals (what both outputs must agree on while nothing happens)."""
    return {name: v for name, v in metrics.items()
            if name.startswith(("mpsender_events_", "mpsender_requests", "mpsender_batches", "mpsender_retries",
                                "mpsender_incidents")) and name != "mpsender_events_pending"}


def test_status_prometheus_counts_uploads_and_drops_by_reason(client_factory, collector: Collector) -> None:
    """20 events accepted, one refused (400: rejected), one too large for the endpoint (413
    alone: oversize): status --prometheus says exactly that, and as many requests, failed
    requests and accepted batches as the collector saw; the key appears nowhere."""
    key = "wk_PromSECRETkey4242"
    collector.set_faults(Faults(reject_event="poison", max_body_bytes=6_000))
    client = client_factory(write_key=key, batch_size=100, flush_interval=30, linger=60)
    for i in range(20):
        client.track("fine", user_id="u", properties={"i": i})
    client.track("poison", user_id="u")
    client.track("big", user_id="u", properties={"pad": "p" * 8_000})
    assert client.flush(timeout=30)
    assert len(set(collector.message_ids())) == 20

    code, text, parsed = scrape(client.paths.base)
    assert code == 0, text
    assert key not in text and key[:4] not in text
    dest = client.paths.dest.name
    assert set(parsed) == {dest}
    requests = collector.requests()
    assert value(parsed, dest, "mpsender_sender_up") == 1
    assert value(parsed, dest, "mpsender_events_uploaded") == 20
    dropped = parsed[dest]["mpsender_events_dropped"]
    assert dropped == {**dict.fromkeys(DROP_REASONS, 0.0), "rejected": 1, "oversize": 1}
    assert value(parsed, dest, "mpsender_requests") == len(requests)
    assert value(parsed, dest, "mpsender_requests_failed") == sum(r.status != 200 for r in requests) > 0
    assert value(parsed, dest, "mpsender_batches") == sum(r.status == 200 for r in requests)
    assert value(parsed, dest, "mpsender_last_http_status") == requests[-1].status
    assert value(parsed, dest, "mpsender_events_received") == 22
    assert value(parsed, dest, "mpsender_pending_bytes") == 0 and value(parsed, dest, "mpsender_events_pending") == 0
    sender = client.stats().sender
    assert sender is not None and value(parsed, dest, "mpsender_sender_start_time_seconds") == sender.started_at
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["mpsender_events_dropped"].type == "counter" and "# TYPE mpsender_events_dropped_total counter" in text
    assert families["mpsender_pending_bytes"].type == "gauge"
    (info,) = families["mpsender_sender_info"].samples
    assert info.labels == {"destination": dest, "endpoint": collector.url, "format": "segment",
                           "version": sender.extra["version"]}


def test_both_outputs_count_the_connected_processes_alike(client_factory, collector: Collector) -> None:
    """One application connected: plain status, --json and --prometheus all say 1 (the
    status command's own connection is not an application's, and not counted), and all
    say 0 once it has shut down."""
    client = client_factory(linger=60)
    client.track("hello", user_id="u")
    assert client.flush(timeout=30)
    runtime_dir = client.paths.base
    dest = client.paths.dest.name

    def connected() -> tuple[int, int, str]:
        js = cli("status", "--json", "--runtime-dir", runtime_dir)
        assert js.returncode == 0, show(js)
        (report,) = json.loads(js.stdout)
        code, text, parsed = scrape(runtime_dir)
        assert code == 0, text
        plain = cli("status", "--runtime-dir", runtime_dir)
        assert plain.returncode == 0, show(plain)
        return report["connections"], int(value(parsed, dest, "mpsender_connected_processes")), plain.stdout

    json_n, prom_n, plain = connected()
    assert (json_n, prom_n) == (1, 1) and "1 connected process(es)" in plain, plain
    client.shutdown(timeout=10)
    seen: list[tuple[int, int, str]] = []
    assert wait_for(lambda: (seen.append(connected()) or seen[-1][:2]) == (0, 0), 10.0), seen[-1]
    assert "0 connected process(es)" in seen[-1][2], seen[-1][2]


def test_metrics_file_per_destination_and_up_0_once_stopped(client_factory, collector: Collector,
                                                            tmp_path: Path) -> None:
    """Two destinations with metrics_file=".../mpsender-{destination}.prom": each sender
    writes its own file (0644, nothing else left in the directory) with the counters
    status --prometheus shows; a stopped sender's file and status both say up 0 and keep
    its totals, while the other stays up."""
    metrics_dir = tmp_path / "textfile"
    metrics_dir.mkdir()
    template = str(metrics_dir / "mpsender-{destination}.prom")
    one = client_factory(write_key="key-one-SECRET", metrics_file=template, linger=60)
    two = client_factory(write_key="key-two-SECRET", metrics_file=template, linger=60)
    for i in range(3):
        one.track("one", user_id="u", properties={"i": i})
    for i in range(5):
        two.track("two", user_id="u", properties={"i": i})
    assert one.flush(timeout=20) and two.flush(timeout=20)
    dests = {one.paths.dest.name: 3, two.paths.dest.name: 5}
    files = {d: metrics_dir / f"mpsender-{d}.prom" for d in dests}

    def written(d: str, up: int) -> Parsed | None:
        try:
            parsed = parse(files[d].read_text())
        except (OSError, ValueError):
            return None
        got = parsed.get(d, {})
        ok = got.get("mpsender_events_uploaded", {}).get("") == dests[d] and got["mpsender_sender_up"][""] == up
        return parsed if ok else None

    for d in dests:  # rewritten from the sender's housekeeping tick (every few seconds)
        assert wait_for(lambda d=d: written(d, 1), 20), files[d].read_text() if files[d].exists() else "no file"
    assert sorted(p.name for p in metrics_dir.iterdir()) == sorted(f.name for f in files.values())
    code, text, status = scrape(one.paths.base)
    assert code == 0 and set(status) == set(dests), text
    for d, n in dests.items():
        from_file = written(d, 1)
        assert from_file is not None and set(from_file) == {d}  # its own destination only
        assert stat.S_IMODE(files[d].stat().st_mode) == 0o644
        content = files[d].read_text()
        assert "SECRET" not in content and "key-" not in content
        assert counters(from_file[d]) == counters(status[d])  # one renderer, the same counters
        assert value(status, d, "mpsender_sender_up") == 1 and value(status, d, "mpsender_events_uploaded") == n
    assert "SECRET" not in text

    stopped = one.paths.dest.name
    pid = one.stats().sender.pid
    assert cli("stop", stopped, "--runtime-dir", one.paths.base).returncode == 0
    assert wait_for(lambda: not psutil.pid_exists(pid), 10)
    assert written(stopped, 0), files[stopped].read_text()  # written once more as it exited
    code, text, status = scrape(one.paths.base)
    assert code == 0, text  # the other sender still runs
    assert value(status, stopped, "mpsender_sender_up") == 0
    assert value(status, stopped, "mpsender_events_uploaded") == 3  # its saved totals
    assert value(status, stopped, "mpsender_pending_bytes") == 0
    assert value(status, two.paths.dest.name, "mpsender_sender_up") == 1


def test_status_prometheus_shows_a_failed_start_and_exits_1(client_factory, runtime_dir: str,
                                                           tmp_path: Path) -> None:
    """No sender could start (an interpreter that exits 3): up 0, when and why it failed,
    and exit 1 as status itself; with no destination at all, nothing and exit 1."""
    empty = tmp_path / "empty"
    empty.mkdir()
    code, text, _ = scrape(str(empty))
    assert code == 1 and text == ""
    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\necho 'fake-python: no' >&2\nexit 3\n")
    fake.chmod(0o755)
    client = client_factory(python=str(fake), start_timeout=0.5)
    client.track("lost for now", user_id="u")
    assert not client.start(wait=5)  # waits for the launcher: its failure is recorded
    assert (client.paths.dest / START_FAILURE).exists()
    code, text, parsed = scrape(runtime_dir)
    assert code == 1, text
    dest = client.paths.dest.name
    assert value(parsed, dest, "mpsender_sender_up") == 0
    (failure,) = [s for f in text_string_to_metric_families(text) for s in f.samples
                  if s.name == "mpsender_sender_start_failure_timestamp_seconds"]
    assert failure.labels["reason"] == "exited with status 3" and failure.labels["destination"] == dest
    assert value(parsed, dest, "mpsender_pending_bytes") > 0  # the event waits in the spool
    assert "test-key" not in text


def test_prometheus_is_alone(runtime_dir: str) -> None:
    """--prometheus is a scrape: with --json or --watch it is a usage error (exit 2)."""
    for extra in ("--json", "--watch"):
        proc = cli("status", "--prometheus", extra, "--runtime-dir", runtime_dir)
        assert proc.returncode == 2 and "--prometheus prints once" in proc.stderr, show(proc)
