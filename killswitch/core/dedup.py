"""Recent alert ids and what became of them (pure): the dedup window.

Keyed by ``(alert_id, account)``: one alert may address several accounts, and a
crash can fall between publishing one account's final result and the next, so
a replay must sweep exactly the accounts that have no final result yet.

Each alert id also remembers the input position it was first read from. A
re-read of the same position is a replay (crash, rebalance) and finishes what is
missing; the same id at another position is a re-use: for automatic alerts a
duplicate delivery, for signed manual triggers a refused replay.

The window holds at most ``capacity`` alert ids, oldest forgotten first. It is
rebuilt at start-up from the final results on the results topic (which carry
the position), so dedup survives restarts as long as the results topic does.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from killswitch.core.model import Position


class Seen(StrEnum):
    """What the window knows about one (alert id, account)."""

    NEW = "new"  # never seen: sweep it
    IN_FLIGHT = "in_flight"  # being handled now in this process: wait, then duplicate
    DONE = "done"  # a final result exists: duplicate


@dataclass(frozen=True, slots=True)
class AccountVerdict:
    account: str
    seen: Seen
    previous_status: str | None = None  # the final status when DONE


@dataclass(frozen=True, slots=True)
class Decision:
    """The window's answer for one alert read at one position."""

    accounts: tuple[AccountVerdict, ...]
    reused: bool  # the id was first read at another position

    @property
    def all_repeats(self) -> bool:
        return all(v.seen is not Seen.NEW for v in self.accounts)


@functools.lru_cache(maxsize=1024)
def _all_new(accounts: tuple[str, ...]) -> Decision:
    """The decision on an alert id never seen (immutable, so one per set of accounts
    serves every such alert: a storm's new alerts share it)."""
    return Decision(tuple(AccountVerdict(a, Seen.NEW) for a in accounts), reused=False)


@dataclass(slots=True)
class _Entry:
    origin: Position | None
    accounts: dict[str, str | None] = field(default_factory=dict)  # None = in flight


class DedupWindow:
    """At most ``capacity`` recent alert ids with per-account state."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, alert_id: object) -> bool:
        return alert_id in self._entries

    def decide(self, alert_id: str, accounts: Iterable[str], origin: Position | None) -> Decision:
        """Classify each account of an alert read at ``origin`` (no state change)."""
        entry = self._entries.get(alert_id)
        if entry is None:
            return _all_new(tuple(accounts))
        verdicts = []
        for account in accounts:
            if account not in entry.accounts:
                verdicts.append(AccountVerdict(account, Seen.NEW))
            elif entry.accounts[account] is None:
                verdicts.append(AccountVerdict(account, Seen.IN_FLIGHT))
            else:
                verdicts.append(AccountVerdict(account, Seen.DONE, entry.accounts[account]))
        reused = entry.origin is not None and origin is not None and entry.origin != origin
        return Decision(tuple(verdicts), reused=reused)

    def start(self, alert_id: str, account: str, origin: Position | None) -> None:
        """The alert is now being handled for ``account``."""
        entry = self._entry(alert_id, origin)
        if entry.accounts.get(account) is None:
            entry.accounts[account] = None

    def finish(self, alert_id: str, account: str, status: str, origin: Position | None) -> None:
        """A final result for (alert id, account) was published."""
        entry = self._entry(alert_id, origin)
        entry.accounts[account] = status

    def learn(self, alert_id: str, account: str, status: str, origin: Position | None) -> None:
        """A final result read from the results topic (ours or another daemon's).

        A ``duplicate`` result never overwrites the status of the original handling.
        """
        entry = self._entry(alert_id, origin)
        if status == "duplicate" and entry.accounts.get(account) is not None:
            return
        entry.accounts[account] = status

    def forget_in_flight(self, alert_id: str, account: str) -> None:
        """Handling stopped without a final result (shutdown): a replay must redo it."""
        entry = self._entries.get(alert_id)
        if entry is not None and account in entry.accounts and entry.accounts[account] is None:
            del entry.accounts[account]

    def status(self, alert_id: str, account: str) -> str | None:
        entry = self._entries.get(alert_id)
        return entry.accounts.get(account) if entry is not None else None

    def _entry(self, alert_id: str, origin: Position | None) -> _Entry:
        entry = self._entries.get(alert_id)
        if entry is None:
            entry = _Entry(origin)
            self._entries[alert_id] = entry
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        elif entry.origin is None and origin is not None:
            entry.origin = origin
        return entry
