"""examples/multiprocessing_pool.py, run as written: every item's event arrives once."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support import REPO, app_env, check, live_sender_pids

from mpsender._collector import Collector

SCRIPT = REPO / "examples" / "multiprocessing_pool.py"


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_pool_example_delivers_every_item_once(method: str, collector: Collector, runtime_dir: str) -> None:
    """A Pool of 4 (fork, spawn or forkserver) processing 200 items: 200 item events and
    the parent's summary arrive, each once, through one sender."""
    n = 200
    env = app_env(collector.url, runtime_dir, flush_interval=0.05, linger=5)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--items", str(n), "--processes", "4", "--start-method", method],
        env=env, capture_output=True, text=True, timeout=90, cwd=str(REPO),
    )
    out = check(proc)
    assert f"{n} items in 4 {method} processes" in out and "confirmed: True" in out, out
    assert collector.wait_for(lambda c: len(set(c.message_ids())) >= n + 1, 30), out
    events = collector.events()
    assert len({e["messageId"] for e in events}) == n + 1
    items = [e["properties"]["item"] for e in events if e["event"] == "Item Processed"]
    assert sorted(set(items)) == list(range(n))
    by_item: dict[int, set[str]] = {}
    for e in events:
        if e["event"] == "Item Processed":
            by_item.setdefault(e["properties"]["item"], set()).add(e["messageId"])
    assert all(len(ids) == 1 for ids in by_item.values())
    assert [e["properties"]["items"] for e in events if e["event"] == "Batch Finished"][:1] == [n]
    assert len(live_sender_pids(runtime_dir)) == 1


def _example_blocks(doc: str) -> list[list[str]]:
    """The code blocks of a markdown page, but those marked ``<!-- not from examples/ -->``."""
    blocks: list[list[str]] = []
    block: list[str] | None = None
    skip, previous = False, ""
    for line in doc.splitlines():
        if line.startswith("```"):
            if block is None:
                block, skip = [], previous.strip() == "<!-- not from examples/ -->"
            else:
                if not skip:
                    blocks.append(block)
                block = None
        elif block is not None:
            block.append(line)
        previous = line
    return blocks


@pytest.mark.parametrize(("page", "at_least"), [("docs/integrations.md", 8), ("README.md", 4)])
def test_the_docs_snippets_are_the_examples_own_lines(page: str, at_least: int) -> None:
    """Every line of the code blocks in docs/integrations.md (gunicorn, Celery, multiprocessing,
    uWSGI) and in the README's integration snippets is still a line of a file in examples/."""
    example_lines = {
        line.strip()
        for path in (REPO / "examples").rglob("*")
        if path.suffix in (".py", ".ini")
        for line in path.read_text().splitlines()
    }
    blocks = _example_blocks((REPO / page).read_text())
    assert len(blocks) >= at_least
    missing = [line for b in blocks for line in b if line.strip() and line.strip() not in example_lines]
    assert not missing, f"lines in {page} that no example has: {missing}"
