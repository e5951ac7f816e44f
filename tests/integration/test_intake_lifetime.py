"""The intake's run is the lifetime of its tasks: however the run ends, none is left."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Literal

import pytest

from killswitch.exchange.client import ExchangeClient
from killswitch.kafka import consumer
from killswitch.simulator import EndpointFaults, Simulator, SimulatorServer
from killswitch.simulator.testing import account_settings, register_test_client
from tests.support.intake import alert_message, create_all_topics, make_settings, running_intake
from tests.support.topics import produce
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

Unique = Callable[[str], str]


def intake_tasks(run_task: asyncio.Task[None]) -> list[asyncio.Task[object]]:
    """The running tasks executing the intake module's code, other than the run itself,
    whatever their names: records' and groups' work, the committer, pair-list fetches."""
    here = consumer.__file__
    return [
        task
        for task in asyncio.all_tasks()
        if task is not run_task
        and not task.done()
        and getattr(task.get_coro(), "cr_code", None) is not None
        and task.get_coro().cr_code.co_filename == here  # type: ignore[union-attr]
    ]


@pytest.fixture
async def cold_pairs() -> AsyncIterator[ExchangeClient]:
    """mm-1's exchange client with no pair list yet, whose exchange-info never answers in
    time: an alert naming pairs waits for a fetch, which stays running."""
    sim = Simulator(seed=3)
    api_key, pem = register_test_client(sim, name="mm-1")
    sim.set_faults(EndpointFaults(timeout_rate=1.0, timeout_hold_s=5.0), endpoint="exchange_info")
    server = SimulatorServer(sim)
    await server.start()
    client = ExchangeClient(account_settings(server.base_url, api_key, pem, "mm-1"))
    try:
        yield client
    finally:
        await client.close()
        await server.close()


@pytest.mark.parametrize("ending", ["cancelled", "abandon", "shutdown"])
async def test_no_task_of_the_intake_outlives_its_run(
    kafka_bootstrap: str,
    unique_name: Unique,
    cold_pairs: ExchangeClient,
    ending: Literal["cancelled", "abandon", "shutdown"],
) -> None:
    settings = make_settings(kafka_bootstrap, unique_name)
    await create_all_topics(settings)
    async with running_intake(settings, pairs={"mm-1": cold_pairs}) as run:
        run.engine.hold("mm-1")
        await produce(settings, [alert_message("life-1", scope={"symbols": ["BTC_USDT"]})])
        # Running: the committer, the record's work, the pair-list fetch it waits for.
        await wait_for(lambda: run.intake.in_flight == 1 and len(intake_tasks(run.task)) >= 3)
        if ending == "cancelled":  # the run's owner cancels it
            run.task.cancel()
        elif ending == "abandon":
            await run.intake.abandon()
        else:
            await run.intake.shutdown(grace_s=0.2)
        await asyncio.wait([run.task])
        left = [task.get_name() for task in intake_tasks(run.task)]
        assert left == []
        assert run.intake.in_flight == 0
        run.engine.let_go("mm-1")
