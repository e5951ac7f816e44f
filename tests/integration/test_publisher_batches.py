"""``Publisher.results`` against the real broker: results go out in record batches the
publisher fills (one per partition, a full one followed by the next), concurrent groups
share them, and every record lands once, in order, after what was enqueued before it."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from aiokafka import AIOKafkaProducer

from killswitch.contracts import ResultRecord
from killswitch.core.model import Position
from killswitch.embedded import EmbeddedBroker
from killswitch.kafka.clients import connection_kwargs
from killswitch.kafka.outputs import Publisher
from tests.support.intake import make_settings
from tests.support.results import sent_result
from tests.support.topics import create_topics, read_to_end
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

Unique = Callable[[str], str]
ACCOUNTS = ("mm-1", "mm-2", "mm-3", "mm-4", "mm-5", "mm-6")


def _record(
    alert_id: str, account: str, offset: int, *, final: bool, orders: int = 3
) -> ResultRecord:
    return ResultRecord.of(
        sent_result(alert_id, account, final=final, orders=orders), Position("alerts", 0, offset)
    )


@asynccontextmanager
async def _frozen(broker: EmbeddedBroker) -> AsyncIterator[None]:
    """The broker stopped (SIGSTOP) within: a request sent meanwhile gets no answer
    until it resumes, so aiokafka holds the batches behind it."""
    os.kill(broker.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(broker.pid, signal.SIGCONT)


def _finals_after_their_progress(values: list[dict[str, object]]) -> None:
    seen: set[object] = set()
    for data in values:  # within a partition, in offset order
        if data["final"]:
            assert data["alert_id"] in seen, f"the final of {data['alert_id']} before its progress"
        else:
            seen.add(data["alert_id"])


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
    _finals_after_their_progress([record.json() for record in written.records])


async def test_a_progress_result_waiting_for_its_partition_stays_before_its_final(
    broker: EmbeddedBroker, unique_name: Unique
) -> None:
    """A progress result waits for its partition behind a batch's hand-over (the broker
    slow to answer: frozen here), and its alert's final is published meanwhile, while
    the next batch of that partition is still filling: the final lands after the
    progress result, not in the batch handed over before it."""
    broker.start()
    settings = make_settings(broker.bootstrap, unique_name)
    topic = settings.kafka.topics.results
    await create_topics(broker.bootstrap, [topic])
    # Batches of 4 KiB: a progress result of 40 orders fills one alone.
    producer = AIOKafkaProducer(
        acks="all", max_batch_size=4_096, linger_ms=0, **connection_kwargs(settings.kafka)
    )
    await producer.start()
    try:
        publisher = Publisher(producer, settings.kafka.topics)
        await publisher.result(_record("z", "mm-1", 4, final=False))  # connected, acknowledged
        partition = publisher.result_partition(b"mm-1")
        assert partition is not None
        lock = publisher._result_locks[partition]
        async with _frozen(broker):
            # The first goes out unanswered, the second waits in aiokafka behind it.
            for n in range(2):
                big = _record(f"w{n}", "mm-1", 2 + n, final=False, orders=40)
                await publisher.result(big, wait=False)
            first = asyncio.create_task(publisher.results([_record("w0", "mm-1", 2, final=True)]))
            await wait_for(lock.locked)  # its hand-over holds the partition, waiting
            second = asyncio.create_task(publisher.results([_record("z", "mm-1", 4, final=True)]))
            await wait_for(lambda: len(lock._waiters or ()) == 1)  # the next batch's turn
            progress = asyncio.create_task(
                publisher.result(_record("x", "mm-1", 5, final=False), wait=False)
            )
            await wait_for(lambda: len(lock._waiters or ()) == 2)  # behind it
            final = asyncio.create_task(publisher.results([_record("x", "mm-1", 5, final=True)]))
        outcomes = await asyncio.gather(first, second, final)
        await progress
        await publisher.flush()
    finally:
        await producer.stop()
    assert outcomes == [[None]] * 3
    written = await read_to_end(broker.bootstrap, topic)
    _finals_after_their_progress([record.json() for record in written.records])
