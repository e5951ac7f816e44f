"""``Engine.hand_over``: an account moving to another daemon stops being swept here at once.

Against the in-memory exchange of ``test_engine.py``: the alerts of a stopped sweep get
``SweepHandedOver`` (never a final result), their last progress result lists the cancels
cut off in flight (what the next owner carries over), no request for the account follows,
and other accounts are untouched.
"""

from __future__ import annotations

import asyncio

import pytest

from killswitch.core.model import SweepStatus
from killswitch.core.ports import SweepHandedOver
from killswitch.engine import Engine
from tests.support.engine import Engines, FakeExchange, Progress, request, settings
from tests.support.waiting import wait_for


async def test_a_running_sweep_stops_without_a_result_and_hands_its_progress_over(
    engines: Engines,
) -> None:
    ex = FakeExchange()
    ids = {ex.place("BTC_USDT") for _ in range(6)}
    ex.gate = asyncio.Event()  # cancels hang: some are in flight when the account moves
    engine = await engines(Engine({"mm-1": ex}, settings(progress_interval_s=60.0), concurrency=2))
    progress = Progress()
    running = asyncio.create_task(engine.submit(request("a"), progress))
    await wait_for(lambda: len(ex.inflight) == 2)
    in_flight = set(ex.inflight)

    assert await engine.hand_over(["mm-1"]) == 1

    with pytest.raises(SweepHandedOver):
        await running
    (last,) = progress.events  # the hand-over's, not a periodic one (interval 60 s)
    assert not last.final
    assert {o.order_id for o in last.in_flight} == in_flight
    requests = len(ex.log)
    ex.gate.set()
    await engine.close(1.0)  # waits for every task the engine still has
    assert len(ex.log) == requests  # nothing sent after the hand-over
    assert ex.open_count() == len(ids)  # the gated cancels were cut off unanswered


async def test_a_waiting_sweep_is_handed_over_and_other_accounts_go_on(engines: Engines) -> None:
    ex, other = FakeExchange(), FakeExchange(account="mm-2")
    ex.place("BTC_USDT")
    other.place("BTC_USDT")
    ex.gate = asyncio.Event()
    engine = await engines(Engine({"mm-1": ex, "mm-2": other}, settings()))
    first = asyncio.create_task(engine.submit(request("a", symbols={"BTC_USDT"}), Progress()))
    await wait_for(lambda: len(ex.inflight) == 1)
    # A dry run cannot join a real sweep: it waits for the account's lock.
    waiting = engine.start(request("b", dry_run=True), Progress())  # spawned on return
    elsewhere = engine.start(request("c", account="mm-2"), Progress())

    assert await engine.hand_over(["mm-1"]) == 2

    with pytest.raises(SweepHandedOver):
        await first
    with pytest.raises(SweepHandedOver):
        await waiting
    assert (await elsewhere).status is SweepStatus.FLAT
    # The account is free again: a later kill here sweeps it as usual.
    ex.gate.set()
    again = await engine.submit(request("d"), Progress())
    assert again.status is SweepStatus.FLAT
    await engine.close(1.0)


async def test_nothing_to_hand_over(engines: Engines) -> None:
    engine = await engines(Engine({"mm-1": FakeExchange()}, settings()))
    assert await engine.hand_over(["mm-1", "unknown"]) == 0
    await engine.close(1.0)
