"""Strategy ``auto`` and settled outcomes, on the in-memory exchange of test_engine.py."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace

from killswitch.core.model import SweepStatus
from killswitch.core.orders import Side
from killswitch.core.outcomes import Outcome, RejectReason
from killswitch.core.ports import BatchCancelResult, CancelResult
from killswitch.engine import Engine
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


class RefusingExchange(FakeExchange):
    """Answers 404 (no such route) to the bulk endpoints named in ``refuse``."""

    def __init__(self, symbols: Sequence[str] = ("BTC_USDT", "ETH_USDT")) -> None:
        super().__init__(symbols)
        self.refuse: set[str] = set()

    def _refused(self, symbol: str) -> BatchCancelResult:
        return BatchCancelResult(
            symbol, outcome=Outcome.REJECTED, reason=RejectReason.NOT_FOUND, status=404
        )

    async def cancel_all(self, symbol: str) -> BatchCancelResult:
        if "cancel_all" in self.refuse:
            self.log.append(("all", symbol, ()))
            return self._refused(symbol)
        return await super().cancel_all(symbol)

    async def cancel_batch(self, symbol: str, order_ids: Sequence[int]) -> BatchCancelResult:
        if "cancel_batch" in self.refuse:
            self.log.append(("batch", symbol, tuple(order_ids)))
            return self._refused(symbol)
        return await super().cancel_batch(symbol, order_ids)


class LostAnswers(FakeExchange):
    """Applies every cancel, then never answers (the answer is lost on the way back)."""

    async def cancel_order(self, order_id: int, symbol: str) -> CancelResult:
        self.log.append(("cancel", symbol, (order_id,)))
        self.books[symbol].pop(order_id, None)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class Leftovers(FakeExchange):
    """After the first cancel-all of a pair, ``spawn[pair]`` new orders appear there."""

    def __init__(self, symbols: Sequence[str], spawn: dict[str, int]) -> None:
        super().__init__(symbols)
        self.spawn = dict(spawn)

    async def cancel_all(self, symbol: str) -> BatchCancelResult:
        result = await super().cancel_all(symbol)
        for _ in range(self.spawn.pop(symbol, 0)):
            self.place(symbol)
        return result


def seed(ex: FakeExchange, per_symbol: int, side: Side | None = None) -> set[int]:
    ids: set[int] = set()
    for symbol in ex.symbols:
        for i in range(per_symbol):
            ids.add(ex.place(symbol, side or (Side.BUY if i % 2 else Side.SELL)))
    return ids


async def test_whole_account_kill_is_one_page_one_cancel_all_and_one_check_per_pair(
    engines: Engines,
) -> None:
    ex = FakeExchange(["A_USDT", "B_USDT", "C_USDT"])
    seeded = seed(ex, 150)  # more than a page
    engine = await engines(Engine({ACCOUNT: ex}, settings(strategy="auto", page_size=100)))
    result = await run(engine, request())
    assert result.status is SweepStatus.FLAT
    assert ex.open_count() == 0
    assert {o.order_id for o in result.orders} == seeded
    assert result.counts.sent == len(seeded)
    assert_accounted(result)
    # per pair: the first page, one cancel-all, one verifying listing
    assert len(ex.calls("all")) == 3
    assert len(ex.calls("list")) == 6
    assert ex.calls("cancel") == ex.calls("batch") == []


async def test_leftovers_get_a_cancel_all_when_several_else_a_single_delete(
    engines: Engines,
) -> None:
    ex = Leftovers(["A_USDT", "B_USDT"], {"A_USDT": 3, "B_USDT": 1})
    seed(ex, 10)
    engine = await engines(Engine({ACCOUNT: ex}, settings(strategy="auto")))
    result = await run(engine, request())
    assert result.status is SweepStatus.FLAT
    assert ex.open_count() == 0
    assert result.counts.sent == 24
    assert sorted(symbol for _, symbol, _ in ex.calls("all")) == ["A_USDT", "A_USDT", "B_USDT"]
    assert [symbol for _, symbol, _ in ex.calls("cancel")] == ["B_USDT"]
    assert_accounted(result)


async def test_the_pair_holding_the_largest_order_is_cancelled_first(engines: Engines) -> None:
    ex = FakeExchange(["A_USDT", "B_USDT", "C_USDT"])
    seed(ex, 5)
    ex.place("C_USDT", price="100000", quantity="10")  # C is listed last
    ex.gate = asyncio.Event()
    engine = await engines(Engine({ACCOUNT: ex}, settings(strategy="auto"), concurrency=1))
    task = asyncio.create_task(run(engine, request()))

    def queued() -> int:
        sweep = engine._accounts[ACCOUNT].running
        p = sweep._pass if sweep is not None else None
        return len(p.queue) if p is not None else 0

    # the first cancel-all waits at the gate while the other pairs' pages come in
    await wait_for(lambda: len(ex.calls("all")) == 1 and queued() == 2)
    ex.gate.set()
    result = await task
    assert result.status is SweepStatus.FLAT
    order = [symbol for _, symbol, _ in ex.calls("all")]
    # only the cancel-all already waiting at the gate may go before C's
    assert "C_USDT" in order[:2]
    assert sorted(order) == ["A_USDT", "B_USDT", "C_USDT"]


async def test_a_side_filter_uses_batch_cancels(engines: Engines) -> None:
    ex = FakeExchange(["A_USDT", "B_USDT"])
    seed(ex, 60)
    buys = {i for b in ex.books.values() for i, o in b.items() if o.side is Side.BUY}
    engine = await engines(Engine({ACCOUNT: ex}, settings(strategy="auto", batch_size=50)))
    result = await run(engine, request(sides={Side.BUY}))
    assert result.status is SweepStatus.FLAT
    assert {o.order_id for o in result.orders} == buys
    assert all(o.side is Side.SELL for b in ex.books.values() for o in b.values())
    assert ex.calls("all") == []
    batched = [i for _, _, ids in ex.calls("batch") for i in ids]
    assert sorted(batched) == sorted(buys)  # every buy in a batch, once
    assert len(ex.calls("batch")) <= 2 * len(ex.symbols)


async def test_ids_a_cancel_all_answers_in_fail_get_a_per_order_cancel(engines: Engines) -> None:
    ex = FakeExchange(["A_USDT"])
    seeded = seed(ex, 20)
    stubborn = set(sorted(seeded)[:3])
    ex.batch_fail_ids = stubborn  # cancel-all answers them in "fail" and leaves them open
    engine = await engines(Engine({ACCOUNT: ex}, settings(strategy="auto")))
    result = await run(engine, request())
    assert result.status is SweepStatus.FLAT
    assert {ids[0] for _, _, ids in ex.calls("cancel")} == stubborn
    assert result.counts.sent == 20
    assert_accounted(result)


async def test_a_refused_cancel_all_falls_back_to_batches_and_is_remembered(
    engines: Engines,
) -> None:
    ex = RefusingExchange(["A_USDT", "B_USDT"])
    ex.refuse = {"cancel_all"}
    seed(ex, 150)
    engine = await engines(Engine({ACCOUNT: ex}, settings(strategy="auto", batch_size=50)))
    first = await engine.submit(request("first"), Progress())
    assert first.status is SweepStatus.FLAT
    assert ex.open_count() == 0
    assert engine.refused_endpoints(ACCOUNT) == {"cancel_all"}
    assert 1 <= len(ex.calls("all")) <= 2  # both pairs may be under way before the answer
    assert ex.calls("cancel") == []  # batches, not per-order
    assert first.counts.sent == 300
    assert_accounted(first)
    calls = len(ex.log)
    seed(ex, 150)
    second = await engine.submit(request("second"), Progress())
    await engine.close(1.0)
    assert second.status is SweepStatus.FLAT
    assert [c for c in ex.log[calls:] if c[0] == "all"] == []  # remembered: not asked again
    assert second.counts.sent == 300


async def test_a_refused_batch_cancel_falls_back_to_per_order(engines: Engines) -> None:
    ex = RefusingExchange(["A_USDT"])
    ex.refuse = {"cancel_batch"}
    seed(ex, 10, Side.BUY)
    engine = await engines(Engine({ACCOUNT: ex}, settings(strategy="auto"), concurrency=1))
    result = await run(engine, request(sides={Side.BUY}))
    assert result.status is SweepStatus.FLAT
    assert len(ex.calls("batch")) == 1
    assert len(ex.calls("cancel")) == 10
    assert engine.refused_endpoints(ACCOUNT) == {"cancel_batch"}


async def test_cancels_are_counted_as_they_are_answered(engines: Engines) -> None:
    ex = FakeExchange(["A_USDT"])
    seed(ex, 5)
    cancels_at_count: list[int] = []

    class Watch(Recorder):
        def cancel_outcome(self, account: str, outcome: Outcome) -> None:
            super().cancel_outcome(account, outcome)
            cancels_at_count.append(len(ex.calls("cancel")))

    observer = Watch()
    engine = await engines(
        Engine({ACCOUNT: ex}, settings(strategy="per_order"), observer, concurrency=1)
    )
    result = await run(engine, request())
    assert result.status is SweepStatus.FLAT
    assert cancels_at_count == [1, 2, 3, 4, 5]  # each when its answer came, not at the end
    assert observer.outcomes == [Outcome.SENT] * 5


async def test_cancels_in_flight_at_the_deadline_that_the_exchange_applied_are_sent(
    engines: Engines,
) -> None:
    ex = LostAnswers(["A_USDT"])
    seeded = seed(ex, 5)
    observer = Recorder()
    engine = await engines(
        Engine(
            {ACCOUNT: ex},
            settings(strategy="per_order", settle_grace_s=0.2),
            observer,
            concurrency=8,
        )
    )
    result = await run(engine, request(deadline_s=0.3))
    assert {o.order_id for o in result.orders} == seeded
    assert result.counts.failed == 0
    assert result.counts.sent == 5
    assert result.residual_open == 0
    assert result.status is SweepStatus.FLAT  # the final listing proves it
    assert observer.outcomes == [Outcome.SENT] * 5


async def test_without_settle_grace_unanswered_cancels_fail(engines: Engines) -> None:
    ex = LostAnswers(["A_USDT"])
    seed(ex, 3)
    engine = await engines(
        Engine({ACCOUNT: ex}, settings(strategy="per_order", settle_grace_s=0.0))
    )
    result = await run(engine, request(deadline_s=0.2))
    assert result.status is SweepStatus.RESIDUAL
    assert result.counts.failed == 3
    # the only listing showed them and no answer said otherwise: still counted open
    assert result.residual_open == 3


# ------------------------------------------------------- named pairs, cancel-all first


async def test_a_kill_naming_pairs_cancels_them_before_any_listing(engines: Engines) -> None:
    ex = FakeExchange(["A_USDT", "B_USDT", "C_USDT"])
    seed(ex, 150)  # more than a page per pair
    named = set(ex.books["A_USDT"]) | set(ex.books["B_USDT"])
    engine = await engines(Engine({ACCOUNT: ex}, settings(strategy="auto"), concurrency=1))
    result = await run(engine, request(symbols={"B_USDT", "A_USDT"}))
    assert result.status is SweepStatus.FLAT
    # one worker: the named pairs' cancel-alls in name order, then the verifying listings
    assert ex.log == [
        ("all", "A_USDT", ()),
        ("all", "B_USDT", ()),
        ("list", "A_USDT", ()),
        ("list", "B_USDT", ()),
    ]
    assert ex.open_count() == 150  # C_USDT was not named
    assert {o.order_id for o in result.orders} == named
    assert result.counts.sent == 300
    assert result.unlisted_pairs == []
    assert_accounted(result)


async def test_a_named_pair_is_flat_only_after_a_listing_that_followed_its_cancel_all(
    engines: Engines,
) -> None:
    ex = Leftovers(["A_USDT"], {"A_USDT": 3})  # three orders appear after the cancel-all
    seed(ex, 10)
    engine = await engines(Engine({ACCOUNT: ex}, settings(strategy="auto")))
    result = await run(engine, request(symbols={"A_USDT"}))
    assert result.status is SweepStatus.FLAT
    assert ex.open_count() == 0
    assert [kind for kind, _, _ in ex.log] == ["all", "list", "all", "list"]
    assert result.counts.sent == 13
    assert_accounted(result)


async def test_an_empty_named_pair_costs_a_cancel_all_and_a_listing(engines: Engines) -> None:
    ex = FakeExchange(["A_USDT"])
    engine = await engines(Engine({ACCOUNT: ex}, settings(strategy="auto")))
    result = await run(engine, request(symbols={"A_USDT"}))
    assert result.status is SweepStatus.FLAT
    assert [kind for kind, _, _ in ex.log] == ["all", "list"]
    assert result.counts.resolved == 0


async def test_ids_a_first_cancel_all_answers_in_fail_get_one_delete_each(
    engines: Engines,
) -> None:
    ex = FakeExchange(["A_USDT"])
    seeded = seed(ex, 20)
    stubborn = set(sorted(seeded)[:3])
    ex.batch_fail_ids = stubborn
    engine = await engines(Engine({ACCOUNT: ex}, settings(strategy="auto")))
    result = await run(engine, request(symbols={"A_USDT"}))
    assert result.status is SweepStatus.FLAT
    assert ex.log[0] == ("all", "A_USDT", ())
    assert sorted(ids[0] for _, _, ids in ex.calls("cancel")) == sorted(stubborn)
    assert {o.order_id for o in result.orders} == seeded  # every order, one outcome each
    assert result.counts.sent == 20
    assert_accounted(result)


async def test_a_refused_first_cancel_all_lists_the_pair_at_once_and_is_remembered(
    engines: Engines,
) -> None:
    ex = RefusingExchange(["A_USDT", "B_USDT"])
    ex.refuse = {"cancel_all"}
    seed(ex, 60)
    engine = await engines(Engine({ACCOUNT: ex}, settings(strategy="auto", batch_size=50)))
    first = await engine.submit(request("first", symbols={"A_USDT"}), Progress())
    assert first.status is SweepStatus.FLAT
    assert ex.log[:2] == [("all", "A_USDT", ()), ("list", "A_USDT", ())]
    assert ex.calls("batch")  # the fallback: batch cancels of the listed orders
    assert first.counts.sent == 60
    assert first.reason is not None
    assert "cancel-all refused" in first.reason
    assert_accounted(first)
    calls = len(ex.log)
    second = await engine.submit(request("second", symbols={"B_USDT"}), Progress())
    await engine.close(1.0)
    assert second.status is SweepStatus.FLAT
    assert ex.log[calls] == ("list", "B_USDT", ())  # remembered: listed first
    assert [c for c in ex.log[calls:] if c[0] == "all"] == []
    assert second.counts.sent == 60


async def test_with_the_setting_off_a_named_pair_is_listed_first(engines: Engines) -> None:
    ex = FakeExchange(["A_USDT"])
    seed(ex, 10)
    config = settings(strategy="auto", cancel_named_pairs_first=False)
    engine = await engines(Engine({ACCOUNT: ex}, config))
    result = await run(engine, request(symbols={"A_USDT"}))
    assert result.status is SweepStatus.FLAT
    assert [kind for kind, _, _ in ex.log] == ["list", "all", "list"]


async def test_a_dry_run_naming_a_pair_only_lists_it(engines: Engines) -> None:
    ex = FakeExchange(["A_USDT"])
    seed(ex, 10)
    engine = await engines(Engine({ACCOUNT: ex}, settings(strategy="auto")))
    result = await run(engine, request(symbols={"A_USDT"}, dry_run=True))
    assert result.status is SweepStatus.DRY_RUN
    assert [kind for kind, _, _ in ex.log] == ["list"]
    assert ex.open_count() == 10


async def test_pairs_never_checked_against_the_pair_list_are_listed_first(
    engines: Engines,
) -> None:
    ex = FakeExchange(["A_USDT"])
    seed(ex, 10)
    engine = await engines(Engine({ACCOUNT: ex}, settings(strategy="auto")))
    unchecked = replace(request(symbols={"A_USDT"}), unchecked_pairs="pair list unavailable")
    result = await run(engine, unchecked)
    assert result.status is SweepStatus.RESIDUAL  # never flat: the pairs were not checked
    assert ex.log[0] == ("list", "A_USDT", ())
    assert ex.open_count() == 0
