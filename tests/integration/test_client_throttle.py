"""Issue 13 against the simulator over real HTTP: exchanges that want public endpoints
signed, throttle windows (with and without ``Retry-After``), sliding-window limits and
redirects, for the client alone and for a whole kill through the engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import pytest
from prometheus_client import CollectorRegistry

from killswitch.core.model import KillRequest, Scope, SweepResult, SweepStatus
from killswitch.core.outcomes import Outcome, RejectReason
from killswitch.core.ports import EngineConfig
from killswitch.engine import Engine
from killswitch.exchange.client import ExchangeClient
from killswitch.exchange.errors import Redirected
from killswitch.health import Readiness, ReadinessObserver
from killswitch.metrics import Metrics
from killswitch.observability import ExchangeProbe
from killswitch.simulator import Simulator, SimulatorServer
from killswitch.simulator.testing import account_settings, register_test_client

pytestmark = pytest.mark.integration

ACCOUNT = "mm-1"
SYMBOL = "BTC_USDT"
ELSEWHERE = "https://api.elsewhere.example/coin/internal/v1/order"


@dataclass
class Env:
    sim: Simulator
    server: SimulatorServer
    api_key: str
    pem: bytes

    def client(self, **overrides: Any) -> ExchangeClient:
        base: dict[str, Any] = {
            "rate_limit_per_second": 1000.0,
            "burst": 50,
            "backoff_base_s": 0.01,
            "backoff_cap_s": 0.2,
            "read_timeout_s": 2.0,
        }
        base.update(overrides)
        settings = account_settings(self.server.base_url, self.api_key, self.pem, ACCOUNT, **base)
        return ExchangeClient(settings)


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    sim = Simulator(seed=11, symbols=[SYMBOL, "ETH_USDT"])
    async with SimulatorServer(sim) as server:
        api_key, pem = register_test_client(sim)
        yield Env(sim, server, api_key, pem)


# -- public endpoints that want a signature ---------------------------------------------------


async def test_public_endpoints_work_when_the_exchange_wants_them_signed(env: Env) -> None:
    env.sim.public_auth = True
    (order_id,) = env.sim.seed_orders(env.api_key, SYMBOL, 1)
    async with env.client() as client:
        offset = await client.sync_clock()
        pairs = await client.exchange_info()
        result = await client.cancel_order(order_id, SYMBOL)
        assert client.signs_public
    assert abs(offset) < 1000
    assert {p.symbol for p in pairs} == {SYMBOL, "ETH_USDT"}
    assert result.outcome is Outcome.SENT


async def test_readiness_never_calls_a_working_key_refused(env: Env) -> None:
    """The probe's first unsigned public call (its clock sync) is refused (401), its
    signed retry, the signed exchange info and the listing are accepted: readiness says
    ready, not 'auth rejected'."""
    env.sim.public_auth = True
    readiness = Readiness.for_accounts([ACCOUNT], 60.0)
    readiness.set_consuming(True)
    observer = ReadinessObserver(Metrics(CollectorRegistry(), [ACCOUNT]), readiness)
    settings = account_settings(env.server.base_url, env.api_key, env.pem, ACCOUNT)
    async with ExchangeClient(settings, observer=observer) as client:
        await ExchangeProbe({ACCOUNT: client}, 60.0, readiness).round()
    refused = [env.sim.count(None, endpoint, 401) for endpoint in ("time", "exchange_info")]
    assert refused == [1, 0]  # refused unsigned, once: then every public call is signed
    assert readiness.evaluate(0.0).reasons == ()


# -- throttle windows --------------------------------------------------------------------------


@pytest.mark.parametrize("retry_after", ["seconds", "date"])
async def test_a_throttle_window_with_retry_after_is_waited_out(
    env: Env, retry_after: Literal["seconds", "date"]
) -> None:
    ids = env.sim.seed_orders(env.api_key, SYMBOL, 6)
    env.sim.set_throttle_window(after_requests=1, duration_s=1.0, retry_after=retry_after)
    async with env.client(max_attempts=2) as client:
        first = await client.cancel_order(ids[0], SYMBOL)  # the request that opens the window
        rest = await asyncio.gather(*(client.cancel_order(i, SYMBOL) for i in ids[1:]))
        paused_until = client.limiter.paused_until
    assert first.outcome is Outcome.SENT
    # Throttled answers used up no attempt (max_attempts is 2): every cancel landed.
    assert {r.outcome for r in rest} == {Outcome.SENT}
    assert paused_until > 0  # the window was announced and the key paused
    throttled = env.sim.count(env.api_key, "cancel", 429)
    assert 1 <= throttled <= len(rest)  # nothing sent again into the announced window
    assert env.sim.open_order_ids(env.api_key) == set()


async def test_a_throttle_window_without_retry_after_is_ridden_out(env: Env) -> None:
    ids = env.sim.seed_orders(env.api_key, SYMBOL, 20)
    env.sim.set_throttle_window(after_requests=1, duration_s=1.0, retry_after=None)
    async with env.client(max_attempts=2, request_deadline_s=10.0) as client:
        results = await asyncio.gather(*(client.cancel_order(i, SYMBOL) for i in ids))
    assert {r.outcome for r in results} == {Outcome.SENT}
    assert env.sim.count(env.api_key, "cancel", 429) > 0
    assert env.sim.open_order_ids(env.api_key) == set()


async def test_a_sliding_window_limit_ends_with_the_limiter_near_its_rate(env: Env) -> None:
    env.sim.set_rate_limit_kind("sliding_window", 1.0)
    env.sim.set_rate_limit(60.0, api_key=env.api_key)
    ids = env.sim.seed_orders(env.api_key, SYMBOL, 240)
    async with env.client(
        rate_limit_per_second=100.0, burst=10, max_concurrency=8, max_attempts=2
    ) as client:
        results = await asyncio.gather(*(client.cancel_order(i, SYMBOL) for i in ids))
        rate = client.limiter.rate
    assert {r.outcome for r in results} == {Outcome.SENT}
    assert env.sim.count(env.api_key, "cancel", 429) > 0
    assert rate >= 0.6 * 60  # back near the exchange's limit, not stuck at the floor


# -- redirects ---------------------------------------------------------------------------------


async def test_a_redirect_on_a_listing_or_a_cancel_is_never_followed(env: Env) -> None:
    (order_id,) = env.sim.seed_orders(env.api_key, SYMBOL, 1)
    env.sim.set_redirect(ELSEWHERE, 307)
    async with env.client() as client:
        with pytest.raises(Redirected) as info:
            async for _ in client.open_orders(SYMBOL):
                pass
        result = await client.cancel_order(order_id, SYMBOL)
    assert info.value.location == ELSEWHERE
    assert (result.outcome, result.reason, result.status, result.attempts) == (
        Outcome.REJECTED,
        RejectReason.REDIRECT,
        307,
        1,
    )
    assert result.error is not None
    assert ELSEWHERE in result.error
    assert env.sim.open_order_ids(env.api_key) == {order_id}  # nothing happened


async def test_readiness_shows_a_redirect_as_a_configuration_problem(env: Env) -> None:
    env.sim.set_redirect(ELSEWHERE, 307)
    readiness = Readiness.for_accounts([ACCOUNT], 60.0)
    readiness.set_consuming(True)
    observer = ReadinessObserver(Metrics(CollectorRegistry(), [ACCOUNT]), readiness)
    settings = account_settings(env.server.base_url, env.api_key, env.pem, ACCOUNT)
    async with ExchangeClient(settings, observer=observer) as client:
        await ExchangeProbe({ACCOUNT: client}, 60.0, readiness).round()
    assert readiness.evaluate(0.0).reasons == (
        f"{ACCOUNT}: exchange answered 307 redirect to {ELSEWHERE} on open_orders: check base_url",
    )


# -- a whole kill through a throttle window ----------------------------------------------------


def kill(deadline_s: float = 30.0) -> KillRequest:
    return KillRequest(
        alert_id="throttled-kill",
        account=ACCOUNT,
        scope=Scope(symbols=frozenset({SYMBOL})),
        received_at=datetime.now(UTC),
        deadline_s=deadline_s,
        source="integration",
    )


async def no_progress(result: SweepResult) -> None:
    pass


async def run_kill(env: Env, **client: Any) -> SweepResult:
    async with (
        env.client(**client) as exchange,
        Engine(
            {ACCOUNT: exchange}, EngineConfig(strategy="per_order", progress_interval_s=0.2)
        ) as engine,
    ):
        result = await engine.submit(kill(), no_progress)
        await engine.close(1.0)
    return result


@pytest.mark.parametrize("retry_after", ["seconds", None])
async def test_a_kill_rides_out_a_3s_window_with_no_order_failed(
    env: Env, retry_after: Literal["seconds"] | None
) -> None:
    """800 orders, 150/s, everything answered 429 for 3 s after the 50th request."""
    env.sim.seed_orders(env.api_key, SYMBOL, 800)
    env.sim.set_throttle_window(after_requests=50, duration_s=3.0, retry_after=retry_after)
    result = await run_kill(
        env, rate_limit_per_second=150.0, burst=20, max_concurrency=16, backoff_cap_s=1.0
    )
    assert result.status is SweepStatus.FLAT, result.reason
    assert result.counts.failed == 0
    assert result.counts.sent + result.counts.already_closed == 800
    assert env.sim.count(env.api_key, "cancel", 429) > 0
    assert env.sim.open_order_ids(env.api_key) == set()
