"""Table tests for sweep planning: scope, strategy, priority, queue, pass decisions."""

from __future__ import annotations

from decimal import Decimal

import pytest

from killswitch.core.model import Scope, SweepStatus
from killswitch.core.orders import Order, OrderStatus, Side
from killswitch.core.planning import (
    CancelQueue,
    Next,
    PassSummary,
    PriorityName,
    StrategyName,
    effective_strategy,
    final_status,
    in_scope,
    needs_exchange_info,
    next_step,
    pause_before_next_pass,
    priority_key,
    symbols_to_list,
    unanswered,
    whole_pairs,
)

BUY, SELL = Side.BUY, Side.SELL


def order(
    order_id: int = 1,
    *,
    symbol: str = "BTC_USDT",
    side: Side = BUY,
    status: OrderStatus = OrderStatus.OPEN,
    price: str = "10",
    quantity: str = "1",
    executed: str = "0",
    created_at: int = 0,
) -> Order:
    return Order(
        order_id=order_id,
        symbol=symbol,
        side=side,
        status=status,
        type="LIMIT",
        price=Decimal(price),
        quantity=Decimal(quantity),
        executed_quantity=Decimal(executed),
        created_at=created_at,
    )


def scope(
    symbols: set[str] | None = None,
    sides: set[Side] | None = None,
    ids: set[int] | None = None,
) -> Scope:
    return Scope(
        symbols=frozenset(symbols) if symbols is not None else None,
        sides=frozenset(sides) if sides is not None else None,
        order_ids=frozenset(ids) if ids is not None else None,
    )


# ----------------------------------------------------------------------- scope


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (scope(), scope()),
        (scope(ids=set()), scope()),
        (scope({"A"}, {BUY}, set()), scope({"A"}, {BUY})),
        (scope(ids={1}), scope(ids={1})),
    ],
)
def test_a_scope_is_normalised_where_it_is_made(given: Scope, expected: Scope) -> None:
    assert given == expected


def test_normalised_empty_ids_widen_to_all() -> None:
    # The bug normalising prevents: {} | {1} would narrow "all orders" to order 1.
    widened = scope(ids=set()).widen(scope(ids={1}))
    assert widened.order_ids is None


@pytest.mark.parametrize(
    ("given", "exchange", "expected"),
    [
        (scope({"B", "A"}), None, ["A", "B"]),
        (scope({"A"}), ["A", "B", "C"], ["A"]),
        (scope(), ["C", "A", "B", "A"], ["A", "B", "C"]),
        (scope(sides={BUY}), ["X"], ["X"]),
        (scope(), [], []),
    ],
)
def test_symbols_to_list(given: Scope, exchange: list[str] | None, expected: list[str]) -> None:
    assert symbols_to_list(given, exchange) == expected
    assert needs_exchange_info(given) == (given.symbols is None)


def test_symbols_to_list_needs_exchange_symbols_for_all_pairs() -> None:
    with pytest.raises(ValueError, match="exchange symbols"):
        symbols_to_list(scope(), None)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (scope(), True),
        (scope({"A"}), True),
        (scope(ids=set()), True),
        (scope(sides={BUY}), False),
        (scope(sides={BUY, SELL}), False),  # a side filter, even if it names both, is not "all"
        (scope({"A"}, ids={1}), False),
    ],
)
def test_whole_pairs(given: Scope, expected: bool) -> None:
    assert whole_pairs(given) is expected


@pytest.mark.parametrize(
    ("strategy", "given", "first", "expected"),
    [
        ("per_order", scope(), True, "per_order"),
        ("per_order", scope(), False, "per_order"),
        ("batch", scope(sides={BUY}), True, "batch"),
        ("batch", scope(), False, "batch"),
        ("symbol", scope(), True, "symbol"),
        ("symbol", scope(), False, "per_order"),
        ("symbol", scope(sides={SELL}), True, "per_order"),
        ("symbol", scope(ids={5}), True, "per_order"),
        ("symbol", scope({"A"}), True, "symbol"),
    ],
)
def test_effective_strategy(
    strategy: StrategyName, given: Scope, first: bool, expected: StrategyName
) -> None:
    assert effective_strategy(strategy, given, first_pass=first) == expected


