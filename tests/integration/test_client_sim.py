"""The exchange client against the simulator over real HTTP on loopback.

Every test runs on three transports, which must behave alike: our aiohttp-backed one
(the client takes its fast path, no httpx models), the same transport seen only through
httpx's interface (the generic ``httpx.Request`` path), and httpx's own.
Faults that should hit only the first attempt are switched off from the observer's
``request_done`` hook, which the client calls right after the failed attempt and
before its backoff, so "fail once, then succeed" is deterministic.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import pytest

from killswitch.config import AccountSettings
from killswitch.core.orders import OrderStatus
from killswitch.core.outcomes import Outcome, RejectReason
from killswitch.exchange.client import ExchangeClient, ExchangeClients
from killswitch.exchange.errors import AuthError, ExchangeUnavailable, InvalidRequest, NotFound
from killswitch.exchange.http1 import Http1Transport
from killswitch.exchange.signing import generate_private_key, private_key_pem
from killswitch.exchange.transport import TransportKind
from killswitch.simulator import EndpointFaults, Simulator, SimulatorServer
from killswitch.simulator.testing import (
    SignedClient,
    account_settings,
    register_test_client,
)

pytestmark = pytest.mark.integration

SYMBOL = "BTC_USDT"


@dataclass
class Recorder:
    """An Observer that keeps what it is told and can react to a request's status."""

    requests: list[tuple[str, str]] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    inflight: int = 0
    peak_inflight: int = 0
    on_status: dict[str, Callable[[], None]] = field(default_factory=dict)

    def request_done(self, account: str, endpoint: str, status: str, seconds: float) -> None:
        assert seconds >= 0
        self.requests.append((endpoint, status))
        hook = self.on_status.pop(status, None)
        if hook is not None:
            hook()

    def rate_changed(self, account: str, rate: float) -> None:
        self.rates.append(rate)

    def inflight_cancels(self, account: str, delta: int) -> None:
        self.inflight += delta
        self.peak_inflight = max(self.peak_inflight, self.inflight)

    def cancel_outcome(self, account: str, outcome: Outcome) -> None: ...
    def first_cancel(self, seconds: float) -> None: ...
    def flat(self, seconds: Sequence[float]) -> None: ...
    def halted(self, account: str, halted: bool) -> None: ...
    def residual(self, account: str, count: int, unlisted_pairs: int) -> None: ...

    def latch_reaction(self, account: str, seconds: float | None) -> None: ...
    def sweep_failed(self, account: str) -> None: ...

    def statuses(self, endpoint: str) -> list[str]:
        return [s for e, s in self.requests if e == endpoint]


class GenericOnly(httpx.AsyncBaseTransport):
    """Our transport behind httpx's interface only: the client cannot see the fast
    path, so it builds ``httpx.Request`` objects as for any foreign transport."""

    def __init__(self, max_connections: int) -> None:
        self._inner = Http1Transport(max_connections=max_connections)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


TRANSPORTS = ["http1", "generic"]


@dataclass
class Env:
    sim: Simulator
    server: SimulatorServer
    api_key: str
    pem: bytes
    transport: TransportKind | Literal["generic"]
    recorder: Recorder = field(default_factory=Recorder)

    def client(self, **overrides: Any) -> ExchangeClient:
        extra = {k: overrides.pop(k) for k in list(overrides) if k.startswith("auth_")}
        defaults: dict[str, Any] = {
            "backoff_base_s": 0.01,
            "backoff_cap_s": 0.05,
            "read_timeout_s": 1.0,
            "rate_limit_per_second": 1000.0,
            "burst": 100,
        }
        defaults.update(overrides)
        settings = account_settings(self.server.base_url, self.api_key, self.pem, **defaults)
        return self.client_for(settings, **extra)

    def client_for(self, settings: AccountSettings, **extra: Any) -> ExchangeClient:
        """A client for ``settings`` on this run's transport."""
        transport: TransportKind | httpx.AsyncBaseTransport
        if self.transport == "generic":
            transport = GenericOnly(settings.max_concurrency + 1)
        else:
            transport = self.transport
        return ExchangeClient(settings, observer=self.recorder, transport=transport, **extra)


