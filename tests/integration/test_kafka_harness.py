"""The harness itself: the embedded broker speaks Kafka to aiokafka over a real socket,
and the helper that every absence assertion reads topics with."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests.support.topics import Producer, TopicCollector, create_topics, read_to_end
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


async def test_produce_and_consume_round_trip(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("harness")
    await create_topics(kafka_bootstrap, [topic])
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"hello", key=b"mm-1")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=unique_name("g"),
        # The embedded broker holds a fresh group's first join for about half the
        # session timeout (waiting for more members): keep it short.
        session_timeout_ms=1_000,
        heartbeat_interval_ms=200,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=10,
    )
    await consumer.start()
    try:
        record = await consumer.getone()
    finally:
        await consumer.stop()
    assert (record.key, record.value) == (b"mm-1", b"hello")


def _final(alert_id: str, account: str) -> dict[str, Any]:
    return {"alert_id": alert_id, "account": account, "final": True, "status": "flat"}


async def test_a_late_duplicate_is_read_and_fails_an_exactly_one_assertion(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    """The absence helper reads to the end offsets taken when it is called: a duplicate
    final result acknowledged just before the call, on any partition, is in its answer,
    so "exactly one flat" fails, however far behind a background reader may be."""
    topic = unique_name("results")
    partitions = 3
    await create_topics(kafka_bootstrap, [topic], partitions=partitions)
    async with (
        TopicCollector(kafka_bootstrap, topic) as collector,
        Producer(kafka_bootstrap) as producer,
    ):
        await producer.send(topic, _final("late-1", "mm-1"), key="mm-1", partition=0)
        await wait_for(lambda: len(collector.finals("late-1")) == 1)
        (only,) = (await read_to_end(kafka_bootstrap, topic)).finals("late-1")
        assert only["status"] == "flat"
        for n in range(1, 2 * partitions + 1):
            # Each duplicate is read by the very next call, on whichever partition.
            await producer.send(topic, _final("late-1", "mm-1"), partition=n % partitions)
            late = await read_to_end(kafka_bootstrap, topic)
            statuses = [r["status"] for r in late.finals("late-1")]
            assert statuses.count("flat") == 1 + n
            with pytest.raises(AssertionError):
                assert statuses.count("flat") == 1  # the suite's "exactly one flat"
        # Several at once (batched on the wire, where the embedded broker's own end
        # offset falls short of the batch): all of them are read.
        batched = 5
        acks = [
            await producer.send_later(topic, _final("late-1", "mm-1"), partition=0)
            for _ in range(batched)
        ]
        await asyncio.gather(*acks)
        late = await read_to_end(kafka_bootstrap, topic)
        assert len(late.finals("late-1")) == 1 + 2 * partitions + batched
        # Records are in (partition, offset) order, each partition read to its end.
        assert [(r.partition, r.offset) for r in late.records] == sorted(
            (p, o) for p, count in ((0, 3 + batched), (1, 2), (2, 2)) for o in range(count)
        )


async def test_reading_an_empty_topic_to_its_end_returns_at_once(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("empty")
    await create_topics(kafka_bootstrap, [topic], partitions=2)
    assert (await read_to_end(kafka_bootstrap, topic, timeout=5)).records == []
