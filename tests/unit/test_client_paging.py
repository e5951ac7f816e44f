"""Pure pieces of the client: open-order paging, backoff with full jitter, clock offset."""

from __future__ import annotations

import random
from collections.abc import Callable
from decimal import Decimal

import pytest

from killswitch.core.orders import Order, OrderStatus, Side
from killswitch.exchange.client import OpenOrdersPager, backoff_delay, clock_offset_ms


def order(order_id: int) -> Order:
    return Order(
        order_id=order_id,
        symbol="BTC_USDT",
        side=Side.BUY,
        status=OrderStatus.OPEN,
        type="LIMIT",
        price=Decimal("1.5"),
        quantity=Decimal(1),
    )


def serve(book: set[int], cursor: int | None, limit: int) -> list[Order]:
    """What the exchange answers: newest first, ids <= cursor (inclusive), at most limit."""
    ids = sorted((i for i in book if cursor is None or i <= cursor), reverse=True)
    return [order(i) for i in ids[:limit]]


def drain(
    book: set[int], limit: int, between_pages: Callable[[set[int], int], object] | None = None
) -> list[list[int]]:
    pager = OpenOrdersPager(limit)
    pages: list[list[int]] = []
    for _ in range(1000):  # bounded
        if pager.done:
            return pages
        fresh = pager.feed(serve(book, pager.cursor, limit))
        pages.append([o.order_id for o in fresh])
        if between_pages is not None:
            between_pages(book, len(pages))
    raise AssertionError("pager did not stop")


@pytest.mark.parametrize(
    ("count", "limit", "expected_requests"),
    [
        (0, 10, 1),  # empty book: one short page
        (5, 10, 1),  # short first page
        (10, 10, 2),  # exactly full: the next page holds only the duplicate
        (25, 10, 3),  # 10, then 9 new + dup, then 6 new + dup (short)
        (100, 2, 100),  # limit 2: one new order per page, then the lone duplicate
    ],
)
def test_every_order_exactly_once_newest_first(
    count: int, limit: int, expected_requests: int
) -> None:
    book = set(range(1000, 1000 + count))
    pages = drain(book, limit)
    flat = [i for page in pages for i in page]
    assert flat == sorted(book, reverse=True)
    assert len(pages) == expected_requests


def test_params_carry_inclusive_cursor_after_first_page() -> None:
    pager = OpenOrdersPager(3)
    assert pager.params("BTC_USDT") == [("symbol", "BTC_USDT"), ("limit", 3)]
    pager.feed([order(9), order(8), order(7)])
    assert pager.params("BTC_USDT") == [
        ("symbol", "BTC_USDT"),
        ("from_order_id", 7),
        ("limit", 3),
    ]


def test_orders_placed_and_cancelled_between_pages() -> None:
    book = set(range(1, 31))

    def churn(book: set[int], pages_done: int) -> None:
        if pages_done == 1:
            book.add(100)  # newer than the cursor: not in this pass (verify re-lists)
            book.discard(21)  # the cursor order itself vanishes: no duplicate comes back
            book.discard(15)  # an unseen order is filled meanwhile
        if pages_done == 2:
            book.discard(3)

    pages = drain(book, 10, churn)
    flat = [i for page in pages for i in page]
    assert len(flat) == len(set(flat))  # never twice
    assert 100 not in flat
    assert 15 not in flat
    assert 3 not in flat
    assert set(range(22, 31)) <= set(flat)  # seen before the churn
    assert set(flat) == (set(range(1, 31)) - {15, 3})


def test_server_ignoring_cursor_does_not_loop() -> None:
    pager = OpenOrdersPager(2)
    same = [order(5), order(4)]
    assert [o.order_id for o in pager.feed(same)] == [5, 4]
    assert pager.feed(same) == []
    assert pager.done


def test_limit_below_two_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        OpenOrdersPager(1)


@pytest.mark.parametrize(
    ("attempt", "base", "cap", "ceiling"),
    [
        (1, 0.05, 2.0, 0.05),
        (2, 0.05, 2.0, 0.1),
        (4, 0.05, 2.0, 0.4),
        (7, 0.05, 2.0, 2.0),
        (500, 0.05, 2.0, 2.0),
    ],
)
def test_backoff_is_full_jitter_under_capped_exponential(
    attempt: int, base: float, cap: float, ceiling: float
) -> None:
    rng = random.Random(7)
    samples = [backoff_delay(attempt, base, cap, rng) for _ in range(2000)]
    assert all(0.0 <= s <= ceiling for s in samples)
    # Full jitter spreads over the whole interval, not just near the top.
    assert min(samples) < ceiling * 0.05
    assert max(samples) > ceiling * 0.95


@pytest.mark.parametrize(
    ("sent", "received", "server", "offset"),
    [
        (1000.000, 1000.010, 1000005, 0),  # in sync, 10 ms round trip
        (1000.000, 1000.010, 1060005, 60000),  # server a minute ahead
        (1000.000, 1000.200, 999100, -1000),  # server behind, slow round trip
    ],
)
def test_clock_offset_uses_round_trip_midpoint(
    sent: float, received: float, server: int, offset: int
) -> None:
    assert clock_offset_ms(sent, received, server) == offset
