"""Shared fixtures: the Kafka the integration tests talk to.

By default a session-wide embedded broker (Tansu) on a free loopback port, stopped
at the end of the session whatever happens. With KILLSWITCH_TEST_BOOTSTRAP set,
the tests use that Kafka instead and start nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from killswitch.embedded import BrokerUnavailable, EmbeddedBroker
from tests.reliability.figures import FIGURES

BOOTSTRAP_ENV = "KILLSWITCH_TEST_BOOTSTRAP"
FIGURES_ENV = "KILLSWITCH_RELIABILITY_FIGURES"
_WORKER_FIGURES = "reliability_figures"


def pytest_sessionfinish(session: pytest.Session) -> None:
    """On a pytest-xdist worker, hand the figures it counted to the controller."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput[_WORKER_FIGURES] = dict(FIGURES)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """On the controller, add up the figures of each worker as it finishes."""
    FIGURES.update(getattr(node, "workeroutput", {}).get(_WORKER_FIGURES, {}))


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """Print the reliability figures (and write them to $KILLSWITCH_RELIABILITY_FIGURES)."""
    if hasattr(config, "workerinput") or not FIGURES:
        return
    terminalreporter.section("reliability figures")
    for name in sorted(FIGURES):
        terminalreporter.write_line(f"{name}: {FIGURES[name]}")
    target = os.environ.get(FIGURES_ENV)
    if target:
        Path(target).write_text(json.dumps(dict(sorted(FIGURES.items())), indent=2) + "\n")


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
