"""The results reader against the real broker: final results published with their head
header are learned from it; an older daemon's record (no header) and a progress result
(whose outcomes only its body has) are read from their bodies."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from killswitch.contracts import RESULT_HEAD_HEADER, ResultRecord, encode_result
from killswitch.core.dedup import DedupWindow
from killswitch.core.model import Position, SweepResult
from killswitch.kafka.clients import connection_kwargs, make_producer
from killswitch.kafka.outputs import Publisher
from killswitch.kafka.readers import ResultsIndex
from tests.support.intake import create_all_topics, make_settings
from tests.support.results import sent_result
from tests.support.topics import Producer, read_to_end
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

Unique = Callable[[str], str]


def result(alert_id: str, account: str = "mm-1", *, final: bool = True) -> SweepResult:
    return sent_result(alert_id, account, final=final, orders=50)


async def test_the_results_reader_learns_from_heads_and_from_bodies(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    settings = make_settings(kafka_bootstrap, unique_name)
    await create_all_topics(settings)
    topic = settings.kafka.topics.results
    alerts = settings.kafka.topics.alerts
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        publisher = Publisher(producer, settings.kafka.topics)
        # (a) final results with their head: one alone, and a sweep's group at once
        await publisher.result(ResultRecord.of(result("h-1"), Position(alerts, 0, 1)))
        group = [
            ResultRecord.of(result("h-2"), Position(alerts, 0, 2)),
            ResultRecord.of(result("h-3", "mm-2")),
        ]
        assert await publisher.results(group) == [None, None]
        # (c) a progress result (it has a head too, saying it is not final)
        await publisher.result(ResultRecord.of(result("p-1", final=False), Position(alerts, 0, 4)))
    finally:
        await producer.stop()
    # (b) an older daemon's final result: the body alone, no header
    async with Producer(kafka_bootstrap) as older:
        older_record = ResultRecord.of(result("o-1"), Position(alerts, 0, 5))
        await older.send(topic, encode_result(older_record), "mm-1")

    dedup = DedupWindow(100)
    index = ResultsIndex(settings.kafka, topic, dedup, tail_records=1000)
    await index.start()
    stop = asyncio.Event()
    task = asyncio.create_task(index.run(stop))
    try:
        await wait_for(lambda: index.learned == 4 and index.carried("p-1", "mm-1") is not None)
    finally:
        stop.set()
        await task
        await index.close()
    assert index.read_heads == 3  # h-1, h-2, h-3: learned without decoding their bodies
    statuses = {a: dedup.status(a, acc) for a, acc in [("h-1", "mm-1"), ("h-3", "mm-2")]}
    assert statuses == {"h-1": "flat", "h-3": "flat"}
    assert dedup.status("h-2", "mm-1") == dedup.status("o-1", "mm-1") == "flat"
    # Origins came with them: the same alert id read elsewhere is a re-use.
    assert not dedup.decide("h-2", ["mm-1"], Position(alerts, 0, 2)).reused
    assert dedup.decide("h-2", ["mm-1"], Position(alerts, 0, 9)).reused
    assert dedup.decide("o-1", ["mm-1"], Position(alerts, 0, 9)).reused
    carried = index.carried("p-1", "mm-1")
    assert carried is not None
    assert len(carried.orders) == 50
    assert dedup.status("p-1", "mm-1") is None


async def test_a_head_no_key_can_match_does_not_stop_the_results_reader(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    # A head's account written with a JSON escape of a lone surrogate has no UTF-8:
    # the record is read from its body (a result for that account), and the reader
    # reads on, at start-up and after.
    settings = make_settings(kafka_bootstrap, unique_name)
    await create_all_topics(settings)
    topic = settings.kafka.topics.results
    head = b'{"alert_id":"x-1","account":"\\ud800","status":"flat","final":true,"origin":null}'
    body = (
        b'{"schema":"killswitch.result/v1","alert_id":"x-1","account":"\\ud800",'
        b'"status":"flat","final":true}'
    )
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        await producer.send_and_wait(topic, body, key=b"mm-1", headers=[(RESULT_HEAD_HEADER, head)])
        await Publisher(producer, settings.kafka.topics).result(ResultRecord.of(result("g-1")))
    finally:
        await producer.stop()
    dedup = DedupWindow(100)
    index = ResultsIndex(settings.kafka, topic, dedup, tail_records=1000)
    await index.start()
    try:
        await index.catch_up(10.0)
    finally:
        await index.close()
    assert dedup.status("x-1", "\ud800") == dedup.status("g-1", "mm-1") == "flat"
    assert index.read_heads == 1  # g-1's


@contextlib.asynccontextmanager
async def following(
    kafka_bootstrap: str,
    unique_name: Unique,
    idle: asyncio.Event,
    published: Sequence[ResultRecord] = (),
    **run: Any,
) -> AsyncIterator[tuple[Publisher, ResultsIndex]]:
    """A publisher and a results reader following the results topic (``index.run`` with
    ``idle`` as the intake's and ``run``'s options) until the block ends; ``published``
    are on the topic before the reader starts."""
    settings = make_settings(kafka_bootstrap, unique_name)
    await create_all_topics(settings)
    producer = make_producer(settings.kafka)
    await producer.start()
    publisher = Publisher(producer, settings.kafka.topics)
    index = ResultsIndex(settings.kafka, settings.kafka.topics.results, DedupWindow(1000), 1000)
    stop = asyncio.Event()
    try:
        assert await publisher.results(published) == [None] * len(published)
        await index.start()
        task = asyncio.create_task(index.run(stop, idle, **run))
        try:
            yield publisher, index
        finally:
            stop.set()
            await task
    finally:
        await index.close()
        await producer.stop()


async def test_the_results_reader_defers_to_a_busy_intake_but_never_a_catch_up(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    """While the intake is busy (its ``idle`` clear) each step of the reader waits for it
    (up to ``max_defer_s``, here longer than the test), except while someone waits for
    the reader to catch up (a new assignment does): then it reads at once."""
    idle = asyncio.Event()  # the intake is busy
    async with following(kafka_bootstrap, unique_name, idle, max_defer_s=600) as (
        publisher,
        index,
    ):
        for n in range(3):
            await publisher.result(ResultRecord.of(result(f"d-{n}")))
        await wait_for(lambda: index.deferred >= 1)
        assert await index.wait_caught_up(timeout_s=10)
        assert index.learned == 3
        # Caught up, it waits for the intake again (a step already under way ends first).
        waits = index.deferred
        await wait_for(lambda: index.deferred > waits)
        for n in range(3, 5):
            await publisher.result(ResultRecord.of(result(f"d-{n}")))
        assert index.learned == 3  # waiting: no step runs while the intake is busy
        idle.set()
        await wait_for(lambda: index.learned == 5)


async def test_a_busy_intake_never_leaves_the_results_reader_far_behind(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    """However long the intake stays busy, the reader waits for it only while it is at
    most ``max_defer_lag`` records behind the end of the topic: a catch-up on a new
    assignment (``wait_caught_up``, within its timeout) then has at most that many to
    read, not everything the group published while this daemon was busy."""
    idle = asyncio.Event()  # the intake is busy throughout
    # 120 results, published while the intake was busy (before this reader started).
    published = [ResultRecord.of(result(f"b-{n}")) for n in range(120)]
    async with following(
        kafka_bootstrap, unique_name, idle, published, max_defer_s=600, max_defer_lag=30
    ) as (_, index):
        # Read without waiting while more than 30 behind (steps of 50), then waits.
        await wait_for(lambda: index.learned >= 90 and index.deferred >= 1)
        assert not idle.is_set()


async def test_a_group_s_results_say_which_records_failed(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    """``Publisher.results`` waits for every record, the last of each partition first:
    a record refused (here too large), last of its partition or first, fails alone, and
    the others are acknowledged and on the topic."""
    settings = make_settings(kafka_bootstrap, unique_name)
    await create_all_topics(settings)
    topic = settings.kafka.topics.results
    producer = AIOKafkaProducer(
        acks="all", max_request_size=8_000, **connection_kwargs(settings.kafka)
    )
    await producer.start()
    try:
        publisher = Publisher(producer, settings.kafka.topics)
        big = ResultRecord.of(sent_result("big", "mm-1", final=True, orders=500))
        assert len(encode_result(big)) > 8_000
        small = [ResultRecord.of(result(f"s-{n}", f"mm-{n % 2 + 1}")) for n in range(4)]
        outcomes = await publisher.results([*small[:2], big, *small[2:], big])
    finally:
        await producer.stop()
    assert [type(o).__name__ for o in outcomes] == [
        "NoneType",
        "NoneType",
        "MessageSizeTooLargeError",
        "NoneType",
        "NoneType",
        "MessageSizeTooLargeError",
    ]
    written = await read_to_end(kafka_bootstrap, topic)
    assert sorted(r["alert_id"] for r in written.finals()) == ["s-0", "s-1", "s-2", "s-3"]
