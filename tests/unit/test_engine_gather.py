"""A sweep gathering joiners between passes (``JOINERS_GATHER_S``, ``JOINERS_GATHER_MAX_S``).

Against the in-memory exchange of ``test_engine.py``, its log holding the joins and the
listings in the order they happened: alerts that join while the sweep gathers share one
verifying listing, each is answered ``flat`` only by a complete listing that began
after it joined, a joiner that widens the scope ends the gathering at once, and a
stream of joiners keeps the sweep gathering (one listing, not one per quiet window).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from killswitch.core.model import SweepResult, SweepStatus
from killswitch.core.orders import Order
from killswitch.core.outcomes import Outcome
from killswitch.engine import Engine, sweep
from tests.support.engine import Engines, FakeExchange, Progress, request, settings
from tests.support.waiting import wait_for


class LoggingExchange(FakeExchange):
    """Logs each listing's start and end; ``on_list`` runs as a listing starts."""

    def __init__(self) -> None:
        super().__init__()
        self.on_list: Callable[[int], None] | None = None
        self.listings = 0

    async def open_orders(self, symbol: str, *, limit: int = 100) -> AsyncIterator[list[Order]]:
        self.listings += 1
        number = self.listings
        self.log.append(("list-start", symbol, (number,)))
        if self.on_list is not None:
            self.on_list(number)
        async for page in super().open_orders(symbol, limit=limit):
            yield page
        self.log.append(("list-end", symbol, (number,)))


def joined(
    ex: FakeExchange, engine: Engine, alert_id: str, symbols: set[str]
) -> asyncio.Future[SweepResult]:
    """Start an alert and log its join (the engine attaches it synchronously)."""
    future = engine.start(request(alert_id, symbols=symbols, deadline_s=30.0), Progress())
    ex.log.append(("join", alert_id, ()))
    future.add_done_callback(lambda _: ex.log.append(("result", alert_id, ())))
    return future


async def answered(
    ex: FakeExchange, futures: dict[str, asyncio.Future[SweepResult]]
) -> dict[str, SweepResult]:
    """Every alert's result, once each is logged (the futures' callbacks have run)."""
    results = {a: await f for a, f in futures.items()}
    await wait_for(lambda: all(("result", a, ()) in ex.log for a in futures))
    return results


def verified_after_join(log: list[tuple[str, str, tuple[int, ...]]], alert_id: str) -> bool:
    """A listing that started after the alert joined ran to its end before its result."""
    join = log.index(("join", alert_id, ()))
    result = log.index(("result", alert_id, ()))
    started = {c[2] for c in log[join:result] if c[0] == "list-start"}
    return any(c[0] == "list-end" and c[2] in started for c in log[join:result])


def assert_flat_and_proven(
    log: list[tuple[str, str, tuple[int, ...]]], results: dict[str, SweepResult]
) -> None:
    """Every alert answered ``flat``, each by a listing that began after it joined."""
    assert {r.status for r in results.values()} == {SweepStatus.FLAT}
    for alert_id in results:
        assert verified_after_join(log, alert_id), alert_id


