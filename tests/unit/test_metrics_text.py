"""The Prometheus renderer and the sender's metrics_file, alone: the text parses with the
reference parser, label values are escaped, each family is declared once, the file is
written atomically and only when it changed or is due."""

from __future__ import annotations

import logging
import os
import re
import stat
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mpsender import ConfigurationError
from mpsender._metrics import (
    DROP_REASONS,
    INCIDENT_REASONS,
    MetricsFile,
    Target,
    endpoint_label,
    metrics_path,
    render_metrics,
)
from mpsender._options import Options, resolve_options

ROOT = Path(__file__).resolve().parents[2]

STATS = {
    "started_at": 1_700_000_000.5, "received": 7, "uploaded": 5, "batches": 2, "requests": 6, "retries": 3,
    "pending": 1, "pending_bytes": 120, "spool_bytes": 4096, "files": 2, "connections": 3, "last_status": 503,
    "rate_limited_for": 1.5, "in_flight_for": 0.0, "in_flight_events": 0, "version": "9.9",
    "dropped": {"rejected": 2}, "incidents": {"auth_failures": 4},
}


def parse(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    return {f.name: [(s.labels, s.value) for s in f.samples] for f in text_string_to_metric_families(text)}


def test_every_sender_counter_is_a_sample_with_its_type() -> None:
    """The STATS answer's counters come out as counters (ending in _total), its levels as gauges."""
    text = render_metrics([Target("0123456789abcdef", "http://127.0.0.1:9", "segment", "9.9", True, STATS)])
    families = {f.name: f for f in text_string_to_metric_families(text)}
    labels = {"destination": "0123456789abcdef", "endpoint": "http://127.0.0.1:9", "format": "segment"}

    def value(name: str, **extra: str) -> float:
        (sample,) = [s for s in families[name].samples if s.labels == {**labels, **extra}]
        return sample.value

    assert value("mpsender_sender_up") == 1 and value("mpsender_sender_start_time_seconds") == 1_700_000_000.5
    assert value("mpsender_events_received") == 7 and value("mpsender_events_uploaded") == 5
    assert value("mpsender_requests") == 6 and value("mpsender_batches") == 2 and value("mpsender_retries") == 3
    assert value("mpsender_requests_failed") == 4  # six sent, two accepted
    assert value("mpsender_events_pending") == 1 and value("mpsender_pending_bytes") == 120
    assert value("mpsender_spool_bytes") == 4096 and value("mpsender_spool_files") == 2
    assert value("mpsender_connected_processes") == 3 and value("mpsender_last_http_status") == 503
    assert value("mpsender_rate_limited_seconds") == 1.5 and value("mpsender_request_in_flight_seconds") == 0
    assert value("mpsender_sender_info", version="9.9") == 1
    assert value("mpsender_events_dropped", reason="rejected") == 2
    assert value("mpsender_incidents", reason="auth_failures") == 4
    # every reason the sender counts is there from the start, at 0
    dropped = {s.labels["reason"]: s.value for s in families["mpsender_events_dropped"].samples}
    assert dropped == {**dict.fromkeys(DROP_REASONS, 0), "rejected": 2}
    incidents = {s.labels["reason"]: s.value for s in families["mpsender_incidents"].samples}
    assert incidents == {**dict.fromkeys(INCIDENT_REASONS, 0), "auth_failures": 4}
    for name, family in families.items():
        counter = name in {"mpsender_events_received", "mpsender_events_uploaded", "mpsender_requests",
                           "mpsender_requests_failed", "mpsender_batches", "mpsender_retries",
                           "mpsender_events_dropped", "mpsender_incidents"}
        assert family.type == ("counter" if counter else "gauge"), name
        if counter:
            assert re.search(rf"^# TYPE {name}_total counter$", text, re.M), name
    assert "SECRET" not in text


def test_help_and_type_once_per_family_across_destinations() -> None:
    """Two destinations: each family declared once, with a sample per destination."""
    text = render_metrics([Target("aaaa", "http://a:1", "segment", up=True, stats=STATS),
                           Target("bbbb", "http://b:2", "posthog", up=True, stats=STATS)])
    helps = re.findall(r"^# HELP (\S+) ", text, re.M)
    types = re.findall(r"^# TYPE (\S+) ", text, re.M)
    assert helps == types and len(helps) == len(set(helps))
    uploaded = parse(text)["mpsender_events_uploaded"]
    assert [(labels["destination"], v) for labels, v in uploaded] == [("aaaa", 5), ("bbbb", 5)]
    # a family's samples are together: declared once, no sample before its declaration
    assert text.index("# TYPE mpsender_events_uploaded_total") < text.index("mpsender_events_uploaded_total{")


def test_label_values_are_escaped() -> None:
    """Quotes, backslashes and newlines in a label value (a reason an application reported,
    a start failure's reason) are escaped and parse back to the same string."""
    odd = 'say "hi"\\now\nnext line'
    text = render_metrics([Target("d", 'http://h:1', "json", stats={"dropped": {odd: 3}},
                                  start_failure=(1234.5, odd))])
    assert '\\"hi\\"' in text and "\\\\now" in text and "\\nnext" in text
    assert all(line.startswith(("# ", "mpsender_")) for line in text.splitlines())  # no raw newline
    parsed = parse(text)
    assert ({"destination": "d", "endpoint": "http://h:1", "format": "json", "reason": odd}, 3) \
        in parsed["mpsender_events_dropped"]
    ((labels, at),) = parsed["mpsender_sender_start_failure_timestamp_seconds"]
    assert labels["reason"] == odd and at == 1234.5


def test_a_sender_that_is_down_shows_up_0_and_what_it_saved() -> None:
    """No sender: up 0, the saved totals, no start time or last status (they are a live sender's)."""
    text = render_metrics([Target("d", stats={"uploaded": 9, "dropped": {"expired": 1}, "pending_bytes": 50},
                                  start_failure=(99.0, "exited with status 1"))])
    parsed = parse(text)
    assert parsed["mpsender_sender_up"][0][1] == 0
    assert parsed["mpsender_events_uploaded"][0][1] == 9 and parsed["mpsender_pending_bytes"][0][1] == 50
    assert "mpsender_sender_start_time_seconds" not in parsed and "mpsender_last_http_status" not in parsed
    assert parsed["mpsender_sender_start_failure_timestamp_seconds"] == [
        ({"destination": "d", "endpoint": "", "format": "", "reason": "exited with status 1"}, 99.0)]
    assert render_metrics([]) == ""


@pytest.mark.parametrize(("url", "label"), [
    ("https://api.segment.io", "https://api.segment.io"),
    ("https://user:SECRET@host.example:8443/v1/x?api_key=SECRET#f", "https://host.example:8443"),
    ("http://[::1]:8080/p", "http://[::1]:8080"),
    ("not a url", ""),
    ("http://h:notaport", ""),
])
def test_endpoint_label_keeps_only_scheme_host_and_port(url: str, label: str) -> None:
    """No user info, path or query reaches the endpoint label: a key may hide in any of them."""
    assert endpoint_label(url) == label


def test_every_drop_and_incident_reason_in_the_code_is_listed() -> None:
    """Each reason the sender (or an application, or the CLI) counts is in DROP_REASONS or
    INCIDENT_REASONS, so it is shown at 0 before it first happens."""
    source = "\n".join(p.read_text() for p in (ROOT / "mpsender").rglob("*.py"))
    drops = set(re.findall(r"\.drop\(\"(\w+)\"", source)) | {"spill_failed"}
    incidents = set(re.findall(r"\.incident\(\"(\w+)\"", source))
    assert drops and incidents
    assert drops <= set(DROP_REASONS), drops - set(DROP_REASONS)
    assert incidents <= set(INCIDENT_REASONS), incidents - set(INCIDENT_REASONS)
    assert 'dropped["spill_failed"]' in (ROOT / "mpsender" / "_sink.py").read_text()


def test_metrics_file_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """metrics_file: a .prom file, made absolute; MPSENDER_METRICS_FILE sets it; a bad one is named."""
    monkeypatch.chdir(tmp_path)
    opts = Options(write_key="k", endpoint="http://127.0.0.1", metrics_file="m-{destination}.prom")
    assert opts.metrics_file == str(tmp_path / "m-{destination}.prom")
    assert Options(write_key="k", endpoint="http://127.0.0.1").metrics_file is None
    for bad in ("metrics.txt", "/var/lib/node_exporter/", ".prom"):
        with pytest.raises(ConfigurationError, match="metrics_file must be the path of a file whose name ends in .prom"):
            Options(write_key="k", endpoint="http://127.0.0.1", metrics_file=bad)
    env = {"MPSENDER_WRITE_KEY": "k", "MPSENDER_ENDPOINT": "http://127.0.0.1", "MPSENDER_METRICS_FILE": "/x/a.prom"}
    assert resolve_options({}, env).metrics_file == "/x/a.prom"
    assert metrics_path("/x/mpsender-{destination}.prom", "0123") == "/x/mpsender-0123.prom"


def test_metrics_file_is_written_atomically_when_changed_or_due(tmp_path: Path) -> None:
    """0644, through a temporary file that is never left behind; unchanged text is not
    rewritten until the refresh is due; a failed write is logged, not raised."""
    path = tmp_path / "mpsender.prom"
    target = Target("d", "http://h:1", "segment")
    f = MetricsFile(str(path), target, refresh=60.0)
    assert f.update(STATS, now=0.0)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["mpsender.prom"]
    assert parse(path.read_text())["mpsender_events_uploaded"][0][1] == 5
    assert not f.update(STATS, now=30.0)  # same text, not due
    assert f.update({**STATS, "uploaded": 6}, now=31.0)  # changed
    assert parse(path.read_text())["mpsender_events_uploaded"][0][1] == 6
    assert not f.update({**STATS, "uploaded": 6}, now=90.0)
    assert f.update({**STATS, "uploaded": 6}, now=91.0)  # due: node_exporter sees a fresh mtime
    assert f.update({**STATS, "uploaded": 6}, up=False, now=92.0)  # the exit
    assert parse(path.read_text())["mpsender_sender_up"][0][1] == 0


def test_a_metrics_file_that_cannot_be_written_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A missing directory (it is the user's: not made) is a warning naming the file."""
    path = tmp_path / "missing" / "m.prom"
    with caplog.at_level(logging.WARNING, logger="mpsender._metrics"):
        assert not MetricsFile(str(path), Target("d")).update(STATS, now=0.0)
    assert f"cannot write metrics_file {path}" in caplog.text
    assert not path.parent.exists()
