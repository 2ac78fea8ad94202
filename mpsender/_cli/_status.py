"""``mpsender status``: the senders running for this user on this host."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import psutil

from .. import _start_failure
from .._layout import START_FAILURE
from .._metrics import Target, endpoint_label, render_metrics
from .._protocol import STATS
from .._start_failure import StartFailure
from . import _common as c
from ._runtime import ControlError, Destination, control, destinations, sender_stats
from ._spoolfiles import pending_events, state, wal_files

#: a request waiting longer than this for its answer is shown as in flight: a normal one
#: takes milliseconds, and a hanging endpoint would otherwise show nothing until
#: request_timeout makes it a retry
IN_FLIGHT_NOTE = 2.0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "status", parents=[common], help="show the senders running for this user on this host",
        description="Show every sender running under the runtime directory: pid, destination "
                    "(key redacted), uptime, memory, CPU, connected processes, counters, spool, "
                    "the endpoint's last answer and what was dropped, by reason.",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list for scripts")
    p.add_argument("--prometheus", action="store_true",
                   help="print every destination's counters in Prometheus' text format (0.0.4), once")
    p.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    p.add_argument("--interval", type=float, default=2.0, metavar="SECONDS",
                   help="seconds between refreshes with --watch (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS",
                   help="how long to wait for each sender's answer (default: %(default)s)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    root = c.runtime_dir(args.runtime_dir)
    if args.interval <= 0:
        raise c.CliError("--interval must be positive", c.EXIT_USAGE)
    if args.prometheus:
        if args.json or args.watch:
            raise c.CliError("--prometheus prints once, alone: not with --json or --watch", c.EXIT_USAGE)
        targets, running = metric_targets(root, args.timeout)
        sys.stdout.write(render_metrics(targets))
        if not running:
            raise c.CliError(no_sender_message(root))
        return c.EXIT_OK
    if not args.watch:
        reports = collect(root, args.timeout)
        if args.json:
            print(json.dumps(reports, indent=2))
        else:
            render(reports, sys.stdout)
        if not any(r["running"] for r in reports):
            raise c.CliError(no_sender_message(root))
        return c.EXIT_OK
    tty = sys.stdout.isatty()
    try:
        while True:
            reports = collect(root, args.timeout)
            if args.json:
                print(json.dumps(reports), flush=True)
            else:
                if tty:
                    sys.stdout.write("\x1b[H\x1b[2J")
                sys.stdout.write(f"{time.strftime('%H:%M:%S')}  mpsender status --watch (Ctrl-C to stop)\n")
                render(reports, sys.stdout)
                if not any(r["running"] for r in reports):
                    sys.stdout.write(no_sender_message(root) + "\n")
                if not tty:
                    sys.stdout.write("\n")
                sys.stdout.flush()
            time.sleep(args.interval)  # a refresh period, not a wait for something
    except KeyboardInterrupt:
        return c.EXIT_OK


def no_sender_message(root: str) -> str:
    msg = f"no sender running under {root}"
    waiting = []
    for d in destinations(root):
        try:
            if any(w.pending_bytes for w in wal_files(d.spool)):
                waiting.append(d.id)
        except c.CliError:
            continue
    if waiting:
        msg += (f" ({len(waiting)} destination(s) with undelivered events: "
                f"see `mpsender spool ls`, deliver with `mpsender spool replay`)")
    return msg


def collect(root: str, timeout: float) -> list[dict[str, Any]]:
    """A report per live sender, then one per destination whose sender failed to start."""
    found = destinations(root)
    live = [d for d in found if d.running]
    for d in live:
        try:
            assert d.process is not None
            d.process.cpu_percent(None)  # start the CPU sample; read after the round trips
        except psutil.Error:
            pass
    started = time.monotonic()
    answers: dict[str, dict[str, Any] | str] = {}
    for d in live:
        try:
            answers[d.id] = sender_stats(d, timeout)
        except ControlError as exc:
            answers[d.id] = str(exc)
    if live and time.monotonic() - started < 0.1:
        time.sleep(0.1 - (time.monotonic() - started))  # a CPU sample needs some time to mean anything
    failed = [failed_report(d, f) for d in found if not d.running and (f := start_failure(d)) is not None]
    return [report(d, answers[d.id]) for d in live] + failed


def metric_targets(root: str, timeout: float) -> tuple[list[Target], bool]:
    """Every destination under ``root`` for ``--prometheus``: a running sender's own STATS
    answer (what its ``metrics_file`` renders too), else ``up`` 0 with the saved totals,
    the spool's undelivered bytes and the last start failure. And whether any sender runs."""
    out = []
    found = destinations(root)
    for d in found:
        info = d.info or {}
        opts = d.options(quiet=True)
        # the endpoint and format are part of the destination id: any saved options tell them
        endpoint = opts.endpoint if opts is not None else str(info.get("destination") or "").split(" (", 1)[0]
        fmt = opts.format if opts is not None else str(info.get("format") or "")
        endpoint = endpoint_label(endpoint)
        if d.running:
            try:
                answer = control(d.socket, STATS, timeout)
                if isinstance(answer, dict):
                    out.append(Target(d.id, endpoint, fmt, str(answer.get("version") or ""), up=True, stats=answer))
                    continue
            except ControlError:
                pass  # not answering: shown as up 0 with what it saved
        stats: dict[str, Any] = dict(state(d.spool))
        try:
            stats["pending_bytes"] = sum(w.pending_bytes for w in wal_files(d.spool))
        except c.CliError:
            pass  # an unreadable spool: no figure rather than a wrong one
        failure = None if d.running else start_failure(d)
        out.append(Target(d.id, endpoint, fmt, str(info.get("version") or ""), stats=stats,
                          start_failure=(failure.at, failure.reason) if failure is not None else None))
    return out, any(d.running for d in found)