@pytest.fixture(params=TRANSPORTS)
async def env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    sim = Simulator(seed=3)
    api_key, pem = register_test_client(sim)
    async with SimulatorServer(sim) as server:
        yield Env(sim, server, api_key, pem, request.param)


# -- the cancel outcome table, row by row --------------------------------------------------


async def test_sent_then_already_closed(env: Env) -> None:
    (order_id,) = env.sim.seed_orders(env.api_key, SYMBOL, 1)
    async with env.client() as client:
        first = await client.cancel_order(order_id, SYMBOL)
        again = await client.cancel_order(order_id, SYMBOL)
    assert (first.outcome, first.status, first.attempts) == (Outcome.SENT, 200, 1)
    assert (again.outcome, again.status, again.error) == (
        Outcome.ALREADY_CLOSED,
        400,
        "order_already_closed",
    )
    assert order_id not in env.sim.open_order_ids(env.api_key)
    assert env.recorder.inflight == 0
    assert env.recorder.statuses("cancel") == ["200", "400"]


async def test_rejected_invalid_request_and_not_found(env: Env) -> None:
    (order_id,) = env.sim.seed_orders(env.api_key, SYMBOL, 1)
    async with env.client() as client:
        bad_symbol = await client.cancel_order(order_id, "NOPE_USDT")
        missing = await client.cancel_order(order_id + 1000, SYMBOL)
    assert (bad_symbol.outcome, bad_symbol.reason, bad_symbol.status) == (
        Outcome.REJECTED,
        RejectReason.INVALID_REQUEST,
        400,
    )
    assert (missing.outcome, missing.reason, missing.status) == (
        Outcome.REJECTED,
        RejectReason.NOT_FOUND,
        404,
    )
    assert bad_symbol.attempts == missing.attempts == 1
    assert order_id in env.sim.open_order_ids(env.api_key)


async def test_rejected_other_4xx_is_not_retried(env: Env) -> None:
    (order_id,) = env.sim.seed_orders(env.api_key, SYMBOL, 1)
    env.sim.set_faults(EndpointFaults(error_rate=1.0, error_statuses=(409,)), endpoint="cancel")
    async with env.client() as client:
        result = await client.cancel_order(order_id, SYMBOL)
    assert (result.outcome, result.reason, result.status, result.attempts) == (
        Outcome.REJECTED,
        RejectReason.OTHER_4XX,
        409,
        1,
    )


@pytest.mark.parametrize("auth_status", [401, 403])
async def test_revoked_key_is_rejected_auth_and_listing_raises(env: Env, auth_status: int) -> None:
    (order_id,) = env.sim.seed_orders(env.api_key, SYMBOL, 1)
    env.sim.auth_failure_status = auth_status
    async with env.client() as client:
        assert (await client.cancel_order(order_id, SYMBOL)).outcome is Outcome.SENT
        env.sim.revoke(env.api_key)
        result = await client.cancel_order(order_id, SYMBOL)
        with pytest.raises(AuthError) as info:
            async for _ in client.open_orders(SYMBOL):
                pass
    assert (result.outcome, result.reason, result.status, result.error) == (
        Outcome.REJECTED,
        RejectReason.AUTH,
        auth_status,
        "invalid_client",
    )
    assert result.attempts == 1  # the clock did not move: no blind retry
    assert info.value.status == auth_status
    assert env.api_key not in str(info.value)


async def test_wrong_private_key_is_invalid_client(env: Env) -> None:
    (order_id,) = env.sim.seed_orders(env.api_key, SYMBOL, 1)
    env.pem = private_key_pem(generate_private_key())  # not the registered key
    async with env.client() as client:
        result = await client.cancel_order(order_id, SYMBOL)
        with pytest.raises(AuthError):
            await client.get_order(order_id, SYMBOL)
    assert (result.outcome, result.reason) == (Outcome.REJECTED, RejectReason.AUTH)
    assert order_id in env.sim.open_order_ids(env.api_key)


