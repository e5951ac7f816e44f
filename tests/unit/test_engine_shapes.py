"""Random pass shapes: every sweep ends, within the concurrency, every order accounted.

Strategies, page sizes, batch refusals and ``fail`` ids, sticky and rejected orders, dry
runs, and alerts that widen a running sweep (latched or not) at random points; the
engine's workers start on demand, so these check that no pass hangs, ends early, runs
more cancels or workers than the concurrency, or loses or doubles an outcome.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from killswitch.core.model import SweepStatus
from killswitch.core.orders import Side
from killswitch.core.outcomes import Outcome
from killswitch.core.planning import StrategyName
from killswitch.core.ports import BatchCancelResult, CancelResult
from killswitch.engine import Engine
from tests.support.engine import (
    ACCOUNT,
    FakeExchange,
    Progress,
    assert_accounted,
    request,
    settings,
)

SYMBOLS = ["AAA_USDT", "BBB_USDT", "CCC_USDT"]


class Probe:
    def __init__(self, ex: FakeExchange, rng: random.Random, refuse_batches: bool) -> None:
        self.ex = ex
        self.rng = rng
        self.now = 0
        self.peak = 0
        self.max_workers = 0
        orig_one, orig_batch = ex.cancel_order, ex.cancel_batch

        async def jitter() -> None:
            for _ in range(rng.randint(0, 3)):
                await asyncio.sleep(0)

        async def one(order_id: int, symbol: str) -> CancelResult:
            self.enter()
            try:
                await jitter()
                return await orig_one(order_id, symbol)
            finally:
                self.now -= 1

        async def batch(symbol: str, order_ids: Sequence[int]) -> BatchCancelResult:
            self.enter()
            try:
                await jitter()
                if refuse_batches and rng.random() < 0.5:
                    return BatchCancelResult(symbol, outcome=Outcome.REJECTED)
                return await orig_batch(symbol, order_ids)
            finally:
                self.now -= 1

        ex.cancel_order = one  # type: ignore[method-assign]
        ex.cancel_batch = batch  # type: ignore[method-assign]

    def enter(self) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)
        workers = [t for t in asyncio.all_tasks() if "-w" in t.get_name() and not t.done()]
        self.max_workers = max(self.max_workers, len(workers))


@hsettings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    seed=st.integers(0, 2**32),
    strategy=st.sampled_from(["per_order", "batch", "symbol"]),
    orders=st.lists(
        st.tuples(st.sampled_from(SYMBOLS), st.sampled_from([Side.BUY, Side.SELL])), max_size=40
    ),
    fail_frac=st.sampled_from([0.0, 0.3, 1.0]),
    concurrency=st.integers(1, 5),
    batch_size=st.integers(1, 6),
    page_size=st.integers(1, 7),
    joins=st.lists(
        st.tuples(st.integers(0, 30), st.sets(st.sampled_from(SYMBOLS), min_size=1), st.booleans()),
        max_size=3,
    ),
    first_symbols=st.one_of(st.none(), st.sets(st.sampled_from(SYMBOLS), min_size=1)),
    dry_run=st.booleans(),
    refuse_batches=st.booleans(),
    sticky=st.booleans(),
    reject=st.booleans(),
)
def test_random_pass_shapes(
    *,
    seed: int,
    strategy: StrategyName,
    orders: list[tuple[str, Side]],
    fail_frac: float,
    concurrency: int,
    batch_size: int,
    page_size: int,
    joins: list[tuple[int, set[str], bool]],
    first_symbols: set[str] | None,
    dry_run: bool,
    refuse_batches: bool,
    sticky: bool,
    reject: bool,
) -> None:
    async def scenario() -> None:
        rng = random.Random(seed)
        ex = FakeExchange(SYMBOLS)
        ids = [ex.place(s, side) for s, side in orders]
        ex.batch_fail_ids = {i for i in ids if rng.random() < fail_frac}
        probe = Probe(ex, rng, refuse_batches)
        ex.sticky = sticky
        if reject:
            ex.reject_ids = {i for i in ids if rng.random() < 0.3}
        async with Engine(
            {ACCOUNT: ex},
            settings(strategy=strategy, batch_size=batch_size, page_size=page_size, max_passes=4),
            concurrency=concurrency,
        ) as engine:
            start = request("a0", symbols=first_symbols, dry_run=dry_run)
            futures = [engine.start(start, Progress())]
            for n, (delay, syms, latch) in enumerate(joins):
                for _ in range(delay):
                    await asyncio.sleep(0)
                futures.append(
                    engine.start(
                        request(f"a{n + 1}", symbols=syms, dry_run=dry_run, latch=latch),
                        Progress(),
                    )
                )
            async with asyncio.timeout(10):
                results = await asyncio.gather(*futures)
            await engine.close(1.0)
        for r in results:
            if dry_run:
                assert r.status is SweepStatus.DRY_RUN, (r.status, r.reason)
            elif not sticky and not reject:
                assert r.status is SweepStatus.FLAT, (r.status, r.reason)
            else:
                assert r.status in (SweepStatus.FLAT, SweepStatus.RESIDUAL), (r.status, r.reason)
            assert_accounted(r)
        assert probe.peak <= concurrency, (probe.peak, concurrency)
        assert probe.max_workers <= concurrency, (probe.max_workers, concurrency)
        assert ex.double_cancels == 0
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not left, left
        if not dry_run and not sticky and not reject and first_symbols is None:
            assert ex.open_count() == 0

    asyncio.run(scenario())