def start_failure(d: Destination) -> StartFailure | None:
    return _start_failure.read(d.dir / START_FAILURE)


def failed_report(d: Destination, failure: StartFailure) -> dict[str, Any]:
    """No sender runs for ``d`` and the last start failed: say why and what to do."""
    return {"id": d.id, "dir": str(d.dir), "pid": None, "destination": d.label, "running": False,
            "start_failure": failure.to_json(), "fix": _start_failure.FIX}


def report(d: Destination, answer: dict[str, Any] | str) -> dict[str, Any]:
    proc = d.process
    assert proc is not None
    info = d.info or {}
    out: dict[str, Any] = {
        "id": d.id, "dir": str(d.dir), "pid": proc.pid, "destination": d.label, "running": True,
        "format": info.get("format"), "version": info.get("version"),
        "spool": str(d.spool), "started_at": info.get("started_at"),
    }
    try:
        with proc.oneshot():
            out["uptime"] = time.time() - proc.create_time()
            out["rss_bytes"] = proc.memory_info().rss
            out["cpu_percent"] = proc.cpu_percent(None)
            times = proc.cpu_times()
            out["cpu_seconds"] = times.user + times.system
            out["threads"] = proc.num_threads()
    except psutil.Error as exc:
        out["process_error"] = str(exc)
    if isinstance(answer, dict):
        out["answering"] = True
        for key in ("received", "uploaded", "batches", "requests", "retries", "pending", "pending_bytes",
                    "spool_bytes", "files", "connections", "last_status", "last_error", "rate_limited_for",
                    "route", "in_flight_for", "in_flight_events"):
            out[key] = answer.get(key)
        out["dropped"] = dict(answer.get("dropped") or {})
        out["incidents"] = dict(answer.get("incidents") or {})  # trouble that lost nothing
        out["undelivered_events"] = _undelivered(d, out["pending_bytes"])
    else:
        out["answering"] = False
        out["error"] = answer
    return out


#: above this much undelivered data, status does not read the spool to count events
_COUNT_LIMIT = 16 * 1024 * 1024


def _undelivered(d: Destination, pending_bytes: Any) -> int | None:
    """Events not yet accepted, counted in the spool files (the sender's own ``pending``
    leaves out the batch being retried)."""
    if not isinstance(pending_bytes, int) or pending_bytes > _COUNT_LIMIT:
        return None
    if pending_bytes == 0:
        return 0
    try:
        return sum(pending_events(w) for w in wal_files(d.spool) if w.pending_bytes)
    except c.CliError:
        return None


def render(reports: list[dict[str, Any]], out: Any) -> None:
    for r in reports:
        if not r["running"]:
            render_failure(r, out)
            continue
        out.write(f"sender {r['pid']}  {r['destination']}\n")
        parts = []
        if "uptime" in r:
            parts = [f"up {c.duration(r['uptime'])}", f"rss {c.size(r['rss_bytes'])}",
                     f"cpu {r['cpu_percent']:.1f}% ({r['cpu_seconds']:.2f}s total)"]
        if r["answering"]:
            parts.append(f"{r['connections']} connected process(es)")
        if parts:
            out.write("  " + " · ".join(parts) + "\n")
        if not r["answering"]:
            out.write(f"  not answering: {r['error']}\n")
        else:
            waiting = c.size(r["pending_bytes"] or 0)
            if r.get("undelivered_events") is not None:
                waiting = f"{c.count(r['undelivered_events'])} ({waiting})"
            out.write(f"  events    received {c.count(r['received'])} · uploaded {c.count(r['uploaded'])}"
                      f" · undelivered {waiting}\n")
            out.write(f"  requests  {c.count(r['requests'])} · batches accepted {c.count(r['batches'])}"
                      f" · retries {c.count(r['retries'])}\n")
            last = "none yet" if r["last_status"] is None and not r["last_error"] else str(r["last_status"] or "")
            if r["last_error"]:
                last = f"{last} {r['last_error']}".strip()
            if r["rate_limited_for"]:
                last += f" · rate limited for {c.duration(r['rate_limited_for'])}"
            waited = r.get("in_flight_for") or 0.0
            if waited >= IN_FLIGHT_NOTE:
                last += (f" · request in flight for {c.duration(waited)}"
                         f" ({c.count(r.get('in_flight_events') or 0)} event(s))")
            out.write(f"  endpoint  last answer {last}\n")
            if r.get("route"):  # proxies: where requests go, credentials masked
                out.write(f"  route     {r['route']}\n")
            out.write(f"  spool     {c.size(r['spool_bytes'])} in {r['files']} file(s) · {r['spool']}\n")
            out.write(f"  dropped   {c.dropped(r['dropped'])}\n")
            if r["incidents"]:
                out.write(f"  incidents {c.dropped(r['incidents'])} (nothing lost)\n")
        out.write("\n")


def render_failure(r: dict[str, Any], out: Any) -> None:
    f = r["start_failure"]
    out.write(f"no sender  {r['destination']}  ({r['dir']})\n")
    out.write(f"  start failed {c.duration(max(0.0, time.time() - f['at']))} ago: {f['python']} -m "
              f"mpsender._sender {f['reason']} (started by pid {f['pid']})\n")
    for line in (f["output"] or "").splitlines()[-3:]:
        out.write(f"    {line}\n")
    out.write(f"  fix       {r['fix']}\n\n")