async def test_alerts_joining_while_the_sweep_gathers_are_verified_by_a_later_listing(
    engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A long quiet window: the test acts while the sweep is certainly still gathering.
    monkeypatch.setattr(sweep, "JOINERS_GATHER_S", 0.5)
    ex = LoggingExchange()
    engine = await engines(Engine({"mm-1": ex}, settings()))
    futures: dict[str, asyncio.Future[SweepResult]] = {}

    def during_first_listing(number: int) -> None:
        if number == 1:  # joins while the first pass lists: that pass cannot verify it
            futures["a1"] = joined(ex, engine, "a1", {"BTC_USDT"})

    ex.on_list = during_first_listing
    futures["a0"] = joined(ex, engine, "a0", {"BTC_USDT"})
    await wait_for(lambda: ("list-end", "BTC_USDT", (1,)) in ex.log)
    # The first pass found nothing and gained a1: the sweep gathers. Two more join, and
    # an order appears after a2 joined (the listing that verifies a2 must see it).
    futures["a2"] = joined(ex, engine, "a2", {"BTC_USDT"})
    late = ex.place("BTC_USDT")
    futures["a3"] = joined(ex, engine, "a3", {"BTC_USDT"})
    assert ex.listings == 1  # still gathering

    results = await answered(ex, futures)

    assert_flat_and_proven(ex.log, results)
    assert ("cancel", "BTC_USDT", (late,)) in ex.log
    assert ex.open_count() == 0
    # a1, a2 and a3 shared the gathering: one listing found the late order, one more
    # verified its cancel (not a listing per joiner).
    assert ex.listings == 3
    await engine.close(1.0)


async def test_a_joiner_widening_the_scope_ends_the_gathering(
    engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Gathering would last the alerts' whole deadline: only the widening can end it.
    monkeypatch.setattr(sweep, "JOINERS_GATHER_S", 60.0)
    monkeypatch.setattr(sweep, "JOINERS_GATHER_MAX_S", 60.0)
    ex = LoggingExchange()
    eth = ex.place("ETH_USDT")
    engine = await engines(Engine({"mm-1": ex}, settings()))
    futures: dict[str, asyncio.Future[SweepResult]] = {}

    def during_first_listing(number: int) -> None:
        if number == 1:
            futures["a1"] = joined(ex, engine, "a1", {"BTC_USDT"})

    ex.on_list = during_first_listing
    futures["a0"] = joined(ex, engine, "a0", {"BTC_USDT"})
    await wait_for(lambda: ("list-end", "BTC_USDT", (1,)) in ex.log)
    futures["eth"] = joined(ex, engine, "eth", {"ETH_USDT"})

    await wait_for(lambda: ("cancel", "ETH_USDT", (eth,)) in ex.log)
    results = await answered(ex, futures)
    assert_flat_and_proven(ex.log, results)
    await engine.close(1.0)


async def test_a_stream_of_joiners_keeps_the_sweep_gathering(
    engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Joiners every 50 ms for 1 s: twice the quiet window, within the bound.
    monkeypatch.setattr(sweep, "JOINERS_GATHER_S", 0.5)
    monkeypatch.setattr(sweep, "JOINERS_GATHER_MAX_S", 30.0)
    ex = LoggingExchange()
    engine = await engines(Engine({"mm-1": ex}, settings()))
    futures: dict[str, asyncio.Future[SweepResult]] = {}

    def during_first_listing(number: int) -> None:
        if number == 1:
            futures["s0"] = joined(ex, engine, "s0", {"BTC_USDT"})

    ex.on_list = during_first_listing
    futures["a0"] = joined(ex, engine, "a0", {"BTC_USDT"})
    await wait_for(lambda: ("list-end", "BTC_USDT", (1,)) in ex.log)
    for i in range(1, 21):
        await asyncio.sleep(0.05)  # the stream's pace (what is measured waits on the log)
        futures[f"s{i}"] = joined(ex, engine, f"s{i}", {"BTC_USDT"})

    results = await answered(ex, futures)
    assert_flat_and_proven(ex.log, results)
    # The first pass, then one listing for the whole stream (a fixed quiet window
    # would have listed about once per window while they came).
    assert ex.listings == 2
    await engine.close(1.0)


async def test_alerts_proven_flat_are_answered_while_the_sweep_goes_on(
    engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sweep, "JOINERS_GATHER_S", 0.3)
    ex = LoggingExchange()
    engine = await engines(Engine({"mm-1": ex}, settings()))
    futures: dict[str, asyncio.Future[SweepResult]] = {}

    def joiner_per_listing(number: int) -> None:
        if number <= 2:  # a1 joins during the first listing, a2 during the second
            futures[f"a{number}"] = joined(ex, engine, f"a{number}", {"BTC_USDT"})

    ex.on_list = joiner_per_listing
    futures["a0"] = joined(ex, engine, "a0", {"BTC_USDT"})
    await wait_for(lambda: "a2" in futures)
    results = await answered(ex, futures)

    assert_flat_and_proven(ex.log, results)
    # The second listing proved a0 and a1 flat: they were answered then, while the sweep
    # went on to verify for a2 (which joined during it).
    third = ex.log.index(("list-start", "BTC_USDT", (3,)))
    assert ex.log.index(("result", "a1", ())) < third
    assert ex.log.index(("result", "a0", ())) < third
    assert ex.log.index(("result", "a2", ())) > third
    await engine.close(1.0)


async def test_a_sweep_that_had_joiners_lingers_for_more_after_proving_flat(
    engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sweep, "JOINERS_GATHER_S", 0.5)
    ex = LoggingExchange()
    engine = await engines(Engine({"mm-1": ex}, settings()))
    futures: dict[str, asyncio.Future[SweepResult]] = {}

    def during_first_listing(number: int) -> None:
        if number == 1:
            futures["a1"] = joined(ex, engine, "a1", {"BTC_USDT"})

    ex.on_list = during_first_listing
    futures["a0"] = joined(ex, engine, "a0", {"BTC_USDT"})
    await wait_for(lambda: "a1" in futures)
    first = await answered(ex, futures)
    # a1 answered flat by the second listing; the sweep lingers: a kill now joins it.
    late = ex.place("BTC_USDT")
    futures["a2"] = joined(ex, engine, "a2", {"BTC_USDT"})
    results = await answered(ex, futures)

    assert_flat_and_proven(ex.log, results)
    assert first["a1"].sweeps == 2
    assert results["a2"].sweeps > 2  # the same sweep's later passes, not a new sweep
    assert ("cancel", "BTC_USDT", (late,)) in ex.log
    # The later answer lists what the ledger gained since the first (the sweep keeps
    # the order reports of an answer only while its ledger is unchanged).
    assert [o.order_id for o in first["a1"].orders] == []
    assert [(o.order_id, o.outcome) for o in results["a2"].orders] == [(late, Outcome.SENT)]
    await engine.close(1.0)


async def test_a_sweep_of_one_kill_ends_when_flat(
    engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sweep, "JOINERS_GATHER_S", 60.0)
    monkeypatch.setattr(sweep, "JOINERS_GATHER_MAX_S", 60.0)
    ex = LoggingExchange()
    engine = await engines(Engine({"mm-1": ex}, settings()))
    futures = {"a0": joined(ex, engine, "a0", {"BTC_USDT"})}
    await answered(ex, futures)
    futures["a1"] = joined(ex, engine, "a1", {"BTC_USDT"})
    # (a sweep lingering for a1 would hold it for the whole gathering, 60 s)
    results = await asyncio.wait_for(answered(ex, futures), 10.0)

    # a1 had a sweep of its own: its first pass listed at once.
    assert [r.sweeps for r in results.values()] == [1, 1]
    assert ex.listings == 2
    await engine.close(1.0)
