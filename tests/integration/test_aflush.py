"""``await aflush()`` / ``await ashutdown()``: the event loop keeps running while they wait
for the sender, they return by their deadline, and they deliver like ``flush()``.

The sender is SIGSTOPped to make a flush wait: a blocking ``flush()`` inside a coroutine
then holds the whole loop until its timeout (the control case, which shows the tick
count can fail), while ``aflush()`` lets a ticking task run all along.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable

import pytest
from support import one_sender

import mpsender
from mpsender._collector import Collector

pytestmark = pytest.mark.timeout(60)


def _ticks_while(wait: Callable[[], Awaitable[bool]]) -> tuple[bool, float, int]:
    """Run ``wait()`` in a fresh loop beside a task that ticks every 10 ms: its result,
    how long it took, and how many ticks the other task made meanwhile."""
    async def main() -> tuple[bool, float, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)
        before, started = ticks, time.monotonic()
        ok = await wait()
        elapsed, during = time.monotonic() - started, ticks - before
        task.cancel()
        return ok, elapsed, during

    return asyncio.run(main())


def test_aflush_on_a_stopped_sender_lets_other_tasks_run_and_keeps_its_deadline(
        client_factory: Callable[..., mpsender.Client], runtime_dir: str, collector: Collector) -> None:
    """With the sender stopped, aflush(1.0) and ashutdown(1.0) return False after about a
    second while another task ticks; a blocking flush() in a coroutine ticks nothing."""
    client = client_factory()
    client.track("Before", anonymous_id="a", properties={"n": 0})
    assert client.flush(10.0)
    sender = one_sender(runtime_dir)
    client.track("During", anonymous_id="a", properties={"n": 1})
    os.kill(sender, signal.SIGSTOP)
    try:
        async def blocking() -> bool:
            return client.flush(1.0)

        ok, elapsed, ticks = _ticks_while(blocking)
        assert ok is False and ticks <= 2, (ok, elapsed, ticks)  # the loop was held: what aflush avoids
        for call in (client.aflush, client.ashutdown):
            ok, elapsed, ticks = _ticks_while(lambda call=call: call(1.0))  # type: ignore[misc]
            assert ok is False, call
            assert 0.9 <= elapsed <= 3.0, (call, elapsed)
            assert ticks >= 30, (call, ticks)  # ~100 if nothing else ran
    finally:
        os.kill(sender, signal.SIGCONT)
    assert _ticks_while(lambda: client.aflush(10.0))[0] is True
    assert collector.wait_for(lambda c: len(c.message_ids()) == 2, 10)


def test_concurrent_aflushes_and_module_level_ashutdown_deliver(
        client_factory: Callable[..., mpsender.Client], runtime_dir: str, collector: Collector) -> None:
    """Ten tasks tracking and awaiting aflush() at once (ten threads sharing one connection
    or each taking its own) all get True; every event arrives once."""
    client = client_factory()

    async def one(i: int) -> bool:
        client.track("Task", anonymous_id=f"t{i}", properties={"n": i})
        return await client.aflush(10.0)

    async def main() -> list[bool]:
        return list(await asyncio.gather(*(one(i) for i in range(10))))

    assert asyncio.run(main()) == [True] * 10
    assert collector.wait_for(lambda c: len(c.message_ids()) == 10, 10)
    assert sorted(e["properties"]["n"] for e in collector.events()) == list(range(10))
    assert asyncio.run(client.ashutdown(10.0)) is True
    assert asyncio.run(client.ashutdown(10.0)) is True  # idempotent


def test_module_level_aflush_and_ashutdown(collector: Collector, runtime_dir: str) -> None:
    """mpsender.aflush()/ashutdown() are True at once before init(), and flush the
    process's client after it."""
    assert asyncio.run(mpsender.aflush(0.1)) is True
    assert asyncio.run(mpsender.ashutdown(0.1)) is True
    mpsender.init(write_key="k", endpoint=collector.url, runtime_dir=runtime_dir, flush_interval=0.05, linger=2.0)
    mpsender.track("Module", anonymous_id="m")
    assert asyncio.run(mpsender.aflush(10.0)) is True
    assert collector.wait_for(lambda c: len(c.message_ids()) == 1, 10)
    assert asyncio.run(mpsender.ashutdown(10.0)) is True