@pytest.mark.parametrize(
    ("given", "o", "expected"),
    [
        (scope(), order(), True),
        (scope({"BTC_USDT"}), order(), True),
        (scope({"ETH_USDT"}), order(), False),
        (scope(sides={SELL}), order(side=BUY), False),
        (scope(sides={SELL}), order(side=SELL), True),
        (scope(ids={1, 2}), order(order_id=2), True),
        (scope(ids={1, 2}), order(order_id=3), False),
        (scope(), order(status=OrderStatus.NEW), True),
        (scope(), order(status=OrderStatus.PARTIAL_FILLED), True),
        (scope(), order(status=OrderStatus.PARTIALLY_FILLED), True),
        (scope(), order(status=OrderStatus.FILLED), False),
        (scope(), order(status=OrderStatus.CANCELLED), False),
        (scope(), order(status=OrderStatus.EXPIRED), False),
    ],
)
def test_in_scope(given: Scope, o: Order, expected: bool) -> None:
    assert in_scope(given, o) is expected


# -------------------------------------------------------------------- priority


ORDERS = [
    order(1, price="10", quantity="1", created_at=300),  # notional 10
    order(2, price="5", quantity="100", executed="40", created_at=100),  # notional 300
    order(3, price="1000", quantity="1", created_at=200),  # notional 1000
    order(4, price="10", quantity="1", created_at=300),  # notional 10, same time as 1
]


@pytest.mark.parametrize(
    ("priority", "expected"),
    [
        ("notional_desc", [3, 2, 4, 1]),
        ("newest_first", [4, 1, 3, 2]),
        ("oldest_first", [2, 3, 1, 4]),
    ],
)
def test_priority_order(priority: PriorityName, expected: list[int]) -> None:
    ranked = sorted(ORDERS, key=lambda o: priority_key(priority, o))
    assert [o.order_id for o in ranked] == expected


def test_unknown_priority_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown priority"):
        priority_key("biggest", order())  # type: ignore[arg-type]


# ----------------------------------------------------------------------- queue


def _drain_pops(queue: CancelQueue, max_n: int) -> list[tuple[str, list[int]]]:
    out = []
    while (item := queue.pop(max_n)) is not None:
        out.append(item)
    return out


@pytest.mark.parametrize(
    ("pushes", "max_n", "expected"),
    [
        ([], 1, []),
        ([((3.0, 0), 1, "A")], 1, [("A", [1])]),
        (
            [((3.0, 0), 1, "A"), ((1.0, 0), 2, "B"), ((2.0, 0), 3, "A")],
            1,
            [("B", [2]), ("A", [3]), ("A", [1])],
        ),
        # batches: the best order's pair, then more of that pair in priority order
        (
            [((3.0, 0), 1, "A"), ((1.0, 0), 2, "B"), ((2.0, 0), 3, "A"), ((0.5, 0), 4, "A")],
            2,
            [("A", [4, 3]), ("B", [2]), ("A", [1])],
        ),
        (
            [((5.0, 0), i, "A") for i in range(1, 6)],
            2,
            [("A", [1, 2]), ("A", [3, 4]), ("A", [5])],
        ),
        # equal keys: first pushed first
        ([((1.0, 0), 9, "A"), ((1.0, 0), 7, "B")], 1, [("A", [9]), ("B", [7])]),
    ],
)
def test_cancel_queue(
    pushes: list[tuple[tuple[float, int], int, str]],
    max_n: int,
    expected: list[tuple[str, list[int]]],
) -> None:
    queue = CancelQueue()
    for key, order_id, symbol in pushes:
        queue.push(key, order_id, symbol)
    assert len(queue) == len(pushes)
    assert _drain_pops(queue, max_n) == expected
    assert len(queue) == 0


def test_cancel_queue_interleaved_push_pop_keeps_priority() -> None:
    queue = CancelQueue()
    queue.push((5.0, 0), 1, "A")
    queue.push((4.0, 0), 2, "A")
    assert queue.pop(5) == ("A", [2, 1])  # leaves two stale heads in the global heap
    queue.push((9.0, 0), 3, "A")
    queue.push((1.0, 0), 4, "B")
    assert _drain_pops(queue, 1) == [("B", [4]), ("A", [3])]


