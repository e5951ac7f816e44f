"""``Publisher.results`` against the real broker: results go out in record batches the
publisher fills (one per partition, a full one followed by the next), concurrent groups
share them, and every record lands once, in order, after what was enqueued before it."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.cluster import ClusterMetadata
from aiokafka.errors import KafkaError, ProducerClosed

from killswitch.config import Settings
from killswitch.contracts import ResultRecord
from killswitch.core.model import Position
from killswitch.embedded import EmbeddedBroker
from killswitch.kafka.clients import connection_kwargs
from killswitch.kafka.outputs import Publisher
from tests.support.broker import kill_broker
from tests.support.intake import make_settings
from tests.support.results import sent_result
from tests.support.topics import create_topics, read_to_end
from tests.support.waiting import wait_for, wait_until

pytestmark = pytest.mark.integration

Unique = Callable[[str], str]
ACCOUNTS = ("mm-1", "mm-2", "mm-3", "mm-4", "mm-5", "mm-6")


def _record(
    alert_id: str, account: str, offset: int, *, final: bool, orders: int = 3
) -> ResultRecord:
    return ResultRecord.of(
        sent_result(alert_id, account, final=final, orders=orders), Position("alerts", 0, offset)
    )


def _stopped(pid: int) -> bool:
    """Every thread of the process stopped (``kill`` returns before they are)."""
    threads = Path(f"/proc/{pid}/task").iterdir()
    # Each thread's stat: "tid (name) state ...".
    states = (t.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] for t in threads)
    return all(state in "Tt" for state in states)


@asynccontextmanager
async def _frozen(broker: EmbeddedBroker) -> AsyncIterator[None]:
    """The broker stopped (SIGSTOP) within: a request sent meanwhile gets no answer
    until it resumes, so aiokafka holds the batches behind it."""
    os.kill(broker.pid, signal.SIGSTOP)
    try:
        await wait_for(lambda: _stopped(broker.pid))
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


async def test_a_progress_result_waiting_for_the_topics_partitions_stays_before_its_final(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    """A progress result published before the producer knows the results topic's
    partitions waits for them, and its alert's final is published the moment they are
    known, before the progress result is enqueued: the final lands after it."""
    settings = make_settings(kafka_bootstrap, unique_name)
    topic = settings.kafka.topics.results
    producer = AIOKafkaProducer(acks="all", linger_ms=0, **connection_kwargs(settings.kafka))
    await producer.start()
    await create_topics(kafka_bootstrap, [topic])  # after: the producer does not know it
    try:
        publisher = Publisher(producer, settings.kafka.topics)
        assert publisher.result_partition(b"mm-1") is None
        finals: list[asyncio.Task[list[BaseException | None]]] = []

        def known(cluster: ClusterMetadata) -> None:
            if not finals and cluster.partitions_for_topic(topic):
                final = publisher.results([_record("x", "mm-1", 1, final=True)])
                finals.append(asyncio.create_task(final))

        producer.client.cluster.add_listener(known)
        await publisher.result(_record("x", "mm-1", 1, final=False), wait=False)
        assert len(finals) == 1
        assert await finals[0] == [None]
        await publisher.flush()
    finally:
        await producer.stop()
    written = await read_to_end(kafka_bootstrap, topic)
    _finals_after_their_progress([record.json() for record in written.records])


async def _hold_partition(
    publisher: Publisher, account: str
) -> tuple[asyncio.Lock, asyncio.Task[list[BaseException | None]]]:
    """On a frozen broker, with batches of 4 KiB: two progress results of a batch each
    (the first sent, unanswered; the second waiting in aiokafka behind it), then a final
    whose batch's hand-over waits behind them, holding the partition's enqueueing lock.
    Returns that lock and the final's ``results`` task."""
    for n in range(2):
        await publisher.result(_record(f"w{n}", account, 2 + n, final=False, orders=40), wait=False)
    first = asyncio.create_task(publisher.results([_record("w0", account, 2, final=True)]))
    partition = publisher.result_partition(account.encode())
    assert partition is not None
    lock = publisher._result_locks[partition]
    await wait_for(lock.locked)  # its hand-over holds the partition, waiting
    return lock, first