async def test_5xx_retries_exhausted_is_failed(env: Env) -> None:
    (order_id,) = env.sim.seed_orders(env.api_key, SYMBOL, 1)
    env.sim.set_faults(EndpointFaults(error_rate=1.0, error_statuses=(503,)), endpoint="cancel")
    async with env.client(max_attempts=3) as client:
        result = await client.cancel_order(order_id, SYMBOL)
    assert (result.outcome, result.status, result.attempts) == (Outcome.FAILED, 503, 3)
    assert env.sim.count(env.api_key, "cancel", 503) == 3
    assert order_id in env.sim.open_order_ids(env.api_key)


# -- transient failures, then success ------------------------------------------------------


async def test_5xx_then_success(env: Env) -> None:
    (order_id,) = env.sim.seed_orders(env.api_key, SYMBOL, 1)
    env.sim.set_faults(EndpointFaults(error_rate=1.0, error_statuses=(502,)), endpoint="cancel")
    env.recorder.on_status["502"] = env.sim.clear_faults
    async with env.client() as client:
        result = await client.cancel_order(order_id, SYMBOL)
    assert (result.outcome, result.attempts) == (Outcome.SENT, 2)
    assert env.recorder.statuses("cancel") == ["502", "200"]
    assert order_id not in env.sim.open_order_ids(env.api_key)


async def test_429_then_success_slows_the_limiter(env: Env) -> None:
    (order_id,) = env.sim.seed_orders(env.api_key, SYMBOL, 1)
    env.sim.set_faults(EndpointFaults(throttle_rate=1.0), endpoint="cancel")
    env.recorder.on_status["429"] = env.sim.clear_faults
    async with env.client() as client:
        result = await client.cancel_order(order_id, SYMBOL)
        assert client.limiter.rate < client.limiter.ceiling
    assert (result.outcome, result.attempts) == (Outcome.SENT, 2)
    assert env.recorder.rates[:2] == [1000.0, 700.0]  # the ceiling at start, then the cut


async def test_timeout_then_success(env: Env) -> None:
    (order_id,) = env.sim.seed_orders(env.api_key, SYMBOL, 1)
    env.sim.set_faults(EndpointFaults(timeout_rate=1.0, timeout_hold_s=3.0), endpoint="cancel")
    env.recorder.on_status["timeout"] = env.sim.clear_faults
    async with env.client(read_timeout_s=0.2) as client:
        result = await client.cancel_order(order_id, SYMBOL)
    assert (result.outcome, result.attempts) == (Outcome.SENT, 2)
    assert env.recorder.statuses("cancel") == ["timeout", "200"]


async def test_dropped_connection_then_success(env: Env) -> None:
    (order_id,) = env.sim.seed_orders(env.api_key, SYMBOL, 1)
    env.sim.set_faults(EndpointFaults(drop_rate=1.0), endpoint="cancel")
    env.recorder.on_status["error"] = env.sim.clear_faults
    async with env.client() as client:
        result = await client.cancel_order(order_id, SYMBOL)
    # The dropped request went out on a kept-alive connection (the clock sync's): a stale
    # connection, so it is signed anew and sent on a fresh one in the same attempt (the
    # generic path passes the same choice through the request's extensions).
    assert (result.outcome, result.attempts) == (Outcome.SENT, 1)
    assert env.recorder.statuses("cancel") == ["error", "200"]


async def test_timeouts_exhausted_is_failed(env: Env) -> None:
    (order_id,) = env.sim.seed_orders(env.api_key, SYMBOL, 1)
    env.sim.set_faults(EndpointFaults(timeout_rate=1.0, timeout_hold_s=3.0), endpoint="cancel")
    async with env.client(read_timeout_s=0.1, max_attempts=2) as client:
        result = await client.cancel_order(order_id, SYMBOL)
    assert (result.outcome, result.attempts, result.status) == (Outcome.FAILED, 2, None)
    assert result.error == "ReadTimeout"
    assert env.recorder.statuses("cancel") == ["timeout", "timeout"]


async def test_request_deadline_bounds_retries(env: Env) -> None:
    (order_id,) = env.sim.seed_orders(env.api_key, SYMBOL, 1)
    env.sim.set_faults(EndpointFaults(timeout_rate=1.0, timeout_hold_s=3.0), endpoint="cancel")
    async with env.client(read_timeout_s=5.0, request_deadline_s=0.3, max_attempts=50) as client:
        started = time.monotonic()
        result = await client.cancel_order(order_id, SYMBOL)
        elapsed = time.monotonic() - started
    assert result.outcome is Outcome.FAILED
    assert result.attempts < 50
    assert elapsed < 2.0  # bounded by the deadline, not by read_timeout_s * attempts


