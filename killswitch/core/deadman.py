"""The dead-man's switch decision (pure, clock injected).

Each configured source must be heard from at least every ``timeout_s`` seconds.
Silence past the timeout fires a kill for the source's scope, once; the source
is re-armed when heartbeats resume. At start-up every source is treated as heard
at start (a restart gives each source one full timeout to be heard).

Times are monotonic seconds (from the caller's clock). A heartbeat's own age
(wall clock of the sender against ours) is passed separately: a heartbeat older
than the timeout when it arrives says nothing about now and does not count.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class HeartbeatVerdict(StrEnum):
    ALIVE = "alive"  # counted
    RESUMED = "resumed"  # counted, and the source was fired: re-armed
    STALE = "stale"  # too old to count
    UNKNOWN = "unknown"  # not a configured source


@dataclass(slots=True)
class _Source:
    timeout_s: float
    last_heard: float
    fired: bool = False
    last_sent_ms: int | None = None  # sender's time of the last counted heartbeat


@dataclass(frozen=True, slots=True)
class Firing:
    """A source that fell silent: fire a kill for its scope."""

    source: str
    silent_s: float
    timeout_s: float
    last_sent_ms: int | None  # None when never heard since start-up


class DeadmanMonitor:
    """Per-source silence tracking."""

    def __init__(self, timeouts: dict[str, float], now: float) -> None:
        self._sources = {name: _Source(t, now) for name, t in timeouts.items()}

    def heard(
        self, source: str, now: float, age_s: float | None = None, sent_ms: int | None = None
    ) -> HeartbeatVerdict:
        """A heartbeat from ``source`` arrived at ``now``, ``age_s`` old when read."""
        state = self._sources.get(source)
        if state is None:
            return HeartbeatVerdict.UNKNOWN
        if age_s is not None and age_s > state.timeout_s:
            return HeartbeatVerdict.STALE
        state.last_heard = max(state.last_heard, now)
        if sent_ms is not None:
            state.last_sent_ms = max(state.last_sent_ms or 0, sent_ms)
        if state.fired:
            state.fired = False
            return HeartbeatVerdict.RESUMED
        return HeartbeatVerdict.ALIVE

    def check(self, now: float) -> list[Firing]:
        """Sources silent past their timeout that have not fired yet (marks them fired)."""
        out = []
        for name, state in self._sources.items():
            silent = now - state.last_heard
            if not state.fired and silent > state.timeout_s:
                state.fired = True
                out.append(Firing(name, silent, state.timeout_s, state.last_sent_ms))
        return out

    def next_due(self, now: float) -> float | None:
        """Seconds until the earliest armed source times out (None if none is armed)."""
        dues = [s.last_heard + s.timeout_s - now for s in self._sources.values() if not s.fired]
        return max(min(dues), 0.0) if dues else None

    def fired(self) -> list[str]:
        return [name for name, s in self._sources.items() if s.fired]

    def sources(self) -> Iterable[str]:
        return self._sources.keys()
