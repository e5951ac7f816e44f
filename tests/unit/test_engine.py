"""Orchestration logic of the engine against an in-memory exchange (fast; no sockets).

The end-to-end tests against the real client and simulator are in
``tests/integration/test_engine*.py``; these pin down the engine's own decisions. The
in-memory exchange and the recorders are in ``tests/support/engine.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from killswitch.core.model import HaltState, Scope, SweepStatus
from killswitch.core.orders import Order, OrderStatus, Side, SymbolInfo
from killswitch.core.outcomes import Outcome
from killswitch.core.pairs import PairList
from killswitch.core.ports import CancelResult
from killswitch.engine import Engine
from killswitch.engine import engine as engine_module
from killswitch.exchange.errors import AuthError, ExchangeUnavailable, Redirected
from tests.support.engine import (
    ACCOUNT,
    Engines,
    FakeExchange,
    Progress,
    Recorder,
    assert_accounted,
    request,
    run,
    settings,
)
from tests.support.waiting import wait_for


@pytest.mark.parametrize("strategy", ["per_order", "batch", "symbol"])
async def test_each_strategy_reaches_verified_flat(strategy: str, engines: Engines) -> None:
    ex = FakeExchange()
    for i in range(30):
        ex.place("BTC_USDT" if i % 3 else "ETH_USDT", Side.BUY if i % 2 else Side.SELL)
    observer = Recorder()
    engine = await engines(
        Engine({ACCOUNT: ex}, settings(strategy=strategy, batch_size=7), observer)
    )
    result = await run(engine, request())
    assert result.status is SweepStatus.FLAT
    assert ex.open_count() == 0
    assert result.counts.sent == 30
    assert_accounted(result)
    assert result.residual_open == 0
    assert ex.double_cancels == 0
    assert sorted(observer.outcomes) == [Outcome.SENT] * 30
    assert len(observer.first_cancels) == 1
    assert len(observer.flats) == 1
    kinds = {c[0] for c in ex.log}
    expected = {"per_order": "cancel", "batch": "batch", "symbol": "all"}[strategy]
    assert expected in kinds
    if strategy == "batch":
        assert max(len(c[2]) for c in ex.calls("batch")) == 7


async def test_symbol_strategy_falls_back_to_per_order_for_a_side_filter(engines: Engines) -> None:
    ex = FakeExchange()
    buy = ex.place("BTC_USDT", Side.BUY)
    sell = ex.place("BTC_USDT", Side.SELL)
    engine = await engines(Engine({ACCOUNT: ex}, settings(strategy="symbol")))
    result = await run(engine, request(sides={Side.BUY}))
    assert result.status is SweepStatus.FLAT
    assert not ex.calls("all")
    assert [c[2] for c in ex.calls("cancel")] == [(buy,)]
    assert sell in ex.books["BTC_USDT"]


async def test_priority_largest_notional_first(engines: Engines) -> None:
    ex = FakeExchange(["BTC_USDT"])
    small = ex.place("BTC_USDT", price="1")
    big = ex.place("BTC_USDT", price="1000")
    mid = ex.place("BTC_USDT", price="50")
    engine = await engines(Engine({ACCOUNT: ex}, settings(), concurrency=1))
    await run(engine, request())
    assert [c[2][0] for c in ex.calls("cancel")] == [big, mid, small]


@pytest.mark.parametrize(
    ("priority", "expected_order"), [("newest_first", [2, 1, 0]), ("oldest_first", [0, 1, 2])]
)
async def test_priority_by_age(priority: str, expected_order: list[int], engines: Engines) -> None:
    ex = FakeExchange(["BTC_USDT"])
    ids = [ex.place("BTC_USDT", price=str(p)) for p in ("1000", "1", "50")]
    engine = await engines(Engine({ACCOUNT: ex}, settings(priority=priority), concurrency=1))
    await run(engine, request())
    assert [c[2][0] for c in ex.calls("cancel")] == [ids[i] for i in expected_order]


async def test_batch_fail_ids_fall_back_to_single_cancels(engines: Engines) -> None:
    ex = FakeExchange(["BTC_USDT"])
    ids = [ex.place("BTC_USDT") for _ in range(5)]
    ex.batch_fail_ids = {ids[1], ids[3]}  # still open, the batch did not take them
    engine = await engines(Engine({ACCOUNT: ex}, settings(strategy="batch", batch_size=10)))
    result = await run(engine, request())
    assert result.status is SweepStatus.FLAT
    assert sorted(c[2][0] for c in ex.calls("cancel")) == sorted(ex.batch_fail_ids)
    assert result.counts.sent == 5
    assert_accounted(result)
    by_id = {o.order_id: o for o in result.orders}
    assert by_id[ids[1]].attempts == 2  # the batch and the single cancel


async def test_scope_filters_symbol_side_and_ids(engines: Engines) -> None:
    ex = FakeExchange()
    keep = [ex.place("ETH_USDT"), ex.place("BTC_USDT", Side.SELL)]
    target = ex.place("BTC_USDT", Side.BUY)
    other_buy = ex.place("BTC_USDT", Side.BUY)
    engine = await engines(Engine({ACCOUNT: ex}, settings()))
    result = await run(engine, request(symbols={"BTC_USDT"}, sides={Side.BUY}, ids={target}))
    assert result.status is SweepStatus.FLAT
    assert [o.order_id for o in result.orders] == [target]
    assert {c[1] for c in ex.calls("list")} == {"BTC_USDT"}
    assert not ex.calls("info")  # the scope names its pairs: no exchange-info call
    assert all(i in ex.books[o] for i, o in zip(keep, ["ETH_USDT", "BTC_USDT"], strict=True))
    assert other_buy in ex.books["BTC_USDT"]


async def test_dry_run_sends_nothing(engines: Engines) -> None:
    ex = FakeExchange()
    for _ in range(4):
        ex.place("BTC_USDT")
    observer = Recorder()
    engine = await engines(Engine({ACCOUNT: ex}, settings(strategy="symbol"), observer))
    result = await run(engine, request(dry_run=True, latch=True))
    assert result.status is SweepStatus.DRY_RUN
    assert result.counts.skipped == 4
    assert_accounted(result)
    assert {c[0] for c in ex.log} <= {"info", "list"}
    assert ex.open_count() == 4
    assert observer.outcomes == []
    assert engine.halted() == {}  # a dry run never latches


async def test_auth_rejected_on_cancel_stops_at_once(engines: Engines) -> None:
    ex = FakeExchange(["BTC_USDT"])
    for _ in range(50):
        ex.place("BTC_USDT")
    ex.auth_revoked = False
    engine = await engines(Engine({ACCOUNT: ex}, settings(), concurrency=2))

    original = ex.cancel_order

    async def revoke_after_three(order_id: int, symbol: str) -> CancelResult:
        if len(ex.calls("cancel")) >= 3:
            ex.auth_revoked = True
        return await original(order_id, symbol)

    ex.cancel_order = revoke_after_three  # type: ignore[method-assign]
    result = await run(engine, request())
    assert result.status is SweepStatus.FAILED
    assert result.reason is not None
    assert "authentication" in result.reason
    assert len(ex.calls("cancel")) <= 5  # the workers in flight, not 50
    assert_accounted(result)
    assert result.counts.rejected >= 1
    assert result.counts.resolved == 50  # queued but never sent: failed, still accounted


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (AuthError("refused", status=401), "authentication"),
        (ExchangeUnavailable("down", attempts=6, last_status=503, last_error=None), "unavailable"),
    ],
)
async def test_listing_errors_fail_the_sweep(
    error: Exception, words: str, engines: Engines
) -> None:
    ex = FakeExchange()
    ex.place("BTC_USDT")
    ex.list_error = error
    # An unavailable exchange is listed again until the deadline; a refused key not.
    observer = Recorder()
    engine = await engines(Engine({ACCOUNT: ex}, settings(), observer))
    result = await run(engine, request(symbols={"BTC_USDT"}, deadline_s=2.0))
    assert result.status is SweepStatus.FAILED
    assert result.reason is not None
    assert words in result.reason
    assert ex.open_count() == 1
    assert observer.failed_sweeps == 1


async def test_an_unreachable_exchange_fails_a_kill_whose_pairs_were_never_checked(
    engines: Engines,
) -> None:
    # Unchecked pairs keep a kill from ending flat; they must not turn "the exchange
    # could not be reached" into a residual that hides why.
    ex = FakeExchange()
    ex.place("BTC_USDT")
    ex.list_error = ExchangeUnavailable("down", attempts=6, last_status=503, last_error=None)
    engine = await engines(Engine({ACCOUNT: ex}, settings()))
    unchecked = dataclasses.replace(
        request(symbols={"BTC_USDT"}, deadline_s=2.0), unchecked_pairs="pair list unavailable"
    )
    result = await run(engine, unchecked)
    assert result.status is SweepStatus.FAILED
    assert result.reason is not None
    assert "down" in result.reason
    assert "pair list unavailable" in result.reason


async def test_an_unreachable_exchange_at_the_last_pass_fails_the_sweep(
    engines: Engines,
) -> None:
    # Out of passes before the deadline, none of them answered: unreachable, not residual.
    ex = FakeExchange()
    ex.place("BTC_USDT")
    ex.list_error = ExchangeUnavailable("down", attempts=6, last_status=503, last_error=None)
    engine = await engines(Engine({ACCOUNT: ex}, settings(max_passes=4)))
    result = await run(engine, request(symbols={"BTC_USDT"}, deadline_s=60.0))
    assert result.status is SweepStatus.FAILED
    assert result.reason is not None
    assert "down" in result.reason
    assert len(ex.calls("list")) == 4  # every pass listed, no settling listing after


def flaky_listing(ex: FakeExchange, failures: dict[str, int]) -> None:
    """The first ``failures[symbol]`` listings of a pair give up (retries exhausted)."""
    real = ex.open_orders

    async def listing(symbol: str, *, limit: int = 100) -> AsyncIterator[list[Order]]:
        if failures.get(symbol, 0) > 0:
            failures[symbol] -= 1
            ex.log.append(("list", symbol, ()))
            raise ExchangeUnavailable("gave up", attempts=6, last_status=503, last_error=None)
        async for page in real(symbol, limit=limit):
            yield page

    ex.open_orders = listing  # type: ignore[method-assign]


@pytest.mark.parametrize(
    "failures",
    [
        {"ETH_USDT": 1},  # one pair, once
        {"ETH_USDT": 2},  # one pair, two passes in a row (the other pair answers)
        {"BTC_USDT": 1, "ETH_USDT": 1},  # every listing of one pass: counted once
    ],
)
async def test_a_listing_that_gives_up_is_listed_again_by_the_next_pass(
    failures: dict[str, int],
    engines: Engines,
) -> None:
    # A flaky exchange (other requests answered) must not end a kill as failed.
    ex = FakeExchange()
    for _ in range(3):
        ex.place("BTC_USDT")
        ex.place("ETH_USDT")
    flaky_listing(ex, dict(failures))
    engine = await engines(Engine({ACCOUNT: ex}, settings()))
    result = await run(engine, request(symbols={"BTC_USDT", "ETH_USDT"}))
    assert result.status is SweepStatus.FLAT, result.reason
    assert ex.open_count() == 0
    assert_accounted(result)


async def test_exchange_info_that_gives_up_once_is_read_again(engines: Engines) -> None:
    ex = FakeExchange()
    ex.place("BTC_USDT")
    real = ex.exchange_info
    calls = 0

    async def info() -> list[SymbolInfo]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ExchangeUnavailable("gave up", attempts=6, last_status=503, last_error=None)
        return await real()

    ex.exchange_info = info  # type: ignore[method-assign]
    result = await run(await engines(Engine({ACCOUNT: ex}, settings())), request())
    assert result.status is SweepStatus.FLAT, result.reason
    assert ex.open_count() == 0


async def test_a_pair_never_listed_is_named_in_a_residual_result(engines: Engines) -> None:
    # residual_open counts what listings returned: a pair nobody could list is named.
    ex = FakeExchange()
    ex.place("BTC_USDT")
    ex.place("ETH_USDT")
    flaky_listing(ex, {"ETH_USDT": 100})
    observer = Recorder()
    engine = await engines(Engine({ACCOUNT: ex}, settings(max_passes=2), observer))
    result = await run(engine, request(symbols={"BTC_USDT", "ETH_USDT"}))
    assert result.status is SweepStatus.RESIDUAL
    assert result.reason is not None
    assert "never listed to the end: ETH_USDT" in result.reason
    assert ex.open_count() == 1  # the ETH order: the result does not claim it
    # residual_open reads 0 (nothing open where it looked): the pair makes it unknown.
    assert (result.residual_open, result.unlisted_pairs) == (0, ["ETH_USDT"])
    assert observer.residuals == [(0, 1)]


async def test_a_flat_sweep_reports_no_pair_unlisted(engines: Engines) -> None:
    ex = FakeExchange()
    ex.place("BTC_USDT")
    flaky_listing(ex, {"BTC_USDT": 1})  # given up once, listed by the next pass
    observer = Recorder()
    engine = await engines(Engine({ACCOUNT: ex}, settings(), observer))
    result = await run(engine, request())
    assert result.status is SweepStatus.FLAT, result.reason
    assert result.unlisted_pairs == []
    assert observer.residuals == [(0, 0)]
    assert observer.failed_sweeps == 0


async def test_a_pair_the_exchange_refuses_to_list_is_never_flat(engines: Engines) -> None:
    # The intake refuses unknown pairs up front; one that gets here anyway (delisted
    # since, or never checked) is no proof of flat: the rest is cancelled, the
    # result is residual and names the pair.
    ex = FakeExchange(["BTC_USDT"])
    ex.place("BTC_USDT")
    engine = await engines(Engine({ACCOUNT: ex}, settings()))
    result = await run(engine, request(symbols={"BTC_USDT", "NOPE_USDT"}))
    assert result.status is SweepStatus.RESIDUAL
    assert result.reason is not None
    assert "never listed to the end: NOPE_USDT" in result.reason
    assert result.unlisted_pairs == ["NOPE_USDT"]
    assert ex.open_count() == 0


async def test_unchecked_pairs_are_never_flat(engines: Engines) -> None:
    ex = FakeExchange(["BTC_USDT"])
    ex.place("BTC_USDT")
    engine = await engines(Engine({ACCOUNT: ex}, settings()))
    req = dataclasses.replace(
        request(symbols={"BTC_USDT"}), unchecked_pairs="pairs could not be checked (down)"
    )
    result = await run(engine, req)
    assert result.status is SweepStatus.RESIDUAL
    assert result.reason is not None
    assert result.reason.startswith("pairs could not be checked (down)")
    assert ex.open_count() == 0  # what could be cancelled was


async def test_order_ids_never_seen_open_are_not_found(engines: Engines) -> None:
    ex = FakeExchange(["BTC_USDT"])
    order_id = ex.place("BTC_USDT")
    engine = await engines(Engine({ACCOUNT: ex}, settings()))
    ids = {order_id, 987654321, 987654322}
    result = await run(engine, request(symbols={"BTC_USDT"}, ids=ids))
    assert result.status is SweepStatus.FLAT
    assert result.not_found == [987654321, 987654322]


async def test_unknown_account_gets_a_failed_result(engines: Engines) -> None:
    engine = await engines(Engine({ACCOUNT: FakeExchange()}, settings()))
    result = await run(engine, request(account="ghost"))
    assert result.status is SweepStatus.FAILED
    assert result.final
    assert result.reason is not None
    assert "ghost" in result.reason


async def test_orders_appearing_during_the_sweep_are_cancelled(engines: Engines) -> None:
    ex = FakeExchange(["BTC_USDT"])
    ex.place("BTC_USDT")
    ex.spawn_on_cancel = [("BTC_USDT", Side.SELL), ("BTC_USDT", Side.BUY)]
    engine = await engines(Engine({ACCOUNT: ex}, settings()))
    result = await run(engine, request())
    assert result.status is SweepStatus.FLAT
    assert result.counts.sent == 3
    assert result.sweeps == 3  # cancel, cancel the newcomers, verify
    assert ex.open_count() == 0


async def test_sticky_orders_end_residual_at_the_deadline(engines: Engines) -> None:
    ex = FakeExchange(["BTC_USDT"])
    ex.place("BTC_USDT")
    ex.sticky = True
    engine = await engines(Engine({ACCOUNT: ex}, settings(max_passes=1000)))
    result = await run(engine, request(deadline_s=0.2))
    assert result.status is SweepStatus.RESIDUAL
    assert result.residual_open == 1
    assert result.counts.sent == 1  # re-cancelled many times, counted once
    assert result.orders[0].attempts > 1
    assert result.reason is not None
    assert "deadline" in result.reason


async def test_sticky_orders_end_residual_after_max_passes(engines: Engines) -> None:
    ex = FakeExchange(["BTC_USDT"])
    ex.place("BTC_USDT")
    ex.sticky = True
    engine = await engines(Engine({ACCOUNT: ex}, settings(max_passes=3)))
    result = await run(engine, request())
    assert result.status is SweepStatus.RESIDUAL
    assert result.sweeps == 3
    assert len(ex.calls("cancel")) == 3


async def test_rejected_orders_stop_the_sweep_without_hammering(engines: Engines) -> None:
    ex = FakeExchange(["BTC_USDT"])
    bad = ex.place("BTC_USDT")
    ex.place("BTC_USDT")
    ex.reject_ids = {bad}
    engine = await engines(Engine({ACCOUNT: ex}, settings()))
    result = await run(engine, request())
    assert result.status is SweepStatus.RESIDUAL
    assert result.residual_open == 1
    assert result.counts.rejected == 1
    assert result.counts.sent == 1
    assert len(ex.calls("cancel")) == 2
    assert result.sweeps == 2


async def test_overlapping_kills_coalesce_into_one_sweep(engines: Engines) -> None:
    ex = FakeExchange()
    btc = [ex.place("BTC_USDT") for _ in range(3)]
    eth = [ex.place("ETH_USDT") for _ in range(2)]
    ex.gate = asyncio.Event()
    engine = await engines(Engine({ACCOUNT: ex}, settings()))
    first = asyncio.create_task(engine.submit(request("a", symbols={"BTC_USDT"}), Progress()))
    await wait_for(lambda: len(ex.calls("cancel")) > 0)
    second = asyncio.create_task(engine.submit(request("b", symbols={"ETH_USDT"}), Progress()))
    await wait_for(lambda: {c[1] for c in ex.calls("cancel")} == {"BTC_USDT", "ETH_USDT"})
    ex.gate.set()
    a, b = await asyncio.gather(first, second)
    await engine.close(1.0)
    assert ex.double_cancels == 0
    assert (a.status, b.status) == (SweepStatus.FLAT, SweepStatus.FLAT)
    assert sorted(o.order_id for o in a.orders) == sorted(btc)
    assert sorted(o.order_id for o in b.orders) == sorted(eth)
    assert a.sweeps == b.sweeps  # the same sweep
    # ETH was listed in the running pass already (no wait for the BTC pass to end)
    assert ex.open_count() == 0


async def test_a_sweep_past_half_its_passes_takes_no_more_alerts(engines: Engines) -> None:
    ex = FakeExchange(["BTC_USDT"])
    ex.place("BTC_USDT")
    ex.sticky = True  # every pass cancels it again: the sweep uses all its passes
    engine = await engines(Engine({ACCOUNT: ex}, settings(max_passes=4)))
    first = asyncio.create_task(engine.submit(request("a"), Progress()))
    await wait_for(lambda: len(ex.calls("cancel")) >= 3)  # the third pass of four
    second = asyncio.create_task(engine.submit(request("b"), Progress()))
    a, b = await asyncio.gather(first, second)
    await engine.close(1.0)
    # b got a sweep, and a pass budget, of its own rather than the last pass of a's.
    assert (a.sweeps, b.sweeps) == (4, 4)
    assert len(ex.calls("cancel")) == 8


async def test_a_sweep_answers_thousands_of_alerts_between_turns_of_the_loop(
    engines: Engines,
) -> None:
    ex = FakeExchange(["BTC_USDT"])
    ex.place("BTC_USDT")
    ex.gate = asyncio.Event()
    engine = await engines(Engine({ACCOUNT: ex}, settings()))
    futures = [engine.start(request(f"a{i}"), Progress()) for i in range(40)]
    seen: list[int] = []  # alerts answered, each time the loop came round to this task

    async def watch() -> None:
        while not all(f.done() for f in futures):
            seen.append(sum(f.done() for f in futures))
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    ex.gate.set()
    results = await asyncio.gather(*futures)
    await watcher
    await engine.close(1.0)
    assert {r.status for r in results} == {SweepStatus.FLAT}
    assert {r.sweeps for r in results} == {results[0].sweeps}  # one sweep for all 40
    # Other tasks ran while the 40 were being answered, not only before or after.
    assert any(0 < n < 40 for n in seen)


async def test_kill_waits_when_the_running_sweep_is_closing(engines: Engines) -> None:
    ex = FakeExchange(["BTC_USDT"])
    engine = await engines(Engine({ACCOUNT: ex}, settings()))
    a = await engine.submit(request("a"), Progress())
    ex.place("BTC_USDT")
    b = await engine.submit(request("b"), Progress())
    await engine.close(1.0)
    assert a.status is SweepStatus.FLAT
    assert a.counts.resolved == 0
    assert b.counts.sent == 1


async def test_dry_run_does_not_join_a_real_sweep(engines: Engines) -> None:
    ex = FakeExchange(["BTC_USDT"])
    ids = [ex.place("BTC_USDT") for _ in range(3)]
    ex.gate = asyncio.Event()
    engine = await engines(Engine({ACCOUNT: ex}, settings()))
    real = asyncio.create_task(engine.submit(request("real"), Progress()))
    await wait_for(lambda: len(ex.calls("cancel")) > 0)
    dry = asyncio.create_task(engine.submit(request("dry", dry_run=True), Progress()))
    await asyncio.sleep(0)
    ex.gate.set()
    r, d = await asyncio.gather(real, dry)
    await engine.close(1.0)
    assert r.status is SweepStatus.FLAT
    assert sorted(o.order_id for o in r.orders) == ids
    assert d.status is SweepStatus.DRY_RUN
    assert d.counts.resolved == 0  # it ran after the real sweep: nothing left


async def test_progress_events_while_a_sweep_runs(engines: Engines) -> None:
    ex = FakeExchange(["BTC_USDT"])
    for _ in range(5):
        ex.place("BTC_USDT")
    ex.gate = asyncio.Event()
    engine = await engines(Engine({ACCOUNT: ex}, settings(progress_interval_s=0.01)))
    progress = Progress()
    task = asyncio.create_task(engine.submit(request(), progress))
    await wait_for(lambda: len(progress.events) >= 2)
    ex.gate.set()
    result = await task
    await engine.close(1.0)
    event = progress.events[0]
    assert event.status is SweepStatus.RUNNING
    assert not event.final
    assert event.pending >= 1
    assert result.final


async def test_latch_resweeps_until_released(engines: Engines) -> None:
    ex = FakeExchange(["BTC_USDT"])
    ex.place("BTC_USDT")
    states: list[HaltState] = []

    async def on_state(state: HaltState) -> None:
        states.append(state)

    observer = Recorder()
    engine = await engines(Engine({ACCOUNT: ex}, settings(), observer, on_state))
    result = await engine.submit(request(latch=True, symbols={"BTC_USDT"}), Progress())
    assert result.status is SweepStatus.FLAT
    assert [s.halted for s in states] == [True]
    assert ACCOUNT in engine.halted()
    late = ex.place("BTC_USDT")
    await wait_for(lambda: late not in ex.books["BTC_USDT"])
    guard = engine._guards[ACCOUNT].task
    released = await engine.release(request("rel"))
    assert released.status is SweepStatus.RELEASED
    assert engine.halted() == {}
    assert [s.halted for s in states] == [True, False]
    assert observer.halts == [True, False]
    assert guard.done()  # release returns only once the guard loop has stopped
    assert not engine._guards
    await engine.close(1.0)


async def test_restore_halt_guards_at_start_up(engines: Engines) -> None:
    ex = FakeExchange(["BTC_USDT"])
    stray = ex.place("BTC_USDT")
    engine = await engines(Engine({ACCOUNT: ex}, settings()))
    engine.restore_halt(
        HaltState(ACCOUNT, True, "old", datetime.now(UTC), Scope(frozenset({"BTC_USDT"})))
    )
    await wait_for(lambda: stray not in ex.books["BTC_USDT"])
    assert ACCOUNT in engine.halted()
    await engine.close(1.0)
    assert engine.halted()[ACCOUNT].alert_id == "old"


async def test_close_fails_sweeps_that_outlive_the_grace(engines: Engines) -> None:
    ex = FakeExchange(["BTC_USDT"])
    ex.place("BTC_USDT")
    ex.gate = asyncio.Event()  # never set: the cancel hangs
    engine = await engines(Engine({ACCOUNT: ex}, settings()))
    task = asyncio.create_task(engine.submit(request(), Progress()))
    await wait_for(lambda: len(ex.calls("cancel")) == 1)
    await engine.close(0.01)
    result = await task
    assert result.status is SweepStatus.FAILED
    assert result.counts.failed == 1
    refused = await engine.submit(request("late"), Progress())
    assert refused.status is SweepStatus.FAILED


class _Live:
    """Counts Order objects alive right now (and the most ever alive at once)."""

    now = 0
    peak = 0


class CountedOrder(Order):
    __slots__ = ()

    def __del__(self) -> None:
        _Live.now -= 1


def counted_order(order_id: int, symbol: str) -> Order:
    _Live.now += 1
    _Live.peak = max(_Live.peak, _Live.now)
    return CountedOrder(
        order_id=order_id,
        symbol=symbol,
        side=Side.BUY if order_id % 2 else Side.SELL,
        status=OrderStatus.OPEN,
        type="LIMIT",
        price=Decimal(order_id % 997 + 1),
        quantity=Decimal(1),
    )


class LazyBook(FakeExchange):
    """Keeps only ids; builds Order objects page by page, as a real client parses them."""

    def __init__(self, per_symbol: int, symbols: Sequence[str]) -> None:
        super().__init__(symbols)
        self.ids: dict[str, set[int]] = {
            s: set(range(i * per_symbol + 1, (i + 1) * per_symbol + 1))
            for i, s in enumerate(symbols)
        }

    async def open_orders(self, symbol: str, *, limit: int = 100) -> AsyncIterator[list[Order]]:
        ids = sorted(self.ids[symbol], reverse=True)
        for i in range(0, len(ids), limit):
            page = [counted_order(oid, symbol) for oid in ids[i : i + limit]]
            yield page
            del page
            await asyncio.sleep(0)

    async def cancel_order(self, order_id: int, symbol: str) -> CancelResult:
        await asyncio.sleep(0)
        if order_id not in self.ids[symbol]:
            return CancelResult(order_id, symbol, Outcome.ALREADY_CLOSED, 1, status=400)
        self.ids[symbol].discard(order_id)
        return CancelResult(order_id, symbol, Outcome.SENT, 1, status=200)


async def test_memory_is_bounded_by_pages_not_by_orders(engines: Engines) -> None:
    # 40,000 open orders: the sweep must never hold more than the pages being read, whatever
    # the size of the book: per pair listed at once, one page, two while the next one is
    # parsed (the loop still holds the previous page).
    _Live.now = _Live.peak = 0
    symbols = ["A_USDT", "B_USDT", "C_USDT", "D_USDT"]
    ex = LazyBook(10_000, symbols)
    engine = await engines(Engine({ACCOUNT: ex}, settings(page_size=100)))
    # What is measured is memory, not speed: a deadline a loaded machine cannot miss.
    result = await run(engine, request(deadline_s=90.0))
    assert result.status is SweepStatus.FLAT
    assert result.counts.sent == 40_000
    assert _Live.peak <= 2 * len(symbols) * 100
    assert _Live.now == 0


def test_restore_halt_before_the_lifetime_starts_guarding_when_it_begins() -> None:
    ex = FakeExchange(["BTC_USDT", "ETH_USDT"])
    stray = ex.place("BTC_USDT")
    engine = Engine({ACCOUNT: ex}, settings())
    engine.restore_halt(
        HaltState(ACCOUNT, True, "old", datetime.now(UTC), Scope(frozenset({"BTC_USDT"})))
    )
    engine.restore_halt(HaltState("ghost", True, "x", datetime.now(UTC), Scope()))  # ignored
    assert set(engine.halted()) == {ACCOUNT}

    async def main() -> None:
        assert engine.guarded() == frozenset()  # nothing runs before the lifetime
        async with engine:
            assert engine.guarded() == {ACCOUNT}
            result = await engine.submit(request(symbols={"ETH_USDT"}), Progress())
            assert result.status is SweepStatus.FLAT
            await wait_for(lambda: stray not in ex.books["BTC_USDT"])
            await engine.close(1.0)
        assert engine.guarded() == frozenset()

    asyncio.run(main())


async def test_leaving_the_lifetime_ends_every_task_of_the_engine() -> None:
    """A latched kill stuck on a cancel that never answers, a guard, a second account's
    sweep: leaving the lifetime (no close first) ends them all, and every alert has its
    answer."""
    ex = FakeExchange(["BTC_USDT"])
    ex.place("BTC_USDT")
    ex.gate = asyncio.Event()  # never set: the cancel hangs
    other = FakeExchange(["BTC_USDT"], account="mm-2")
    other.place("BTC_USDT")
    other.gate = asyncio.Event()
    before = asyncio.all_tasks()
    async with Engine({ACCOUNT: ex, "mm-2": other}, settings()) as engine:
        latched = engine.start(request(latch=True), Progress())
        plain = engine.start(request("a2", account="mm-2"), Progress())
        await wait_for(lambda: bool(ex.calls("cancel") and other.calls("cancel")))
        assert engine.guarded() == {ACCOUNT}
    assert asyncio.all_tasks() == before  # nothing of the engine outlives it
    for future in (latched, plain):
        result = await future
        assert result.status is SweepStatus.FAILED
        assert result.final
    assert engine.guarded() == frozenset()


async def test_start_outside_the_lifetime_is_refused() -> None:
    engine = Engine({ACCOUNT: FakeExchange()}, settings())
    with pytest.raises(RuntimeError, match="not running"):
        engine.start(request(), Progress())
    async with engine:
        pass
    # After its lifetime: every kill gets a failed result, nothing is spawned.
    result = await engine.submit(request(), Progress())
    assert result.status is SweepStatus.FAILED
    assert result.reason == "the engine is shutting down"


# ------------------------------------------------------------------ guard filter

OTHER = "mm-2"


def halt(account: str) -> HaltState:
    return HaltState(account, True, f"halt-{account}", datetime.now(UTC), Scope())


async def two_accounts(
    engines: Engines, observer: Recorder | None = None
) -> tuple[FakeExchange, FakeExchange, Engine]:
    mine, theirs = FakeExchange(["BTC_USDT"]), FakeExchange(["BTC_USDT"], account=OTHER)
    engine = await engines(Engine({ACCOUNT: mine, OTHER: theirs}, settings(), observer))
    return mine, theirs, engine


async def test_guard_filter_keeps_the_halt_but_guards_only_owned_accounts(engines: Engines) -> None:
    observer = Recorder()
    mine, theirs, engine = await two_accounts(engines, observer)
    engine.set_guard_filter(lambda account: account == ACCOUNT)
    engine.restore_halt(halt(ACCOUNT))
    engine.restore_halt(halt(OTHER))
    stray = theirs.place("BTC_USDT")
    assert set(engine.halted()) == {ACCOUNT, OTHER}  # both known halted
    assert observer.halts == [True, True]  # and reported (killswitch_account_halted)
    assert engine.guarded() == {ACCOUNT}
    # The owned account's guard sweeps several times; the other account is never listed.
    await wait_for(lambda: len(mine.calls("list")) >= 5)
    assert theirs.log == []
    assert stray in theirs.books["BTC_USDT"]
    await engine.close(1.0)


async def test_refresh_guards_moves_the_guard_with_ownership(engines: Engines) -> None:
    mine, theirs, engine = await two_accounts(engines)
    owned = {ACCOUNT}
    engine.set_guard_filter(owned.__contains__)
    engine.restore_halt(halt(ACCOUNT))
    engine.restore_halt(halt(OTHER))
    assert engine.guarded() == {ACCOUNT}
    old_guard = engine._guards[ACCOUNT].task
    owned.clear()
    owned.add(OTHER)
    await engine.refresh_guards()
    assert old_guard.done()  # stopped before refresh_guards returned
    assert engine.guarded() == {OTHER}
    listed = len(mine.calls("list"))
    late = mine.place("BTC_USDT")
    stray = theirs.place("BTC_USDT")
    await wait_for(lambda: stray not in theirs.books["BTC_USDT"])  # swept at once
    await wait_for(lambda: len(theirs.calls("list")) >= 5)
    assert len(mine.calls("list")) == listed  # no longer swept here
    assert late in mine.books["BTC_USDT"]
    assert set(engine.halted()) == {ACCOUNT, OTHER}
    owned.clear()
    await engine.refresh_guards()  # e.g. every partition revoked
    assert engine.guarded() == frozenset()
    await engine.close(1.0)


async def test_losing_ownership_cancels_a_guard_sweep_in_progress(engines: Engines) -> None:
    ex = FakeExchange(["BTC_USDT"])
    ex.place("BTC_USDT")
    ex.gate = asyncio.Event()  # never set: the guard's cancel hangs
    owned = [True]
    engine = await engines(Engine({ACCOUNT: ex}, settings()))
    engine.set_guard_filter(lambda account: owned[0])
    engine.restore_halt(halt(ACCOUNT))
    await wait_for(lambda: len(ex.calls("cancel")) == 1)
    guard = engine._guards[ACCOUNT].task
    owned[0] = False
    await engine.refresh_guards()
    assert guard.done()
    assert engine.guarded() == frozenset()
    assert ACCOUNT in engine.halted()
    await engine.close(1.0)


async def test_a_guard_loop_ends_when_ownership_is_lost_without_refresh(engines: Engines) -> None:
    ex = FakeExchange(["BTC_USDT"])
    owned = [True]
    engine = await engines(Engine({ACCOUNT: ex}, settings()))
    engine.set_guard_filter(lambda account: owned[0])
    engine.restore_halt(halt(ACCOUNT))
    await wait_for(lambda: len(ex.calls("list")) >= 2)
    owned[0] = False
    await wait_for(lambda: engine.guarded() == frozenset())  # at its next tick
    listed = len(ex.calls("list"))
    owned[0] = True
    await engine.refresh_guards()
    await wait_for(lambda: len(ex.calls("list")) > listed)
    assert engine.guarded() == {ACCOUNT}
    await engine.close(1.0)


async def test_a_kill_sweeps_and_halts_even_where_the_account_is_not_guarded(
    engines: Engines,
) -> None:
    ex = FakeExchange(["BTC_USDT"])
    ex.place("BTC_USDT")
    states: list[HaltState] = []

    async def on_state(state: HaltState) -> None:
        states.append(state)

    owned = [False]
    engine = await engines(Engine({ACCOUNT: ex}, settings(), on_state=on_state))
    engine.set_guard_filter(lambda account: owned[0])
    result = await engine.submit(request(latch=True), Progress())
    assert result.status is SweepStatus.FLAT
    assert [s.halted for s in states] == [True]  # published: the owner guards it
    assert ACCOUNT in engine.halted()
    assert engine.guarded() == frozenset()
    owned[0] = True  # the partition comes here
    await engine.refresh_guards()
    late = ex.place("BTC_USDT")
    await wait_for(lambda: late not in ex.books["BTC_USDT"])
    released = await engine.release(request("rel"))
    assert released.status is SweepStatus.RELEASED
    assert engine.guarded() == frozenset()
    assert [s.halted for s in states] == [True, False]
    await engine.close(1.0)


async def test_a_latching_kill_on_the_owner_starts_its_guard(engines: Engines) -> None:
    ex = FakeExchange(["BTC_USDT"])
    engine = await engines(Engine({ACCOUNT: ex}, settings()))
    engine.set_guard_filter(lambda account: account == ACCOUNT)
    await engine.submit(request(latch=True), Progress())
    assert engine.guarded() == {ACCOUNT}
    late = ex.place("BTC_USDT")
    await wait_for(lambda: late not in ex.books["BTC_USDT"])
    await engine.close(1.0)


# -- starting fast: what the first request of an alert waits for -------------------------


def _worker_tasks(engine_account: str = ACCOUNT) -> list[str]:
    names = [t.get_name() for t in asyncio.all_tasks()]
    return [n for n in names if n.startswith(f"sweep-{engine_account}-w")]


async def test_start_spawns_the_sweep_before_its_result_is_awaited(engines: Engines) -> None:
    ex = FakeExchange(["BTC_USDT"])
    oid = ex.place("BTC_USDT")
    engine = await engines(Engine({ACCOUNT: ex}, settings()))
    future = engine.start(request("a"), Progress())
    # Nobody awaits the future: the sweep runs anyway.
    await wait_for(lambda: ex.open_count() == 0)
    result = await future
    await engine.close(1.0)
    assert result.status is SweepStatus.FLAT
    assert [o.order_id for o in result.orders] == [oid]


async def test_start_refusal_is_an_already_resolved_future(engines: Engines) -> None:
    engine = await engines(Engine({ACCOUNT: FakeExchange()}, settings()))
    future = engine.start(request("a", account="nobody"), Progress())
    assert future.done()
    assert future.result().status is SweepStatus.FAILED
    await engine.close(1.0)


async def test_first_listing_goes_out_before_any_worker_exists(engines: Engines) -> None:
    ex = FakeExchange(["BTC_USDT"])
    for _ in range(3):
        ex.place("BTC_USDT")
    seen_at_listing: list[list[str]] = []
    inner = ex.open_orders

    def listing(symbol: str, *, limit: int = 100) -> AsyncIterator[list[Order]]:
        seen_at_listing.append(_worker_tasks())
        return inner(symbol, limit=limit)

    ex.open_orders = listing  # type: ignore[method-assign]
    engine = await engines(Engine({ACCOUNT: ex}, settings(), concurrency=8))
    result = await run(engine, request())
    assert result.status is SweepStatus.FLAT
    assert seen_at_listing[0] == []  # the first pass: no worker before the listing
    assert len(ex.calls("cancel")) == 3


async def test_workers_start_on_demand_up_to_the_concurrency(engines: Engines) -> None:
    ex = FakeExchange(["BTC_USDT"])
    for _ in range(20):
        ex.place("BTC_USDT")
    ex.gate = asyncio.Event()
    engine = await engines(Engine({ACCOUNT: ex}, settings(), concurrency=4))
    task = asyncio.create_task(run(engine, request()))
    await wait_for(lambda: len(ex.inflight) == 4)
    assert len(_worker_tasks()) == 4  # capped by the concurrency, all of them busy
    ex.gate.set()
    result = await task
    assert result.counts.sent == 20
    assert ex.double_cancels == 0


async def test_one_order_starts_one_worker(engines: Engines) -> None:
    ex = FakeExchange(["BTC_USDT"])
    ex.place("BTC_USDT")
    ex.gate = asyncio.Event()
    engine = await engines(Engine({ACCOUNT: ex}, settings(), concurrency=8))
    task = asyncio.create_task(run(engine, request()))
    await wait_for(lambda: len(ex.inflight) == 1)
    assert len(_worker_tasks()) == 1
    ex.gate.set()
    assert (await task).counts.sent == 1


async def test_orders_a_batch_hands_back_use_the_full_concurrency(engines: Engines) -> None:
    ex = FakeExchange(["BTC_USDT"])
    ids = [ex.place("BTC_USDT") for _ in range(10)]
    ex.batch_fail_ids = set(ids)  # the batch answers every id in "fail": one by one
    release = asyncio.Event()
    waiting = 0
    inner = ex.cancel_order

    async def held(order_id: int, symbol: str) -> CancelResult:
        nonlocal waiting
        waiting += 1
        await release.wait()
        return await inner(order_id, symbol)

    ex.cancel_order = held  # type: ignore[method-assign]
    engine = await engines(
        Engine({ACCOUNT: ex}, settings(strategy="batch", batch_size=50), concurrency=8)
    )
    task = asyncio.create_task(run(engine, request()))
    await wait_for(lambda: waiting == 8)  # one worker would leave seven slots unused
    release.set()
    result = await task
    assert result.status is SweepStatus.FLAT
    assert result.counts.sent == 10


async def test_widening_while_a_pass_aborts_neither_raises_nor_leaks(engines: Engines) -> None:
    """A second alert widens the sweep while its pass is aborting (the key was revoked
    mid-sweep and a listing is still closing): ``start`` must not raise, and no
    coroutine is left unawaited."""
    ex = FakeExchange(["BTC_USDT", "ETH_USDT", "XRP_USDT"])
    ex.place("BTC_USDT")
    closing = asyncio.Event()
    may_close = asyncio.Event()
    inner = ex.open_orders

    async def listing(symbol: str, *, limit: int = 100) -> AsyncIterator[list[Order]]:
        if symbol == "ETH_USDT":
            try:
                await asyncio.Event().wait()  # a listing that never answers...
            finally:
                closing.set()
                await may_close.wait()  # ...and takes its time to close
        async for page in inner(symbol, limit=limit):
            yield page

    ex.open_orders = listing  # type: ignore[method-assign]
    cancel = ex.cancel_order

    async def revoked(order_id: int, symbol: str) -> CancelResult:
        ex.auth_revoked = True  # the worker's cancel is refused: the sweep stops
        return await cancel(order_id, symbol)

    ex.cancel_order = revoked  # type: ignore[method-assign]
    engine = await engines(Engine({ACCOUNT: ex}, settings(), concurrency=2))
    first = engine.start(request("a", symbols={"BTC_USDT", "ETH_USDT"}), Progress())
    await wait_for(closing.is_set)  # the pass is aborting, held open by the ETH listing
    second = engine.start(request("b", symbols={"XRP_USDT"}), Progress())
    may_close.set()
    a, b = await asyncio.gather(first, second)
    await engine.close(1.0)
    assert a.status is SweepStatus.FAILED
    assert "authentication" in (a.reason or "")
    assert b.status is SweepStatus.FAILED  # it joined the stopped sweep, and says so


async def test_the_latch_records_who_and_why_and_a_release_says_whether_it_was_halted(
    engines: Engines,
) -> None:
    ex = FakeExchange(["BTC_USDT"])
    states: list[HaltState] = []

    async def on_state(state: HaltState) -> None:
        states.append(state)

    engine = await engines(Engine({ACCOUNT: ex}, settings(), None, on_state))
    kill = dataclasses.replace(
        request("k1", latch=True), operator="alice", source="operator-cli", reason="fat finger"
    )
    result = await engine.submit(kill, Progress())
    assert result.trigger_reason == "fat finger"
    assert (states[0].by, states[0].reason, states[0].alert_id) == ("alice", "fat finger", "k1")
    # A risk engine's alert has no operator: its source latched the account.
    widen = dataclasses.replace(
        request("k2", latch=True, symbols={"BTC_USDT"}), source="var-monitor", reason="VaR"
    )
    await engine.submit(widen, Progress())
    assert engine.halted()[ACCOUNT].by == "alice"  # the latch keeps who set it first
    release = dataclasses.replace(request("r1"), operator="bob", reason="all clear")
    released = await engine.release(release)
    assert released.was_halted is True
    assert (states[-1].halted, states[-1].by, states[-1].reason) == (False, "bob", "all clear")
    again = await engine.release(dataclasses.replace(release, alert_id="r2"))
    assert again.status is SweepStatus.RELEASED
    assert again.was_halted is False
    await engine.close(1.0)


async def test_progress_events_count_the_pairs_listed_of_the_pairs_in_scope(
    engines: Engines,
) -> None:
    ex = FakeExchange(["BTC_USDT", "ETH_USDT"])
    for _ in range(3):
        ex.place("BTC_USDT")
    ex.gate = asyncio.Event()
    engine = await engines(Engine({ACCOUNT: ex}, settings(progress_interval_s=0.01)))
    progress = Progress()
    task = asyncio.create_task(engine.submit(request(), progress))
    await wait_for(lambda: len(progress.events) >= 1)
    ex.gate.set()
    result = await task
    await engine.close(1.0)
    first = progress.events[0]
    assert first.pairs_in_scope == 2
    assert first.pairs_listed is not None
    assert first.pairs_listed <= 2
    assert result.pairs_in_scope is None  # final results say it with their status


class _PairsBackLater(FakeExchange):
    """An exchange whose info failed (the client serves the configured list) until
    ``back`` is set: then its own list."""

    def __init__(self) -> None:
        super().__init__()
        self.back = False

    def cached_pair_list(self) -> PairList:
        if self.back:
            return PairList(frozenset(self.symbols), "exchange")
        return PairList(frozenset(self.symbols), "configured", "HTTP 503")


async def test_a_configured_pair_list_proves_nothing_until_the_exchange_list_verifies(
    engines: Engines,
) -> None:
    # The first pass lists the configured pairs (and cancels); by the next, the
    # exchange's own list is back: its empty listing proves the account flat. The
    # configured pass alone would leave the kill residual.
    ex = _PairsBackLater()
    for _ in range(3):
        ex.place("BTC_USDT")
    real_cancel = ex.cancel_order

    async def cancel(order_id: int, symbol: str) -> CancelResult:
        ex.back = True
        return await real_cancel(order_id, symbol)

    ex.cancel_order = cancel  # type: ignore[method-assign]
    engine = await engines(Engine({ACCOUNT: ex}, settings(strategy="per_order")))
    result = await run(engine, request())
    assert result.status is SweepStatus.FLAT, result.reason
    assert ex.open_count() == 0


async def test_a_kill_verified_only_over_the_configured_list_is_residual(
    engines: Engines,
) -> None:
    ex = _PairsBackLater()
    ex.place("BTC_USDT")
    engine = await engines(Engine({ACCOUNT: ex}, settings(strategy="per_order")))
    result = await run(engine, request())
    assert result.status is SweepStatus.RESIDUAL
    assert result.reason is not None
    assert "pairs could not be checked" in result.reason
    assert ex.open_count() == 0


async def test_a_halt_state_the_sink_failed_to_take_is_published_again(
    engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The broker briefly refuses the state record: the latch must still reach the state
    # topic (a restart, or the account's next owner, knows it only from there), and so
    # must a release after it, in order.
    monkeypatch.setattr(engine_module, "STATE_RETRY_BASE_S", 0.01)
    ex = FakeExchange(["BTC_USDT"])
    ex.place("BTC_USDT")
    published: list[HaltState] = []
    refusals = [2]

    async def on_state(state: HaltState) -> None:
        if refusals[0] > 0:
            refusals[0] -= 1
            raise RuntimeError("the broker did not take it")
        published.append(state)

    engine = await engines(Engine({ACCOUNT: ex}, settings(), on_state=on_state))
    result = await engine.submit(request(latch=True), Progress())
    assert result.status is SweepStatus.FLAT
    await wait_for(lambda: [s.halted for s in published] == [True])
    refusals[0] = 1
    released = await engine.release(request("rel"))
    assert released.status is SweepStatus.RELEASED
    await wait_for(lambda: [s.halted for s in published] == [True, False])
    assert published[-1].alert_id == "rel"
    await engine.close(1.0)


async def test_an_unpublished_halt_state_is_not_published_over_a_newer_record(
    engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This engine's latch failed to publish; meanwhile another daemon's release of the
    # account, newer, is on the state topic. Published late, the latch would overwrite it.
    monkeypatch.setattr(engine_module, "STATE_RETRY_BASE_S", 0.01)
    ex = FakeExchange(["BTC_USDT"])
    ex.place("BTC_USDT")
    published: list[HaltState] = []
    broker_back = asyncio.Event()

    async def on_state(state: HaltState) -> None:
        if not broker_back.is_set():
            raise RuntimeError("the broker did not take it")
        published.append(state)

    engine = await engines(Engine({ACCOUNT: ex}, settings(), on_state=on_state))
    result = await engine.submit(request(latch=True), Progress())
    assert result.status is SweepStatus.FLAT
    ours = engine.halted()[ACCOUNT]
    newer = dataclasses.replace(
        ours, halted=False, alert_id="rel-elsewhere", since=ours.since + timedelta(seconds=1)
    )
    engine.restore_halt(newer)  # read from the state topic: another daemon's release
    broker_back.set()
    await wait_for(lambda: engine.state_retries_pending() == 0)
    assert published == []
    assert ACCOUNT not in engine.halted()


class _RefusedTogether(FakeExchange):
    """Every pair's listing is refused (a revoked key), all in one turn of the event loop,
    as concurrent listings' answers arrive from a real exchange."""

    def __init__(self, symbols: Sequence[str]) -> None:
        super().__init__(symbols)
        self._started = 0
        self._all_started = asyncio.Event()

    async def open_orders(self, symbol: str, *, limit: int = 100) -> AsyncIterator[list[Order]]:
        self._started += 1
        if self._started == len(self.symbols):
            self._all_started.set()
        await self._all_started.wait()
        raise AuthError("refused", status=401)
        yield []  # an async generator, as the real one


