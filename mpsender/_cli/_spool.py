"""``mpsender spool``: look inside the spool, deliver what is left in it, or empty it."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from .. import _platform, _wire
from .._client import Client
from .._layout import DEADLETTER, LOCK, write_commits, write_state
from .._sender._spool import Counters
from .._version import __version__
from .._wire_records import is_wire, read_record
from . import _common as c
from ._runtime import ControlError, Destination, select, sender_stats
from ._spoolfiles import WalInfo, commits, deadletter, decode, pending_events, records, state, wal_files


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "spool", parents=[common], help="look inside the spool; replay or purge it",
        description="The spool holds what the application processes wrote and the endpoint has "
                    "not accepted yet, per destination, plus the dead-letter file of events the "
                    "endpoint refused for good.",
    )
    ss = p.add_subparsers(dest="spool_command", metavar="COMMAND", required=True)
    dest_help = "destination id or a prefix of it (default: all)"

    q = ss.add_parser("ls", parents=[common], help="list destinations, spool files and what is pending")
    q.add_argument("dest", nargs="*", metavar="DEST", help=dest_help)
    q.add_argument("--json", action="store_true", help="print JSON for scripts")
    q.set_defaults(run=run_ls)

    q = ss.add_parser("show", parents=[common], help="print the undelivered events, decoded")
    q.add_argument("dest", nargs="*", metavar="DEST", help=dest_help)
    q.add_argument("--all", action="store_true", help="include events already delivered")
    q.add_argument("--limit", type=int, default=100, metavar="N", help="show at most N events; 0: all "
                   "(default: %(default)s)")
    q.add_argument("--json", action="store_true", help="one JSON object per line, as sent on the wire")
    q.set_defaults(run=run_show)

    q = ss.add_parser("deadletter", parents=[common], help="print the events the endpoint refused for good")
    q.add_argument("dest", nargs="*", metavar="DEST", help=dest_help)
    q.add_argument("--json", action="store_true", help="print the JSON lines as stored")
    q.set_defaults(run=run_deadletter)

    q = ss.add_parser("replay", parents=[common], help="deliver what is in the spool now")
    q.add_argument("dest", nargs="*", metavar="DEST", help=dest_help)
    q.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="give up (exit 1) when events are still pending after this long (default: %(default)s)")
    q.set_defaults(run=run_replay)

    q = ss.add_parser("purge", parents=[common], help="delete undelivered events (asks first)")
    q.add_argument("dest", nargs="*", metavar="DEST", help=dest_help)
    q.add_argument("--yes", "-y", action="store_true", help="do not ask")
    q.add_argument("--keep-deadletter", action="store_true", help="keep the dead-letter file")
    q.set_defaults(run=run_purge)


def _chosen(args: argparse.Namespace) -> tuple[str, list[Destination]]:
    root = c.runtime_dir(args.runtime_dir)
    found = select(root, args.dest)
    if not found:
        raise c.CliError(f"no destination under {root}: nothing was ever sent from this runtime directory")
    return root, found


def _sender_note(d: Destination) -> str:
    return f"sender pid {d.pid} running" if d.running else "no sender running"


# --- ls -------------------------------------------------------------------------------------


def run_ls(args: argparse.Namespace) -> int:
    _, found = _chosen(args)
    listing: list[dict[str, Any]] = []
    for d in found:
        wals = wal_files(d.spool)
        files: list[dict[str, Any]] = []
        for w in wals:
            files.append({"name": w.name, "size": w.size, "delivered_bytes": w.committed,
                          "pending_bytes": w.pending_bytes, "pending_events": pending_events(w) if w.pending_bytes else 0,
                          "writer_pid": w.writer_pid, "writer_running": w.writer_alive})
        saved = state(d.spool)
        listing.append({
            "id": d.id, "destination": d.label, "dir": str(d.dir), "spool": str(d.spool),
            "sender_pid": d.pid, "files": files,
            "pending_events": sum(f["pending_events"] for f in files),
            "pending_bytes": sum(f["pending_bytes"] for f in files),
            "deadletter_events": len(deadletter(d.spool)),
            "uploaded_total": saved.get("uploaded"), "dropped_total": saved.get("dropped") or {},
        })
    if args.json:
        print(json.dumps(listing, indent=2))
        return c.EXIT_OK
    out = sys.stdout
    for item, d in zip(listing, found, strict=True):
        out.write(f"{item['id']}  {item['destination']}  ({_sender_note(d)})\n")
        out.write(f"  spool {item['spool']}: {c.count(item['pending_events'])} event(s) undelivered "
                  f"({c.size(item['pending_bytes'])}) in {len(item['files'])} file(s)\n")
        if item["files"]:
            rows = [["  FILE", "SIZE", "DELIVERED", "PENDING", "EVENTS", "WRITER"]]
            for f in item["files"]:
                writer = (f"pid {f['writer_pid']} {'running' if f['writer_running'] else 'gone'}"
                          if f["writer_pid"] is not None else "?")
                rows.append(["  " + f["name"], c.size(f["size"]), c.size(f["delivered_bytes"]),
                             c.size(f["pending_bytes"]), c.count(f["pending_events"]), writer])
            c.table(rows, out)
        dl = item["deadletter_events"]
        out.write(f"  dead-letter: {c.count(dl)} event(s)"
                  + (f" in {Path(item['spool']) / DEADLETTER} (`mpsender spool deadletter`)" if dl else "")
                  + "\n")
        if item["uploaded_total"] is not None:
            out.write(f"  totals (state.json): uploaded {c.count(item['uploaded_total'])} · "
                      f"dropped {c.dropped(item['dropped_total'])}\n")
        out.write("\n")
    return c.EXIT_OK


# --- show -----------------------------------------------------------------------------------


def run_show(args: argparse.Namespace) -> int:
    _, found = _chosen(args)
    if args.limit < 0:
        raise c.CliError("--limit must be 0 or more", c.EXIT_USAGE)
    shown = left = 0
    out = sys.stdout
    for d in found:
        opts = d.options(quiet=True)
        encoder = _wire.get_encoder(opts.format if opts else "segment", write_key="", library_name="mpsender",
                                    library_version=__version__, path=opts.path if opts else None)
        if not args.json:
            out.write(f"# {d.id}  {d.label}\n")
        for w in wal_files(d.spool):
            start = 0 if args.all else w.committed
            for begin, end, payload in records(w.path, start):
                delivered = end <= w.committed
                if payload is None:
                    if not args.json:
                        out.write(f"  (skipped {end - begin} unreadable byte(s) at {w.name}:{begin})\n")
                    continue
                if args.limit and shown >= args.limit:
                    left += 1
                    continue
                shown += 1
                _show_one(out, w, begin, payload, delivered, encoder, as_json=args.json, mark=args.all)
    if left:
        print(f"... {c.count(left)} more; --limit 0 shows all", file=sys.stderr)
    if not shown and not args.json:
        out.write("  (no undelivered events)\n" if not args.all else "  (no events)\n")
    return c.EXIT_OK


def _show_one(out: Any, w: WalInfo, offset: int, payload: bytes, delivered: bool, encoder: Any,
              *, as_json: bool, mark: bool) -> None:
    try:
        if is_wire(payload):  # written as the Segment event itself (_wire_records)
            event = json.loads(read_record(payload)[2])
            rec = _record_view(event)
        else:
            rec = decode(payload)
            event = encoder.event(rec)
    except (ValueError, TypeError) as exc:
        if as_json:
            out.write(json.dumps({"_file": w.name, "_offset": offset, "_error": str(exc)}) + "\n")
        else:
            out.write(f"  (undecodable record at {w.name}:{offset}: {exc})\n")
        return
    if as_json:
        out.write(json.dumps({**event, "_file": w.name, "_offset": offset, "_delivered": delivered},
                             default=str) + "\n")
        return
    ts = rec.get("ts")
    when = _wire.format_timestamp(ts) if isinstance(ts, float) else str(ts)
    who = rec.get("u") or (f"anon:{rec['a']}" if rec.get("a") else "-")
    what = rec.get("e") or rec.get("n") or rec.get("g") or rec.get("pv") or ""
    mid = _wire.format_message_id(rec.get("m", "")) if rec.get("m") else "-"
    extra = rec.get("p") or rec.get("tr") or {}
    body = json.dumps(extra, default=str, separators=(",", ":")) if extra else ""
    if len(body) > 160:
        body = body[:157] + "..."
    state_mark = ("delivered " if delivered else "pending   ") if mark else ""
    out.write(f"  {state_mark}{when}  {rec.get('t', '?'):<8} {json.dumps(what)}  {who}  {mid}  {body}".rstrip()
              + "\n")


def _record_view(event: dict[str, Any]) -> dict[str, Any]:
    """A Segment event as the record keys the listing reads."""
    keys = {"t": "type", "ts": "timestamp", "u": "userId", "a": "anonymousId", "e": "event", "n": "name",
            "g": "groupId", "pv": "previousId", "m": "messageId", "p": "properties", "tr": "traits"}
    return {short: event[long] for short, long in keys.items() if event.get(long) is not None}


# --- deadletter -----------------------------------------------------------------------------


def run_deadletter(args: argparse.Namespace) -> int:
    _, found = _chosen(args)
    out = sys.stdout
    for d in found:
        items = deadletter(d.spool)
        if args.json:
            for item in items:
                out.write(json.dumps(item) + "\n")
            continue
        out.write(f"# {d.id}  {d.label}: {c.count(len(items))} dead-lettered event(s)\n")
        for item in items:
            ev = item.get("event") or {}
            name = ev.get("event") or ev.get("name") or ev.get("type") or "?"
            out.write(f"  {item.get('at', '?')}  HTTP {item.get('status')}  {json.dumps(name)}  "
                      f"{item.get('message_id', '-')}  {str(item.get('reason', ''))[:120]}\n")
    return c.EXIT_OK


# --- replay ---------------------------------------------------------------------------------


def run_replay(args: argparse.Namespace) -> int:
    _, found = _chosen(args)
    todo = [d for d in found if any(w.pending_bytes for w in wal_files(d.spool))]
    if not todo:
        print("nothing to replay: every spool is empty")
        return c.EXIT_OK
    failed = 0
    for d in todo:
        if not _replay(d, args.timeout):
            failed += 1
    return c.EXIT_FAILED if failed else c.EXIT_OK


def _replay(d: Destination, timeout: float) -> bool:
    opts = d.options()
    if opts is None:
        raise c.CliError(f"cannot replay {d.id}: {d.dir / 'client.msgpack'} is missing (mpsender.init() "
                         "writes it); start the application once with the same options instead")
    wals = wal_files(d.spool)
    waiting = sum(pending_events(w) for w in wals if w.pending_bytes)
    # progress is read from the spool itself (commits.log), not from the sender's view of
    # it, so files the sender has not discovered yet cannot make it look done
    initial = {w.name: (w.committed, w.size) for w in wals if w.pending_bytes}
    waiting_bytes = sum(size - committed for committed, size in initial.values())
    before = _totals(d)
    print(f"replaying {c.count(waiting)} event(s) ({c.size(waiting_bytes)}) to {d.label}"
          + (f" through the running sender {d.pid}" if d.running else ""), flush=True)
    client = Client.from_options(opts)
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    last: dict[str, Any] = {}
    try:
        if not client.start(wait=min(10.0, timeout)):
            raise c.CliError(f"the sender for {d.id} did not start; see {d.dir / 'sender.log'}")
        bar = c.Progress("replay", waiting, unit="events")
        while True:
            done = _replayed(d.spool, initial)
            try:
                last = sender_stats(d, timeout=2.0)
            except ControlError:
                pass  # restarting, perhaps: the spool still tells the progress
            if done >= waiting_bytes:
                bar.update(waiting)
                bar.close()
                break
            note = "" if last.get("last_status") in (None, 200) else f"last answer {_last(last)}"
            bar.update(round(waiting * done / waiting_bytes), note)
            if time.monotonic() >= deadline:
                bar.close("timed out")
                raise c.CliError(f"{c.size(waiting_bytes - done)} still undelivered for {d.id} after "
                                 f"{timeout:g}s (last answer {_last(last)}); the sender keeps trying: "
                                 "see `mpsender status`")
            time.sleep(0.1)  # the progress refresh period: the sender has no push for this
        try:
            last = sender_stats(d, timeout=2.0)  # the counters after the last commit
        except ControlError:
            pass  # the figures from the loop are close enough for the summary
    finally:
        client.shutdown(timeout=0.0)
    accepted = int(last.get("uploaded", 0)) - before[0]
    dropped = {k: v - before[1].get(k, 0) for k, v in (last.get("dropped") or {}).items()
               if v - before[1].get(k, 0) > 0}
    print(f"spool empty after {c.duration(time.monotonic() - started)}: the endpoint accepted "
          f"{c.count(accepted)} event(s); dropped {c.dropped(dropped)}")
    return True


def _replayed(spool: Path, initial: dict[str, tuple[int, int]]) -> int:
    """Bytes of the files pending at the start that are committed (or deleted) by now."""
    now = {w.name: w.committed for w in wal_files(spool)}
    done = 0
    for name, (committed, size) in initial.items():
        done += size - committed if name not in now else max(0, min(now[name], size) - committed)
    return done


def _totals(d: Destination) -> tuple[int, dict[str, int]]:
    """Uploaded and dropped totals before the replay (the sender's, else the saved ones)."""
    if d.running:
        try:
            now = sender_stats(d, timeout=2.0)
            return int(now.get("uploaded", 0)), dict(now.get("dropped") or {})
        except ControlError:
            pass  # the saved totals below are the next best thing
    saved = state(d.spool)  # corrupt regions are among the dropped, in an older file too
    return int(saved.get("uploaded", 0)), dict(saved.get("dropped") or {})


def _last(stats: dict[str, Any]) -> str:
    status, error = stats.get("last_status"), stats.get("last_error")
    if status is None and not error:
        return "none"
    return f"{status or ''} {error or ''}".strip()


# --- purge ----------------------------------------------------------------------------------


def run_purge(args: argparse.Namespace) -> int:
    _, found = _chosen(args)
    plan = []
    for d in found:
        if d.running:
            raise c.CliError(f"sender pid {d.pid} is running for {d.id}; stop it first (`mpsender stop {d.id}`)")
        wals = wal_files(d.spool)
        events = sum(pending_events(w) for w in wals if w.pending_bytes)
        dl = 0 if args.keep_deadletter else len(deadletter(d.spool))
        if wals or dl:
            plan.append((d, wals, events, dl))
    if not plan:
        print("nothing to purge")
        return c.EXIT_OK
    for d, wals, events, dl in plan:
        print(f"{d.id}  {d.label}: {c.count(events)} undelivered event(s) in {len(wals)} file(s)"
              + (f", {c.count(dl)} dead-lettered event(s)" if dl else ""))
    if not args.yes and not c.confirm("Delete them? They cannot be recovered."):
        raise c.CliError("nothing deleted")
    for d, wals, events, _dl in plan:
        _purge(d, wals, events, keep_deadletter=args.keep_deadletter)
    return c.EXIT_OK


def _purge(d: Destination, wals: list[WalInfo], events: int, *, keep_deadletter: bool) -> None:
    # Holding the sender's lock: no sender can start on this spool while we delete.
    try:
        lock = os.open(d.dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise c.CliError(f"cannot open {d.dir / 'sender.lock'}: {exc.strerror}") from exc
    try:
        try:
            _platform.lock(lock, wait=False)
        except BlockingIOError:
            raise c.CliError(f"a sender started for {d.id} meanwhile; stop it first") from None
        removed = skipped = purged_events = 0
        had_deadletter = (d.spool / DEADLETTER).exists()
        for w in wals:
            try:
                fd = os.open(w.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                try:
                    _platform.lock(fd, wait=False)
                except BlockingIOError:
                    skipped += 1  # a live process still appends to it: deleting would lose its next events
                    continue
                n = pending_events(w) if w.pending_bytes else 0
                os.unlink(w.path)
                purged_events += n
                removed += 1
            finally:
                os.close(fd)
        # drop the commit records of the deleted files; keep those of skipped ones
        remaining = {n: o for n, o in commits(d.spool).items() if (d.spool / n).exists()}
        _rewrite_commits(d.spool, remaining)
        if purged_events:
            _count_purged(d.spool, purged_events)
        if not keep_deadletter:
            try:
                os.unlink(d.spool / DEADLETTER)
            except FileNotFoundError:
                pass  # there was none
        note = "; dead-letter file deleted" if had_deadletter and not keep_deadletter else ""
        if skipped:
            note += f"; skipped {skipped} file(s) still being written by a running process"
        print(f"purged {d.id}: {c.count(purged_events)} event(s) in {removed} file(s) deleted{note}")
    finally:
        os.close(lock)


def _rewrite_commits(spool: Path, offsets: dict[str, int]) -> None:
    write_commits(spool, offsets.items())


def _count_purged(spool: Path, n: int) -> None:
    """Every dropped event is counted: the next sender reports these as dropped 'purged'.
    Written in the sender's format (an older file's keys folded in): no sender runs now."""
    counters = Counters()
    counters.load(state(spool))
    counters.drop("purged", n)
    write_state(spool, counters.totals())
