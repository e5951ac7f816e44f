"""Kafka helpers for tests: create topics, produce, and read topics back.

Two ways to read a topic, for two kinds of assertion:

- :class:`TopicCollector` reads one topic from the beginning in the background (no
  consumer group, nothing committed) and keeps every record. It is for *presence*:
  wait (with a deadline) until what the test expects has arrived.
- :func:`read_to_end` reads a topic from the beginning up to the end offsets it has
  when called, on every partition. It is for *absence* and *exactly one*: a record the
  broker acknowledged before the call is in its answer, so a late duplicate cannot
  slip past the assertion the way it can past a background reader that is behind.

Both answer through :class:`Records` (``json()``, ``finals()``, ``final_pairs()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from killswitch.config import Settings
from killswitch.core.times import format_time


async def create_topics(
    bootstrap: str,
    names: Mapping[str, str] | Iterable[str],
    partitions: int = 1,
    **client_options: Any,
) -> None:
    """Create topics (idempotent): a list of names, or a daemon's ``role -> name``."""
    topics = list(names.values()) if isinstance(names, Mapping) else list(names)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_options)
    await admin.start()
    try:
        for name in topics:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [NewTopic(name=name, num_partitions=partitions, replication_factor=1)]
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
        self,
        topic: str,
        value: bytes | Mapping[str, Any],
        key: str | bytes | None = None,
        partition: int | None = None,
    ) -> None:
        """Send and wait for the acknowledgement."""
        await self._producer.send_and_wait(topic, _bytes(value), key=_key(key), partition=partition)

    async def send_later(
        self,
        topic: str,
        value: bytes | Mapping[str, Any],
        key: str | bytes | None = None,
        partition: int | None = None,
    ) -> asyncio.Future[Any]:
        """Hand to the producer; the returned future resolves when acknowledged."""
        acked: asyncio.Future[Any] = await self._producer.send(
            topic, _bytes(value), key=_key(key), partition=partition
        )
        return acked


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
        return self._decoded

    @functools.cached_property
    def _decoded(self) -> dict[str, Any]:
        # Decoded once: tests poll views of thousands of records every few ms, in the
        # event loop that also runs the simulator (and in-process daemons) they test.
        decoded: dict[str, Any] = json.loads(self.value) if self.value else {}
        return decoded


class Records:
    """Records of one topic, with the views an operator would take of results."""

    def __init__(self, records: list[Record] | None = None) -> None:
        self.records: list[Record] = records if records is not None else []

    def __len__(self) -> int:
        return len(self.records)

    def keys(self) -> list[bytes | None]:
        return [r.key for r in self.records]

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


class TopicCollector(Records):
    """Collects every record of one topic in the background (for presence; see
    :meth:`to_end` for absence)."""

    def __init__(self, bootstrap: str, topic: str, **options: Any) -> None:
        super().__init__()
        self.bootstrap = bootstrap
        self.topic = topic
        self._options = options
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

    async def to_end(self, timeout: float = 10.0) -> Records:
        """The same topic read to its end offsets now (:func:`read_to_end`)."""
        return await read_to_end(self.bootstrap, self.topic, timeout=timeout, **self._options)


async def read_to_end(
    bootstrap: str, topic: str, *, timeout: float = 10.0, **options: Any
) -> Records:
    """Every record of ``topic`` up to the end offsets it has now, on every partition.

    A consumer without a group takes the end offsets first, then reads from the
    beginning until it has received every record before the end on every partition;
    the test fails if that takes longer than ``timeout``. Anything acknowledged before
    the call is in the answer.

    The end of a partition is the later of the broker's end offset and the high
    watermark of the first fetch answer for it: the embedded broker (Tansu) answers
    the end-offset request with the last *batch's* base offset plus one, short of the
    records batched after it. The count is kept from the records received (aiokafka's
    ``position()`` moves ahead with its prefetching).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    # "earliest": with aiokafka's default ("latest") the consumer's own first offset
    # reset can land after seek_to_beginning and leave a partition at its end, its
    # records never returned (seen under load).
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=10,
        **options,
    )
    await consumer.start()
    records: list[Record] = []
    try:
        partitions = await _partitions(consumer, topic, deadline)
        consumer.assign(partitions)
        listed = await consumer.end_offsets(partitions)
        following = await consumer.beginning_offsets(partitions)  # next offset to receive
        await consumer.seek_to_beginning(*partitions)
        ends: dict[TopicPartition, int] = {}  # once the first fetch answer is in
        while any(following[tp] < ends.get(tp, listed[tp]) for tp in partitions):
            if loop.time() > deadline:
                raise AssertionError(f"{topic} not read to its end offsets within {timeout}s")
            batches = await consumer.getmany(timeout_ms=100)
            for tp, batch in batches.items():
                if tp not in ends:
                    ends[tp] = max(listed[tp], consumer.highwater(tp) or 0)
                kept = [r for r in batch if r.offset < ends[tp]]
                records.extend(Record(r.key, r.value, r.partition, r.offset) for r in kept)
                if batch:
                    following[tp] = max(following[tp], batch[-1].offset + 1)
    finally:
        await consumer.stop()
    records.sort(key=lambda r: (r.partition, r.offset))
    return Records(records)


async def _partitions(
    consumer: AIOKafkaConsumer, topic: str, deadline: float
) -> list[TopicPartition]:
    """The topic's partitions, once the consumer's metadata knows them."""
    loop = asyncio.get_running_loop()
    while True:
        await consumer.topics()  # refreshes the metadata
        known = consumer.partitions_for_topic(topic)
        if known:
            return [TopicPartition(topic, p) for p in sorted(known)]
        if loop.time() > deadline:
            raise AssertionError(f"topic {topic} has no partitions")
        await asyncio.sleep(0.05)  # metadata of a topic just created, with a deadline


async def produce(
    settings: Settings,
    messages: Sequence[bytes | Mapping[str, Any]],
    topic: str | None = None,
    key: str | None = "mm-1",
) -> None:
    """Send ``messages`` (acks=all) to a daemon's alert topic, or to ``topic``."""
    async with Producer(settings.kafka.bootstrap_servers) as producer:
        for message in messages:
            await producer.send(topic or settings.kafka.topics.alerts, message, key=key)


async def committed(bootstrap: str, group: str, topic: str, partition: int = 0) -> int | None:
    """The group's committed offset on one partition (read with a throwaway member)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        offset: int | None = await consumer.committed(TopicPartition(topic, partition))
        return offset
    finally:
        await consumer.stop()
