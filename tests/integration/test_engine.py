"""The kill engine end to end: real ExchangeClient, real simulator over HTTP on loopback.

Faults on (5xx, 429, races, spawned orders). Each test checks the simulator's own state
(flat is what the exchange says, not what the engine believes), the accounting of the
result, and the simulator's request log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from prometheus_client import CollectorRegistry

from killswitch.contracts import ResultRecord, result_to_json
from killswitch.core.model import HaltState, KillRequest, Scope, SweepResult, SweepStatus
from killswitch.core.orders import Order, Side
from killswitch.core.outcomes import Outcome
from killswitch.core.ports import EngineConfig
from killswitch.engine import Engine
from killswitch.exchange.client import ExchangeClient
from killswitch.exchange.errors import ExchangeUnavailable
from killswitch.exchange.http1 import build_transport
from killswitch.metrics import Metrics
from killswitch.simulator.core import LogEntry, Simulator
from killswitch.simulator.faults import EndpointFaults
from killswitch.simulator.server import SimulatorServer
from killswitch.simulator.testing import account_settings, register_test_client
from tests.support.engine import Engines
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

ACCOUNT = "mm-1"
LABEL = "mm-1-key"
SYMBOLS = ["BTC_USDT", "ETH_USDT", "SOL_USDT"]


class InFlightProbe(httpx.AsyncBaseTransport):
    """Wraps the client's real transport and counts cancel requests that overlap for one
    order (a cancel for an order sent while another cancel for it awaits its answer)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.inflight: Counter[int] = Counter()
        self.overlaps = 0

    @staticmethod
    def order_ids(request: httpx.Request) -> list[int]:
        if request.method != "DELETE":
            return []
        path = request.url.path
        if path.endswith("/order"):
            return [int(v) for v in parse_qs(request.url.query.decode()).get("order_id", [])]
        if path.endswith("/order/batch"):
            return [int(i) for i in json.loads(request.content)["order_ids"]]
        return []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        ids = self.order_ids(request)
        for order_id in ids:
            if self.inflight[order_id]:
                self.overlaps += 1
            self.inflight[order_id] += 1
        try:
            return await self.inner.handle_async_request(request)
        finally:
            for order_id in ids:
                self.inflight[order_id] -= 1

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Env:
    sim: Simulator
    server: SimulatorServer
    api_key: str
    pem: bytes

    @asynccontextmanager
    async def client(self, **overrides: Any) -> AsyncIterator[tuple[ExchangeClient, InFlightProbe]]:
        base: dict[str, Any] = {
            "rate_limit_per_second": 2000.0,
            "burst": 50,
            "max_concurrency": 8,
            "max_attempts": 8,
            "backoff_base_s": 0.002,
            "backoff_cap_s": 0.02,
            "request_deadline_s": 5.0,
        }
        base.update(overrides)
        base_url = base.pop("base_url", None) or self.server.base_url
        settings = account_settings(base_url, self.api_key, self.pem, ACCOUNT, **base)
        probe = InFlightProbe(build_transport("http1", max_connections=settings.max_concurrency))
        async with ExchangeClient(settings, transport=probe) as client:
            yield client, probe

    def seed(self, per_symbol: int, symbols: list[str] = SYMBOLS) -> set[int]:
        ids: set[int] = set()
        for symbol in symbols:
            ids |= set(self.sim.seed_orders(self.api_key, symbol, per_symbol))
        return ids

    def open_ids(self) -> set[int]:
        return self.sim.open_order_ids(self.api_key)

    def log(self, endpoint: str | None = None, since: int = 0) -> list[LogEntry]:
        return [
            e
            for e in self.sim.log_since(since)
            if e.client == LABEL and (endpoint is None or e.endpoint == endpoint)
        ]


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    sim = Simulator(seed=7, symbols=SYMBOLS)
    async with SimulatorServer(sim) as server:
        api_key, pem = register_test_client(sim, name=LABEL)
        yield Env(sim, server, api_key, pem)


def engine_settings(**kw: Any) -> EngineConfig:
    # per_order unless a test names its strategy: most tests here follow single cancels
    # (strategy auto, the default, has its own tests below).
    base: dict[str, Any] = {
        "progress_interval_s": 0.05,
        "strategy": "per_order",
        # A halted account's guard lists at this share of the 2,000/s budget: 20/s.
        "latch_budget_share": 0.01,
    }
    base.update(kw)
    return EngineConfig(**base)


def kill(
    alert_id: str = "alert-1",
    *,
    symbols: set[str] | None = None,
    sides: set[Side] | None = None,
    latch: bool = False,
    dry_run: bool = False,
    deadline_s: float = 20.0,
) -> KillRequest:
    return KillRequest(
        alert_id=alert_id,
        account=ACCOUNT,
        scope=Scope(
            symbols=frozenset(symbols) if symbols is not None else None,
            sides=frozenset(sides) if sides is not None else None,
        ),
        received_at=datetime.now(UTC),
        deadline_s=deadline_s,
        latch=latch,
        dry_run=dry_run,
        source="integration",
    )


async def no_progress(result: SweepResult) -> None:
    pass


def assert_accounted(result: SweepResult) -> None:
    """Counts add up and every resolved order has exactly one outcome."""
    ids = [o.order_id for o in result.orders]
    assert len(ids) == len(set(ids)), "an order reported twice"
    assert result.counts.resolved == len(ids)
    tally = Counter(o.outcome for o in result.orders)
    for outcome in Outcome:
        assert getattr(result.counts, outcome.value) == tally[outcome]


def cancelled_ids(entries: list[LogEntry]) -> Counter[int]:
    """Per order id, how many single-order cancel requests reached the simulator."""
    out: Counter[int] = Counter()
    for e in entries:
        if e.endpoint == "cancel":
            out[int(parse_qs(e.query)["order_id"][0])] += 1
    return out


