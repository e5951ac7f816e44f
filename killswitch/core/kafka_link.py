"""Whether the daemon's link to Kafka works: plain state, time passed in.

The I/O shell (:mod:`killswitch.kafka.watch`) feeds it probe outcomes and counts the
Kafka client's error records; this module decides when the link changes state and when
a "still down" summary is due, so the log gets one line per change of state plus one
summary per period instead of one line per client error.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KafkaLink", "LinkChange"]


@dataclass(frozen=True, slots=True)
class LinkChange:
    """The link went up or down at ``at``; ``errors`` client errors were seen while down."""

    up: bool
    reason: str
    at: float
    errors: int = 0
    down_for_s: float = 0.0


@dataclass(slots=True)
class KafkaLink:
    """Up/down with the time of the last change, and client errors counted while down.

    ``up`` is None until the first probe outcome. A failure while up (or unknown) is a
    change; further failures only update the reason. :meth:`summary_due` says when
    ``summary_every_s`` has passed since the change or the last summary while down.
    """

    summary_every_s: float = 30.0
    up: bool | None = None
    reason: str = "not checked yet"
    since: float = 0.0
    errors: int = 0  # client error records since the link went down (or since the start)
    _summarised_at: float = 0.0

    def client_error(self) -> None:
        """The Kafka client logged an error (counted; the probe decides the state)."""
        self.errors += 1

    def probe_ok(self, now: float) -> LinkChange | None:
        """The broker answered; a change when the link was down or unknown."""
        if self.up is True:
            return None
        change = LinkChange(True, "broker answers", now, self.errors, self._down_for(now))
        self.up, self.reason, self.since, self.errors = True, "broker answers", now, 0
        return change

    def probe_failed(self, reason: str, now: float) -> LinkChange | None:
        """The broker did not answer; a change when the link was up or unknown."""
        self.reason = reason
        if self.up is False:
            return None
        self.up, self.since, self._summarised_at = False, now, now
        return LinkChange(False, reason, now, self.errors)

    def summary_due(self, now: float) -> bool:
        """True (and the period restarts) when a "still down" summary should be logged."""
        if self.up is not False or now - self._summarised_at < self.summary_every_s:
            return False
        self._summarised_at = now
        return True

    def _down_for(self, now: float) -> float:
        return now - self.since if self.up is False else 0.0
