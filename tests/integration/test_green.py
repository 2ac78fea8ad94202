"""flush() and shutdown() under gevent's and eventlet's monkey-patching: they wait
through the hub, so the process's other greenlets keep running, and they return by
their deadline.

Each case is a fresh interpreter that patches first (as a gunicorn gevent worker does),
tracks, starts a greenlet that counts ticks, and flushes: against a collector that holds
every request (the sender never gets its 2xx, so the flush waits to its deadline) and
against a healthy one. Before the wait went through ``select.select`` when a green
library replaced it, eventlet's patching (which deletes ``select.poll``) made every
flush raise AttributeError.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import app_env, check, run_app

from mpsender._collector import Collector, Faults

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

GREEN = '''
import json, sys, time

lib, flush_timeout = sys.argv[1], float(sys.argv[2])
if lib == "gevent":
    from gevent import monkey
    monkey.patch_all()
    import gevent
    spawn, sleep = gevent.spawn, gevent.sleep
else:
    import warnings
    warnings.simplefilter("ignore")  # eventlet warns that it is deprecated, at import
    import eventlet
    eventlet.monkey_patch()
    spawn, sleep = eventlet.spawn, eventlet.sleep

import mpsender

mpsender.init()
assert mpsender.get_client().start(wait=10.0), "no sender"
ticks = 0
running = True


def ticker():
    global ticks
    while running:
        ticks += 1
        sleep(0.01)


spawn(ticker)
sleep(0.05)
result = {}
for call in ("flush", "shutdown"):
    mpsender.track("Green", anonymous_id="g", properties={"request_id": call})
    before, started = ticks, time.monotonic()
    result[call] = getattr(mpsender, call)(flush_timeout)
    result[call + "_seconds"] = time.monotonic() - started
    result[call + "_ticks"] = ticks - before
running = False
sleep(0.05)
print(json.dumps(result))
'''


@pytest.mark.parametrize("lib", ["gevent", "eventlet"])
def test_a_flush_against_a_hanging_endpoint_lets_other_greenlets_run_and_keeps_its_deadline(
        lib: str, collector: Collector, runtime_dir: str) -> None:
    """With the endpoint holding every request, flush(1.5) and shutdown(1.5) return False
    after about 1.5 s, and another greenlet ticked all along (a blocking wait: 0 ticks)."""
    collector.set_faults(Faults(hang=True))
    env = app_env(collector.url, runtime_dir, flush_interval=0.05)
    result = json.loads(check(run_app(GREEN, env, args=[lib, "1.5"])).strip().splitlines()[-1])
    for call in ("flush", "shutdown"):
        assert result[call] is False, result
        assert 1.4 <= result[call + "_seconds"] <= 3.0, result
        # 10 ms ticks for 1.5 s: 150 if nothing else ran; a blocked hub gives 0 or 1
        assert result[call + "_ticks"] >= 30, result


@pytest.mark.parametrize("lib", ["gevent", "eventlet"])
def test_a_flush_under_patching_delivers(lib: str, collector: Collector, runtime_dir: str,
                                         tmp_path: Path) -> None:
    """Against a healthy endpoint, the patched flush and shutdown return True and each
    event arrives once."""
    env = app_env(collector.url, runtime_dir, flush_interval=0.05)
    result = json.loads(check(run_app(GREEN, env, args=[lib, "10"])).strip().splitlines()[-1])
    assert result["flush"] is True and result["shutdown"] is True, result
    assert collector.wait_for(lambda c: len(c.message_ids()) >= 2, 10)
    ids = sorted(str(e["properties"]["request_id"]) for e in collector.events())
    assert ids == ["flush", "shutdown"], ids
