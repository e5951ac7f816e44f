"""Readers after a broker that lost its logs and had them made again by someone else.

The embedded broker keeps its logs in memory: killed and restarted on the same port,
it is empty. A reader positioned in the old log (offset 2, say) would then wait at
that offset in the new one: Kafka answers such a fetch OFFSET_OUT_OF_RANGE and the
client resets it, but the embedded broker answers with no records, so the reader saw
nothing until the new log grew past its old position. After the broker came back,
``broker_back`` reads such a log from its start (``rewind_remade``), whoever made it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from killswitch.config import KafkaSettings
from killswitch.contracts import encode_state
from killswitch.core.model import HaltState, Scope
from killswitch.embedded import EmbeddedBroker
from killswitch.kafka.clients import ensure_topics, make_producer, make_reader, rewind_remade
from killswitch.kafka.outputs import Publisher
from killswitch.kafka.readers import HaltStateReader
from killswitch.prometheus_text import metric_samples
from tests.support.broker import kill_broker, wait_ready
from tests.support.daemon import Daemons, daemon_config, wait_http, write_config
from tests.support.exchange import exchange
from tests.support.topics import Producer
from tests.support.waiting import wait_for, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def halt(account: str, halted: bool) -> bytes:
    state = HaltState(account, halted, f"a-{account}", datetime.now(UTC), Scope())
    return encode_state(state, daemon="another-daemon")


async def until_done(step: Callable[[], Awaitable[object]], timeout: float = 30.0) -> None:
    """Await ``step()`` until it stops raising (the client reconnecting to the broker)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            await step()
            return
        except Exception:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.2)  # polling a reconnect with a deadline


async def test_the_state_follower_reads_a_log_made_again_from_its_start(
    broker: EmbeddedBroker,
) -> None:
    broker.start()
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap)
    state = kafka.topics.state
    await ensure_topics(kafka)
    async with Producer(broker.bootstrap) as producer:
        # The same key as the record of the new log below: the same partition.
        await producer.send(state, halt("mm-1", True), key="mm-1")
        await producer.send(state, halt("mm-1", False), key="mm-1")
    reader = HaltStateReader(kafka, state, daemon="this-daemon")
    await reader.start(timeout_s=30)  # read to the end: offset 2 of the old log
    applied: list[HaltState] = []
    stop = asyncio.Event()
    following = asyncio.create_task(reader.follow(stop, applied.append))
    try:
        kill_broker(broker)
        broker.start()  # same port, empty
        # Made again by someone else (as ``killswitch broker`` does), not by this reader.
        await until_done(lambda: ensure_topics(kafka))
        async with Producer(broker.bootstrap) as producer:
            await producer.send(state, halt("mm-1", True), key="mm-1")
        await until_done(lambda: reader.broker_back([]))
        await wait_for(lambda: any(s.account == "mm-1" for s in applied), timeout=30)
        assert [(s.account, s.halted) for s in applied] == [("mm-1", True)]
    finally:
        stop.set()
        await following
        await reader.close()


async def test_only_logs_made_again_are_read_from_their_start(broker: EmbeddedBroker) -> None:
    """A partition past the new log's end, or of a topic this daemon made again, is
    rewound; one within its log and not made again keeps its position."""
    broker.start()
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap)
    topics = kafka.topics
    await ensure_topics(kafka)
    consumer = make_reader(kafka)
    await consumer.start()
    try:
        names = (topics.state, topics.dlq, topics.results)
        past, made, kept = (TopicPartition(t, 0) for t in names)
        async with Producer(broker.bootstrap) as producer:
            for topic in names:
                for n in range(3):
                    await producer.send(topic, b"x%d" % n, key="mm-1", partition=0)
        consumer.assign([past, made, kept])
        consumer.seek(past, 10)  # past the end: a log that was longer
        consumer.seek(made, 2)
        consumer.seek(kept, 2)
        ends = await rewind_remade(consumer, [topics.dlq], "a test reader")
        assert ends == {past: 3, made: 3, kept: 3}
        assert [await consumer.position(tp) for tp in (past, made, kept)] == [0, 0, 2]
    finally:
        await consumer.stop()


async def test_results_go_to_a_partition_the_new_results_topic_has(
    broker: EmbeddedBroker,
) -> None:
    """The results topic made again with one partition (where it had several): after
    ``broker_back`` the publisher names partition 0, not one the old metadata had."""
    broker.start()
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap)
    await ensure_topics(kafka)
    producer = make_producer(kafka)
    await producer.start()
    try:
        publisher = Publisher(producer, kafka.topics)
        keys = [f"mm-{n}".encode() for n in range(20)]
        await wait_for(lambda: publisher.result_partition(keys[0]) is not None, timeout=30)
        before = {publisher.result_partition(k) for k in keys}
        assert before - {0}, before  # keys spread over the old partitions
        kill_broker(broker)
        broker.start()  # same port, empty
        await until_done(lambda: create_results(kafka, partitions=1))
        await until_done(lambda: publisher.broker_back([]))
        assert {publisher.result_partition(k) for k in keys} == {0}
    finally:
        await producer.stop()


async def create_results(kafka: KafkaSettings, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(kafka.topics.results, partitions, 1)])
    finally:
        await admin.close()


async def test_a_daemon_follows_the_state_log_made_again_after_the_broker_came_back(
    broker: EmbeddedBroker, daemons: Daemons, tmp_path: Path
) -> None:
    """The daemon's wiring: after the broker came back empty, a halt another daemon
    publishes to the new state log (at an offset below the one read in the old log)
    reaches this daemon's state follower."""
    broker.start()
    async with exchange(["mm-1"], ["BTC_USDT"], seed=31) as ex:
        settings = daemon_config(broker.bootstrap, "remade", ex.account_configs())
        url = f"http://127.0.0.1:{settings['metrics']['port']}"
        state = settings["kafka"]["topics"]["state"]
        daemon = daemons.start(write_config(tmp_path / "killswitch.toml", settings))
        await wait_ready(url, True, timeout=60)

        async def halted() -> float:
            text = (await wait_http(f"{url}/metrics")).text
            return sum(
                v
                for name, labels, v in metric_samples(text)
                if name == "killswitch_account_halted" and labels.get("account") == "mm-1"
            )

        async def until_halted(value: float) -> None:
            await wait_until(halted, lambda now: now == value, timeout=30)

        # Two records of the old state log read: the follower's position there is 2.
        async with Producer(broker.bootstrap) as producer:
            await producer.send(state, halt("mm-1", True), key="mm-1")
            await until_halted(1)
            await producer.send(state, halt("mm-1", False), key="mm-1")
            await until_halted(0)
        kill_broker(broker)
        broker.start()  # same port, empty: the daemon makes its topics again
        await wait_ready(url, True, timeout=60)
        async with Producer(broker.bootstrap) as producer:
            await producer.send(state, halt("mm-1", True), key="mm-1")  # offset 0
        await until_halted(1)
        daemon.terminate()
        assert await daemon.wait(timeout=30) == 0
