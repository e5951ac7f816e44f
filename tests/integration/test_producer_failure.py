"""A daemon whose Kafka producer stops working (embedded broker, exchange simulator).

The fault is injected into the daemon's real aiokafka producer, in process: an error
escaping its sender task (what aiokafka's own bugs look like), the task cancelled, the
producer closed underneath the daemon. Each time the daemon must go not ready with the
reason and stop, raising ``ProducerUnusable`` (``run()`` exits 1 on it, for the
supervisor to start it again), and commit no record without its results.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from killswitch.daemon import Daemon, async_run
from killswitch.health import Readiness
from killswitch.kafka.outputs import ProducerUnusable, sender_task
from killswitch.tasks import cancel_and_wait
from tests.support.exchange import exchange
from tests.support.inprocess import ACCOUNTS, SYMBOLS, daemon_settings, prepare_topics
from tests.support.intake import alert_message
from tests.support.topics import TopicCollector, committed, produce
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

Unique = Callable[[str], str]


def _failing_drain(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError("injected fault in the sender routine")


async def _inject(fault: str, producer: AIOKafkaProducer) -> str:
    """Break the producer as ``fault`` says; the readiness reason it must lead to."""
    task = sender_task(producer)
    assert task is not None
    assert not task.done()
    if fault == "fails":
        # The sender task calls this for every batch it sends: the next record enqueued
        # makes an exception escape aiokafka's sender routine, which ends the task.
        producer._message_accumulator.drain_by_nodes = _failing_drain
        return "kafka producer unusable: its sender task failed (KafkaError from RuntimeError)"
    if fault == "cancelled":
        task.cancel()
        return "kafka producer unusable: its sender task was stopped"
    await producer.stop()
    return "kafka producer unusable: closed while still in use"


def _reasons(readiness: Readiness) -> tuple[str, ...]:
    return readiness.evaluate(time.monotonic()).reasons


@pytest.mark.parametrize("fault", ["fails", "cancelled", "closed"])
async def test_a_dead_producer_makes_the_daemon_not_ready_and_stop(
    kafka_bootstrap: str, unique_name: Unique, fault: str
) -> None:
    async with exchange(ACCOUNTS, seed=7) as ex:
        settings = daemon_settings(
            kafka_bootstrap,
            unique_name,
            ex,
            metrics={"enabled": True, "host": "127.0.0.1", "port": 0},
            engine={"shutdown_grace_s": 1.0},
        )
        await prepare_topics(settings)
        ex.seed("mm-1", SYMBOLS, 10)
        stop, ready, started = asyncio.Event(), asyncio.Event(), list[Daemon]()
        task = asyncio.create_task(
            async_run(settings, stop_event=stop, ready_event=ready, on_started=started.append)
        )
        try:
            async with TopicCollector(kafka_bootstrap, settings.kafka.topics.results) as results:
                await wait_for(ready.is_set, timeout=30)
                daemon = started[0]
                readiness = daemon.observability.readiness
                assert readiness is not None
                await wait_for(lambda: not _reasons(readiness), timeout=20)
                reason = await _inject(fault, daemon.publisher._producer)
                # An alert after the fault: swept, but its result cannot be published.
                await produce(settings, [alert_message("dead-1", ["mm-1"])])
                await wait_for(lambda: reason in _reasons(readiness), timeout=10)
                await wait_for(stop.is_set, timeout=10)  # the daemon stops on its own
                with pytest.raises(ProducerUnusable) as raised:
                    await asyncio.wait_for(task, timeout=30)
                assert str(raised.value) == daemon.publisher.unusable == reason
                # No record committed without its results: the next owner replays it.
                assert (await results.to_end()).finals("dead-1") == []
        finally:
            stop.set()
            if not task.done():  # the test failed before the daemon ended
                await cancel_and_wait(task)
        topics = settings.kafka.topics
        bootstrap = settings.kafka.bootstrap_servers
        assert await committed(bootstrap, settings.kafka.group_id, topics.alerts) in (None, 0)
