"""The halt latch's guard against the simulator over real HTTP (loopback).

A halted account's guard lists one pair per request, continuously, at
``latch_budget_share`` of the account's rate, pairs with recent orders first; what
appears is cancelled. Everything is checked on the simulator's books and request log.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import pytest

from killswitch.core.model import HaltState, KillRequest, Scope, SweepResult, SweepStatus
from killswitch.core.ports import EngineConfig, NullObserver
from killswitch.engine import Engine
from killswitch.exchange.client import ExchangeClient
from killswitch.simulator.core import LogEntry, Simulator
from killswitch.simulator.server import SimulatorServer
from killswitch.simulator.testing import account_settings, register_test_client
from tests.support.waiting import wait_for

ACCOUNT = "mm-1"
LABEL = "mm-1-key"
PAIRS = ["ADA_USDT", "BTC_USDT", "DOT_USDT", "ETH_USDT", "SOL_USDT"]
RATE = 20.0  # the account's budget (requests per second)
SHARE = 0.5


class Gauge(NullObserver):
    """Records what the engine reports as the latch reaction bound."""

    def __init__(self) -> None:
        self.reaction: list[float | None] = []

    def latch_reaction(self, account: str, seconds: float | None) -> None:
        self.reaction.append(seconds)


@dataclass
class Env:
    sim: Simulator
    server: SimulatorServer
    api_key: str
    pem: bytes

    @asynccontextmanager
    async def engine(
        self, observer: Gauge | None = None, **engine: Any
    ) -> AsyncIterator[tuple[Engine, ExchangeClient]]:
        settings = account_settings(
            self.server.base_url,
            self.api_key,
            self.pem,
            ACCOUNT,
            rate_limit_per_second=RATE,
            burst=5,
            backoff_base_s=0.002,
            backoff_cap_s=0.02,
        )
        options: dict[str, Any] = {
            "strategy": "per_order",
            "progress_interval_s": 0.05,
            "latch_budget_share": SHARE,
        }
        options.update(engine)
        async with (
            ExchangeClient(settings) as client,
            Engine({ACCOUNT: client}, EngineConfig(**options), observer) as eng,
        ):
            try:
                yield eng, client
            finally:
                await eng.close(1.0)

    def listings(self, since: int = 0) -> list[LogEntry]:
        return [
            e
            for e in self.sim.log_since(since)
            if e.client == LABEL and e.endpoint == "open_orders"
        ]

    def cancels(self, since: int = 0) -> list[LogEntry]:
        entries = self.sim.log_since(since)
        return [e for e in entries if e.client == LABEL and e.endpoint == "cancel"]

    def last_seq(self) -> int:
        entries = self.sim.log_since(0)
        return entries[-1].seq if entries else 0


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    sim = Simulator(seed=11, symbols=PAIRS)
    async with SimulatorServer(sim) as server:
        # The exchange allows more than the account's budget: the guard's pace is ours.
        api_key, pem = register_test_client(sim, name=LABEL, rate_limit_per_second=1000.0)
        yield Env(sim, server, api_key, pem)


def halt(scope: Scope | None = None) -> HaltState:
    return HaltState(ACCOUNT, True, "halt-1", datetime.now(UTC), scope or Scope())


def kill(alert_id: str, *, latch: bool = False) -> KillRequest:
    return KillRequest(
        alert_id=alert_id,
        account=ACCOUNT,
        scope=Scope(),
        received_at=datetime.now(UTC),
        deadline_s=20.0,
        latch=latch,
        source="integration",
    )


async def no_progress(result: SweepResult) -> None:
    pass


def pair_of(entry: LogEntry) -> str:
    return parse_qs(entry.query)["symbol"][0]


CANCELLED = {"CANCELLED", "PARTIAL_CANCELLED"}  # seeded orders may be partly filled


def status_of(sim: Simulator, order_id: int) -> object:
    order = sim.order(order_id)
    assert order is not None
    return order["status"]


async def test_orders_placed_one_by_one_on_five_pairs_are_each_cancelled(env: Env) -> None:
    async with env.engine() as (engine, _):
        engine.restore_halt(halt())
        start = env.last_seq()
        placed: list[int] = []
        for pair in [*PAIRS, *reversed(PAIRS)]:  # one order at a time, the next once it is gone
            (order_id,) = env.sim.seed_orders(env.api_key, pair, 1)
            placed.append(order_id)
            await wait_for(lambda: not env.sim.open_order_ids(env.api_key), timeout=15)
        cancels = env.cancels(start)
    assert {status_of(env.sim, i) for i in placed} <= CANCELLED
    # Each by one single-order cancel from the guard: found by a listing of its own pair.
    assert sorted(e.order_id for e in cancels if e.order_id is not None) == sorted(placed)
    assert {pair_of(e) for e in env.listings(start)} == set(PAIRS)


async def test_the_guard_lists_one_pair_per_request_at_its_share_and_no_faster(env: Env) -> None:
    async with env.engine() as (engine, _):
        start = env.last_seq()
        engine.restore_halt(halt())
        await wait_for(lambda: len(env.listings(start)) >= 4 * len(PAIRS), timeout=20)
        entries = env.listings(start)
    # Continuous and round robin: every pair once per round, without an order in sight.
    rounds = [entries[i : i + len(PAIRS)] for i in range(0, 4 * len(PAIRS), len(PAIRS))]
    for listed in rounds:
        assert sorted(pair_of(e) for e in listed) == PAIRS
    # Never above its share: in any trailing second at most share x rate listings (one
    # more for the edges, one for a request delayed on our side that bunches with the next).
    stamps = [e.timestamp_ms for e in entries]
    per_second = SHARE * RATE
    for i, stamp in enumerate(stamps):
        in_window = sum(1 for s in stamps[i:] if s - stamp < 1000)
        assert in_window <= per_second + 2


async def test_pairs_where_a_kill_found_orders_are_listed_first(env: Env) -> None:
    recent = env.sim.seed_orders(env.api_key, "SOL_USDT", 1) + env.sim.seed_orders(
        env.api_key, "DOT_USDT", 2
    )
    async with env.engine() as (engine, _):
        engine.set_guard_filter(lambda account: False)  # held until the kill is logged
        result = await engine.submit(kill("k-1", latch=True), no_progress)
        assert result.status is SweepStatus.FLAT
        assert {status_of(env.sim, i) for i in recent} <= CANCELLED
        start = env.last_seq()
        engine.set_guard_filter(lambda account: True)
        await engine.refresh_guards()
        await wait_for(lambda: len(env.listings(start)) >= len(PAIRS), timeout=20)
        first = [pair_of(e) for e in env.listings(start)[: len(PAIRS)]]
    # Both pairs the kill found orders on come first, then the others, each once.
    assert set(first[:2]) == {"SOL_USDT", "DOT_USDT"}
    assert sorted(first) == PAIRS


async def test_reaction_bound_is_reported_while_halted_and_removed_on_release(env: Env) -> None:
    gauge = Gauge()
    async with env.engine(gauge) as (engine, _):
        engine.restore_halt(halt(Scope(symbols=frozenset(PAIRS[:4]))))
        await wait_for(lambda: len(gauge.reaction) >= 5, timeout=20)
        released = await engine.release(kill("r-1"))
        assert released.was_halted
        seq = env.last_seq()
        leftover = env.sim.seed_orders(env.api_key, "ADA_USDT", 1)
        reported = list(gauge.reaction)
    bounds = [b for b in reported if b is not None]
    # 4 pairs / (0.5 x 20/s) = 0.4 s, plus a measured round trip.
    assert bounds
    assert all(b >= 4 / (SHARE * RATE) for b in bounds)
    assert reported[-1] is None  # the series goes away with the guard
    assert env.cancels(seq) == []
    assert env.sim.open_order_ids(env.api_key) == set(leftover)


async def test_a_kill_on_a_halted_account_still_sweeps_every_pair(env: Env) -> None:
    async with env.engine() as (engine, _):
        engine.restore_halt(halt(Scope(symbols=frozenset({"BTC_USDT"}))))
        await wait_for(lambda: len(env.listings()) >= 2, timeout=20)
        seeded = {i for p in PAIRS for i in env.sim.seed_orders(env.api_key, p, 3)}
        result = await engine.submit(kill("k-2"), no_progress)
        assert ACCOUNT in engine.guarded()  # the guard goes on after the kill
    assert result.status is SweepStatus.FLAT
    assert result.counts.resolved == len(seeded)
    assert not env.sim.open_order_ids(env.api_key)


async def test_a_release_between_two_latched_kills_is_published_between_them(env: Env) -> None:
    """As the intake hands them over within one slice: a latched kill, a release (run in
    the record's task), a latched kill. The state topic must end as the engine does
    (halted): a release published after the second halt would lift it everywhere else
    and at the next start-up while this engine still guards it."""
    published: list[HaltState] = []

    async def on_state(state: HaltState) -> None:
        await asyncio.sleep(0.01)  # the broker's acknowledgement
        published.append(state)

    settings = account_settings(env.server.base_url, env.api_key, env.pem, ACCOUNT)
    config = EngineConfig(strategy="per_order", progress_interval_s=0.05)
    async with (
        ExchangeClient(settings) as client,
        Engine({ACCOUNT: client}, config, on_state=on_state) as engine,
    ):
        first = engine.start(kill("L1", latch=True), no_progress)
        release = asyncio.ensure_future(engine.release(kill("R1")))
        second = engine.start(kill("L2", latch=True), no_progress)
        await asyncio.gather(first, release, second)
        halted = ACCOUNT in engine.halted()
        await engine.close(1.0)
    assert [(s.alert_id, s.halted) for s in published] == [
        ("L1", True),
        ("R1", False),
        ("L2", True),
    ]
    assert halted
