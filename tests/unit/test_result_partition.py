"""The partition ``Publisher.results`` names for a key is the one aiokafka's ``send``
would pick for that key alone (so a final lands where its progress results did), over
the producer's real metadata object: for several partition counts, after the topic
gains partitions, and not before its partitions are known (no broker: the metadata
is fed to aiokafka's own cluster object as a broker's answer would be)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.protocol.metadata import MetadataResponse_v0

from killswitch.config import TopicSettings
from killswitch.kafka.outputs import Publisher

TOPICS = TopicSettings()
KEYS = [f"mm-{n}".encode() for n in range(40)] + [b"", b"x", "akun-\u00e9".encode()]


@pytest.fixture
async def producer() -> AsyncIterator[AIOKafkaProducer]:
    made = AIOKafkaProducer()  # never started: its metadata is fed by hand
    yield made
    await made.stop()


def learn(producer: AIOKafkaProducer, partitions: int) -> None:
    """The producer's metadata as a broker answering with ``partitions`` partitions of
    the results topic (partition 0 without a leader: unavailable) would set it."""
    rows = [(0, p, -1 if p == 0 and partitions > 1 else 0, [0], [0]) for p in range(partitions)]
    answer = MetadataResponse_v0([(0, "127.0.0.1", 9092)], [(0, TOPICS.results, rows)])
    producer.client.cluster.update_metadata(answer)


def send_would_pick(producer: AIOKafkaProducer, key: bytes) -> int:
    # The step of AIOKafkaProducer.send that picks a partition for a keyed record.
    picked: int = producer._partition(TOPICS.results, None, key, b"v", key, b"v")
    return picked


async def test_the_partition_named_is_the_one_send_picks(producer: AIOKafkaProducer) -> None:
    publisher = Publisher(producer, TOPICS)
    for count in (1, 2, 3, 7, 12, 50):
        learn(producer, count)
        picked = {key: send_would_pick(producer, key) for key in KEYS}
        assert {key: publisher.result_partition(key) for key in KEYS} == picked
        if count > 1:
            assert len(set(picked.values())) > 1  # the keys spread over partitions


async def test_new_partitions_are_taken_into_account(producer: AIOKafkaProducer) -> None:
    publisher = Publisher(producer, TOPICS)
    learn(producer, 2)
    before = {key: publisher.result_partition(key) for key in KEYS}
    learn(producer, 6)
    after = {key: publisher.result_partition(key) for key in KEYS}
    assert after == {key: send_would_pick(producer, key) for key in KEYS}
    assert after != before  # some keys moved: the partitions worked out before were dropped


async def test_no_partition_is_named_before_the_topic_is_known(producer: AIOKafkaProducer) -> None:
    publisher = Publisher(producer, TOPICS)
    assert publisher.result_partition(b"mm-1") is None  # send() then waits and picks
    learn(producer, 3)
    assert publisher.result_partition(b"mm-1") == send_would_pick(producer, b"mm-1")


async def test_a_topic_without_partitions_names_none(producer: AIOKafkaProducer) -> None:
    publisher = Publisher(producer, TOPICS)
    learn(producer, 0)
    assert publisher.result_partition(b"mm-1") is None