FAULTS = EndpointFaults(error_rate=0.05, throttle_rate=0.05, error_statuses=(500, 502, 503))


# ---------------------------------------------------------------------- strategies


@pytest.mark.parametrize("strategy", ["auto", "per_order", "batch", "symbol"])
async def test_strategy_reaches_flat_under_faults_and_races(
    env: Env, strategy: str, engines: Engines
) -> None:
    seeded = env.seed(60)
    env.sim.set_faults(FAULTS)
    env.sim.set_races(close_before_cancel=0.05, spawn_on_cancel=0.1, lose_cancel=0.05)
    async with env.client() as (client, probe):
        engine = await engines(
            Engine({ACCOUNT: client}, engine_settings(strategy=strategy, batch_size=25))
        )
        result = await engine.submit(kill(), no_progress)
        await engine.close(1.0)

    assert result.status is SweepStatus.FLAT, result.reason
    assert env.open_ids() == set(), "the simulator still has open orders"
    assert result.residual_open == 0
    assert_accounted(result)
    reported = {o.order_id for o in result.orders}
    assert seeded <= reported  # every seeded order resolved...
    assert env.sim.spawned > 0
    assert len(reported) == len(seeded) + env.sim.spawned  # ...and every spawned one
    assert probe.overlaps == 0, "two cancels in flight for one order"
    log = env.log()
    endpoints = Counter(e.endpoint for e in log)
    if strategy == "per_order":
        by_order = cancelled_ids(log)
        attempts = {o.order_id: o.attempts for o in result.orders}
        assert by_order == Counter(attempts)  # each request the exchange saw is accounted
        assert endpoints["cancel_batch"] == endpoints["cancel_all"] == 0
    elif strategy == "batch":
        assert endpoints["cancel_batch"] >= len(seeded) // 25
        assert endpoints["cancel_all"] == 0
    elif strategy == "auto":
        # whole pairs: the first pass is one cancel-all per pair; later passes clean up
        assert endpoints["cancel_all"] >= len(SYMBOLS)
        assert endpoints["cancel_batch"] == 0
        assert endpoints["cancel"] < len(seeded) // 2
    else:
        assert endpoints["cancel_all"] == len(SYMBOLS)
        assert endpoints["cancel_batch"] == 0
    assert result.sweeps >= 2


async def test_batch_fail_ids_are_finished_one_by_one(env: Env, engines: Engines) -> None:
    env.seed(40, ["BTC_USDT"])
    env.sim.set_races(close_before_cancel=0.3)
    async with env.client() as (client, probe):
        engine = await engines(
            Engine(
                {ACCOUNT: client}, engine_settings(strategy="batch", batch_size=20), concurrency=2
            )
        )
        result = await engine.submit(kill(), no_progress)
        await engine.close(1.0)
    assert result.status is SweepStatus.FLAT
    assert env.open_ids() == set()
    assert_accounted(result)
    singles = cancelled_ids(env.log())
    assert singles, "ids in a batch's fail list get a per-order cancel"
    # the per-order cancel of a fail id finds it closed (it closed on its own)
    by_id = {o.order_id: o for o in result.orders}
    assert all(by_id[i].outcome is Outcome.ALREADY_CLOSED for i in singles)
    assert result.counts.sent + result.counts.already_closed == result.counts.resolved
    assert probe.overlaps == 0


async def test_largest_notional_is_cancelled_first(env: Env, engines: Engines) -> None:
    ids: list[int] = []
    for price, qty in [("10", "1"), ("50000", "2"), ("7", "30"), ("900", "0.5"), ("3", "3")]:
        ids += env.sim.seed_orders(env.api_key, "BTC_USDT", 1, price=price, quantity=qty)
    # Seeded orders may be partly filled: rank by what the exchange says is left.
    notional = {i: Order.from_json(env.sim.order(i) or {}).notional for i in ids}
    async with env.client() as (client, _):
        engine = await engines(Engine({ACCOUNT: client}, engine_settings(), concurrency=1))
        result = await engine.submit(kill(symbols={"BTC_USDT"}), no_progress)
        await engine.close(1.0)
    assert result.status is SweepStatus.FLAT
    assert list(cancelled_ids(env.log())) == sorted(ids, key=lambda i: notional[i], reverse=True)


async def test_priority_ranks_across_pairs_once_listed(env: Env, engines: Engines) -> None:
    # Streaming: the engine cancels while it lists, ranking what it has seen so far. An
    # order far larger than the rest, on the pair listed last, must be the next one picked
    # once its page has arrived: at most one cancel (already waiting for the single slot
    # when the page came in) may go out before it.
    env.seed(20, ["BTC_USDT", "ETH_USDT"])
    big = env.sim.seed_orders(env.api_key, "SOL_USDT", 1, price="100000", quantity="10")[0]
    env.seed(20, ["SOL_USDT"])
    async with env.client(max_concurrency=1) as (client, _):
        engine = await engines(
            Engine({ACCOUNT: client}, engine_settings(page_size=200), concurrency=1)
        )
        result = await engine.submit(kill(), no_progress)
        await engine.close(1.0)
    assert result.status is SweepStatus.FLAT
    log = env.log()
    sol_listed = next(e.seq for e in log if e.endpoint == "open_orders" and "SOL_USDT" in e.query)
    before = [e for e in log if e.endpoint == "cancel" and e.seq < sol_listed]
    after = [e for e in log if e.endpoint == "cancel" and e.seq > sol_listed]
    assert before, "cancelling started before the last pair was listed (streaming)"
    assert big in [int(parse_qs(e.query)["order_id"][0]) for e in after[:2]]


# ------------------------------------------------------------------- failures


