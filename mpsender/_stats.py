"""Typed snapshots returned by ``stats()``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ProcessStats", "SenderStats", "Stats"]


@dataclass(frozen=True, slots=True)
class ProcessStats:
    """Counters of the calling process since it started (or forked)."""

    pid: int
    #: events accepted by track() and friends
    tracked: int
    #: written to this process's spool file while connected to a sender
    handed_to_sender: int
    #: written while no sender was connected: the next sender takes them
    spilled: int
    #: sent over the socket because the spool could not be written
    sent_over_socket: int
    #: calls refused as bad input (raised to the caller)
    rejected: int
    #: events lost in this process, by reason (spill_failed, dropped_by_hook, ...)
    dropped: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SenderStats:
    """Counters of the host's sender for this destination (persisted across restarts
    where marked *total*)."""

    pid: int
    started_at: float
    uptime: float
    #: events read from spool files and sockets by this sender
    received: int
    #: events the endpoint accepted (2xx), total
    uploaded: int
    batches: int
    requests: int
    retries: int
    #: events waiting in the spool, not yet accepted
    pending: int
    pending_bytes: int
    spool_bytes: int
    #: events lost for good, by reason, total (expired, rejected, oversize, spool_full,
    #: undecodable, spill_failed reported by application processes; corrupt and truncated
    #: count regions of the spool, whose events cannot be counted)
    dropped: Mapping[str, int]
    #: trouble that lost no event, total (auth_failures, spool_unavailable,
    #: refused_connections, hook_errors, bad_frames, spool_replaced)
    incidents: Mapping[str, int]
    connections: int
    last_status: int | None
    last_error: str | None
    #: seconds until the endpoint's Retry-After expires (0: none)
    rate_limited_for: float
    #: seconds the request now in flight has waited for its answer (0: none in flight); a
    #: hanging endpoint shows here while it hangs (an older sender reports none)
    in_flight_for: float = 0.0
    #: events the request now in flight carries (0: none in flight)
    in_flight_events: int = 0
    #: when this sender's last request was accepted, epoch seconds (None: none yet)
    last_success_at: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> SenderStats:
        names = set(cls.__dataclass_fields__) - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        return cls(**known, extra=extra)


@dataclass(frozen=True, slots=True)
class Stats:
    process: ProcessStats
    #: None when no sender answered within the timeout
    sender: SenderStats | None
