"""Alert storms: a quiet account's kill is not queued behind a storm on another, and
every storm alert still gets exactly one final result."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from killswitch.config import Settings
from killswitch.kafka.ownership import account_partition
from tests.support.exchange import exchange
from tests.support.inprocess import (
    ACCOUNTS,
    SYMBOLS,
    daemon_in_process,
    daemon_settings,
    prepare_topics,
)
from tests.support.intake import (
    FakeEngine,
    alert_message,
    create_all_topics,
    make_settings,
    running_intake,
)
from tests.support.topics import TopicCollector, committed, produce
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

Unique = Callable[[str], str]


async def produce_fast(settings: Settings, messages: list[tuple[str, dict[str, object]]]) -> None:
    """(key, alert) pairs to the alerts topic, sent without waiting one by one."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    await producer.start()
    try:
        topic = settings.kafka.topics.alerts
        for key, message in messages:
            await producer.send(topic, json.dumps(message).encode(), key=key.encode())
        await producer.flush()
    finally:
        await producer.stop()


@pytest.mark.parametrize("channel", ["alerts", "manual"])
async def test_an_account_at_its_limit_holds_only_its_own_lane(
    kafka_bootstrap: str, unique_name: Unique, channel: str
) -> None:
    # 3 accounts: at most 2 x 3 records waiting or in flight before the consumer pauses.
    settings = make_settings(
        kafka_bootstrap,
        unique_name,
        intake={"max_queued_per_account": 2},
        kafka={"max_poll_records": 1},
    )
    await create_all_topics(settings)
    topics = settings.kafka.topics
    engine = FakeEngine()
    engine.hold("mm-1")
    async with (
        TopicCollector(kafka_bootstrap, topics.results) as results,
        running_intake(settings, engine) as run,
    ):
        await produce(settings, [alert_message(f"storm-{i}") for i in range(4)])
        await wait_for(lambda: len([c for c in engine.calls if c.account == "mm-1"]) == 2)
        # Read after the storm (same partition for the alerts channel): handled while
        # mm-1's records wait in their lane, the consumer not paused.
        quiet = alert_message("quiet-1", ["mm-2"], operator={"name": "ops"})
        topic = topics.manual if channel == "manual" else topics.alerts
        await produce(settings, [quiet], topic=topic, key="mm-2")
        await wait_for(lambda: len(results.finals("quiet-1")) == 1)
        assert results.finals("quiet-1")[0]["status"] == "flat"
        assert [f["alert_id"] for f in results.finals() if f["account"] == "mm-1"] == []
        assert not run.intake.paused
        await wait_for(lambda: run.intake.waiting == 2)  # mm-1's other two, in their lane
        engine.let_go("mm-1")
        await wait_for(lambda: len(results.finals()) == 5)
        assert sorted(c.alert_id for c in engine.calls if c.account == "mm-1") == sorted(
            f"storm-{i}" for i in range(4)
        )
        await wait_for(lambda: run.intake.waiting == 0 and run.intake.in_flight == 0)
    assert await committed(kafka_bootstrap, settings.kafka.group_id, topics.alerts) == (
        4 if channel == "manual" else 5
    )


async def test_over_the_limit_only_partitions_with_records_waiting_are_paused(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    # 3 accounts: at most 2 x 3 records waiting or in flight before the consumer pauses.
    settings = make_settings(
        kafka_bootstrap,
        unique_name,
        intake={"max_queued_per_account": 2},
        kafka={"max_poll_records": 1},
    )
    await create_all_topics(settings)
    topics = settings.kafka.topics
    engine = FakeEngine()
    engine.hold("mm-1")
    async with (
        TopicCollector(kafka_bootstrap, topics.results) as results,
        running_intake(settings, engine) as run,
    ):
        # Both topics assigned first: a rebalance after the storm would start the
        # partitions unpaused again.
        await wait_for(lambda: len(run.intake.assignment) == 2)
        await produce(settings, [alert_message(f"storm-{i}") for i in range(12)])
        await wait_for(lambda: run.intake.paused)
        alerts_partition = TopicPartition(topics.alerts, 0)
        assert run.intake.consumer.paused() == {alerts_partition}
        # The manual topic had nothing waiting: still read, its trigger handled while
        # the storm's partition stays paused.
        quiet = alert_message("quiet-1", ["mm-2"], operator={"name": "ops"})
        await produce(settings, [quiet], topic=topics.manual, key="mm-2")
        await wait_for(lambda: len(results.finals("quiet-1")) == 1)
        assert results.finals("quiet-1")[0]["status"] == "flat"
        assert run.intake.paused
        assert alerts_partition in run.intake.consumer.paused()
        engine.let_go("mm-1")
        await wait_for(lambda: len(results.finals()) == 13)
        assert not run.intake.paused
        assert run.intake.consumer.paused() == set()
        assert sorted(c.alert_id for c in engine.calls if c.account == "mm-1") == sorted(
            f"storm-{i}" for i in range(12)
        )
        await wait_for(lambda: run.intake.waiting == 0 and run.intake.in_flight == 0)
    assert await committed(kafka_bootstrap, settings.kafka.group_id, topics.alerts) == 12
    assert await committed(kafka_bootstrap, settings.kafka.group_id, topics.manual) == 1


async def test_storm_alerts_each_get_one_final_result_and_a_quiet_kill_goes_first(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    storm = 400
    async with exchange(ACCOUNTS, seed=7) as ex:
        settings = daemon_settings(
            kafka_bootstrap, unique_name, ex, intake={"max_queued_per_account": 20}
        )
        # The storm and the quiet account on partitions of their own, as keyed alerts
        # for two accounts usually are: a storm pauses its own partition only.
        partitions = next(
            n for n in range(2, 16) if account_partition("mm-1", n) != account_partition("mm-2", n)
        )
        await prepare_topics(settings, partitions=partitions)
        topics = settings.kafka.topics
        ex.seed("mm-1", SYMBOLS, 20)
        quiet_orders = ex.seed("mm-2", SYMBOLS, 3)
        async with (
            TopicCollector(kafka_bootstrap, topics.results) as results,
            daemon_in_process(settings) as run,
        ):
            messages = [("mm-1", alert_message(f"storm-{i}", ["mm-1"])) for i in range(storm)]
            # Produced after the whole storm.
            messages.append(("mm-2", alert_message("quiet-1", ["mm-2"])))
            await produce_fast(settings, messages)
            await wait_for(lambda: len(results.finals()) >= storm + 1, timeout=60)
            # Every final result is in: read the topic to its end before counting.
            finals = [f["alert_id"] for f in (await results.to_end()).finals()]
            per_alert = Counter(finals)
            assert set(per_alert) == {f"storm-{i}" for i in range(storm)} | {"quiet-1"}
            assert set(per_alert.values()) == {1}
            # The quiet account's kill was not queued behind the storm: its final
            # result came while most of the storm was still waiting for theirs.
            assert finals.index("quiet-1") < storm // 2
            assert ex.open_ids("mm-2") & quiet_orders == set()
            cancels = Counter(ex.cancels("mm-1"))
            assert all(n == 1 for n in cancels.values())
            await wait_for(lambda: run.daemon.intake.committed_total >= 1)
            await wait_for(lambda: run.daemon.intake.waiting == 0)
        group = settings.kafka.group_id
        done = [
            await committed(kafka_bootstrap, group, topics.alerts, n) for n in range(partitions)
        ]
        assert sum(n or 0 for n in done) == storm + 1