async def test_auth_revoked_mid_sweep_fails_fast(env: Env, engines: Engines) -> None:
    env.seed(150)
    async with env.client(rate_limit_per_second=300.0, burst=5) as (client, _):
        engine = await engines(Engine({ACCOUNT: client}, engine_settings()))
        task = asyncio.create_task(engine.submit(kill(), no_progress))
        await wait_for(lambda: env.sim.count(env.api_key, "cancel", 200) >= 20)
        env.sim.revoke(env.api_key)
        result = await task
        await engine.close(1.0)
    assert result.status is SweepStatus.FAILED
    assert result.reason is not None
    assert "authentication" in result.reason
    log = env.log()
    first_401 = next(e.seq for e in log if e.status == 401)
    after = [e for e in log if e.seq > first_401]
    assert len(after) <= 8, f"{len(after)} requests after the first 401"
    assert_accounted(result)
    assert result.counts.resolved >= result.counts.sent >= 20
    assert result.counts.rejected >= 1
    assert env.open_ids()  # it stopped: orders are left, the result says failed


async def test_a_cancel_refused_while_the_clock_is_unmeasured_says_the_clock_may_be_why(
    env: Env, engines: Engines
) -> None:
    # The exchange's clock is 10 minutes ahead and its time endpoint fails: the first
    # cancel (a named pair's cancel-all) is refused like a bad key. The reason must not
    # read as a revoked key only.
    env.seed(5, ["BTC_USDT"])
    env.sim.clock_offset_ms = 600_000
    env.sim.set_faults(EndpointFaults(error_rate=1.0, error_statuses=(503,)), "time")
    async with env.client(max_attempts=2) as (client, _):
        engine = await engines(Engine({ACCOUNT: client}, engine_settings(strategy="auto")))
        result = await engine.submit(kill(symbols={"BTC_USDT"}, deadline_s=5.0), no_progress)
        await engine.close(1.0)
    assert result.status is SweepStatus.FAILED
    assert result.reason is not None
    assert "authentication refused" in result.reason
    assert "the clock offset could not be measured" in result.reason


async def test_exchange_unreachable_fails_with_reason(env: Env, engines: Engines) -> None:
    base_url = env.server.base_url
    await env.server.close()  # nothing listens there any more
    async with env.client(base_url=base_url, max_attempts=2, request_deadline_s=1.0) as (
        client,
        _,
    ):
        engine = await engines(Engine({ACCOUNT: client}, engine_settings()))
        result = await engine.submit(kill(symbols={"BTC_USDT"}, deadline_s=2.0), no_progress)
        await engine.close(1.0)
    assert result.status is SweepStatus.FAILED
    assert result.reason is not None
    assert "unavailable" in result.reason


async def _through_an_outage(
    env: Env, client: ExchangeClient, request: KillRequest
) -> tuple[SweepResult, int]:
    """Submit ``request`` while every request is answered 503; once its sweep has listed
    in vain more passes in a row than make the exchange look unreachable, the exchange
    is back. Its result, and the requests the exchange answered during the outage."""
    env.sim.set_faults(EndpointFaults(error_rate=1.0, error_statuses=(503,)))
    passes: list[int] = []

    async def progress(result: SweepResult) -> None:
        passes.append(result.sweeps)

    async with Engine({ACCOUNT: client}, engine_settings()) as engine:
        task = asyncio.create_task(engine.submit(request, progress))
        await wait_for(lambda: bool(passes) and passes[-1] > 3, timeout=15)
        assert not task.done()
        answered = env.sim.count(env.api_key, status=200)
        env.sim.set_faults(EndpointFaults())
        return await task, answered


@pytest.mark.parametrize("symbols", [{"BTC_USDT"}, None], ids=["pair", "whole-account"])
async def test_an_outage_shorter_than_the_deadline_does_not_fail_the_kill(
    env: Env, symbols: set[str] | None
) -> None:
    seeded = env.seed(20, ["BTC_USDT"])
    async with env.client(max_attempts=2, request_deadline_s=1.0) as (client, _):
        result, answered = await _through_an_outage(
            env, client, kill(symbols=symbols, deadline_s=20.0)
        )
    assert answered == 0
    assert result.status is SweepStatus.FLAT, result.reason
    assert not env.open_ids() & seeded
    assert result.counts.sent == len(seeded)
    assert_accounted(result)


async def test_pairs_unchecked_on_arrival_are_checked_once_the_exchange_is_back(
    env: Env,
) -> None:
    # The exchange is down when the kill arrives, so its pairs cannot be checked (as
    # the intake or `trigger --direct` meet it); back before the deadline, its pair
    # list names them, and the empty listing proves the kill flat.
    seeded = env.seed(10, ["BTC_USDT"])
    env.sim.set_faults(EndpointFaults(error_rate=1.0, error_statuses=(503,)))
    async with env.client(max_attempts=2, request_deadline_s=1.0) as (client, _):
        with pytest.raises(ExchangeUnavailable):
            await client.pair_list()
        request = dataclasses.replace(
            kill(symbols={"BTC_USDT"}, deadline_s=20.0), unchecked_pairs="pair list unavailable"
        )
        result, _ = await _through_an_outage(env, client, request)
    assert result.status is SweepStatus.FLAT, result.reason
    assert not env.open_ids() & seeded


@pytest.mark.parametrize(
    "broken", [("cancel_all",), ("cancel_all", "cancel_batch")], ids=["all", "all-and-batch"]
)
@pytest.mark.parametrize("symbols", [{"BTC_USDT"}, None], ids=["pair", "whole-account"])
async def test_a_bulk_cancel_that_always_fails_gives_way_to_smaller_cancels(
    env: Env, engines: Engines, broken: tuple[str, ...], symbols: set[str] | None
) -> None:
    # The exchange answers listings and single cancels, but its bulk endpoints answer
    # 503 every time: after two failures in a row the sweep cancels one level down.
    seeded = env.seed(30) if symbols is None else env.seed(30, sorted(symbols))
    for endpoint in broken:
        env.sim.set_faults(EndpointFaults(error_rate=1.0, error_statuses=(503,)), endpoint)
    async with env.client(max_attempts=2) as (client, _):
        engine = await engines(Engine({ACCOUNT: client}, engine_settings(strategy="auto")))
        result = await engine.submit(kill(symbols=symbols, deadline_s=20.0), no_progress)
        await engine.close(1.0)
    assert result.status is SweepStatus.FLAT, result.reason
    assert not env.open_ids() & seeded
    assert result.reason is not None
    assert "cancel-all failed 2 time(s) in a row (2 attempt(s) each, last HTTP 503)" in (
        result.reason
    )
    assert_accounted(result)


