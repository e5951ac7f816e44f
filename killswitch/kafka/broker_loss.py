"""Broker-loss policy ("cancel on disconnect"): the daemon kills opted-in accounts itself.

Alerts reach the daemon only through Kafka. An account with ``on_broker_loss_after_s``
set is killed and latched by the daemon once it has been without its broker that long
(:class:`~killswitch.core.broker_loss.BrokerLossClock` decides when; the Kafka watch
reports the link's changes through :meth:`BrokerLossGuard.link_changed`).

The kill goes to the engine like any alert's (alert id
``broker-loss-<account>-<UTC stamp>-<daemon>``, source ``broker-loss``, ``latch`` on,
every pair and side). Its final result is logged at once (the same ``final result`` line the intake
writes) and published when the broker answers again; meanwhile it is held in memory,
bounded (:class:`~killswitch.core.broker_loss.HeldOutputs`). The guard is also the
engine's halt-state sink: while the link is down (or a publish fails) the state is held
and published on recovery, halt states first, so ``status`` and the other daemons see
the latch. What is still held when the daemon stops is lost (the log line remains).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime

from killswitch.contracts import ResultRecord, final_result_fields
from killswitch.core.broker_loss import (
    SOURCE,
    BrokerLossClock,
    HeldOutputs,
    broker_loss_alert_id,
    broker_loss_reason,
)
from killswitch.core.model import HaltState, KillRequest, Scope, SweepResult
from killswitch.core.ports import ResultSink, StateSink
from killswitch.tasks import task_scope, wait_any

__all__ = ["RETRY_S", "BrokerLossGuard"]

log = logging.getLogger(__name__)

# While something is held and the link is up, a failed publish is retried this often.
RETRY_S = 1.0
_IDLE_S = 60.0  # nothing due and nothing held: wake only on a change of the link

ResultPublisher = Callable[[SweepResult], Awaitable[None]]
KillStart = Callable[[KillRequest, ResultSink], Awaitable[SweepResult]]
"""``EngineAPI.start``: the sweep begins at once; the awaitable gives the final result."""


class BrokerLossGuard:
    """Kills opted-in accounts after a broker loss; holds their outputs until it returns.

    ``after_s``: the opted-in accounts and their thresholds. ``start`` submits a kill
    to the engine. ``publish_result`` and ``publish_state`` write to Kafka (waiting for
    the acknowledgement); ``progress`` receives progress results while the link is up
    (dropped while it is down). ``daemon`` (a short id of this daemon instance) ends
    the alert ids. ``up`` is the link's state when the guard is made.
    """

    def __init__(
        self,
        after_s: Mapping[str, float],
        start: KillStart,
        *,
        publish_result: ResultPublisher,
        publish_state: StateSink,
        progress: ResultSink,
        deadline_s: float,
        daemon: str = "",
        up: bool = True,
        max_held: int = 1_000,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.after_s = dict(after_s)
        self.held = HeldOutputs(max_results=max_held)
        self._schedule = BrokerLossClock(self.after_s)
        self._start = start
        self._publish_result = publish_result
        self._publish_state = publish_state
        self._progress = progress
        self._deadline_s = deadline_s
        self._daemon = daemon
        self._clock = clock
        self._wall = wall
        self._up = up
        self._reason = "broker answers"
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # publishes in order: held ones never overtake newer
        self._flush_task: asyncio.Task[None] | None = None
        self._dropped_logged = 0
        if not up:
            self._schedule.link(False, clock())

    # ------------------------------------------------------------------ inputs

    def link_changed(self, up: bool, reason: str) -> None:
        """From the Kafka watch, on every change of the link's state."""
        self._up, self._reason = up, reason
        self._schedule.link(up, self._clock())
        self._wake.set()

    async def state(self, state: HaltState) -> None:
        """The engine's halt-state sink: published now, or held while the broker is away."""
        if not self._up:
            self._hold_state(state)
            return
        async with self._lock:
            self.held.superseded(state.account)
            try:
                await self._publish_state(state)
            except Exception as exc:  # published on recovery instead
                log.warning(
                    "halt state not published; held until Kafka answers",
                    extra={"account": state.account, "error": type(exc).__name__},
                )
                self.held.hold_state(state)
                self._wake.set()

    async def _progress_while_up(self, result: SweepResult) -> None:
        if self._up:
            await self._progress(result)

    # ------------------------------------------------------------------ the loop

    async def run(self, stop: asyncio.Event, last_flush_s: float = 2.0) -> None:
        """Kill what is due, publish what is held, until ``stop`` is set; then one last
        try (within ``last_flush_s``) at publishing what is held, if the broker answers.

        The kills and the background publish are tasks of the guard's own task scope:
        the kills still waiting for their final result are cancelled when it ends (the
        sweeps themselves are the engine's)."""
        async with task_scope() as group:
            await self._loop(stop, group)
            await self._last_flush(last_flush_s)

    async def _loop(self, stop: asyncio.Event, group: asyncio.TaskGroup) -> None:
        while not stop.is_set():
            self._wake.clear()
            for account in self._schedule.due(self._clock()):
                self._kill(account, group)
            if self._up and self.held and not self._flushing():
                # Apart from this loop: a publish to a broker that vanished again
                # hangs until the client gives up, and must not delay a kill.
                self._flush_task = group.create_task(self._flush_and_wake())
            await wait_any([self._wake, stop], self._next_wake())

    async def _last_flush(self, last_flush_s: float) -> None:
        if self._up and self.held:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(last_flush_s):
                    if self._flush_task is not None:
                        await asyncio.gather(self._flush_task, return_exceptions=True)
                    await self.flush()
        if self.held:
            log.warning(
                "stopping with unpublished broker-loss outputs (lost)",
                extra={
                    "results": [r.alert_id for r in self.held.results],
                    "states": sorted(self.held.states),
                },
            )

    def _flushing(self) -> bool:
        return self._flush_task is not None and not self._flush_task.done()

    async def _flush_and_wake(self) -> None:
        await self.flush()
        self._wake.set()  # the loop decides whether to try again

    def _next_wake(self) -> float:
        due_in = self._schedule.next_due_in(self._clock())
        wait = _IDLE_S if due_in is None else due_in
        if self._up and self.held:
            wait = min(wait, RETRY_S)
        return wait

    # ------------------------------------------------------------------ kills

    def _kill(self, account: str, group: asyncio.TaskGroup) -> None:
        after = self.after_s[account]
        now = self._wall()
        request = KillRequest(
            alert_id=broker_loss_alert_id(account, now, self._daemon),
            account=account,
            scope=Scope(),
            received_at=now,
            deadline_s=self._deadline_s,
            latch=True,
            source=SOURCE,
            reason=broker_loss_reason(after, self._reason),
        )
        log.warning(
            "broker lost: killing and latching the account (on_broker_loss_after_s)",
            extra={"account": account, "alert_id": request.alert_id, "after_s": after},
        )
        final = self._start(request, self._progress_while_up)
        group.create_task(self._finished(final, request), name=f"broker-loss-{account}")

    async def _finished(self, final: Awaitable[SweepResult], request: KillRequest) -> None:
        try:
            result = await final
        except Exception:  # the guard and the other accounts' kills carry on
            log.exception(
                "broker-loss kill ended without a result",
                extra={"account": request.account, "alert_id": request.alert_id},
            )
            return
        log.info("final result", extra=final_result_fields(ResultRecord.of(result)))
        self.held.hold_result(result)
        self._wake.set()  # published at once if the broker is back already

    # ------------------------------------------------------------------ publishing

    async def flush(self) -> None:
        """Publish what is held: halt states first, then results in order. Stops at the
        first failure (the rest stays held and is retried)."""
        async with self._lock:
            for account, state in list(self.held.states.items()):
                if not await self._try(self._publish_state(state), account):
                    return
                if self.held.states.get(account) is state:
                    self.held.superseded(account)
            while self.held.results:
                result = self.held.results[0]  # left held until acknowledged
                if not await self._try(self._publish_result(result), result.account):
                    return
                if self.held.results and self.held.results[0] is result:
                    self.held.results.popleft()
                log.info(
                    "held result published",
                    extra={"alert_id": result.alert_id, "account": result.account},
                )
        self._log_dropped()

    async def _try(self, publish: Awaitable[None], account: str) -> bool:
        try:
            await publish
        except Exception as exc:
            log.warning(
                "publishing held output failed; retrying",
                extra={"account": account, "error": type(exc).__name__},
            )
            return False
        return True

    def _hold_state(self, state: HaltState) -> None:
        self.held.hold_state(state)
        log.info(
            "halt state held until Kafka answers",
            extra={"account": state.account, "halted": state.halted, "alert_id": state.alert_id},
        )

    def _log_dropped(self) -> None:
        if self.held.dropped > self._dropped_logged:
            log.warning(
                "held results dropped (bound reached while Kafka was away)",
                extra={"dropped": self.held.dropped - self._dropped_logged},
            )
            self._dropped_logged = self.held.dropped
