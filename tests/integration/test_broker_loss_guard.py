"""The broker-loss guard with the real engine against the simulator over HTTP.

Kafka stands behind two recording functions here (publish a result, publish a halt
state), which refuse while the test says the broker is away: this is what lets the
test check the guard's holding and retrying, which the subprocess tests in
``tests/reliability/test_broker_loss_policy.py`` see only from outside.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from aiokafka.errors import KafkaTimeoutError

from killswitch.core.model import HaltState, KillRequest, Scope, SweepResult, SweepStatus
from killswitch.core.ports import EngineConfig, ResultSink
from killswitch.engine import Engine
from killswitch.exchange.client import ExchangeClient
from killswitch.kafka.broker_loss import BrokerLossGuard
from killswitch.simulator.core import Simulator
from killswitch.simulator.server import SimulatorServer
from killswitch.simulator.testing import account_settings, register_test_client
from tests.support.engine import Engines
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

SYMBOLS = ["BTC_USDT", "ETH_USDT"]


@dataclass
class FakeKafka:
    """Records what reaches "Kafka"; refuses (as aiokafka does) while ``away``, and
    the next ``refuse_results`` results even when not."""

    away: bool = True
    refuse_results: int = 0
    refusals: int = 0
    published: list[SweepResult | HaltState] = field(default_factory=list)

    async def result(self, result: SweepResult) -> None:
        if self.refuse_results:
            self.refuse_results -= 1
            self.refusals += 1
            raise KafkaTimeoutError("request timed out")
        self._check()
        self.published.append(result)

    async def state(self, state: HaltState) -> None:
        self._check()
        self.published.append(state)

    async def progress(self, result: SweepResult) -> None:
        pass

    def _check(self) -> None:
        if self.away:
            self.refusals += 1
            raise KafkaTimeoutError("no broker")


@dataclass
class Env:
    sim: Simulator
    keys: dict[str, str]
    clients: dict[str, ExchangeClient]

    def open_ids(self, account: str) -> set[int]:
        return self.sim.open_order_ids(self.keys[account])


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    sim = Simulator(seed=41, symbols=SYMBOLS)
    async with SimulatorServer(sim) as server:
        keys, clients = {}, {}
        for account in ("mm-1", "mm-2"):
            api_key, pem = register_test_client(sim, name=account)
            keys[account] = api_key
            settings = account_settings(
                server.base_url, api_key, pem, account, rate_limit_per_second=2000.0, burst=50
            )
            clients[account] = ExchangeClient(settings)
        try:
            yield Env(sim, keys, clients)
        finally:
            for client in clients.values():
                await client.close()


async def wire(
    env: Env, kafka: FakeKafka, after_s: float, engines: Engines
) -> tuple[BrokerLossGuard, Engine]:
    """The guard and the engine as the daemon wires them (mm-1 opted in, mm-2 not)."""

    def start(request: KillRequest, progress: ResultSink) -> Awaitable[SweepResult]:
        return engine.start(request, progress)

    guard = BrokerLossGuard(
        {"mm-1": after_s},
        start,
        publish_result=kafka.result,
        publish_state=kafka.state,
        progress=kafka.progress,
        deadline_s=20.0,
    )
    # A small share of the large test budget for the latch guard's continuous listing.
    settings = EngineConfig(latch_budget_share=0.01, strategy="per_order")
    engine = await engines(Engine(env.clients, settings, on_state=guard.state))
    return guard, engine


async def test_kills_latches_holds_and_publishes_on_recovery(env: Env, engines: Engines) -> None:
    kafka = FakeKafka(away=False)
    for account in env.keys:
        for symbol in SYMBOLS:
            env.sim.seed_orders(env.keys[account], symbol, 4)
    kept = env.open_ids("mm-2")
    guard, engine = await wire(env, kafka, after_s=0.2, engines=engines)
    stop = asyncio.Event()
    runner = asyncio.create_task(guard.run(stop))
    try:
        kafka.away = True
        guard.link_changed(False, "kafka unreachable at 127.0.0.1:1 (test)")
        await wait_for(lambda: env.open_ids("mm-1") == set(), timeout=30)
        await wait_for(lambda: len(guard.held.results) == 1, timeout=30)
        assert kafka.published == []
        assert set(guard.held.states) == {"mm-1"}
        assert set(engine.halted()) == {"mm-1"}
        assert env.open_ids("mm-2") == kept

        # Back, but publishing still fails: everything stays held and is retried.
        kafka.refusals = 0
        guard.link_changed(True, "broker answers")
        await wait_for(lambda: kafka.refusals >= 2, timeout=10)
        assert len(guard.held.results) == 1
        assert set(guard.held.states) == {"mm-1"}
        # Then the state goes through but the result is refused once: it stays held.
        kafka.refuse_results = 1
        kafka.away = False
        await wait_for(lambda: not guard.held, timeout=10)
        assert kafka.refuse_results == 0
    finally:
        stop.set()
        await runner
        await engine.close(1.0)

    state, result = kafka.published
    assert isinstance(state, HaltState)
    assert state.account == "mm-1"
    assert state.halted
    assert state.by == "broker-loss"
    assert isinstance(result, SweepResult)
    assert result.alert_id == state.alert_id
    assert result.alert_id.startswith("broker-loss-mm-1-")
    assert result.status is SweepStatus.FLAT
    assert result.source == "broker-loss"
    assert "on_broker_loss_after_s" in result.trigger_reason
    assert env.open_ids("mm-2") == kept


async def test_a_release_while_the_broker_is_away_replaces_the_held_halt(
    env: Env, engines: Engines
) -> None:
    kafka = FakeKafka(away=True)
    guard, engine = await wire(env, kafka, after_s=0.05, engines=engines)
    stop = asyncio.Event()
    runner = asyncio.create_task(guard.run(stop))
    try:
        guard.link_changed(False, "test")
        await wait_for(lambda: len(guard.held.results) == 1, timeout=30)
        assert guard.held.states["mm-1"].halted
        release = KillRequest("release-1", "mm-1", Scope(), datetime.now(UTC), 10.0)
        assert (await engine.release(release)).was_halted
        assert not guard.held.states["mm-1"].halted
        kafka.away = False
        guard.link_changed(True, "broker answers")
        await wait_for(lambda: not guard.held, timeout=10)
    finally:
        stop.set()
        await runner
        await engine.close(1.0)
    states = [p for p in kafka.published if isinstance(p, HaltState)]
    assert [(s.alert_id, s.halted) for s in states] == [("release-1", False)]
    assert [p.alert_id for p in kafka.published if isinstance(p, SweepResult)] == [
        guard_alert_id(kafka)
    ]


def guard_alert_id(kafka: FakeKafka) -> str:
    ids = [p.alert_id for p in kafka.published if isinstance(p, SweepResult)]
    assert len(ids) == 1
    assert ids[0].startswith("broker-loss-mm-1-")
    return ids[0]