async def test_a_cancel_all_that_hangs_is_given_up_at_its_first_failure(
    env: Env, engines: Engines
) -> None:
    # No answer at all: each failure held the call for its whole request deadline.
    seeded = env.seed(30, ["BTC_USDT"])
    env.sim.set_faults(EndpointFaults(timeout_rate=1.0, timeout_hold_s=30.0), "cancel_all")
    async with env.client(max_attempts=2, read_timeout_s=0.3, request_deadline_s=1.0) as (
        client,
        _,
    ):
        engine = await engines(Engine({ACCOUNT: client}, engine_settings(strategy="auto")))
        result = await engine.submit(kill(symbols={"BTC_USDT"}, deadline_s=20.0), no_progress)
        await engine.close(1.0)
    assert result.status is SweepStatus.FLAT, result.reason
    assert not env.open_ids() & seeded
    assert env.sim.count(env.api_key, "cancel_all") == 2  # one call's two attempts
    assert result.reason is not None
    assert "cancel-all failed 1 time(s) in a row (2 attempt(s) each, last " in result.reason


async def test_a_cancel_all_whose_connection_drops_is_given_up_only_at_its_second_failure(
    env: Env, engines: Engines
) -> None:
    # A dropped connection is quick, and what an outage of everything looks like too:
    # one such failure does not cost the sweep its cancel-alls.
    seeded = env.seed(30, ["BTC_USDT"])
    env.sim.set_faults(EndpointFaults(drop_rate=1.0), "cancel_all")
    async with env.client(max_attempts=2) as (client, _):
        engine = await engines(Engine({ACCOUNT: client}, engine_settings(strategy="auto")))
        result = await engine.submit(kill(symbols={"BTC_USDT"}, deadline_s=20.0), no_progress)
        await engine.close(1.0)
    assert result.status is SweepStatus.FLAT, result.reason
    assert not env.open_ids() & seeded
    assert result.reason is not None
    assert "cancel-all failed 2 time(s) in a row" in result.reason


async def test_pairs_unchecked_a_moment_ago_are_asked_for_again_before_the_result(
    env: Env, engines: Engines
) -> None:
    # The pair list failed just before the kill (as the intake met it), the exchange is
    # back at once: the sweep asks again before its result, within the client's pause
    # between refreshes, and the exchange's list proves the kill flat.
    seeded = env.seed(10, ["BTC_USDT"])
    env.sim.set_faults(EndpointFaults(error_rate=1.0, error_statuses=(503,)), "exchange_info")
    async with env.client(max_attempts=2, request_deadline_s=1.0) as (client, _):
        with pytest.raises(ExchangeUnavailable):
            await client.pair_list()
        env.sim.set_faults(EndpointFaults())
        request = dataclasses.replace(
            kill(symbols={"BTC_USDT"}, deadline_s=20.0), unchecked_pairs="pair list unavailable"
        )
        engine = await engines(Engine({ACCOUNT: client}, engine_settings()))
        result = await engine.submit(request, no_progress)
        await engine.close(1.0)
    assert result.status is SweepStatus.FLAT, result.reason
    assert not env.open_ids() & seeded


async def test_a_whole_account_kill_without_any_pair_list_fails_at_the_deadline(
    env: Env, engines: Engines
) -> None:
    # The exchange's info hangs past the deadline: no pair was ever known, so nothing
    # was listed. "residual, 0 still open" would read as done while every order is open.
    seeded = env.seed(10)
    env.sim.set_faults(EndpointFaults(timeout_rate=1.0, timeout_hold_s=10.0), "exchange_info")
    async with env.client() as (client, _):
        engine = await engines(Engine({ACCOUNT: client}, engine_settings(settle_grace_s=0.3)))
        result = await engine.submit(kill(deadline_s=1.0), no_progress)
        await engine.close(1.0)
    assert result.status is SweepStatus.FAILED
    assert result.reason is not None
    assert "no pair list" in result.reason
    assert env.open_ids() == seeded


async def test_lost_cancels_end_residual_at_the_deadline(env: Env, engines: Engines) -> None:
    seeded = env.seed(5, ["BTC_USDT"])
    env.sim.set_races(lose_cancel=1.0)  # CANCEL_SENT, but the order stays open
    async with env.client() as (client, _):
        engine = await engines(Engine({ACCOUNT: client}, engine_settings()))
        result = await engine.submit(kill(deadline_s=1.0), no_progress)
        await engine.close(1.0)
    assert result.status is SweepStatus.RESIDUAL
    assert result.residual_open == 5
    assert env.open_ids() == seeded
    assert result.counts.sent == 5
    assert_accounted(result)
    assert all(o.attempts >= 2 for o in result.orders)  # re-cancelled, counted once


# ------------------------------------------------------------------ dry run


async def test_dry_run_sends_no_delete(env: Env, engines: Engines) -> None:
    seeded = env.seed(30)
    async with env.client() as (client, _):
        engine = await engines(Engine({ACCOUNT: client}, engine_settings(strategy="symbol")))
        result = await engine.submit(kill(dry_run=True, sides={Side.BUY}), no_progress)
        await engine.close(1.0)
    assert result.status is SweepStatus.DRY_RUN
    assert [e for e in env.log() if e.method == "DELETE"] == []
    assert env.open_ids() == seeded
    buys = {i for i in seeded if (env.sim.order(i) or {})["side"] == "BUY"}
    assert {o.order_id for o in result.orders} == buys
    assert result.counts.skipped == len(buys)
    assert_accounted(result)


