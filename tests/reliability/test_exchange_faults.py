"""Exchange faults all at once: the engine, the real client and the simulator over loopback.

On every endpoint: 30% 5xx, 10% timeouts (held past the client's read timeout), 5%
dropped connections, and a 429 storm for the first 0.2 s of every second; on cancels
the faulted request still takes effect half the time (the answer is lost, not the
cancel). The simulator's books are the truth: an account is flat when the simulator
says so. The probe (the shipped transport, watched) proves no order had two cancels in
flight at once (as the client sees it: sent and not yet answered, timed out or
dropped) and counts the faults the client lived through.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from killswitch.core.model import KillRequest, Scope, SweepResult, SweepStatus
from killswitch.core.outcomes import Outcome
from killswitch.core.planning import StrategyName
from killswitch.core.ports import EngineConfig
from killswitch.engine import Engine
from killswitch.exchange.client import ExchangeClient
from killswitch.metrics import Metrics
from killswitch.simulator import EndpointFaults, Simulator, SimulatorServer
from killswitch.simulator.testing import account_settings, register_test_client
from tests.support import figures
from tests.support.engine import Engines
from tests.support.probe import CancelProbe

pytestmark = pytest.mark.integration

ACCOUNT = "mm-1"
IN_SCOPE = ["BTC_USDT", "ETH_USDT", "SOL_USDT"]
OUT_OF_SCOPE = "DOGE_USDT"

ALL_FAULTS = EndpointFaults(
    latency_ms=1,
    jitter_ms=3,
    error_rate=0.30,
    timeout_rate=0.10,
    timeout_hold_s=0.6,
    drop_rate=0.05,
    storm_period_s=1.0,
    storm_duration_s=0.2,
)


@dataclass
class Env:
    sim: Simulator
    server: SimulatorServer
    api_key: str = field(repr=False)
    pem: bytes = field(repr=False)

    def seed(self, per_symbol: int) -> set[int]:
        ids: set[int] = set()
        for symbol in IN_SCOPE:
            ids |= set(self.sim.seed_orders(self.api_key, symbol, per_symbol))
        return ids

    def open_in_scope(self) -> set[int]:
        return {i for s in IN_SCOPE for i in self.sim.open_order_ids(self.api_key, s)}

    def faults_on(self) -> None:
        self.sim.set_faults(ALL_FAULTS)
        self.sim.set_faults(dataclasses.replace(ALL_FAULTS, after_effect=True), "cancel")

    @asynccontextmanager
    async def client(
        self, registry: CollectorRegistry, **overrides: Any
    ) -> AsyncIterator[tuple[ExchangeClient, CancelProbe, Metrics]]:
        options: dict[str, Any] = {
            "rate_limit_per_second": 400.0,
            "burst": 20,
            "max_concurrency": 8,
            "max_attempts": 8,
            "backoff_base_s": 0.01,
            "backoff_cap_s": 0.1,
            "read_timeout_s": 0.25,
            "request_deadline_s": 3.0,
            **overrides,
        }
        settings = account_settings(
            self.server.base_url, self.api_key, self.pem, ACCOUNT, **options
        )
        metrics = Metrics(registry, [ACCOUNT])
        probe = CancelProbe(max_connections=options["max_concurrency"] + 1)
        async with ExchangeClient(settings, observer=metrics, transport=probe) as client:
            yield client, probe, metrics


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    sim = Simulator(seed=11, symbols=[*IN_SCOPE, OUT_OF_SCOPE])
    async with SimulatorServer(sim) as server:
        api_key, pem = register_test_client(sim, name=ACCOUNT)
        yield Env(sim, server, api_key, pem)


def kill(deadline_s: float, alert_id: str = "faults-1") -> KillRequest:
    return KillRequest(
        alert_id=alert_id,
        account=ACCOUNT,
        scope=Scope(symbols=frozenset(IN_SCOPE)),
        received_at=datetime.now(UTC),
        deadline_s=deadline_s,
        source="reliability",
    )


async def no_progress(result: SweepResult) -> None:
    pass


def assert_one_outcome_each(result: SweepResult, registry: CollectorRegistry) -> None:
    """Every resolved order appears once with one outcome; counts and metrics agree."""
    ids = [o.order_id for o in result.orders]
    assert len(ids) == len(set(ids)), "an order reported twice"
    assert result.counts.resolved == len(ids)
    tally = Counter(o.outcome for o in result.orders)
    for outcome in Outcome:
        assert getattr(result.counts, outcome.value) == tally[outcome], outcome
        if outcome is not Outcome.SKIPPED:
            metric = registry.get_sample_value(
                "killswitch_cancels_total", {"account": ACCOUNT, "outcome": outcome.value}
            )
            assert metric == tally[outcome], f"metric for {outcome.value}"


def record_faults(env: Env, probe: CancelProbe) -> None:
    for status in ("500", "502", "503", "504", "429", "timeout", "drop"):
        figures.add(
            f"exchange faults survived: {status}", env.sim.count(env.api_key, status=status)
        )
    figures.add("exchange faults seen by the client", probe.faults_seen())


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["per_order", "batch"])
async def test_all_faults_together_still_reach_flat(
    env: Env, strategy: StrategyName, engines: Engines
) -> None:
    seeded = env.seed(30)
    untouchable = set(env.sim.seed_orders(env.api_key, OUT_OF_SCOPE, 10))
    env.faults_on()
    registry = CollectorRegistry()
    async with env.client(registry) as (client, probe, metrics):
        engine = await engines(
            Engine(
                {ACCOUNT: client},
                EngineConfig(strategy=strategy, batch_size=10, progress_interval_s=0.2),
                metrics,
                concurrency=8,
            )
        )
        result = await engine.submit(kill(deadline_s=60.0), no_progress)
        await engine.close(1.0)
    record_faults(env, probe)

    assert result.status is SweepStatus.FLAT, result.reason
    assert env.open_in_scope() == set(), "the simulator still has open orders in scope"
    assert result.residual_open == 0
    assert_one_outcome_each(result, registry)
    assert seeded <= {o.order_id for o in result.orders}, "a seeded order was never resolved"
    assert env.sim.open_order_ids(env.api_key, OUT_OF_SCOPE) == untouchable
    assert not set(probe.cancels_sent) & untouchable, "a cancel outside the scope"
    assert probe.overlaps == [], "two cancels in flight at once for one order"
    # The faults really happened, of every kind.
    server_errors = sum(env.sim.count(env.api_key, status=c) for c in (500, 502, 503, 504))
    assert server_errors > 0
    for status in (429, "timeout", "drop"):
        assert env.sim.count(env.api_key, status=status) > 0, status
    assert probe.answers["ReadTimeout"] > 0


@pytest.mark.slow
async def test_a_short_deadline_ends_residual_with_an_honest_count(
    env: Env, engines: Engines
) -> None:
    seeded = env.seed(100)
    env.faults_on()
    registry = CollectorRegistry()
    # 40 requests/s for 300 orders: the 2 s deadline cannot be met.
    async with env.client(registry, rate_limit_per_second=40.0, burst=5) as (
        client,
        probe,
        metrics,
    ):
        # per_order: one request per order is what makes the deadline too short
        settings = EngineConfig(strategy="per_order", progress_interval_s=0.2)
        engine = await engines(Engine({ACCOUNT: client}, settings, metrics))
        result = await engine.submit(kill(deadline_s=2.0), no_progress)
        await engine.close(1.0)
    record_faults(env, probe)

    still_open = env.open_in_scope()
    assert result.status is SweepStatus.RESIDUAL, result.reason
    assert still_open, "the deadline was meant to be too short"
    # Honest: residual_open is never fewer than the exchange still has open on the pairs
    # the sweep listed to the end, and every pair it did not is named (unlisted_pairs,
    # and the reason). No order is claimed cancelled (sent / already closed) that the
    # exchange still has.
    reason = result.reason or ""
    unlisted = set(result.unlisted_pairs)
    assert unlisted <= set(IN_SCOPE)
    assert all(s in reason for s in result.unlisted_pairs[:10])
    counted = {i for s in set(IN_SCOPE) - unlisted for i in env.sim.open_order_ids(env.api_key, s)}
    assert result.residual_open >= len(counted), reason
    assert result.residual_open <= len(seeded)
    if result.residual_open < len(still_open):
        assert unlisted, f"residual_open {result.residual_open} < {len(still_open)}: {reason}"
        assert "never listed" in reason
    claimed_closed = {
        o.order_id for o in result.orders if o.outcome in (Outcome.SENT, Outcome.ALREADY_CLOSED)
    }
    assert not claimed_closed & still_open
    assert_one_outcome_each(result, registry)
    residual_metric = registry.get_sample_value(
        "killswitch_residual_open_orders", {"account": ACCOUNT}
    )
    assert residual_metric == result.residual_open
    unlisted_metric = registry.get_sample_value(
        "killswitch_residual_unlisted_pairs", {"account": ACCOUNT}
    )
    assert unlisted_metric == len(unlisted)
    assert probe.overlaps == []
