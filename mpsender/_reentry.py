"""A lock that a signal handler never waits for in the thread that holds it.

Applications call ``track()``, ``flush()``, ``shutdown()`` and ``stats()`` from signal
handlers (a SIGTERM handler that flushes), and a Python signal handler runs in the main
thread, between two bytecodes of whatever it interrupted -- perhaps in the middle of one
of these calls, holding one of their locks. A plain ``threading.Lock`` then deadlocks
the process; an ``RLock`` lets the handler into a half-done critical section. So the
locks of the application side are :class:`HandlerSafeLock`: held for a few statements
only, never across a wait, and a caller that finds its own thread inside is told so at
once and takes a lock-free path instead.
"""

from __future__ import annotations

import threading

__all__ = ["HandlerSafeLock"]


class HandlerSafeLock:
    """``acquire()`` returns False, at once, when the calling thread holds the lock or is
    about to take it (a signal handler that interrupted that thread): the caller then
    does without it. Other threads wait as for any lock, which is short: its holders
    never wait for anything while they hold it."""

    __slots__ = ("_here", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._here = threading.local()

    def acquire(self, *, blocking: bool = True) -> bool:
        here = self._here
        if getattr(here, "held", False):
            return False  # re-entered from a signal handler in this thread
        here.held = True  # before taking it: a handler that runs in between sees it
        if self._lock.acquire(blocking):
            return True
        here.held = False
        return False

    def release(self) -> None:
        self._lock.release()
        self._here.held = False