# -------------------------------------------------------- coalescing and latch


async def test_overlapping_kills_coalesce_into_one_sweep(env: Env, engines: Engines) -> None:
    btc = env.seed(150, ["BTC_USDT"])
    eth = env.seed(10, ["ETH_USDT"])
    env.sim.set_faults(EndpointFaults(latency_ms=2.0))
    async with env.client(rate_limit_per_second=400.0, burst=5) as (client, probe):
        engine = await engines(Engine({ACCOUNT: client}, engine_settings()))
        first = asyncio.create_task(engine.submit(kill("a", symbols={"BTC_USDT"}), no_progress))
        await wait_for(lambda: env.sim.count(env.api_key, "cancel") >= 5)
        running = engine._accounts[ACCOUNT].running
        assert running is not None
        second = asyncio.create_task(engine.submit(kill("b", symbols={"ETH_USDT"}), no_progress))
        await wait_for(lambda: len(running.tickets) == 2)  # b joined a's sweep
        a, b = await asyncio.gather(first, second)
        await engine.close(1.0)
    assert (a.status, b.status) == (SweepStatus.FLAT, SweepStatus.FLAT)
    assert env.open_ids() == set()
    assert {o.order_id for o in a.orders} == btc  # each alert its own orders
    assert {o.order_id for o in b.orders} == eth
    assert a.sweeps == b.sweeps == running.passes
    first_pages = [e for e in env.log("open_orders") if "from_order_id" not in e.query]
    listings = Counter(parse_qs(e.query)["symbol"][0] for e in first_pages)
    # one sweep: each pair listed once per pass, never by a second sweep in parallel
    assert listings["BTC_USDT"] == a.sweeps
    assert listings["ETH_USDT"] <= a.sweeps
    assert probe.overlaps == 0


async def test_latch_resweeps_new_orders_then_release_stops(env: Env, engines: Engines) -> None:
    env.seed(10, ["BTC_USDT"])
    states: list[HaltState] = []

    async def on_state(state: HaltState) -> None:
        states.append(state)

    async with env.client() as (client, _):
        engine = await engines(Engine({ACCOUNT: client}, engine_settings(), on_state=on_state))
        result = await engine.submit(kill(latch=True, symbols={"BTC_USDT"}), no_progress)
        assert result.status is SweepStatus.FLAT
        assert states[-1].halted
        late = env.seed(3, ["BTC_USDT"])
        other = env.seed(2, ["ETH_USDT"])  # outside the halt's scope
        await wait_for(lambda: not (late & env.open_ids()))
        guard = engine._guards[ACCOUNT].task
        released = await engine.release(kill("release"))
        assert guard.done()
        seq = max(e.seq for e in env.log())
        after = env.seed(2, ["BTC_USDT"])
        await engine.close(1.0)
    assert released.status is SweepStatus.RELEASED
    assert [s.halted for s in states] == [True, False]
    assert other <= env.open_ids()
    assert after <= env.open_ids()
    assert env.log("cancel", since=seq) == []


async def test_progress_results_during_a_long_sweep(env: Env, engines: Engines) -> None:
    env.seed(60, ["BTC_USDT"])
    events: list[SweepResult] = []

    async def progress(result: SweepResult) -> None:
        events.append(result)

    async with env.client(rate_limit_per_second=200.0, burst=2) as (client, _):
        engine = await engines(Engine({ACCOUNT: client}, engine_settings(progress_interval_s=0.05)))
        result = await engine.submit(kill(), progress)
        await engine.close(1.0)
    assert result.status is SweepStatus.FLAT
    assert events
    assert all(not e.final and e.status is SweepStatus.RUNNING for e in events)
    done = [e.counts.resolved for e in events]
    assert done == sorted(done)  # outcomes only accumulate
    assert done[-1] <= result.counts.resolved


# ----------------------------------------------------------------- strategy auto


def auto_settings(**kw: Any) -> EngineConfig:
    """The product's default strategy (auto), test intervals."""
    settings = EngineConfig(progress_interval_s=0.05, latch_budget_share=0.01, **kw)
    assert settings.strategy == "auto"
    return settings


async def test_auto_whole_account_kill_is_one_cancel_all_per_pair(
    env: Env, engines: Engines
) -> None:
    seeded = env.seed(150)  # more than one page (100) per pair
    async with env.client() as (client, _):
        engine = await engines(Engine({ACCOUNT: client}, auto_settings()))
        result = await engine.submit(kill(), no_progress)
        await engine.close(1.0)
    assert result.status is SweepStatus.FLAT, result.reason
    assert env.open_ids() == set()
    assert {o.order_id for o in result.orders} == seeded
    assert result.counts.sent == len(seeded)
    assert_accounted(result)
    endpoints = Counter(e.endpoint for e in env.log())
    # the fewest requests: per pair its first page, one cancel-all, one verifying listing
    assert endpoints["cancel_all"] == len(SYMBOLS)
    assert endpoints["open_orders"] == 2 * len(SYMBOLS)
    assert endpoints["cancel"] == endpoints["cancel_batch"] == 0
    assert sum(endpoints[e] for e in ("cancel", "cancel_batch", "cancel_all", "open_orders")) == 9


async def test_auto_side_filtered_kill_uses_batches(env: Env, engines: Engines) -> None:
    env.seed(60)
    buys = {i for i in env.open_ids() if (env.sim.order(i) or {})["side"] == "BUY"}
    async with env.client() as (client, probe):
        engine = await engines(Engine({ACCOUNT: client}, auto_settings(batch_size=25)))
        result = await engine.submit(kill(sides={Side.BUY}), no_progress)
        await engine.close(1.0)
    assert result.status is SweepStatus.FLAT, result.reason
    assert not buys & env.open_ids()
    assert env.open_ids(), "the sells stay open"
    assert {o.order_id for o in result.orders} == buys
    assert_accounted(result)
    endpoints = Counter(e.endpoint for e in env.log())
    assert endpoints["cancel_all"] == 0
    assert endpoints["cancel_batch"] >= len(buys) // 25
    # a batch per 25 buys of a pair (and a single DELETE for a batch of one)
    assert endpoints["cancel_batch"] + endpoints["cancel"] <= 3 * len(SYMBOLS)
    assert probe.overlaps == 0


