"""What every command shares: the error a user can act on, the runtime directory,
number formatting, a progress bar and a confirmation prompt."""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

from .._exceptions import ConfigurationError
from .._options import resolve_options
from .._paths import default_runtime_dir, resolve_runtime_dir

#: exit codes (documented in docs/cli.md)
EXIT_OK = 0
EXIT_FAILED = 1      # the thing asked for could not be done, or was not there
EXIT_USAGE = 2       # the command line must change (bad option, port in use)
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A problem the user can act on: printed as one line, no traceback."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def runtime_dir(given: str | None) -> str:
    """``--runtime-dir``, else ``MPSENDER_RUNTIME_DIR``, else the place ``init()`` uses:
    ``<tmp>/mpsender-<uid>``, or the fallback every process of the user agrees on."""
    if given:
        return os.path.abspath(given)
    try:
        # the one place MPSENDER_* is read; disabled so no key/endpoint is needed
        configured = resolve_options({"disabled": True}).runtime_dir
    except ConfigurationError:
        configured = None
    try:
        return resolve_runtime_dir(configured, warn=False)  # where init() would put it
    except ConfigurationError:
        return os.path.abspath(configured or default_runtime_dir())


# --- formatting ----------------------------------------------------------------------------


def count(n: int | float) -> str:
    return f"{int(n):,}"


def size(n: int | float) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - the loop always returns


def duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def dropped(reasons: dict[str, int] | None) -> str:
    if not reasons:
        return "none"
    return ", ".join(f"{reason} {count(n)}" for reason, n in sorted(reasons.items()))


def table(rows: list[list[str]], out: TextIO) -> None:
    """Left-aligned columns, two spaces apart; the first row is the header."""
    if not rows:
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip() + "\n")


# --- progress ------------------------------------------------------------------------------


class Progress:
    """A carriage-return bar on stderr when it is a terminal; otherwise a plain line
    at most once a second (and one at the end), so logs stay readable."""

    WIDTH = 30

    def __init__(self, label: str, total: int, *, unit: str = "", stream: TextIO | None = None) -> None:
        self.label = label
        self.total = max(total, 0)
        self.unit = unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self._last_line = 0.0
        self._last_plain: tuple[int, str] | None = None
        self._done = 0
        self._closed = False

    def update(self, done: int, note: str = "") -> None:
        self._done = done
        now = time.monotonic()
        if self.tty:
            if now - self._last_line >= 0.05:
                self._last_line = now
                self.stream.write("\r" + self._render(note) + "\x1b[K")
                self.stream.flush()
        elif now - self._last_line >= 1.0:
            self._last_line = now
            self._plain(note)

    def close(self, note: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        if self.tty:
            self.stream.write("\r" + self._render(note) + "\x1b[K\n")
            self.stream.flush()
        elif self._last_plain != (self._done, note):
            self._plain(note)

    def _plain(self, note: str) -> None:
        self._last_plain = (self._done, note)
        self.stream.write(self._render(note) + "\n")
        self.stream.flush()

    def _render(self, note: str) -> str:
        total = self.total
        done = min(self._done, total) if total else self._done
        frac = done / total if total else 1.0
        filled = int(frac * self.WIDTH)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        unit = f" {self.unit}" if self.unit else ""
        elapsed = duration(time.monotonic() - self.started)
        text = f"{self.label:<10} [{bar}] {frac * 100:3.0f}% {count(done)}/{count(total)}{unit} {elapsed}"
        return f"{text}  {note}" if note else text


def confirm(question: str) -> bool:
    """Ask on stderr, read one line from stdin; anything but y/yes (or no input) is no."""
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    try:
        answer = sys.stdin.readline()
    except (OSError, ValueError):
        return False
    if not answer.endswith("\n"):
        sys.stderr.write("\n")
    return answer.strip().lower() in ("y", "yes")
