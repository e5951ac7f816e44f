"""Broker-loss policy ("cancel on disconnect"): when to kill, and what to hold meanwhile.

Pure: times are passed in (monotonic seconds), nothing here does I/O. The I/O shell is
:mod:`killswitch.kafka.broker_loss`.

An account opts in with ``on_broker_loss_after_s``. Once the daemon has declared its
Kafka link down, every opted-in account whose threshold has passed in that outage is
due for a kill, once per outage: the link coming back ends the outage, and the next
loss starts the clock again from zero (a broker that answers in between, however
briefly, resets it).

While the broker is away nothing can be published, so the final results and halt state
changes are held in memory: results up to a bound (the oldest dropped first, counted),
halt states one per account (the state topic is compacted: only the latest counts).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from killswitch.core.model import HaltState, SweepResult

__all__ = [
    "SOURCE",
    "BrokerLossClock",
    "HeldOutputs",
    "broker_loss_alert_id",
    "broker_loss_reason",
]

SOURCE = "broker-loss"
"""The ``source`` of every kill made by this policy (results, halt state ``by``)."""


def broker_loss_alert_id(account: str, at: datetime, daemon: str = "") -> str:
    """``broker-loss-<account>-<UTC stamp to the second>[-<daemon>]``: one per account
    and outage; ``daemon`` (a short id of the daemon instance) keeps two daemons that
    lose the broker in the same second from writing results under one alert id."""
    stamp = f"{SOURCE}-{account}-{at.strftime('%Y%m%dT%H%M%SZ')}"
    return f"{stamp}-{daemon}" if daemon else stamp


def broker_loss_reason(after_s: float, link_reason: str) -> str:
    """The trigger reason recorded in the results and the halt state."""
    return f"no Kafka broker for {after_s:g}s (on_broker_loss_after_s): {link_reason}"


@dataclass(slots=True)
class BrokerLossClock:
    """Which opted-in accounts are due for a kill, given the link's changes of state.

    ``after_s`` maps each opted-in account to its threshold in seconds (accounts not in
    it are never due). :meth:`link` is told every change of state; :meth:`due` returns
    the accounts whose threshold has passed in the current outage and not yet returned
    in it; :meth:`next_due_in` says how long until the next one is.
    """

    after_s: Mapping[str, float]
    down_since: float | None = None
    fired: set[str] = field(default_factory=set)

    def link(self, up: bool, now: float) -> None:
        """The link is up (the outage, if any, ends) or down (one starts, unless on)."""
        if up:
            self.down_since = None
            self.fired.clear()
        elif self.down_since is None:
            self.down_since = now
            self.fired.clear()

    def due(self, now: float) -> list[str]:
        """The accounts to kill now (sorted); each is returned once per outage."""
        if self.down_since is None:
            return []
        down_for = now - self.down_since
        ready = sorted(
            account
            for account, after in self.after_s.items()
            if account not in self.fired and down_for >= after
        )
        self.fired.update(ready)
        return ready

    def next_due_in(self, now: float) -> float | None:
        """Seconds until the next account is due (0: now); None when none will be."""
        if self.down_since is None:
            return None
        waits = [
            after - (now - self.down_since)
            for account, after in self.after_s.items()
            if account not in self.fired
        ]
        return max(0.0, min(waits)) if waits else None


@dataclass(slots=True)
class HeldOutputs:
    """Final results and halt states waiting for the broker.

    At most ``max_results`` results are kept (the oldest is dropped first and counted
    in ``dropped``); one halt state per account, a newer one replacing the older.
    """

    max_results: int = 1_000
    results: deque[SweepResult] = field(default_factory=deque)
    states: dict[str, HaltState] = field(default_factory=dict)
    dropped: int = 0

    def __post_init__(self) -> None:
        if self.max_results < 1:
            raise ValueError("max_results must be at least 1")

    def __bool__(self) -> bool:
        return bool(self.results or self.states)

    def hold_result(self, result: SweepResult) -> None:
        if len(self.results) >= self.max_results:
            self.results.popleft()
            self.dropped += 1
        self.results.append(result)

    def hold_state(self, state: HaltState) -> None:
        self.states[state.account] = state

    def superseded(self, account: str) -> None:
        """A newer state of ``account`` was published: the held one must not follow it."""
        self.states.pop(account, None)