async def test_auto_fail_ids_fall_back_to_per_order(env: Env, engines: Engines) -> None:
    env.seed(40, ["BTC_USDT"])
    env.sim.set_races(close_before_cancel=0.3)  # these land in the cancel-all's "fail"
    async with env.client() as (client, probe):
        engine = await engines(Engine({ACCOUNT: client}, auto_settings()))
        result = await engine.submit(kill(), no_progress)
        await engine.close(1.0)
    assert result.status is SweepStatus.FLAT, result.reason
    assert env.open_ids() == set()
    assert_accounted(result)
    singles = set(cancelled_ids(env.log()))
    by_id = {o.order_id: o for o in result.orders}
    closed = {i for i, o in by_id.items() if o.outcome is Outcome.ALREADY_CLOSED}
    assert singles, "ids in a cancel-all's fail list get a per-order cancel"
    assert singles == closed  # ...which finds them closed (they closed on their own)
    assert env.sim.count(env.api_key, "cancel_all") == 1
    assert probe.overlaps == 0


async def test_auto_refused_cancel_all_falls_back_and_is_remembered(
    env: Env, engines: Engines
) -> None:
    env.seed(120)
    # this exchange has no cancel-all route: 404 to every call
    env.sim.set_faults(EndpointFaults(error_rate=1.0, error_statuses=(404,)), "cancel_all")
    async with env.client() as (client, _):
        engine = await engines(Engine({ACCOUNT: client}, auto_settings()))
        first = await engine.submit(kill("first"), no_progress)
        refused = env.sim.count(env.api_key, "cancel_all")
        env.seed(120)
        second = await engine.submit(kill("second"), no_progress)
        await engine.close(1.0)
    assert (first.status, second.status) == (SweepStatus.FLAT, SweepStatus.FLAT)
    assert env.open_ids() == set()
    assert first.counts.sent == second.counts.sent == 120 * len(SYMBOLS)
    assert_accounted(first)
    assert 1 <= refused <= len(SYMBOLS)  # pairs already under way when the 404 came
    assert env.sim.count(env.api_key, "cancel_all") == refused  # the second kill: none
    assert engine.refused_endpoints(ACCOUNT) == {"cancel_all"}
    assert env.sim.count(env.api_key, "cancel_batch") > 0  # the fallback: batches
    assert env.sim.count(env.api_key, "cancel") == 0
    assert first.reason is None or "cancel-all refused" in first.reason


SWEEP_ENDPOINTS = frozenset({"open_orders", "cancel", "cancel_batch", "cancel_all"})


def sweep_log(env: Env, since: int = 0) -> list[LogEntry]:
    """The sweep's own requests (listings and cancels), in the order the simulator took them."""
    return [e for e in env.log(since=since) if e.endpoint in SWEEP_ENDPOINTS]


async def test_auto_named_pair_kill_cancels_first_and_is_flat_only_after_a_listing(
    env: Env, engines: Engines
) -> None:
    btc = env.seed(40, ["BTC_USDT"])
    others = env.seed(40, ["ETH_USDT"])
    env.sim.set_races(lose_cancel=0.3)  # CANCEL_SENT, yet some orders stay open
    async with env.client() as (client, probe):
        engine = await engines(Engine({ACCOUNT: client}, auto_settings()))
        result = await engine.submit(kill(symbols={"BTC_USDT"}), no_progress)
        await engine.close(1.0)
    assert result.status is SweepStatus.FLAT, result.reason
    assert env.open_ids() == others  # only the named pair
    requests = sweep_log(env)
    first = requests[0]
    assert (first.endpoint, first.query) == ("cancel_all", "symbol=BTC_USDT")
    # flat was proven by a listing the simulator took after the last cancel it answered
    last_cancel = max(e.seq for e in requests if e.endpoint != "open_orders")
    assert requests[-1].endpoint == "open_orders"
    assert requests[-1].seq > last_cancel
    assert {o.order_id for o in result.orders} == btc
    assert result.counts.sent == len(btc)
    assert_accounted(result)
    assert probe.overlaps == 0


async def test_auto_named_pair_refused_cancel_all_lists_first_and_is_remembered(
    env: Env, engines: Engines
) -> None:
    env.seed(60, ["BTC_USDT", "ETH_USDT"])
    env.sim.set_faults(EndpointFaults(error_rate=1.0, error_statuses=(404,)), "cancel_all")
    async with env.client() as (client, _):
        engine = await engines(Engine({ACCOUNT: client}, auto_settings()))
        first = await engine.submit(kill("first", symbols={"BTC_USDT"}), no_progress)
        since = env.sim.last_seq
        second = await engine.submit(kill("second", symbols={"ETH_USDT"}), no_progress)
        await engine.close(1.0)
    assert (first.status, second.status) == (SweepStatus.FLAT, SweepStatus.FLAT)
    assert env.open_ids() == set()
    assert [e.endpoint for e in sweep_log(env)[:2]] == ["cancel_all", "open_orders"]
    assert first.reason is not None
    assert "cancel-all refused" in first.reason
    later = sweep_log(env, since)
    assert later[0].endpoint == "open_orders"  # remembered: the second kill lists first
    assert "cancel_all" not in {e.endpoint for e in later}
    assert first.counts.sent == second.counts.sent == 60
    assert_accounted(first)
    assert_accounted(second)


