"""The stop stays bounded when the broker is lost again while the consumer rejoins.

A broker that came back (empty) makes the consumer rejoin its group: the revocation
commits what completed, in aiokafka's coordination task. Lost again at that moment, the
broker leaves that commit retrying for as long as the coordinator is unknown, and for
ever once the consumer is closing; ``consumer.stop()`` waits for that task, so a
daemon's stop would wait for a second signal. The revocation's commit is given up after
``REVOKE_COMMIT_S`` (the record is replayed by the next owner: at least once).

In-process (the intake on the real broker, the engine a test double): the moment of the
second loss is the intake's own assignment hook, run by the revocation before it commits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from killswitch.embedded import EmbeddedBroker
from killswitch.kafka.consumer import Intake
from tests.support.broker import kill_broker
from tests.support.intake import (
    FakeEngine,
    alert_message,
    create_all_topics,
    make_settings,
    running_intake,
)
from tests.support.topics import produce, read_to_end
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GRACE_S = 1.0
COMMIT_S = 1.0  # the daemon's commit bound at a stop with the broker gone
# Well above what the stop needs (the revocation's commit bound, then the grace and the
# stop's commit), well below "for ever".
STOP_DEADLINE_S = 30.0


async def test_a_broker_lost_while_the_consumer_rejoins_does_not_hold_up_the_stop(
    broker: EmbeddedBroker, unique_name: Callable[[str], str]
) -> None:
    broker.start()
    settings = make_settings(broker.bootstrap, unique_name)
    await create_all_topics(settings)
    topics = settings.kafka.topics
    engine = FakeEngine()
    engine.hold("mm-1")
    back = asyncio.Event()  # the broker came back once
    lost_again = asyncio.Event()
    running: list[Intake] = []
    finals: list[dict[str, Any]] = []  # the held alert's, read before the second loss

    async def on_assignment() -> None:
        """The revocation of the rejoin after the broker came back: a record completes
        (its offset is due for commit), then the broker is lost before the commit."""
        intake = running[0] if running else None
        if intake is None or not back.is_set() or intake.assignment or lost_again.is_set():
            return
        engine.let_go("mm-1")
        await wait_for(lambda: intake.in_flight == 0, timeout=20)  # result acknowledged
        finals.extend((await read_to_end(broker.bootstrap, topics.results)).finals("held"))
        kill_broker(broker)
        lost_again.set()

    async with running_intake(settings, engine, on_assignment=on_assignment) as run:
        running.append(run.intake)
        await produce(settings, [alert_message("held")])
        await wait_for(lambda: len(engine.calls) == 1, timeout=20)  # being swept, held

        kill_broker(broker)
        back.set()
        broker.start()  # same port, empty
        await create_all_topics(settings)  # as the daemon does when the broker is back
        await wait_for(lost_again.is_set, timeout=30)
        # The sweep's final result reached the broker before it was lost again.
        assert [r["status"] for r in finals] == ["flat"]

        async with asyncio.timeout(STOP_DEADLINE_S):
            await run.intake.shutdown(GRACE_S, COMMIT_S)
        # Never committed (the broker was gone): the next owner replays the record.
        assert run.intake.committed_total == 0
        broker.start()  # for the helpers' own clean-up
