"""``Engine.start_group``: a storm's kills of one account join its sweep together.

Against the in-memory exchange of ``test_engine.py``: every alert of a group gets its
own final result from one sweep, the group's future resolves once (when the last has
one), a group joins a running sweep and is verified by a listing that began after it
joined, and a hand-over fails each alert of the group as ``start`` would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import weakref
from datetime import UTC, datetime, timedelta

import pytest

from killswitch.core.model import KillRequest, SweepResult, SweepStatus, no_sweep_result
from killswitch.core.orders import Side
from killswitch.core.ports import SweepHandedOver
from killswitch.engine import Engine
from killswitch.engine.engine import _all_outcomes
from killswitch.engine.sweep import Sweep
from tests.support.collector import cycle_collector_off
from tests.support.engine import Engines, FakeExchange, Progress, request, settings
from tests.support.waiting import wait_for

NOW = datetime(2026, 1, 1, tzinfo=UTC)


async def test_a_group_of_alerts_gets_one_final_result_each_from_one_sweep(
    engines: Engines,
) -> None:
    ex = FakeExchange()
    ids = {ex.place("BTC_USDT") for _ in range(3)}
    engine = await engines(Engine({"mm-1": ex}, settings()))
    alerts = [(request(f"a{i}", symbols={"BTC_USDT"}), Progress()) for i in range(5)]

    outcomes = await engine.start_group(alerts)

    assert [o.alert_id for o in outcomes if isinstance(o, SweepResult)] == [
        f"a{i}" for i in range(5)
    ]
    assert {o.status for o in outcomes if isinstance(o, SweepResult)} == {SweepStatus.FLAT}
    # One sweep: its first listing, the cancels, one verifying listing (not one per alert).
    assert len(ex.calls("list")) == 2
    assert sorted(oid for _, _, (oid,) in ex.calls("cancel")) == sorted(ids)
    assert ex.double_cancels == 0
    await engine.close(1.0)


async def test_a_group_joining_a_running_sweep_is_verified_after_it_joined(
    engines: Engines,
) -> None:
    ex = FakeExchange()
    ex.place("BTC_USDT")
    ex.gate = asyncio.Event()  # the first alert's cancel hangs: the sweep is running
    engine = await engines(Engine({"mm-1": ex}, settings()))
    first = engine.start(request("first", symbols={"BTC_USDT"}), Progress())
    await wait_for(lambda: len(ex.inflight) == 1)
    late = ex.place("BTC_USDT")  # appears after the first listing

    group = engine.start_group([(request(f"g{i}"), Progress()) for i in range(3)])
    ex.gate.set()
    outcomes = await group

    assert {o.status for o in outcomes if isinstance(o, SweepResult)} == {SweepStatus.FLAT}
    assert len(outcomes) == 3
    assert (await first).status is SweepStatus.FLAT
    # The group widened the scope to every pair; the order placed after the first
    # listing was found by a later one and cancelled, once.
    assert ("cancel", "BTC_USDT", (late,)) in ex.log
    assert ex.open_count() == 0
    await engine.close(1.0)


async def test_alerts_of_one_scope_still_get_their_own_status_and_reason(
    engines: Engines,
) -> None:
    # Results of one scope share what the sweep knows of the scope; an alert whose pairs
    # were never checked is still not flat, whichever of them is answered first.
    ex = FakeExchange()
    ex.place("BTC_USDT")
    ex.gate = asyncio.Event()  # the first group's cancel hangs: the second group joins
    engine = await engines(Engine({"mm-1": ex}, settings()))
    unchecked = "pairs could not be checked (down)"

    def group(name: str) -> list[tuple[KillRequest, Progress]]:
        return [
            (
                dataclasses.replace(
                    request(f"{name}{i}", symbols={"BTC_USDT"}),
                    unchecked_pairs=unchecked if i % 7 == 3 else None,
                ),
                Progress(),
            )
            for i in range(20)
        ]

    first = engine.start_group(group("a"))
    await wait_for(lambda: len(ex.inflight) == 1)
    second = engine.start_group(group("b"))
    ex.gate.set()
    outcomes = [*await first, *await second]

    results = [o for o in outcomes if isinstance(o, SweepResult)]
    assert len(results) == 40
    for result in results:
        if int(result.alert_id[1:]) % 7 == 3:
            assert result.status is SweepStatus.RESIDUAL
            assert result.reason is not None
            assert result.reason.startswith(unchecked)
        else:
            assert result.status is SweepStatus.FLAT, result.alert_id
            assert result.reason is None
    await engine.close(1.0)


async def test_each_result_of_a_group_carries_its_own_alert(engines: Engines) -> None:
    ex = FakeExchange()
    ex.place("BTC_USDT")
    engine = await engines(Engine({"mm-1": ex}, settings()))
    alerts = [
        dataclasses.replace(
            request(f"a{i}", symbols={"BTC_USDT"}),
            operator=f"op{i}",
            source=f"src{i}",
            reason=f"why{i}",
        )
        for i in range(20)
    ]

    outcomes = await engine.start_group([(a, Progress()) for a in alerts])

    results = [o for o in outcomes if isinstance(o, SweepResult)]
    assert [r.status for r in results] == [SweepStatus.FLAT] * 20
    assert [(r.alert_id, r.operator, r.source, r.trigger_reason) for r in results] == [
        (a.alert_id, a.operator, a.source, a.reason) for a in alerts
    ]
    assert [r.received_at for r in results] == [a.received_at for a in alerts]
    assert all(r.in_flight == [] and r.final for r in results)
    assert len({id(r.in_flight) for r in results}) == 20  # none shares a list to fill
    await engine.close(1.0)


async def test_a_handed_over_group_gets_the_exception_for_every_alert(engines: Engines) -> None:
    ex = FakeExchange()
    ex.place("BTC_USDT")
    ex.gate = asyncio.Event()
    engine = await engines(Engine({"mm-1": ex}, settings(progress_interval_s=60.0)))
    progress = [Progress() for _ in range(3)]
    group = engine.start_group([(request(f"g{i}"), p) for i, p in enumerate(progress)])
    await wait_for(lambda: len(ex.inflight) == 1)

    assert await engine.hand_over(["mm-1"]) == 1

    outcomes = await group
    assert [type(o) for o in outcomes] == [SweepHandedOver] * 3
    assert all(len(p.events) == 1 and not p.events[0].final for p in progress)
    ex.gate.set()
    await engine.close(1.0)


async def test_a_group_mixing_accounts_or_a_latch_is_refused(engines: Engines) -> None:
    engine = await engines(
        Engine({"mm-1": FakeExchange(), "mm-2": FakeExchange(account="mm-2")}, settings())
    )
    with pytest.raises(ValueError, match="one account"):
        engine.start_group([(request("a"), Progress()), (request("b", account="mm-2"), Progress())])
    with pytest.raises(ValueError, match="no latch"):
        engine.start_group([(request("a", latch=True), Progress())])
    unknown = await engine.start_group([(request("x", account="nope"), Progress())])
    assert [o.status for o in unknown if isinstance(o, SweepResult)] == [SweepStatus.FAILED]
    await engine.close(1.0)


async def test_a_kill_whose_scope_cannot_unite_with_the_running_one_gets_its_own_sweep(
    engines: Engines,
) -> None:
    ex = FakeExchange()
    btc_buy = ex.place("BTC_USDT", Side.BUY)
    btc_sell = ex.place("BTC_USDT", Side.SELL)
    eth = ex.place("ETH_USDT", Side.SELL)
    ex.gate = asyncio.Event()  # the first kill's cancel hangs: its sweep is running
    engine = await engines(Engine({"mm-1": ex}, settings()))
    buys = engine.start(request("buys", symbols={"BTC_USDT"}, sides={Side.BUY}), Progress())
    await wait_for(lambda: len(ex.inflight) == 1)

    # All of ETH and BTC's buys are no one scope: joined, BTC's sell would go too.
    group = engine.start_group(
        [(request("eth", symbols={"ETH_USDT"}), Progress()), (request("eth-2"), Progress())]
    )
    ex.gate.set()

    assert (await buys).status is SweepStatus.FLAT
    outcomes = await group
    assert [o.status for o in outcomes if isinstance(o, SweepResult)] == [SweepStatus.FLAT] * 2
    cancelled = {i for kind, _, ids in ex.log if kind.startswith("cancel") for i in ids}
    assert {btc_buy, eth} <= cancelled
    # "eth-2" (every pair) came in its own run of the group, after "eth": it took BTC's sell.
    assert btc_sell in cancelled
    await engine.close(1.0)


async def test_a_one_sided_kill_joined_by_another_pair_leaves_the_other_side_open(
    engines: Engines,
) -> None:
    ex = FakeExchange()
    btc_buy = ex.place("BTC_USDT", Side.BUY)
    btc_sell = ex.place("BTC_USDT", Side.SELL)
    eth = ex.place("ETH_USDT", Side.SELL)
    ex.gate = asyncio.Event()
    engine = await engines(Engine({"mm-1": ex}, settings()))
    buys = engine.start(request("buys", symbols={"BTC_USDT"}, sides={Side.BUY}), Progress())
    await wait_for(lambda: len(ex.inflight) == 1)
    eth_kill = engine.start(request("eth", symbols={"ETH_USDT"}), Progress())
    ex.gate.set()

    assert (await buys).status is SweepStatus.FLAT
    assert (await eth_kill).status is SweepStatus.FLAT
    assert btc_sell in ex.books["BTC_USDT"]  # no alert asked for BTC's sells
    assert btc_buy not in ex.books["BTC_USDT"]
    assert eth not in ex.books["ETH_USDT"]
    await engine.close(1.0)


async def test_a_finished_group_and_its_sweep_leave_nothing_to_the_cycle_collector(
    engines: Engines,
) -> None:
    # A storm's sweep holds thousands of alerts: when it and its group are done, they must
    # be freed at once, not kept until the cycle collector's next pass (a pause of the
    # event loop as long as what it frees).
    ex = FakeExchange()
    ex.place("BTC_USDT")
    engine = await engines(Engine({"mm-1": ex}, settings()))
    with cycle_collector_off():
        sinks = [Progress() for _ in range(3)]
        refs = [weakref.ref(sink) for sink in sinks]
        alerts = [(request(f"a{i}", symbols={"BTC_USDT"}), s) for i, s in enumerate(sinks)]
        outcomes = await engine.start_group(alerts)
        assert {o.status for o in outcomes if isinstance(o, SweepResult)} == {SweepStatus.FLAT}
        await engine.close(1.0)
        del sinks, alerts, outcomes
        assert [ref() for ref in refs] == [None, None, None]
        assert gc.collect() == 0  # no cycle left behind either


async def test_a_groups_outcomes_wait_for_its_last_alert_in_any_order() -> None:
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[SweepResult]] = [loop.create_future() for _ in range(5)]
    results = [no_sweep_result(request(f"a{i}"), SweepStatus.FLAT, NOW, None) for i in range(5)]
    outcomes = _all_outcomes(futures)
    order = [4, 1, 0, 3, 2]  # the last first, then out of order
    for n, i in enumerate(order):
        if i == 3:
            futures[i].set_exception(SweepHandedOver("moved"))
        elif i == 2:
            futures[i].cancel()
        else:
            futures[i].set_result(results[i])
        for _ in range(3):
            await asyncio.sleep(0)  # the callbacks run
        assert outcomes.done() == (n == len(order) - 1)
    got = outcomes.result()
    assert got[0] is results[0]
    assert got[1] is results[1]
    assert isinstance(got[2], RuntimeError)
    assert isinstance(got[3], SweepHandedOver)
    assert got[4] is results[4]


async def test_joining_tickets_count_from_their_receipt_and_widen_the_deadline() -> None:
    # A ticket's receipt on the event loop's clock is the wall clock's age of its
    # request (never in the future), and the sweep's deadline counts from there.
    wall = datetime(2026, 1, 1, tzinfo=UTC)
    sweep = Sweep(FakeExchange(), settings(), workers=1, clock=lambda: wall)
    old = dataclasses.replace(
        request("old", deadline_s=5.0), received_at=wall - timedelta(seconds=2)
    )
    ahead = dataclasses.replace(request("ahead", deadline_s=7.0), received_at=wall + timedelta(1))
    loop = asyncio.get_running_loop()
    before = loop.time()
    first, second = sweep.attach_many([(old, None), (ahead, None)])
    after = loop.time()

    assert before - 2.0 <= first.received_mono <= after - 2.0
    assert before <= second.received_mono <= after
    assert (first.request, second.request) == (old, ahead)
    assert first.join_gen == second.join_gen == sweep.gen == 1
    assert sweep.deadline == second.received_mono + 7.0  # the later of the two