async def test_server_rate_limit_aimd_all_cancels_land(env: Env) -> None:
    """A real per-key budget below the configured ceiling: 429s, the limiter backs
    off, and every cancel still ends sent."""
    ids = env.sim.seed_orders(env.api_key, SYMBOL, 60)
    # Far below what even a slow, loaded machine sends: the first in-flight wave alone
    # (16 requests against a bucket of 2) draws 429s, so the test cannot pass without them.
    env.sim.set_rate_limit(50.0, 2, api_key=env.api_key)
    async with env.client(
        rate_limit_per_second=400.0, burst=20, max_concurrency=16, max_attempts=20
    ) as client:
        results = await asyncio.gather(*(client.cancel_order(i, SYMBOL) for i in ids))
        cut_rate = min(env.recorder.rates)
    assert {r.outcome for r in results} == {Outcome.SENT}
    assert env.sim.count(env.api_key, "cancel", 429) > 0
    assert cut_rate < 400.0
    assert env.sim.open_order_ids(env.api_key) == set()


# -- clock skew ------------------------------------------------------------------------------


async def test_clock_skew_is_measured_and_applied(env: Env) -> None:
    env.sim.clock_offset_ms = 60_000  # the exchange's clock is a minute ahead
    (order_id,) = env.sim.seed_orders(env.api_key, SYMBOL, 1)
    # Without correction the same request is refused: the skew matters.
    async with SignedClient(env.server.base_url, env.api_key, env.pem) as raw:
        assert (await raw.cancel(order_id, SYMBOL)).status_code == 401
    async with env.client() as client:
        result = await client.cancel_order(order_id, SYMBOL)
        assert abs(client.clock_offset_ms - 60_000) < 200
    assert result.outcome is Outcome.SENT


async def test_a_hanging_time_endpoint_does_not_hold_the_first_cancel(env: Env) -> None:
    # The first clock measurement hangs (an answer only after the read timeout): the
    # first signed request waits for it briefly, then goes with the local clock.
    (order_id,) = env.sim.seed_orders(env.api_key, SYMBOL, 1)
    env.sim.set_faults(EndpointFaults(timeout_rate=1.0, timeout_hold_s=30.0), endpoint="time")
    async with env.client(read_timeout_s=20.0, request_deadline_s=20.0) as client:
        result = await client.cancel_order(order_id, SYMBOL)
        assert env.recorder.statuses("time") == []  # still unanswered: nobody waited it out
    assert result.outcome is Outcome.SENT
    assert env.sim.open_order_ids(env.api_key) == set()


async def test_clock_jump_resyncs_once_after_invalid_client(env: Env) -> None:
    ids = env.sim.seed_orders(env.api_key, SYMBOL, 2)
    async with env.client(auth_resync_min_interval_s=0.0) as client:
        assert (await client.cancel_order(ids[0], SYMBOL)).outcome is Outcome.SENT
        env.sim.clock_offset_ms = -30_000  # the exchange's clock jumps back
        result = await client.cancel_order(ids[1], SYMBOL)
        assert abs(client.clock_offset_ms + 30_000) < 200
    assert (result.outcome, result.attempts) == (Outcome.SENT, 2)
    assert env.recorder.statuses("cancel") == ["200", "401", "200"]


