"""A measured application process (benchmarks only): ``python _worker.py '<json spec>'``.

Roles:

* ``run``: build one library's client, say ``ready``, wait for ``go`` on stdin (when
  ``sync``), call track() ``n`` times timing each call with ``perf_counter_ns`` in this
  thread, then (``finish``) flush/shut down as the library documents, and print one JSON
  line of results. Without ``finish`` it leaves through ``os._exit`` right after
  printing, so a peer's exit-time flush is not waited for (that run measures the calling
  thread only).
* ``paced``: one producer of ``bench_paced.py``: fresh events at ``rate`` events/s on
  absolute deadlines, in blocks that alternate between a baseline (the event is built and
  dropped) and ``lib`` (built and tracked; ``"none"``: dropped too), then the library's
  exit flush; prints, per block, this thread's CPU and the process's (every thread), and
  the process's CPU over the loop and over loop + flush.
* ``floor``: the same timing loop around ``msgpack.packb`` of mpsender's record, a bare
  ``send()`` of its frame on a SOCK_SEQPACKET socket drained by a forked reader, and an
  ``os.write`` of it to an O_APPEND file.

Results: per-call median/p99/p99.9/mean/max in µs, RSS (KiB) after each tenth of the
calls, peak RSS, this process's CPU seconds (every thread: a peer's upload thread is
charged here), monotonic times of the first call, the last call and the end of finish().
"""

from __future__ import annotations

import array
import gc
import json
import os
import resource
import socket
import sys
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    EVENT,
    PROPERTIES,
    USER_ID,
    WRITE_KEY,
    padded_properties,
    realistic_properties,
    realistic_user_id,
    rss_kib,
    summarize_ns,
)

pc = time.perf_counter_ns


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


# --- one client per library ----------------------------------------------------------------


def setup(lib: str, spec: dict[str, Any]) -> tuple[Any, Callable[[], None]]:
    opts = dict(spec.get("opts", {}))
    url = spec["url"]
    if lib == "mpsender":
        import mpsender

        mp = mpsender.Client(WRITE_KEY, url, runtime_dir=spec["runtime_dir"], **opts)
        mp.start()

        def finish() -> None:
            pass  # nothing to do at exit: the events are in this process's spool file

        return mp, finish
    if lib == "segment":
        from segment.analytics import Client as SegmentClient

        seg = SegmentClient(WRITE_KEY, host=url, **opts)

        def finish() -> None:
            seg.flush()   # their documented exit: drain the queue, then stop the thread
            seg.join()

        return seg, finish
    if lib == "posthog":
        from posthog import Posthog

        ph = Posthog(WRITE_KEY, host=url, **opts)

        def finish() -> None:
            ph.flush()
            ph.shutdown()

        return ph, finish
    raise SystemExit(f"unknown library {lib!r}")