def _producer(settings: Settings) -> AIOKafkaProducer:
    """Batches of 4 KiB: a progress result of 40 orders fills one alone."""
    return AIOKafkaProducer(
        acks="all", max_batch_size=4_096, linger_ms=0, **connection_kwargs(settings.kafka)
    )


async def _publishing(
    broker: EmbeddedBroker, unique_name: Unique, *, partitions: int = 1, **kafka: Any
) -> tuple[Settings, AIOKafkaProducer]:
    """``broker`` started, a results topic of ``partitions`` on it and a started
    :func:`_producer` (``kafka`` overrides the settings' Kafka section)."""
    broker.start()
    settings = make_settings(broker.bootstrap, unique_name, kafka=kafka)
    await create_topics(broker.bootstrap, [settings.kafka.topics.results], partitions=partitions)
    producer = _producer(settings)
    await producer.start()
    return settings, producer


async def test_a_progress_result_waiting_for_its_partition_stays_before_its_final(
    broker: EmbeddedBroker, unique_name: Unique
) -> None:
    """A progress result waits for its partition behind a batch's hand-over (the broker
    slow to answer: frozen here), and its alert's final is published meanwhile, while
    the next batch of that partition is still filling: the final lands after the
    progress result, not in the batch handed over before it."""
    settings, producer = await _publishing(broker, unique_name)
    topic = settings.kafka.topics.results
    try:
        publisher = Publisher(producer, settings.kafka.topics)
        await publisher.result(_record("z", "mm-1", 4, final=False))  # connected, acknowledged
        async with _frozen(broker):
            lock, first = await _hold_partition(publisher, "mm-1")
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
    assert list(outcomes) == [[None]] * 3
    written = await read_to_end(broker.bootstrap, topic)
    _finals_after_their_progress([record.json() for record in written.records])


async def test_a_batch_whose_partition_is_gone_at_its_hand_over_is_answered(
    broker: EmbeddedBroker, unique_name: Unique
) -> None:
    """A batch and a lone final wait for their turn while the broker is lost and comes
    back empty, and the results topic is created again with fewer partitions (the
    embedded broker creates a topic a client asks for, with 4): their callers are told
    a Kafka error, none is left waiting, and published again (as the intake retries)
    they are acknowledged."""
    broker.start()
    settings = make_settings(broker.bootstrap, unique_name, kafka={"request_timeout_ms": 1_000})
    topic = settings.kafka.topics.results
    await create_topics(broker.bootstrap, [topic], partitions=6)
    # A lone record lingers in aiokafka (not the batches the publisher fills: closed).
    producer = AIOKafkaProducer(acks="all", linger_ms=10_000, **connection_kwargs(settings.kafka))
    await producer.start()
    try:
        publisher = Publisher(producer, settings.kafka.topics)
        await producer.partitions_for(topic)
        accounts = [f"acct-{n}" for n in range(100)]
        account = next(a for a in accounts if (publisher.result_partition(a.encode()) or 0) >= 4)
        other = next(a for a in accounts if (publisher.result_partition(a.encode()) or 4) < 4)
        assert await publisher.results([_record("c", account, 0, final=True)]) == [None]
        partition = publisher.result_partition(account.encode())
        assert partition is not None
        lock = publisher._result_locks[partition]
        await publisher.result(_record("w", account, 1, final=False), wait=False)  # lingers
        first = asyncio.create_task(publisher.results([_record("w", account, 1, final=True)]))
        await wait_for(lock.locked)  # its hand-over holds the partition, behind the progress
        second = asyncio.create_task(publisher.results([_record("z", account, 2, final=True)]))
        await wait_for(lambda: len(lock._waiters or ()) == 1)  # its batch waits its turn
        lone = asyncio.create_task(publisher.result(_record("y", account, 3, final=True)))
        await wait_for(lambda: len(lock._waiters or ()) == 2)
        kill_broker(broker)
        broker.start()  # empty, on the same port

        async def known() -> set[int]:
            await producer.client.force_metadata_update()
            return producer.client.cluster.partitions_for_topic(topic) or set()

        await wait_until(known, lambda parts: bool(parts) and partition not in parts)
        # A batch of another partition wakes aiokafka's sender, which then finds the
        # lingering record's partition gone.
        assert await publisher.results([_record("o", other, 4, final=True)]) == [None]
        outcomes = await asyncio.wait_for(
            asyncio.gather(first, second, lone, return_exceptions=True), timeout=10
        )
        told = [outcomes[0][0], outcomes[1][0], outcomes[2]]  # type: ignore[index]
        assert all(isinstance(error, KafkaError) for error in told), told
        again = [_record(a, account, n, final=True) for n, a in enumerate("wzy", start=1)]
        assert await publisher.results(again) == [None] * 3
    finally:
        await producer.stop()


