"""Redirects (a wrong ``base_url``) against the simulator over real HTTP: every endpoint's
3xx reaches readiness naming its status, ``Location`` and endpoint; a kill's result names
it; a redirected cancel-all is remembered for the account like a missing endpoint; and
``check`` and ``/readyz`` agree on a redirect of the time endpoint alone. Also the clock
hint of an authentication refusal when the clock offset cannot be measured."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from killswitch.commands.check import run_checks
from killswitch.config import AccountSettings, Settings
from killswitch.core.model import KillRequest, Scope, SweepResult, SweepStatus
from killswitch.core.outcomes import RejectReason
from killswitch.core.ports import EngineConfig
from killswitch.embedded import free_port
from killswitch.engine import Engine
from killswitch.exchange.client import ExchangeClient
from killswitch.exchange.errors import ExchangeError
from killswitch.health import Readiness, ReadinessObserver
from killswitch.metrics import Metrics
from killswitch.observability import ExchangeProbe, first_page
from killswitch.simulator import Simulator, SimulatorServer
from killswitch.simulator.testing import account_settings, register_test_client
from tests.support.daemon import wait_http
from tests.support.engine import Engines
from tests.support.exchange import exchange
from tests.support.inprocess import ACCOUNTS, daemon_in_process, daemon_settings, prepare_topics
from tests.support.intake import alert_message
from tests.support.topics import TopicCollector, produce
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

ACCOUNT = "mm-1"
SYMBOLS = ["BTC_USDT", "ETH_USDT", "SOL_USDT"]
SYMBOL = SYMBOLS[0]
ELSEWHERE = "http://elsewhere.invalid/x"


@dataclass
class Env:
    sim: Simulator
    server: SimulatorServer
    api_key: str
    pem: bytes
    readiness: Readiness
    observer: ReadinessObserver

    def settings(self, **overrides: Any) -> AccountSettings:
        base: dict[str, Any] = {
            "rate_limit_per_second": 2000.0,
            "burst": 50,
            "max_attempts": 2,
            "backoff_base_s": 0.002,
            "backoff_cap_s": 0.02,
            "request_deadline_s": 5.0,
        }
        base.update(overrides)
        return account_settings(self.server.base_url, self.api_key, self.pem, ACCOUNT, **base)

    def client(self, **overrides: Any) -> ExchangeClient:
        return ExchangeClient(self.settings(**overrides), observer=self.observer)

    async def probe(self) -> None:
        """One round of the daemon's exchange probe (on the account's client, as in the
        daemon)."""
        async with self.client() as client:
            await ExchangeProbe({ACCOUNT: client}, 60.0, self.readiness).round()

    def reasons(self) -> tuple[str, ...]:
        return self.readiness.evaluate(0.0).reasons


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    sim = Simulator(seed=5, symbols=SYMBOLS)
    async with SimulatorServer(sim) as server:
        api_key, pem = register_test_client(sim, name=ACCOUNT)
        readiness = Readiness.for_accounts([ACCOUNT], 60.0)
        readiness.set_consuming(True)
        observer = ReadinessObserver(Metrics(CollectorRegistry(), [ACCOUNT]), readiness)
        yield Env(sim, server, api_key, pem, readiness, observer)


def problem(endpoint: str, status: int = 308) -> str:
    return f"exchange answered {status} redirect to {ELSEWHERE} on {endpoint}: check base_url"


Call = Callable[[ExchangeClient, int], Awaitable[object]]

CALLS: dict[str, Call] = {
    "cancel": lambda c, oid: c.cancel_order(oid, SYMBOL),
    "cancel_batch": lambda c, oid: c.cancel_batch(SYMBOL, [oid]),
    "cancel_all": lambda c, oid: c.cancel_all(SYMBOL),
    "time": lambda c, oid: c.sync_clock(),
    "exchange_info": lambda c, oid: c.exchange_info(),
    "open_orders": lambda c, oid: first_page(c, SYMBOL),
    "get_order": lambda c, oid: c.get_order(oid, SYMBOL),
}


@pytest.mark.parametrize("endpoint", sorted(CALLS))
async def test_a_redirect_on_any_endpoint_is_in_readiness_with_its_location(
    env: Env, endpoint: str
) -> None:
    (order_id,) = env.sim.seed_orders(env.api_key, SYMBOL, 1)
    env.sim.set_redirect(ELSEWHERE, 308, endpoint=endpoint)
    async with env.client() as client:
        # a listing raises Redirected; a cancel answers rejected/redirect
        with contextlib.suppress(ExchangeError):
            await CALLS[endpoint](client, order_id)
    assert env.reasons() == (f"{ACCOUNT}: {problem(endpoint)}",)
    # The probe's own good answers (a signed listing) do not hide it.
    await env.probe()
    assert env.reasons() == (f"{ACCOUNT}: {problem(endpoint)}",)
    # That endpoint answering again (the base URL fixed) clears it.
    env.sim.clear_redirects()
    async with env.client() as client:
        await CALLS[endpoint](client, order_id)
    await env.probe()
    assert env.reasons() == ()
    assert env.sim.order(order_id) is not None  # never followed elsewhere


def kill(
    alert_id: str, *, order_ids: set[int] | None = None, symbols: set[str] | None = None
) -> KillRequest:
    return KillRequest(
        alert_id=alert_id,
        account=ACCOUNT,
        scope=Scope(
            symbols=frozenset(symbols) if symbols else None,
            order_ids=frozenset(order_ids) if order_ids else None,
        ),
        received_at=datetime.now(UTC),
        deadline_s=20.0,
        source="integration",
    )


async def no_progress(result: SweepResult) -> None:
    pass


async def test_a_redirected_cancel_all_is_named_remembered_and_falls_back(
    env: Env, engines: Engines
) -> None:
    for symbol in SYMBOLS:
        env.sim.seed_orders(env.api_key, symbol, 120)
    env.sim.set_redirect(ELSEWHERE, 308, endpoint="cancel_all")
    settings = EngineConfig(progress_interval_s=0.05)
    assert settings.strategy == "auto"
    async with env.client() as client:
        # One worker: the answer to the first cancel-all comes before any other is due.
        engine = await engines(Engine({ACCOUNT: client}, settings, concurrency=1))
        first = await engine.submit(kill("first"), no_progress)
        for symbol in SYMBOLS:
            env.sim.seed_orders(env.api_key, symbol, 30)
        second = await engine.submit(kill("second"), no_progress)
        await engine.close(1.0)
    assert (first.status, second.status) == (SweepStatus.FLAT, SweepStatus.FLAT)
    assert env.sim.open_order_ids(env.api_key) == set()
    # Sent once for the account: not once per pair, not again by the next kill.
    assert env.sim.count(env.api_key, "cancel_all") == 1
    assert engine.refused_endpoints(ACCOUNT) == {"cancel_all"}
    assert env.sim.count(env.api_key, "cancel_batch") > 0  # the fallback: batches
    assert first.reason is not None
    assert problem("cancel_all") in first.reason
    assert env.reasons() == (f"{ACCOUNT}: {problem('cancel_all')}",)


async def test_a_named_pairs_redirected_cancel_all_falls_back_to_listing_first(
    env: Env, engines: Engines
) -> None:
    """A kill naming a pair sends its cancel-all before listing: on an exchange that
    redirects that route the redirect is remembered, the pair is listed and cancelled
    anyway, and the next named-pair kill lists first."""
    for symbol in SYMBOLS:
        env.sim.seed_orders(env.api_key, symbol, 20)
    env.sim.set_redirect(ELSEWHERE, 308, endpoint="cancel_all")
    async with env.client() as client:
        engine = await engines(Engine({ACCOUNT: client}, EngineConfig()))
        first = await engine.submit(kill("first", symbols={"BTC_USDT"}), no_progress)
        second = await engine.submit(kill("second", symbols={"ETH_USDT"}), no_progress)
        await engine.close(1.0)
    assert (first.status, second.status) == (SweepStatus.FLAT, SweepStatus.FLAT)
    open_ids = env.sim.open_order_ids(env.api_key)
    assert len(open_ids) == 20  # SOL_USDT's, named by neither kill
    assert env.sim.count(env.api_key, "cancel_all") == 1  # the second kill listed first
    assert engine.refused_endpoints(ACCOUNT) == {"cancel_all"}
    assert first.reason is not None
    assert problem("cancel_all") in first.reason
    assert first.counts.sent == second.counts.sent == 20


async def test_a_redirected_cancel_names_the_location_in_the_result(
    env: Env, engines: Engines
) -> None:
    ids = env.sim.seed_orders(env.api_key, SYMBOL, 2)
    env.sim.set_redirect(ELSEWHERE, 308, endpoint="cancel")
    settings = EngineConfig(progress_interval_s=0.05, strategy="per_order", max_passes=2)
    async with env.client() as client:
        engine = await engines(Engine({ACCOUNT: client}, settings))
        result = await engine.submit(kill("by-id", order_ids=set(ids)), no_progress)
        await engine.close(1.0)
    assert result.status is SweepStatus.RESIDUAL
    assert {o.reason for o in result.orders} == {RejectReason.REDIRECT}
    assert result.reason is not None
    assert problem("cancel") in result.reason
    assert env.sim.open_order_ids(env.api_key) == set(ids)
    assert env.reasons() == (f"{ACCOUNT}: {problem('cancel')}",)


def check_settings(env: Env) -> Settings:
    account = {
        "id": ACCOUNT,
        "api_key": env.api_key,
        "private_key": env.pem.decode(),
        "base_url": env.server.base_url,
        "backoff_base_s": 0.01,
    }
    # No broker: only the exchange checks matter here.
    return Settings(kafka={"bootstrap_servers": f"127.0.0.1:{free_port()}"}, accounts=[account])


async def test_check_and_readiness_agree_on_a_redirect_of_server_time(env: Env) -> None:
    env.sim.set_redirect(ELSEWHERE, 302, endpoint="time")
    await env.probe()
    # Clock sync cannot run (signed requests may be refused later): neither is OK.
    assert env.reasons() == (f"{ACCOUNT}: {problem('time', 302)}",)
    settings = check_settings(env)
    checks = await run_checks(
        settings.kafka, settings.accounts, settings.engine.page_size, timeout_s=3
    )
    reach = next(c for c in checks if c.name == "exchange reachable")
    assert not reach.ok
    assert reach.detail == problem("time", 302)


async def test_a_refused_key_with_the_clock_unmeasured_says_the_clock_may_be_why(
    env: Env,
) -> None:
    """Public endpoints signed and a local clock 8 s off the exchange's: every signed
    request is refused, time too, so both readiness and check point at the clock."""
    env.sim.public_auth = True
    env.sim.clock_offset_ms = 8000
    await env.probe()
    settings = check_settings(env)
    checks = await run_checks(
        settings.kafka, settings.accounts, settings.engine.page_size, timeout_s=3
    )
    key = next(c for c in checks if c.name == "key accepted")
    assert not key.ok
    assert "the clock offset could not be measured" in key.detail
    (reason,) = env.reasons()
    assert reason.startswith(
        f"{ACCOUNT}: auth rejected; the clock offset could not be measured: server time "
    )


async def test_the_daemon_names_a_redirected_cancel_all_in_readyz_and_the_result(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    """As an operator meets it: a kill ends flat through batches, and both its result
    and /readyz say where the exchange redirects cancel-all."""
    async with exchange(ACCOUNTS, seed=7) as ex:
        settings = daemon_settings(
            kafka_bootstrap,
            unique_name,
            ex,
            engine={"strategy": "auto"},
            metrics={"enabled": True, "host": "127.0.0.1", "port": free_port()},
        )
        await prepare_topics(settings)
        ex.seed("mm-1", SYMBOLS[:2], 120)
        ex.sim.set_redirect(ELSEWHERE, 308, endpoint="cancel_all")
        ready = f"http://127.0.0.1:{settings.metrics.port}/readyz"
        async with (
            TopicCollector(kafka_bootstrap, settings.kafka.topics.results) as results,
            daemon_in_process(settings),
        ):
            await wait_http(ready, until=lambda answer: answer.status_code == 200)
            await produce(settings, [alert_message("redir-1", ["mm-1"])])
            await wait_for(lambda: len(results.finals("redir-1")) == 1, timeout=30)
            (final,) = (await results.to_end()).finals("redir-1")
            answer = await wait_http(ready, until=lambda answer: answer.status_code == 503)
        assert final["status"] == "flat"
        assert problem("cancel_all") in final["reason"]
        assert answer.json()["reasons"] == [f"mm-1: {problem('cancel_all')}"]
        assert not ex.open_ids("mm-1")