@pytest.mark.parametrize("public_auth", [False, True])
async def test_a_hanging_time_endpoint_does_not_hold_an_invalid_client_refusal(
    env: Env, public_auth: bool
) -> None:
    # After invalid_client the clock is measured again; a time endpoint that hangs is
    # waited for briefly, then the refusal stands (its answer would come after the read
    # timeout, here 20 s: the refusal must not wait for it). Also on an exchange that
    # wants its public endpoints signed (its first unsigned time request refused).
    ids = env.sim.seed_orders(env.api_key, SYMBOL, 2)
    env.sim.public_auth = public_auth
    async with env.client(
        auth_resync_min_interval_s=0.0, read_timeout_s=20.0, request_deadline_s=20.0
    ) as client:
        assert (await client.cancel_order(ids[0], SYMBOL)).outcome is Outcome.SENT
        env.sim.set_faults(EndpointFaults(timeout_rate=1.0, timeout_hold_s=30.0), endpoint="time")
        env.sim.clock_offset_ms = -30_000  # the exchange's clock jumps back
        result = await client.cancel_order(ids[1], SYMBOL)
        # The second measurement still unanswered.
        assert env.recorder.statuses("time") == (["401", "200"] if public_auth else ["200"])
    assert (result.outcome, result.reason) == (Outcome.REJECTED, RejectReason.AUTH)
    assert "server time did not answer" in client.auth_clock_hint("cancel")
    assert ids[1] in env.sim.open_order_ids(env.api_key)


# -- listing ---------------------------------------------------------------------------------


async def test_paging_with_orders_appearing_and_disappearing(env: Env) -> None:
    initial = set(env.sim.seed_orders(env.api_key, SYMBOL, 230))
    seen: list[int] = []
    closed: set[int] = set()
    added: set[int] = set()
    pages = 0
    async with env.client() as client:
        async for page in client.open_orders(SYMBOL, limit=50):
            pages += 1
            seen += [o.order_id for o in page]
            if pages == 1:
                unseen = sorted(initial - set(seen))
                cursor = min(seen)
                closed = {cursor, unseen[10], unseen[100], unseen[-1]}
                for order_id in closed:
                    env.sim.close_order(order_id)
                added = set(env.sim.seed_orders(env.api_key, SYMBOL, 7))
    assert len(seen) == len(set(seen))  # never an order twice
    assert seen == sorted(seen, reverse=True)  # newest first across pages
    # Closed after page 1 (the cursor order was already seen, so it stays seen).
    assert set(seen) == initial - (closed - {min(seen[:50])})
    assert not added & set(seen)  # newer than the cursor: for the next pass (verify)
    queries = [e.query for e in env.sim.request_log if e.endpoint == "open_orders"]
    assert queries[0] == f"symbol={SYMBOL}&limit=50"
    assert all("from_order_id=" in q for q in queries[1:])
    assert len(queries) == pages or len(queries) == pages + 1


async def test_paging_parses_both_partial_spellings_and_decimals(env: Env) -> None:
    env.sim.seed_orders(env.api_key, SYMBOL, 300)
    async with env.client() as client:
        orders = [o async for page in client.open_orders(SYMBOL, limit=100) for o in page]
    assert len(orders) == 300
    statuses = {o.status for o in orders}
    assert {OrderStatus.PARTIAL_FILLED, OrderStatus.PARTIALLY_FILLED} <= statuses
    assert all(o.status.is_open for o in orders)
    assert all(o.remaining > 0 for o in orders)


async def test_listing_errors(env: Env) -> None:
    async with env.client() as client:
        with pytest.raises(InvalidRequest):
            async for _ in client.open_orders("NOPE_USDT"):
                pass
        with pytest.raises(NotFound):
            await client.get_order(1, SYMBOL)


async def test_get_order_and_exchange_info_cached(env: Env) -> None:
    (order_id,) = env.sim.seed_orders(env.api_key, SYMBOL, 1, price="123.45", quantity="0.5")
    async with env.client() as client:
        order = await client.get_order(order_id, SYMBOL)
        await client.cancel_order(order_id, SYMBOL)
        after = await client.get_order(order_id, SYMBOL)
        info = await client.exchange_info()
        await client.exchange_info()
    assert str(order.price) == "123.45"
    assert after.status is OrderStatus.CANCELLED
    assert SYMBOL in {s.symbol for s in info}
    assert env.sim.count(endpoint="exchange_info") == 1


# -- batch and cancel-all --------------------------------------------------------------------


async def test_batch_cancel_reports_success_and_fail(env: Env) -> None:
    ids = env.sim.seed_orders(env.api_key, SYMBOL, 20)
    for order_id in ids[:3]:
        env.sim.close_order(order_id)
    async with env.client() as client:
        result = await client.cancel_batch(SYMBOL, ids)
    assert result.outcome is None
    assert sorted(result.success) == ids[3:]
    assert sorted(result.fail) == ids[:3]
    assert env.sim.open_order_ids(env.api_key, SYMBOL) == set()
    log = [e for e in env.sim.request_log if e.endpoint == "cancel_batch"]
    assert [e.status for e in log] == [200]