async def test_a_producer_stopped_with_batches_waiting_answers_every_record(
    broker: EmbeddedBroker, unique_name: Unique
) -> None:
    """The producer is stopped while one batch's hand-over waits inside aiokafka and the
    next batch waits for its turn: the first is sent and acknowledged, the next is
    answered with the error; nobody is left waiting."""
    settings, producer = await _publishing(broker, unique_name)
    topic = settings.kafka.topics.results
    publisher = Publisher(producer, settings.kafka.topics)
    await publisher.result(_record("z", "mm-1", 4, final=False))  # connected, acknowledged
    try:
        async with _frozen(broker):
            lock, first = await _hold_partition(publisher, "mm-1")
            second = asyncio.create_task(publisher.results([_record("z", "mm-1", 4, final=True)]))
            await wait_for(lambda: len(lock._waiters or ()) == 1)  # its batch waits its turn
            stop = asyncio.create_task(producer.stop())
            await wait_for(lambda: producer._closed)
        outcomes = await asyncio.wait_for(asyncio.gather(first, second), timeout=10)
        await stop
    finally:
        await producer.stop()
    assert outcomes[0] == [None]
    assert isinstance(outcomes[1][0], ProducerClosed)
    written = await read_to_end(broker.bootstrap, topic)
    assert [r.json()["alert_id"] for r in written.records if r.json()["final"]] == ["w0"]


async def test_results_published_while_the_broker_is_gone_fail_then_flow_again(
    broker: EmbeddedBroker, unique_name: Unique
) -> None:
    """Results published while the broker is gone are answered with an error, none as
    acknowledged; once it is back (empty, on the same port), published again as the
    intake does, they are acknowledged and on the topic once each."""
    settings, producer = await _publishing(
        broker, unique_name, partitions=3, request_timeout_ms=1_000
    )
    topic = settings.kafka.topics.results
    records = [_record(f"b-{n}", ACCOUNTS[n % len(ACCOUNTS)], n, final=True) for n in range(24)]
    try:
        publisher = Publisher(producer, settings.kafka.topics)
        assert await publisher.results(records[:6]) == [None] * 6  # connected
        kill_broker(broker)
        lost = await asyncio.wait_for(publisher.results(records), timeout=20)
        assert all(outcome is not None for outcome in lost), lost
        broker.start()
        await create_topics(broker.bootstrap, [topic], partitions=3)
        pending = records
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while pending:  # as Intake._publish_finals retries
            assert loop.time() < deadline, "results not acknowledged after the broker came back"
            outcomes = await publisher.results(pending)
            pending = [r for r, outcome in zip(pending, outcomes, strict=True) if outcome]
    finally:
        await producer.stop()
    written = await read_to_end(broker.bootstrap, topic)
    assert sorted(r.json()["alert_id"] for r in written.records) == sorted(
        r.alert_id for r in records
    )