def test_cancel_queue_drain() -> None:
    queue = CancelQueue()
    for i in range(5):
        queue.push((float(i), 0), i, "AB"[i % 2])
    queue.pop(1)
    assert sorted(queue.drain()) == [("A", 2), ("A", 4), ("B", 1), ("B", 3)]
    assert len(queue) == 0
    assert queue.pop() is None


def test_cancel_queue_keeps_tuples_not_orders() -> None:
    queue = CancelQueue()
    queue.push(priority_key("notional_desc", order(7)), 7, "A")
    assert all(not isinstance(x, Order) for entry in queue._global for x in entry)


@pytest.mark.parametrize(
    ("sent", "success", "expected"),
    [
        ([1, 2, 3], [1, 2, 3], []),
        ([1, 2, 3], [2], [1, 3]),
        ([1, 2, 3], [], [1, 2, 3]),
        ([3, 1, 2], [9], [3, 1, 2]),  # an unknown success id does not settle anything
        ([1, 1, 2], [2], [1]),
    ],
)
def test_unanswered(sent: list[int], success: list[int], expected: list[int]) -> None:
    assert unanswered(sent, success) == expected


# ------------------------------------------------------------- pass decisions


@pytest.mark.parametrize(
    ("summary", "passes", "dry_run", "expected"),
    [
        # a complete listing with nothing in scope: flat
        (PassSummary(listed=True, found=0, queued=0), 1, False, Next.FLAT),
        (PassSummary(listed=True, found=0, queued=0), 50, False, Next.FLAT),
        # found and cancelled: list again
        (PassSummary(listed=True, found=3, queued=3), 1, False, Next.CONTINUE),
        # found, nothing we can cancel (all rejected): stop, it will not change
        (PassSummary(listed=True, found=3, queued=0), 1, False, Next.RESIDUAL),
        # out of passes
        (PassSummary(listed=True, found=3, queued=3), 50, False, Next.RESIDUAL),
        # a cancel-all pass proves nothing
        (PassSummary(listed=False, found=0, queued=0), 1, False, Next.CONTINUE),
        (PassSummary(listed=False, found=0, queued=10), 1, False, Next.CONTINUE),
        # the scope widened during the pass: its listing may have missed orders
        (PassSummary(listed=True, found=0, queued=0, scope_changed=True), 1, False, Next.CONTINUE),
        (PassSummary(listed=True, found=2, queued=0, scope_changed=True), 1, False, Next.CONTINUE),
        (PassSummary(listed=True, found=0, queued=0, scope_changed=True), 50, False, Next.RESIDUAL),
        # dry run: one complete listing
        (PassSummary(listed=True, found=5, queued=0), 1, True, Next.DRY_RUN),
        (PassSummary(listed=True, found=0, queued=0), 1, True, Next.DRY_RUN),
        (PassSummary(listed=True, found=5, queued=0, scope_changed=True), 1, True, Next.CONTINUE),
    ],
)
def test_next_step(summary: PassSummary, passes: int, dry_run: bool, expected: Next) -> None:
    assert next_step(summary, passes=passes, max_passes=50, dry_run=dry_run) is expected


@pytest.mark.parametrize(
    ("dry_run", "failure", "verified", "residual", "expected"),
    [
        (False, None, True, 0, SweepStatus.FLAT),
        (False, None, True, 2, SweepStatus.RESIDUAL),
        (False, None, False, 0, SweepStatus.RESIDUAL),  # never verified: not flat
        (False, "auth", True, 0, SweepStatus.FAILED),
        (True, None, True, 0, SweepStatus.DRY_RUN),
        (True, None, False, 5, SweepStatus.DRY_RUN),
        (True, "auth", False, 0, SweepStatus.FAILED),
    ],
)
def test_final_status(
    dry_run: bool, failure: str | None, verified: bool, residual: int, expected: SweepStatus
) -> None:
    got = final_status(
        dry_run=dry_run, failure=failure, verified=verified, residual_in_scope=residual
    )
    assert got is expected


@pytest.mark.parametrize(
    ("lagging", "expected"),
    [(0, 0.0), (-1, 0.0), (1, 0.05), (2, 0.1), (3, 0.2), (5, 0.8), (6, 1.0), (1000, 1.0)],
)
def test_pause_before_next_pass(lagging: int, expected: float) -> None:
    assert pause_before_next_pass(lagging) == pytest.approx(expected)
