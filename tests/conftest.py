"""Shared fixtures: the Kafka the integration tests talk to.

By default a session-wide embedded broker (Tansu) on a free loopback port, stopped
at the end of the session whatever happens. With KILLSWITCH_TEST_BOOTSTRAP set,
the tests use that Kafka instead and start nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from killswitch.embedded import BrokerUnavailable, EmbeddedBroker

BOOTSTRAP_ENV = "KILLSWITCH_TEST_BOOTSTRAP"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address of the Kafka under test."""
    external = os.environ.get(BOOTSTRAP_ENV)
    if external:
        yield external
        return
    try:
        broker = EmbeddedBroker().start()
    except BrokerUnavailable as exc:
        pytest.fail(f"embedded broker unavailable: {exc}")
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


async def create_topics(
    bootstrap: str, names: list[str], partitions: int = 1, **client_options: object
) -> None:
    """Create topics (idempotent) with aiokafka's admin client."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_options)
    await admin.start()
    try:
        for name in names:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [NewTopic(name=name, num_partitions=partitions, replication_factor=1)]
                )
    finally:
        await admin.close()


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """Per-test unique names, so tests sharing one broker never see each other's data."""
    tag = uuid.uuid4().hex[:8]
    return lambda base: f"{base}.{tag}"


async def wait_for(
    condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01
) -> None:
    """Wait until ``condition()`` holds, failing the test after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
