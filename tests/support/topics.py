"""Kafka helpers for tests: create a daemon's topics, produce alerts, collect outputs.

:class:`TopicCollector` reads one topic from the beginning in the background (no
consumer group, nothing committed) and keeps every record; ``results()`` and
``finals()`` look at result records the way an operator would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from killswitch.alerts import format_time


async def create_topics(
    bootstrap: str, topics: Mapping[str, str], partitions: Mapping[str, int] | None = None
) -> None:
    """Create a daemon's topics (``role -> name``), one partition unless told otherwise."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for role, name in topics.items():
            count = (partitions or {}).get(role, 1)
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [NewTopic(name=name, num_partitions=count, replication_factor=1)]
                )
    finally:
        await admin.close()


def alert(alert_id: str, accounts: Sequence[str] | str, **fields: Any) -> dict[str, Any]:
    """A valid ``killswitch.alert/v1`` kill (fields override, ``scope`` merges)."""
    scope = {"accounts": accounts if accounts == "*" else list(accounts)}
    scope.update(fields.pop("scope", {}))
    return {
        "schema": "killswitch.alert/v1",
        "alert_id": alert_id,
        "action": "kill",
        "source": "reliability",
        "reason": "test",
        "scope": scope,
        "latch": False,
        "dry_run": False,
        "created_at": format_time(datetime.now(UTC)),
        **fields,
    }


class Producer:
    """A plain producer (acks=all) for test input."""

    def __init__(self, bootstrap: str, **options: Any) -> None:
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **options)

    async def __aenter__(self) -> Producer:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def send(
        self, topic: str, value: bytes | Mapping[str, Any], key: str | bytes | None = None
    ) -> None:
        """Send and wait for the acknowledgement."""
        await self._producer.send_and_wait(topic, _bytes(value), key=_key(key))

    async def send_later(
        self, topic: str, value: bytes | Mapping[str, Any], key: str | bytes | None = None
    ) -> asyncio.Future[Any]:
        """Hand to the producer; the returned future resolves when acknowledged."""
        return await self._producer.send(topic, _bytes(value), key=_key(key))


def _bytes(value: bytes | Mapping[str, Any]) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


def _key(key: str | bytes | None) -> bytes | None:
    return key.encode() if isinstance(key, str) else key


@dataclass(frozen=True)
class Record:
    key: bytes | None
    value: bytes | None
    partition: int
    offset: int

    def json(self) -> dict[str, Any]:
        return json.loads(self.value) if self.value else {}


class TopicCollector:
    """Collects every record of one topic in the background."""

    def __init__(self, bootstrap: str, topic: str, **options: Any) -> None:
        self.records: list[Record] = []
        self._consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=10,
            **options,
        )
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TopicCollector:
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        async for record in self._consumer:
            self.records.append(Record(record.key, record.value, record.partition, record.offset))

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()

    def json(self) -> list[dict[str, Any]]:
        return [r.json() for r in self.records]

    def finals(self, alert_id: str | None = None) -> list[dict[str, Any]]:
        """Final result records (of one alert, or all)."""
        return [
            r
            for r in self.json()
            if r.get("final") is True and (alert_id is None or r.get("alert_id") == alert_id)
        ]

    def final_pairs(self) -> set[tuple[str, str]]:
        """(alert_id, account) of every final result."""
        return {(r["alert_id"], r["account"]) for r in self.finals()}


async def read_to_end(bootstrap: str, topic: str, partitions: int = 1) -> list[dict[str, Any]]:
    """Every record of ``topic`` (JSON) up to its end offsets at the call: what an
    absence ("no second result") is asserted on."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, fetch_max_wait_ms=10)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        out: list[dict[str, Any]] = []
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(*parts, timeout_ms=200)
            out += [json.loads(r.value) if r.value else {} for rs in batch.values() for r in rs]
        return out
    finally:
        await consumer.stop()
