"""Halt states published again after the broker lost them.

A broker that lost its storage (the embedded one, or any broker whose disks were
wiped) comes back empty; the daemon re-creates its topics, and keeps guarding the
accounts it had latched, but the state topic no longer says so: ``killswitch
status`` would show no halt, and a daemon that starts, or takes an account over,
would not know the latch. :class:`HaltRepublisher` closes that gap:

- after every recovery of the link (the watch reports the broker up again, once the
  topics exist), it reads the state topic to its end and marks each halt the engine
  holds that the topic lacks or has older (:func:`~killswitch.core.republish.needs_republish`);
- it publishes each marked halt whose account this daemon owns (its alerts partition
  is assigned here, as for the latch guard); the others wait for an assignment that
  brings them here, or for a record of that account from another daemon (its owner
  published it, or the account changed meanwhile), which clears the mark;
- the engine publishes the halt as it holds it *now*, in order with its other state
  changes (:meth:`~killswitch.engine.Engine.republish_halt`), so a release that lifted
  the latch meanwhile is never overwritten by a stale halt. The topic is compacted and
  keyed by account: a halt published twice is harmless.

A read or publish that fails is tried again after a pause while the daemon runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from killswitch.core.model import HaltState
from killswitch.core.republish import needs_republish
from killswitch.tasks import wait_any

__all__ = ["HaltRepublisher", "HaltSource"]

log = logging.getLogger(__name__)

# After a failed read of the state topic or a failed publish: a broker that has just
# come back may not serve the new topics' metadata at once.
RETRY_S = 1.0

ReadStates = Callable[[], Awaitable[Mapping[str, HaltState]]]


class HaltSource(Protocol):
    """What the republisher needs of the engine."""

    def halted(self) -> Mapping[str, HaltState]: ...

    async def republish_halt(self, account: str) -> HaltState | None: ...


class HaltRepublisher:
    """Publishes again the halts the state topic lost (see the module docstring).

    ``read_states`` reads the state topic's last record per account, releases
    included; ``owns(account)`` says whether this daemon owns the account now.
    """

    def __init__(
        self,
        halts: HaltSource,
        read_states: ReadStates,
        owns: Callable[[str], bool],
        *,
        retry_s: float = RETRY_S,
    ) -> None:
        self._halts = halts
        self._read = read_states
        self._owns = owns
        self._retry_s = retry_s
        self._check = False  # read the topic at the next wake-up
        self._wake = asyncio.Event()
        self.pending: set[str] = set()  # halts the topic lacks, not yet published here
        self.published = 0  # halts published again (for tests and the log)

    def link_changed(self, up: bool, reason: str) -> None:
        """A link listener: after the broker is back, compare the topic with the halts."""
        if up:
            self._check = True
            self._wake.set()

    def assignment_changed(self) -> None:
        """After a rebalance: the accounts waiting for their owner may be ours now."""
        if self.pending:
            self._wake.set()

    def state_seen(self, state: HaltState) -> None:
        """Another daemon published a state for ``state.account``: the topic has one."""
        self.pending.discard(state.account)

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set: compare after each recovery, publish what is ours."""
        while not stop.is_set():
            await wait_any([self._wake, stop], 3600.0)
            if stop.is_set():
                return
            self._wake.clear()
            try:
                await self.step()
            except Exception as exc:  # a broker just back may still fail: try again
                log.warning(
                    "halt states not checked against the state topic yet; trying again",
                    extra={"error": f"{type(exc).__name__}: {exc}"},
                )
                await wait_any([stop], self._retry_s)
                self._wake.set()

    async def step(self) -> None:
        """Compare with the topic if a recovery asked for it, then publish what is ours."""
        if self._check:
            on_topic = await self._read()
            self._check = False
            held = self._halts.halted()
            self.pending = {a for a, s in held.items() if needs_republish(s, on_topic.get(a))}
            if self.pending:
                log.warning(
                    "halt states missing from the state topic",
                    extra={"accounts": sorted(self.pending)},
                )
        for account in sorted(self.pending):
            if not self._owns(account):
                continue  # its owner publishes it (or we do once it is assigned here)
            state = await self._halts.republish_halt(account)
            self.pending.discard(account)
            if state is not None:
                self.published += 1
                log.warning(
                    "halt state published again",
                    extra={"account": account, "alert_id": state.alert_id, "by": state.by},
                )
