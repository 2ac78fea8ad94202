"""mpsender: one sender process per host for the analytics events of every process.

``track()`` appends a small msgpack record to this process's spool file and returns in
microseconds; a sender process shared by the whole host batches, retries and uploads.
"""

from ._api import (
    aflush,
    alias,
    ashutdown,
    capture_error,
    flush,
    get_client,
    group,
    identify,
    init,
    page,
    screen,
    session,
    shutdown,
    stats,
    track,
)
from ._client import Client
from ._exceptions import (
    ConfigurationError,
    EventTooLargeError,
    EventTypeError,
    InvalidEventError,
    MpsenderError,
    NotInitializedError,
    UnserializableError,
)
from ._options import Options
from ._session import Session
from ._stats import ProcessStats, SenderStats, Stats
from ._timed import timed
from ._version import __version__

__all__ = [
    "Client",
    "ConfigurationError",
    "EventTooLargeError",
    "EventTypeError",
    "InvalidEventError",
    "MpsenderError",
    "NotInitializedError",
    "Options",
    "ProcessStats",
    "SenderStats",
    "Session",
    "Stats",
    "UnserializableError",
    "__version__",
    "aflush",
    "alias",
    "ashutdown",
    "capture_error",
    "flush",
    "get_client",
    "group",
    "identify",
    "init",
    "page",
    "screen",
    "session",
    "shutdown",
    "stats",
    "timed",
    "track",
]

import logging as _logging

_logging.getLogger(__name__).addHandler(_logging.NullHandler())