async def test_cancels_answered_too_late_end_sent_not_failed(env: Env, engines: Engines) -> None:
    seeded = env.seed(10, ["BTC_USDT"])
    # The exchange cancels, the answer never comes back; at 1 attempt the client gives up.
    lost = EndpointFaults(timeout_rate=1.0, timeout_hold_s=2.0, after_effect=True)
    env.sim.set_faults(lost, "cancel")
    async with env.client(max_attempts=1, request_deadline_s=0.3) as (client, _):
        engine = await engines(Engine({ACCOUNT: client}, engine_settings()))
        result = await engine.submit(kill(), no_progress)
        await engine.close(1.0)
    assert env.open_ids() == set()
    assert result.status is SweepStatus.FLAT, result.reason
    assert {o.order_id for o in result.orders} == seeded
    assert result.counts.failed == 0
    assert result.counts.sent == len(seeded)


async def test_cancels_in_flight_at_the_deadline_end_sent(env: Env, engines: Engines) -> None:
    seeded = env.seed(5, ["BTC_USDT"])
    # Applied by the exchange, answered never: in flight when the deadline comes.
    lost = EndpointFaults(timeout_rate=1.0, timeout_hold_s=5.0, after_effect=True)
    env.sim.set_faults(lost, "cancel")
    async with env.client(max_attempts=1, request_deadline_s=30.0) as (client, _):
        engine = await engines(
            Engine({ACCOUNT: client}, engine_settings(settle_grace_s=0.5), concurrency=8)
        )
        result = await engine.submit(kill(deadline_s=1.0), no_progress)
        await engine.close(1.0)
    assert env.open_ids() == set()
    assert {o.order_id for o in result.orders} == seeded
    assert result.counts.failed == 0
    assert result.counts.sent == len(seeded)
    assert result.residual_open == 0
    # the final listing after the deadline proved the pair flat
    assert result.status is SweepStatus.FLAT, result.reason
    assert cancelled_ids(env.log()).keys() == seeded


async def test_residual_counts_only_orders_still_open(env: Env, engines: Engines) -> None:
    env.seed(40, ["BTC_USDT"])
    env.sim.set_races(lose_cancel=0.5)  # CANCEL_SENT, but half the orders stay open
    async with env.client() as (client, _):
        engine = await engines(Engine({ACCOUNT: client}, engine_settings(max_passes=2)))
        result = await engine.submit(kill(), no_progress)
        await engine.close(1.0)
    still_open = env.open_ids()
    assert result.status is SweepStatus.RESIDUAL
    assert still_open
    assert result.residual_open == len(still_open)
    assert result.counts.failed == 0
    assert_accounted(result)
    second_listing = [o for o in result.orders if o.attempts >= 2]
    assert len(second_listing) > len(still_open)  # what the last pass found, not what is left


# ------------------------------------------- pairs never listed to the end (unknown residual)


@pytest.mark.parametrize(("strategy", "symbols"), [("auto", None), ("per_order", {"BTC_USDT"})])
async def test_a_kill_that_never_finishes_listing_names_the_unlisted_pairs(
    env: Env, strategy: str, symbols: set[str] | None, engines: Engines
) -> None:
    env.seed(300)
    # Exchange-wide 429s from the 3rd signed request, for longer than the kill's deadline
    # (and its settle grace): some pairs are never listed to the end.
    env.sim.set_throttle_window(after_requests=2, duration_s=60.0, retry_after="seconds")
    registry = CollectorRegistry()
    metrics = Metrics(registry, [ACCOUNT])
    async with env.client() as (client, _):
        engine = await engines(
            Engine(
                {ACCOUNT: client},
                engine_settings(strategy=strategy, page_size=100, settle_grace_s=0.3),
                metrics,
            )
        )
        result = await engine.submit(kill(symbols=symbols, deadline_s=1.5), no_progress)
        await engine.close(1.0)
    env.sim.clear_throttle_window()
    assert result.status is SweepStatus.RESIDUAL, result.reason
    assert result.unlisted_pairs  # where nobody looked to the end
    assert set(result.unlisted_pairs) <= (symbols or set(SYMBOLS))
    assert result.unlisted_pairs == sorted(result.unlisted_pairs)
    still_open = sum(len(env.sim.open_order_ids(env.api_key, p)) for p in result.unlisted_pairs)
    assert still_open > 0  # orders are open where the listing never ended
    gauge = registry.get_sample_value("killswitch_residual_unlisted_pairs", {"account": ACCOUNT})
    assert gauge == len(result.unlisted_pairs)
    document = result_to_json(ResultRecord.of(result))
    assert document["unlisted_pairs"] == result.unlisted_pairs


async def test_a_kill_that_listed_every_pair_names_none_unlisted(
    env: Env, engines: Engines
) -> None:
    env.seed(20)
    registry = CollectorRegistry()
    metrics = Metrics(registry, [ACCOUNT])
    async with env.client() as (client, _):
        engine = await engines(Engine({ACCOUNT: client}, engine_settings(strategy="auto"), metrics))
        result = await engine.submit(kill(), no_progress)
        await engine.close(1.0)
    assert result.status is SweepStatus.FLAT, result.reason
    assert result.unlisted_pairs == []
    assert result_to_json(ResultRecord.of(result))["unlisted_pairs"] == []
    gauge = registry.get_sample_value("killswitch_residual_unlisted_pairs", {"account": ACCOUNT})
    assert gauge == 0


# ------------------------------------- configured pairs the exchange refuses to list


INFO_DOWN = EndpointFaults(error_rate=1.0, error_statuses=(503,))


class AfterRefusal(InFlightProbe):
    """The probe, calling ``then`` once the exchange has refused a listing of ``symbol``."""

    def __init__(
        self, inner: httpx.AsyncBaseTransport, symbol: str, then: Callable[[], None]
    ) -> None:
        super().__init__(inner)
        self.symbol = symbol
        self.then = then

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        query = parse_qs(request.url.query.decode())
        if response.status_code == 400 and query.get("symbol") == [self.symbol]:
            self.then()
        return response