async def test_a_refused_key_on_every_pair_is_said_once(engines: Engines) -> None:
    # Each pair's listing stops the sweep alike: the reason names the first, and counts
    # the others, rather than repeat the refusal once per pair.
    ex = _RefusedTogether(["BTC_USDT", "ETH_USDT", "SOL_USDT"])
    engine = await engines(Engine({ACCOUNT: ex}, settings(strategy="per_order")))
    result = await run(engine, request(symbols=set(ex.symbols)))
    assert result.status is SweepStatus.FAILED
    assert result.reason is not None
    assert result.reason.count("authentication refused") == 1
    assert "more pair(s) stopped alike)" in result.reason


class _PairsNeverBack(FakeExchange):
    """An exchange whose info keeps failing: the client serves the configured list
    (here naming NOPE_USDT, which the exchange refuses to list), and every forced
    refresh fails too."""

    def __init__(self) -> None:
        super().__init__()
        self.symbols.append("NOPE_USDT")  # configured, but no book: listing it is refused
        self.refreshes = 0

    def cached_pair_list(self) -> PairList:
        return PairList(frozenset(self.symbols), "configured", "HTTP 503")

    async def refresh_pair_list(self) -> PairList:
        self.refreshes += 1
        return self.cached_pair_list()


async def test_a_refused_configured_pair_leaves_the_kill_residual_not_failed(
    engines: Engines,
) -> None:
    ex = _PairsNeverBack()
    for _ in range(3):
        ex.place("BTC_USDT")
    engine = await engines(Engine({ACCOUNT: ex}, settings(strategy="per_order")))
    result = await run(engine, request())
    assert result.status is SweepStatus.RESIDUAL, result.reason
    assert ex.open_count() == 0  # the other pairs were cancelled and verified
    assert result.unlisted_pairs == ["NOPE_USDT"]
    assert result.reason is not None
    assert "NOPE_USDT unchecked: the exchange refused to list it (" in result.reason
    assert ex.refreshes == 1  # asked once after the empty listing, not again before the result


async def test_a_redirected_listing_fails_the_kill_even_without_the_exchange_pair_list(
    engines: Engines,
) -> None:
    # A redirect says nothing of the pair (the base_url is wrong): no pair list needed
    # to tell it is a failure.
    ex = _PairsNeverBack()
    ex.place("BTC_USDT")
    ex.list_error = Redirected("redirected (308)", status=308, location="https://elsewhere/")
    engine = await engines(Engine({ACCOUNT: ex}, settings(strategy="per_order")))
    result = await run(engine, request())
    assert result.status is SweepStatus.FAILED, result.reason
    assert result.reason is not None
    assert "exchange refused to list" in result.reason