def timed_loop(lib: str, client: Any, n: int, props: dict[str, Any],
               times: array.array[int], rss: list[int]) -> int:
    """n calls, each timed alone; RSS sampled after each tenth (outside the timings)."""
    dropped = 0
    step = max(1, n // 10)
    i = 0
    if lib == "mpsender":
        track = client.track
        while i < n:
            for j in range(i, min(n, i + step)):
                t0 = pc()
                track(EVENT, user_id=USER_ID, properties=props)
                times[j] = pc() - t0
            i = min(n, i + step)
            rss.append(rss_kib())
    elif lib == "segment":
        track = client.track
        while i < n:
            for j in range(i, min(n, i + step)):
                t0 = pc()
                r = track(USER_ID, EVENT, props)
                times[j] = pc() - t0
                if not r[0]:
                    dropped += 1  # their queue was full: the event is gone
            i = min(n, i + step)
            rss.append(rss_kib())
    elif lib == "posthog":
        capture = client.capture
        while i < n:
            for j in range(i, min(n, i + step)):
                t0 = pc()
                r = capture(EVENT, distinct_id=USER_ID, properties=props)
                times[j] = pc() - t0
                if r is None:
                    dropped += 1  # their queue was full: the event is gone
            i = min(n, i + step)
            rss.append(rss_kib())
    return dropped


def run(spec: dict[str, Any]) -> dict[str, Any]:
    lib = spec["lib"]
    n = int(spec["n"])
    props = padded_properties(spec["size"]) if spec.get("size") else PROPERTIES
    rss0 = rss_kib()
    client, finish = setup(lib, spec)
    # machine integers: a list would allocate an int object per timing and show up
    # as RSS growth of the process being measured
    times = array.array("q", bytes(8 * n))
    rss: list[int] = []
    gc.collect()
    print("ready", flush=True)
    if spec.get("sync"):
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("no go")
    cpu0 = _cpu()
    rss_start = rss_kib()
    t_first = time.monotonic()
    dropped = timed_loop(lib, client, n, props, times, rss)
    t_tracked = time.monotonic()
    cpu_tracked = _cpu()
    if spec.get("finish", True):
        finish()
    t_finished = time.monotonic()
    if lib == "mpsender":
        st = client.stats(timeout=0.0).process
        dropped = sum(st.dropped.values())
    result = {
        "lib": lib, "n": n, "times": summarize_ns(times), "dropped": dropped,
        "rss_before_client": rss0, "rss_start": rss_start, "rss": rss,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "cpu_tracking": cpu_tracked - cpu0, "cpu": _cpu() - cpu0,
        "t_first": t_first, "t_tracked": t_tracked, "t_finished": t_finished,
    }
    print(json.dumps(result), flush=True)
    if not spec.get("finish", True):
        os._exit(0)  # the calling thread is measured; a peer's exit-time flush is not
    return result


# --- paced: request-like rates ---------------------------------------------------------------


def _nothing(uid: str, props: dict[str, Any]) -> bool:
    """The baseline's call: the event is built, then dropped."""
    return True


def _track_call(lib: str, client: Any) -> Callable[[str, dict[str, Any]], bool]:
    """``call(user_id, properties) -> accepted`` for ``lib``; ``"none"`` tracks nothing."""
    if lib == "none":
        return _nothing
    if lib == "mpsender":
        track = client.track

        def mp(uid: str, props: dict[str, Any]) -> bool:
            track(EVENT, user_id=uid, properties=props)
            return True

        return mp
    if lib == "segment":
        seg_track = client.track
        return lambda uid, props: bool(seg_track(uid, EVENT, props)[0])  # False: their queue was full
    capture = client.capture
    return lambda uid, props: capture(EVENT, distinct_id=uid, properties=props) is not None


def paced(spec: dict[str, Any]) -> dict[str, Any]:
    """``pairs`` pairs of blocks of ``block`` fresh events each at ``rate``/s: event i (of
    either kind) is built at ``t0 + i / rate`` (absolute deadlines: a late event does not
    push the later ones back); in a baseline block it is built and dropped, in a tracked
    block built and tracked. Blocks alternate, a baseline block first, so both kinds see the
    same caches, load and time. Then the exit flush.

    Per block, the CPU of this thread (``time.thread_time_ns``: the builder, the pacing and,
    in a tracked block, ``track()``) and of the process (``time.process_time_ns``:
    CLOCK_PROCESS_CPUTIME_ID, user + system of every thread, a peer's upload thread
    included, in ns, where /proc's ticks of 10 ms would be 20 µs per event at 100 events/s
    over 5 s). Each block runs from just before the pacing of its first event to just
    before that of the next block's, so the blocks partition the loop."""
    lib, w, rate = spec["lib"], int(spec["w"]), float(spec["rate"])
    block, pairs = int(spec["block"]), int(spec["pairs"])
    if lib == "none":
        client: Any = None

        def finish() -> None:
            pass
    else:
        client, finish = setup(lib, spec)
    call = _track_call(lib, client)
    build, user = realistic_properties, realistic_user_id
    call(user(w, -1), build(w, -1))  # warm: the library's lazy setup (a file, a thread) is not per event
    gc.collect()
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("no go")
    interval = 1.0 / rate
    monotonic, sleep = time.monotonic, time.sleep
    thread_ns, process_ns = time.thread_time_ns, time.process_time_ns
    dropped = late = 0
    blocks: list[list[int]] = []  # per block: [tracked (0/1), this thread's CPU ns, the process's CPU ns]
    i = 0
    p0 = process_ns()
    t0 = monotonic()
    th_start, p_start = thread_ns(), p0
    for b in range(2 * pairs):
        # the same loop body for both kinds, down to a call per event (the baseline's does
        # nothing), and the same events: event k of each kind is build(w, k)
        fn = call if b % 2 else _nothing
        seq0 = (b // 2) * block
        for k in range(seq0, seq0 + block):
            delay = t0 + i * interval - monotonic()
            if delay > 0:
                sleep(delay)
            elif delay < -interval:
                late += 1
            if not fn(user(w, k), build(w, k)):
                dropped += 1
            i += 1
        th_end, p_end = thread_ns(), process_ns()
        blocks.append([b % 2, th_end - th_start, p_end - p_start])
        th_start, p_start = th_end, p_end
    t_loop = monotonic()
    cpu_loop = p_start - p0
    finish()
    t_finished = monotonic()
    cpu_all = process_ns() - p0
    result = {"lib": lib, "w": w, "block": block, "pairs": pairs, "paced": i, "tracked": pairs * block,
              "rate": rate, "dropped": dropped, "late": late,
              "t_first": t0, "t_loop": t_loop, "t_finished": t_finished,
              "cpu_loop": cpu_loop / 1e9, "cpu": cpu_all / 1e9, "blocks": blocks,
              "threads": threading.active_count()}
    print(json.dumps(result), flush=True)
    os._exit(0)  # nothing more to pay for: mpsender's events are in its spool file, a peer has flushed


# --- the floor ----------------------------------------------------------------------------------


def floor(spec: dict[str, Any]) -> dict[str, Any]:
    import msgpack

    from mpsender._framing import frame

    n = int(spec["n"])
    record = {"t": "track", "e": EVENT, "p": PROPERTIES, "u": USER_ID,
              "m": os.urandom(16), "ts": time.time()}
    packb = msgpack.packb
    data = frame(packb(record))
    out: dict[str, Any] = {"record_bytes": len(data)}
    times = array.array("q", bytes(8 * n))

    for j in range(n):
        t0 = pc()
        pc()
        times[j] = pc() - t0
    out["timer"] = summarize_ns(times)

    for j in range(n):
        t0 = pc()
        packb(record)
        times[j] = pc() - t0
    out["packb"] = summarize_ns(times)

    packer = msgpack.Packer()
    pack = packer.pack
    for j in range(n):
        t0 = pc()
        pack(record)
        times[j] = pc() - t0
    out["packer"] = summarize_ns(times)

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # the reader: drain until the writer closes (no threads in this process)
        a.close()
        buf = bytearray(1 << 17)
        try:
            while b.recv_into(buf):
                pass
        finally:
            os._exit(0)
    b.close()
    send = a.send
    for j in range(n):
        t0 = pc()
        send(data)
        times[j] = pc() - t0
    a.close()
    os.waitpid(pid, 0)
    out["send"] = summarize_ns(times)

    path = os.path.join(spec["workdir"], "floor.wal")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o600)
    write = os.write
    for j in range(n):
        t0 = pc()
        write(fd, data)
        times[j] = pc() - t0
    os.close(fd)
    os.unlink(path)
    out["write"] = summarize_ns(times)
    print(json.dumps(out), flush=True)
    return out


def blast(spec: dict[str, Any]) -> dict[str, Any]:
    """The collector's ceiling: ready-made gzipped Segment batches posted back to back over
    one kept-alive connection (as the sender does), so no sender cost at all."""
    import base64
    import uuid

    import httpx

    n, size = int(spec["n"]), int(spec.get("batch", 1000))
    event = {"type": "track", "messageId": "", "timestamp": "2026-01-01T00:00:00.000Z", "userId": USER_ID,
             "context": {"library": {"name": "mpsender", "version": "0"}}, "event": EVENT,
             "properties": PROPERTIES}
    bodies = []
    for start in range(0, n, size):
        batch = [{**event, "messageId": str(uuid.uuid4())} for _ in range(min(size, n - start))]
        raw = json.dumps({"batch": batch, "sentAt": "2026-01-01T00:00:00.000Z"}, separators=(",", ":")).encode()
        comp = zlib.compressobj(1, zlib.DEFLATED, 31)
        bodies.append(comp.compress(raw) + comp.flush())
    headers = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode(),
               "Content-Type": "application/json", "Content-Encoding": "gzip"}
    url = spec["url"] + "/v1/batch"
    with httpx.Client(timeout=60) as http:
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("no go")
        t_first = time.monotonic()
        for body in bodies:
            http.post(url, content=body, headers=headers).raise_for_status()
    out = {"t_first": t_first, "t_finished": time.monotonic(), "requests": len(bodies)}
    print(json.dumps(out), flush=True)
    return out


def main() -> int:
    spec = json.loads(sys.argv[1])
    if spec["role"] == "paced":
        paced(spec)
    elif spec["role"] == "floor":
        floor(spec)
    elif spec["role"] == "blast":
        blast(spec)
    else:
        run(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
