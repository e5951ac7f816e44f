"""A replayed alert's results carry what an earlier process published (in-memory exchange).

The crash itself (SIGKILL, restart, the results topic) is exercised end to end in
``tests/reliability/test_crash_carry.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses

from killswitch.core.model import CarriedOutcomes, Counts, OrderReport, SweepStatus
from killswitch.core.outcomes import Outcome
from killswitch.engine import Engine
from tests.support.engine import (
    ACCOUNT,
    Engines,
    FakeExchange,
    Progress,
    assert_accounted,
    request,
    settings,
)
from tests.support.waiting import wait_for


def earlier(*orders: tuple[int, Outcome]) -> CarriedOutcomes:
    reports = tuple(OrderReport(i, "BTC_USDT", o, 1) for i, o in orders)
    counts = Counts()
    for r in reports:
        counts.add(r.outcome)
    return CarriedOutcomes(counts, reports, sweeps=1)


async def test_progress_events_list_the_outcomes_so_far(engines: Engines) -> None:
    ex = FakeExchange(["BTC_USDT"])
    ids = {ex.place("BTC_USDT") for _ in range(5)}
    ex.sticky = True  # cancels answer sent, orders stay: the sweep keeps going
    engine = await engines(Engine({ACCOUNT: ex}, settings(max_passes=1_000)))
    progress = Progress()
    task = asyncio.create_task(engine.submit(request(), progress))
    await wait_for(lambda: any(e.counts.resolved == 5 for e in progress.events))
    ex.sticky = False
    result = await task
    await engine.close(1.0)
    event = next(e for e in progress.events if e.counts.resolved == 5)
    assert not event.final
    assert event.status is SweepStatus.RUNNING
    assert {o.order_id for o in event.orders} == ids
    assert_accounted(event)
    assert result.status is SweepStatus.FLAT


async def test_progress_events_list_the_cancels_in_flight(engines: Engines) -> None:
    ex = FakeExchange(["BTC_USDT"])
    ids = {ex.place("BTC_USDT") for _ in range(5)}
    ex.gate = asyncio.Event()  # cancels go out and are not answered
    engine = await engines(Engine({ACCOUNT: ex}, settings(), concurrency={ACCOUNT: 2}))
    progress = Progress()
    task = asyncio.create_task(engine.submit(request(), progress))
    await wait_for(lambda: any(len(e.in_flight) == 2 for e in progress.events))
    event = next(e for e in progress.events if len(e.in_flight) == 2)
    assert {o.order_id for o in event.in_flight} == ex.inflight
    assert {o.order_id for o in event.in_flight} <= ids
    assert event.counts.resolved == 0
    ex.gate.set()
    result = await task
    await engine.close(1.0)
    assert result.status is SweepStatus.FLAT
    assert result.in_flight == []


async def test_a_replay_merges_the_earlier_outcomes_into_its_final_result(engines: Engines) -> None:
    ex = FakeExchange(["BTC_USDT"])
    left = [ex.place("BTC_USDT") for _ in range(3)]
    # The earlier process cancelled 900 and 901; its cancel of left[0] failed.
    carried = earlier((900, Outcome.SENT), (901, Outcome.SENT), (left[0], Outcome.FAILED))
    engine = await engines(Engine({ACCOUNT: ex}, settings()))
    progress = Progress()
    try:
        result = await engine.submit(dataclasses.replace(request(), carried=carried), progress)
    finally:
        await engine.close(1.0)
    assert result.status is SweepStatus.FLAT
    assert result.counts == Counts(sent=5)
    ids = [o.order_id for o in result.orders]
    assert ids[:3] == [900, 901, left[0]]  # the earlier process's first, merged in place
    assert sorted(ids[3:]) == left[1:]
    assert_accounted(result)
    assert result.sweeps >= 2  # the earlier process's pass and this one's
    assert result.reason is not None
    assert "earlier process" in result.reason


async def test_a_replay_with_nothing_left_to_do_reports_what_was_done(engines: Engines) -> None:
    ex = FakeExchange(["BTC_USDT"])
    carried = earlier((900, Outcome.SENT), (901, Outcome.SENT))
    engine = await engines(Engine({ACCOUNT: ex}, settings()))
    try:
        result = await engine.submit(dataclasses.replace(request(), carried=carried), Progress())
    finally:
        await engine.close(1.0)
    assert result.status is SweepStatus.FLAT
    assert result.counts == Counts(sent=2)  # not all zero
    assert_accounted(result)


async def test_a_replays_progress_events_carry_the_earlier_outcomes_too(engines: Engines) -> None:
    # A second crash reads these: they must already cover the first process's work.
    ex = FakeExchange(["BTC_USDT"])
    ex.place("BTC_USDT")
    ex.gate = asyncio.Event()
    carried = earlier((900, Outcome.SENT))
    engine = await engines(Engine({ACCOUNT: ex}, settings()))
    progress = Progress()
    task = asyncio.create_task(
        engine.submit(dataclasses.replace(request(), carried=carried), progress)
    )
    await wait_for(lambda: bool(progress.events))
    ex.gate.set()
    result = await task
    await engine.close(1.0)
    assert progress.events[0].counts.sent >= 1
    assert 900 in {o.order_id for o in progress.events[0].orders}
    assert result.counts == Counts(sent=2)