async def test_cancel_all_on_a_pair_leaves_other_pairs(env: Env) -> None:
    ids = env.sim.seed_orders(env.api_key, SYMBOL, 30)
    other = env.sim.seed_orders(env.api_key, "ETH_USDT", 5)
    async with env.client() as client:
        result = await client.cancel_all(SYMBOL)
        rejected = await client.cancel_all("NOPE_USDT")
    assert sorted(result.success) == ids
    assert result.fail == []
    assert env.sim.open_order_ids(env.api_key, SYMBOL) == set()
    assert env.sim.open_order_ids(env.api_key, "ETH_USDT") == set(other)
    assert (rejected.outcome, rejected.reason) == (Outcome.REJECTED, RejectReason.INVALID_REQUEST)


# -- connections and accounts ----------------------------------------------------------------


async def test_keep_alive_reuses_one_connection(env: Env) -> None:
    ids = env.sim.seed_orders(env.api_key, SYMBOL, 30)
    async with env.client() as client:
        for order_id in ids:
            assert (await client.cancel_order(order_id, SYMBOL)).outcome is Outcome.SENT
        # One for the cancels (sequential, kept alive), at most one more for the clock sync.
        assert len(env.server._http._connections) <= 2


async def test_several_accounts_each_with_own_limiter(env: Env) -> None:
    other_key, other_pem = register_test_client(env.sim)
    ids_a = env.sim.seed_orders(env.api_key, SYMBOL, 5)
    ids_b = env.sim.seed_orders(other_key, SYMBOL, 5)
    accounts = [
        account_settings(env.server.base_url, env.api_key, env.pem, "acct-a"),
        account_settings(env.server.base_url, other_key, other_pem, "acct-b"),
    ]
    if env.transport == "generic":
        clients_cm = ExchangeClients(accounts, client_factory=env.client_for)
    else:
        clients_cm = ExchangeClients(accounts, transport=env.transport)
    async with clients_cm as clients:
        assert set(clients) == {"acct-a", "acct-b"}
        assert clients["acct-a"].limiter is not clients["acct-b"].limiter
        results = await asyncio.gather(
            *(clients["acct-a"].cancel_order(i, SYMBOL) for i in ids_a),
            *(clients["acct-b"].cancel_order(i, SYMBOL) for i in ids_b),
        )
        # An account cannot cancel another's order: the exchange does not know it for them.
        cross = await clients["acct-a"].cancel_order(ids_b[0], SYMBOL)
    assert {r.outcome for r in results} == {Outcome.SENT}
    assert cross.reason is RejectReason.NOT_FOUND
    assert env.sim.open_order_ids(env.api_key) == env.sim.open_order_ids(other_key) == set()


async def test_inflight_cap_holds_under_load(env: Env) -> None:
    ids = env.sim.seed_orders(env.api_key, SYMBOL, 24)
    env.sim.set_faults(EndpointFaults(latency_ms=30.0), endpoint="cancel")
    async with env.client(max_concurrency=4) as client:
        results = await asyncio.gather(*(client.cancel_order(i, SYMBOL) for i in ids))
    assert {r.outcome for r in results} == {Outcome.SENT}
    assert env.recorder.peak_inflight == 4  # reached, never exceeded
    assert env.recorder.inflight == 0


async def test_connection_refused_is_failed_and_listing_unavailable(env: Env) -> None:
    with socket.socket() as probe:  # a loopback port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = account_settings(
        f"http://127.0.0.1:{port}", env.api_key, env.pem, max_attempts=2, backoff_base_s=0.01
    )
    async with env.client_for(settings) as client:
        result = await client.cancel_order(1, SYMBOL)
        with pytest.raises(ExchangeUnavailable) as info:
            await client.get_order(1, SYMBOL)
    assert (result.outcome, result.status, result.attempts) == (Outcome.FAILED, None, 2)
    assert result.error == "ConnectError"
    assert info.value.last_error == "ConnectError"
    assert env.api_key not in str(info.value)
