"""Dead-man's switch: trading systems send heartbeats; silence past a timeout fires a kill.

Heartbeat (``killswitch.heartbeats``, key = source)::

    {"schema": "killswitch.heartbeat/v1", "source": "mm-bot-1",
     "sent_at": "2026-11-24T01:02:03.456Z"}

``sent_at`` is optional; when present, a heartbeat older than the source's
timeout on arrival does not count (a backlog says nothing about now).

Every daemon reads every heartbeat partition (a consumer without a group,
starting at the end) and runs the pure :class:`DeadmanMonitor`. A firing is not
swept here: it is published as an ordinary alert (``source: "deadman"``, one
record per account, key = account) to the alerts topic, so it reaches the one
daemon that owns the account's partition, with the same at-least-once, dedup,
result and metrics path as any alert. Its ``alert_id`` is derived from the last
heartbeat seen (``deadman-<source>-<sent_at ms>``), so two daemons noticing the
same silence produce the same id and the owner sweeps once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from killswitch.config import DeadmanSource, KafkaSettings
from killswitch.contracts import ALERT_SCHEMA, Alert, AlertScopeModel, parse_heartbeat
from killswitch.core.deadman import DeadmanMonitor, Firing, HeartbeatVerdict
from killswitch.core.ports import AlertObserver, NullAlertObserver
from killswitch.kafka.clients import all_partitions, make_reader, rewind_remade, stop_consumer
from killswitch.kafka.outputs import Publisher

log = logging.getLogger(__name__)

DEADMAN_SOURCE = "deadman"
_POLL_MS = 100


def deadman_alert_id(source: str, firing: Firing, started_ms: int) -> str:
    """Deterministic per silence: the same last heartbeat gives the same id on every daemon."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", source)[:64]
    anchor = str(firing.last_sent_ms) if firing.last_sent_ms is not None else f"s{started_ms}"
    return f"deadman-{safe}-{anchor}"


def deadman_alerts(
    config: DeadmanSource,
    firing: Firing,
    *,
    accounts: Sequence[str],
    alert_id: str,
    now: datetime,
) -> list[tuple[str, dict[str, Any]]]:
    """One ``killswitch.alert/v1`` per account of the source's scope, as (account, the
    message as written by :meth:`Alert.to_json`)."""
    scope = config.scope
    targets = list(accounts) if scope.accounts == "*" else list(scope.accounts)
    reason = (
        f"dead-man: no heartbeat from {config.source!r} for {firing.silent_s:.1f}s "
        f"(timeout {firing.timeout_s:g}s)"
    )
    return [
        (
            account,
            Alert.model_construct(
                schema_=ALERT_SCHEMA,
                alert_id=alert_id,
                action="kill",
                source=DEADMAN_SOURCE,
                reason=reason,
                scope=AlertScopeModel.model_construct(
                    accounts=[account],
                    symbols=list(scope.symbols) if scope.symbols is not None else None,
                    sides=list(scope.sides) if scope.sides is not None else None,
                    order_ids=[],
                ),
                latch=config.latch,
                dry_run=False,
                created_at=now,
                expires_at=None,
            ).to_json(),
        )
        for account in targets
    ]


class DeadmanWatcher:
    """Reads heartbeats and publishes a dead-man alert when a source falls silent."""

    def __init__(
        self,
        kafka: KafkaSettings,
        sources: Sequence[DeadmanSource],
        publisher: Publisher,
        accounts: Sequence[str],
        *,
        observer: AlertObserver | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._kafka = kafka
        self._sources = {s.source: s for s in sources}
        self._publisher = publisher
        self._observer: AlertObserver = observer or NullAlertObserver()
        self._accounts = list(accounts)
        self._monotonic = monotonic
        self._wall = wall
        self._monitor = DeadmanMonitor({s.source: s.timeout_s for s in sources}, monotonic())
        self._started_ms = int(wall().timestamp() * 1000)
        self._consumer: AIOKafkaConsumer | None = None
        self.fired: list[str] = []  # alert ids published (diagnostics and tests)

    async def start(self) -> None:
        """Assign every heartbeat partition at its end: only new heartbeats count."""
        consumer = make_reader(self._kafka, _POLL_MS)
        await consumer.start()
        self._consumer = consumer
        try:
            parts = await all_partitions(consumer, self._kafka.topics.heartbeats)
            consumer.assign(parts)
            await consumer.seek_to_end(*parts)
        except BaseException:
            await self.close()
            raise
        # The grace period starts when we can actually hear heartbeats.
        self._monitor = DeadmanMonitor(
            {s.source: s.timeout_s for s in self._sources.values()}, self._monotonic()
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Read heartbeats and check timeouts until ``stop`` is set."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("DeadmanWatcher not started")
        while not stop.is_set():
            due = self._monitor.next_due(self._monotonic())
            wait_ms = _POLL_MS if due is None else max(1, min(_POLL_MS, int(due * 1000) + 1))
            try:
                batch = await consumer.getmany(timeout_ms=wait_ms)
            except KafkaError as exc:
                log.warning("heartbeat poll failed", extra={"error": type(exc).__name__})
                batch = {}
            for records in batch.values():
                for record in records:
                    self._heard(record.value)
            for firing in self._monitor.check(self._monotonic()):
                await self._fire(firing)

    async def broker_back(self, created: Collection[str]) -> None:
        """After the broker came back: a heartbeat log made again is read from its start
        (:func:`rewind_remade`), so heartbeats sent since count."""
        consumer = self._consumer
        if consumer is not None:
            await rewind_remade(consumer, created, "the dead-man watcher")

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await stop_consumer(consumer)

    async def _publish(self, account: str, value: bytes) -> bool:
        delay = 0.05
        for _attempt in range(20):  # bounded: about a minute of broker trouble
            try:
                await self._publisher.alert(account, value)
                return True
            except KafkaError as exc:
                log.warning("dead-man alert not published", extra={"error": type(exc).__name__})
                await asyncio.sleep(delay)  # backoff between attempts
                delay = min(delay * 2, 5.0)
        return False

    def _heard(self, value: bytes | None) -> None:
        beat = parse_heartbeat(value)
        if isinstance(beat, str):
            log.debug("unreadable heartbeat ignored", extra={"reason": beat})
            return
        age = None
        sent_ms = None
        if beat.sent_at is not None:
            age = (self._wall() - beat.sent_at).total_seconds()
            sent_ms = int(beat.sent_at.timestamp() * 1000)
        verdict = self._monitor.heard(beat.source, self._monotonic(), age, sent_ms)
        if verdict is HeartbeatVerdict.RESUMED:
            log.info("heartbeats resumed; dead-man re-armed", extra={"source": beat.source})
        elif verdict is HeartbeatVerdict.STALE:
            log.warning("stale heartbeat ignored", extra={"source": beat.source, "age_s": age})

    async def _fire(self, firing: Firing) -> None:
        config = self._sources[firing.source]
        alert_id = deadman_alert_id(firing.source, firing, self._started_ms)
        log.warning(
            "dead-man fired",
            extra={"source": firing.source, "alert_id": alert_id, "silent_s": firing.silent_s},
        )
        for account, alert in deadman_alerts(
            config, firing, accounts=self._accounts, alert_id=alert_id, now=self._wall()
        ):
            value = json.dumps(alert, separators=(",", ":")).encode()
            if not await self._publish(account, value):
                log.error(
                    "dead-man alert could not be published",
                    extra={"source": firing.source, "account": account, "alert_id": alert_id},
                )
        self.fired.append(alert_id)
        self._observer.deadman_fired(firing.source)
