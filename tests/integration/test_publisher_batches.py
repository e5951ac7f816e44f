"""``Publisher.results`` against the real broker: results go out in record batches the
publisher fills (one per partition, a full one followed by the next), concurrent groups
share them, and every record lands once, in order, after what was enqueued before it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaProducer

from killswitch.contracts import ResultRecord
from killswitch.core.model import Position
from killswitch.kafka.clients import connection_kwargs
from killswitch.kafka.outputs import Publisher
from tests.support.intake import make_settings
from tests.support.results import sent_result
from tests.support.topics import create_topics, read_to_end

pytestmark = pytest.mark.integration

Unique = Callable[[str], str]
ACCOUNTS = ("mm-1", "mm-2", "mm-3", "mm-4", "mm-5", "mm-6")


def _record(alert_id: str, account: str, offset: int, *, final: bool) -> ResultRecord:
    return ResultRecord.of(
        sent_result(alert_id, account, final=final, orders=3), Position("alerts", 0, offset)
    )


async def test_groups_of_results_fill_batches_and_land_once_in_order(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    """Twelve groups of 40 finals over six accounts, published at once on a producer
    whose batches hold a few records (so batches fill up and follow one another),
    each alert's progress result enqueued before its group: every final is
    acknowledged and on the topic exactly once, each after its alert's progress and,
    per account, in the order the groups published them."""
    settings = make_settings(kafka_bootstrap, unique_name)
    topic = settings.kafka.topics.results
    await create_topics(kafka_bootstrap, [topic], partitions=3)
    producer = AIOKafkaProducer(
        acks="all", max_batch_size=2_048, linger_ms=0, **connection_kwargs(settings.kafka)
    )
    await producer.start()
    groups = [
        [
            _record(f"g{g}-{n}", ACCOUNTS[(g + n) % len(ACCOUNTS)], g * 100 + n, final=True)
            for n in range(40)
        ]
        for g in range(12)
    ]
    try:
        publisher = Publisher(producer, settings.kafka.topics)
        for group in groups:
            for record in group:
                progress = _record(record.alert_id, record.account, 0, final=False)
                await publisher.result(progress, wait=False)
        outcomes = await asyncio.gather(*(publisher.results(group) for group in groups))
        await publisher.flush()
    finally:
        await producer.stop()
    assert outcomes == [[None] * 40] * 12
    written = await read_to_end(kafka_bootstrap, topic)
    finals = [
        (r.json()["account"], r.json()["alert_id"]) for r in written.records if r.json()["final"]
    ]
    published = [(record.account, record.alert_id) for group in groups for record in group]
    assert sorted(finals) == sorted(published)  # each exactly once
    for account in ACCOUNTS:
        assert [a for acc, a in finals if acc == account] == [
            a for acc, a in published if acc == account
        ]
    seen: set[str] = set()
    for record in written.records:  # within a partition, in offset order
        data = record.json()
        if data["final"]:
            assert data["alert_id"] in seen, "a final before its progress result"
        else:
            seen.add(data["alert_id"])