@pytest.mark.parametrize("info", ["down", "back"])
async def test_a_configured_pair_the_exchange_refuses_does_not_stop_a_whole_account_kill(
    env: Env, engines: Engines, info: str
) -> None:
    # exchange-info is down, so the whole-account kill lists the account's configured
    # `symbols`; one of them is a pair the exchange does not trade (it answers 400).
    # Nothing proves the pair unknown (the configured list is no proof it exists), so
    # the kill goes on with the other pairs and ends residual naming it, never flat.
    # "back": exchange-info answers again once the pair was refused; the list read
    # before the result shows the pair is not traded, and the result says so.
    seeded = env.seed(5, ["BTC_USDT", "ETH_USDT"])
    env.sim.set_faults(INFO_DOWN, "exchange_info")

    def info_back() -> None:
        if info == "back":
            env.sim.set_faults(EndpointFaults(), "exchange_info")

    configured = ["BTC_USDT", "ETH_USDT", "NOPE_USDT"]
    settings = account_settings(
        env.server.base_url, env.api_key, env.pem, ACCOUNT, max_attempts=2, symbols=configured
    )
    probe = AfterRefusal(build_transport("http1", max_connections=8), "NOPE_USDT", info_back)
    async with ExchangeClient(settings, transport=probe) as client:
        engine = await engines(Engine({ACCOUNT: client}, engine_settings(strategy="auto")))
        result = await engine.submit(kill(deadline_s=5.0), no_progress)
        await engine.close(1.0)
    assert result.status is SweepStatus.RESIDUAL, result.reason
    assert not env.open_ids() & seeded  # the other pairs were cancelled and verified
    assert result.counts.sent == len(seeded)
    assert result.unlisted_pairs == ["NOPE_USDT"]
    assert result.reason is not None
    if info == "down":
        assert "NOPE_USDT unchecked: the exchange refused to list it (" in result.reason
    else:
        assert "NOPE_USDT is not traded on the exchange" in result.reason
    assert "exchange refused to list NOPE_USDT" not in result.reason  # no failure
    assert_accounted(result)


@pytest.mark.parametrize("unknown", ["empty", "invalid"])
async def test_unchecked_pairs_the_exchange_list_lacks_are_named_as_not_listed(
    env: Env, engines: Engines, unknown: Any
) -> None:
    # The pair list failed as the kill arrived (its pairs unchecked); read again before
    # the result, it answers, and lacks NOPE_USDT: the reason says so, not that the
    # list could not be read. The exchange lists the unknown pair as [] ("empty") or
    # refuses it ("invalid").
    seeded = env.seed(10, ["BTC_USDT"])
    env.sim.unknown_symbol = unknown
    env.sim.set_faults(INFO_DOWN, "exchange_info")
    async with env.client(max_attempts=2, request_deadline_s=1.0) as (client, _):
        with pytest.raises(ExchangeUnavailable):
            await client.pair_list()
        env.sim.set_faults(EndpointFaults())
        request = dataclasses.replace(
            kill(symbols={"BTC_USDT", "NOPE_USDT"}, deadline_s=20.0),
            unchecked_pairs="pairs could not be checked (exchange-info: HTTP 503)",
        )
        engine = await engines(Engine({ACCOUNT: client}, engine_settings()))
        result = await engine.submit(request, no_progress)
        await engine.close(1.0)
    assert result.status is SweepStatus.RESIDUAL, result.reason
    assert not env.open_ids() & seeded
    assert result.reason is not None
    assert result.reason.startswith("the exchange does not list NOPE_USDT ("), result.reason
    assert "could not be checked" not in result.reason
    assert "exchange-info" not in result.reason


@pytest.mark.parametrize("retry_after", ["seconds", None], ids=["retry-after", "none"])
async def test_a_kill_outlasted_by_a_throttle_window_says_it_was_throttled(
    env: Env, engines: Engines, retry_after: Any
) -> None:
    # Exchange-wide 429s from the 3rd signed request until well past the deadline: the
    # kill ends residual, and its reason says why the listings never came back.
    env.seed(300)
    env.sim.set_throttle_window(after_requests=2, duration_s=60.0, retry_after=retry_after)
    async with env.client() as (client, _):
        engine = await engines(
            Engine({ACCOUNT: client}, engine_settings(page_size=100, settle_grace_s=0.3))
        )
        result = await engine.submit(kill(deadline_s=1.0), no_progress)
        await engine.close(1.0)
    env.sim.clear_throttle_window()
    assert result.status is SweepStatus.RESIDUAL, result.reason
    assert result.unlisted_pairs
    assert result.reason is not None
    assert "throttled (429) until the deadline" in result.reason, result.reason


async def test_an_empty_listing_of_the_configured_pairs_waits_for_the_exchange_list(
    env: Env, engines: Engines
) -> None:
    # The pair list failed a moment before the kill (the client serves the configured
    # `symbols` for a while without asking again); the exchange is back at once. The
    # configured pairs' listing comes back empty, which proves nothing: the sweep asks
    # for the exchange's own list, lists the pair the configuration missed, cancels
    # there and is proven flat.
    sol = env.seed(4, ["SOL_USDT"])
    env.sim.set_faults(INFO_DOWN, "exchange_info")
    async with env.client(max_attempts=2, symbols=["BTC_USDT", "ETH_USDT"]) as (client, _):
        assert (await client.pair_list()).source == "configured"
        env.sim.set_faults(EndpointFaults())
        engine = await engines(Engine({ACCOUNT: client}, engine_settings(strategy="auto")))
        result = await engine.submit(kill(deadline_s=20.0), no_progress)
        await engine.close(1.0)
    assert result.status is SweepStatus.FLAT, result.reason
    assert not env.open_ids() & sol
    assert result.counts.sent == len(sol)
    assert result.unlisted_pairs == []
