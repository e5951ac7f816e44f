"""Table tests for strategy ``auto`` and for settling outcomes (pure planning and ledger)."""

from __future__ import annotations

import pytest

from killswitch.config import EngineSettings
from killswitch.core.ledger import Ledger, settle_absent
from killswitch.core.model import Scope
from killswitch.core.orders import Side
from killswitch.core.outcomes import Outcome
from killswitch.core.planning import (
    NAMED_PAIR_KEY,
    WHOLE_PAIR,
    CancelQueue,
    StrategyName,
    bulk_plan,
    cancel_pair_first,
    cancel_whole_pair,
    endpoint_refused,
)

SENT, CLOSED, REJECTED, FAILED = (
    Outcome.SENT,
    Outcome.ALREADY_CLOSED,
    Outcome.REJECTED,
    Outcome.FAILED,
)
WHOLE = Scope()
PAIR = Scope(symbols=frozenset({"A"}))
BUYS = Scope(sides=frozenset({Side.BUY}))
IDS = Scope(order_ids=frozenset({1, 2}))


def test_auto_is_the_default_strategy() -> None:
    assert EngineSettings().strategy == "auto"
    assert EngineSettings().settle_grace_s > 0


# ------------------------------------------------------------------- auto plan


@pytest.mark.parametrize(
    ("scope", "first_page", "in_scope", "refused", "expected"),
    [
        (WHOLE, 100, 100, (), True),  # full page: more pages follow, one cancel-all for all
        (PAIR, 100, 100, (), True),
        (WHOLE, 30, 30, (), True),  # the whole pair on one page, several orders
        (WHOLE, 2, 2, (), True),
        (WHOLE, 1, 1, (), False),  # one order: one DELETE either way, and a clearer answer
        (WHOLE, 0, 0, (), False),
        (BUYS, 100, 60, (), False),  # a side filter: cancel-all would take the sells too
        (IDS, 100, 2, (), False),  # named orders only
        (WHOLE, 100, 100, ("cancel_all",), False),  # the exchange has no cancel-all
        (WHOLE, 100, 100, ("cancel_batch",), True),
    ],
)
def test_cancel_whole_pair(
    scope: Scope, first_page: int, in_scope: int, refused: tuple[str, ...], expected: bool
) -> None:
    got = cancel_whole_pair(
        scope, first_page=first_page, in_scope_on_page=in_scope, page_size=100, refused=refused
    )
    assert got is expected


@pytest.mark.parametrize(
    ("strategy", "refused", "expected"),
    [
        ("auto", (), (50, True)),
        ("auto", ("cancel_batch",), (1, False)),  # fallback: per-order
        ("auto", ("cancel_all",), (50, True)),
        ("batch", ("cancel_batch",), (50, True)),  # batch keeps today's behaviour
        ("per_order", (), (1, False)),
        ("symbol", (), (1, False)),
    ],
)
def test_bulk_plan(
    strategy: StrategyName, refused: tuple[str, ...], expected: tuple[int, bool]
) -> None:
    assert bulk_plan(strategy, 50, refused) == expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (404, True),
        (405, True),
        (301, True),  # a redirect is never followed: the same answer would come every time
        (307, True),
        (308, True),
        (400, False),
        (401, False),
        (409, False),
        (200, False),
        (None, False),
    ],
)
def test_endpoint_refused(status: int | None, expected: bool) -> None:
    assert endpoint_refused(status) is expected


def test_whole_pair_entries_come_out_alone_and_in_priority_order() -> None:
    q = CancelQueue()
    q.push((-5.0, -1), 1, "A")
    q.push((-9.0, 0), WHOLE_PAIR, "B")  # pair B holds the largest order
    q.push((-3.0, -2), 2, "A")
    q.push((-1.0, -3), 3, "A")
    assert q.requests(50) == 2
    assert q.pop(50) == ("B", [WHOLE_PAIR])
    assert q.pop(50) == ("A", [1, 2, 3])
    assert q.pop(50) is None


def test_a_batch_stops_before_a_whole_pair_entry() -> None:
    q = CancelQueue()
    q.push((-5.0, -1), 1, "A")
    q.push((-4.0, 0), WHOLE_PAIR, "A")
    q.push((-3.0, -2), 2, "A")
    assert q.pop(50) == ("A", [1])
    assert q.pop(50) == ("A", [WHOLE_PAIR])
    assert q.pop(50) == ("A", [2])
    assert len(q) == 0


# ----------------------------------------------------------------- settle rules


@pytest.mark.parametrize(
    ("outcome", "attempts", "expected"),
    [
        (FAILED, 1, SENT),  # the answer was lost, the order is gone: the cancel worked
        (None, 1, SENT),  # in flight when the sweep stopped
        (None, 0, CLOSED),  # never cancelled, gone on its own
        (SENT, 1, None),
        (CLOSED, 1, None),
        (REJECTED, 1, None),
    ],
)
def test_settle_absent(outcome: Outcome | None, attempts: int, expected: Outcome | None) -> None:
    assert settle_absent(outcome, attempts) is expected


def listed(ledger: Ledger, symbol: str, ids: list[int], *, final: bool = False) -> None:
    ledger.new_pass()
    ledger.listing_started(symbol)
    for order_id in ids:
        ledger.observe(order_id, symbol, Side.BUY)
    ledger.listing_finished(symbol, final=final)


def test_failed_becomes_sent_when_a_complete_listing_no_longer_shows_it() -> None:
    ledger = Ledger()
    listed(ledger, "A", [1, 2])
    ledger.begin(1)
    ledger.conclude(1, FAILED, 3)  # retries exhausted
    ledger.begin(2)
    ledger.conclude(2, FAILED, 3)
    listed(ledger, "A", [2])  # 1 is gone, 2 is still open
    assert ledger.record(1).outcome is SENT
    assert ledger.record(1).attempts == 3
    assert ledger.record(2).outcome is FAILED  # still open: the next cancel decides
    assert ledger.residual() == 1


def test_a_listing_of_another_pair_settles_nothing() -> None:
    ledger = Ledger()
    listed(ledger, "A", [1])
    ledger.begin(1)
    ledger.conclude(1, FAILED, 1)
    listed(ledger, "B", [])
    assert ledger.record(1).outcome is FAILED


def test_final_listing_settles_in_flight_and_queued_orders() -> None:
    ledger = Ledger()
    listed(ledger, "A", [1, 2, 3, 4])
    ledger.begin(1)
    ledger.abandon(1, sent=True)  # in flight at the deadline, then cut off
    ledger.begin(2)
    ledger.abandon(2, sent=True)
    ledger.abandon(3)  # queued, never sent
    listed(ledger, "A", [2, 4], final=True)
    assert ledger.record(1).outcome is SENT
    assert ledger.record(3).outcome is CLOSED
    ledger.finalise()
    assert ledger.record(2).outcome is FAILED  # still open
    assert ledger.record(4).outcome is FAILED
    assert ledger.residual() == 2
    assert ledger.counts().failed == 2


def test_without_a_final_listing_unanswered_orders_fail() -> None:
    ledger = Ledger()
    listed(ledger, "A", [1])
    ledger.begin(1)
    ledger.abandon(1, sent=True)
    assert ledger.finalise() == 1
    assert ledger.record(1).outcome is FAILED


# --------------------------------------------------------------------- metrics


def test_each_order_is_counted_once_at_its_first_exchange_answer() -> None:
    counted: list[Outcome] = []
    ledger = Ledger(on_outcome=counted.append)
    listed(ledger, "A", [1, 2, 3])
    ledger.begin(1)
    ledger.conclude(1, SENT, 1)
    assert counted == [SENT]  # at once, not when the sweep ends
    ledger.begin(2)
    ledger.conclude(2, FAILED, 3)
    assert counted == [SENT]  # failed is provisional during the sweep
    listed(ledger, "A", [1, 3])  # 1 open again (lost cancel), 2 gone
    assert counted == [SENT, SENT]  # 2: failed, then gone -> sent, counted once
    ledger.begin(1)
    ledger.conclude(1, SENT, 1)  # cancelled again: still one count
    ledger.begin(3)
    ledger.conclude(3, FAILED, 3)
    ledger.finalise()
    assert counted == [SENT, SENT, FAILED]
    assert len(counted) == len(ledger)


def test_skipped_is_never_counted() -> None:
    counted: list[Outcome] = []
    ledger = Ledger(on_outcome=counted.append)
    listed(ledger, "A", [1])
    ledger.conclude(1, Outcome.SKIPPED)
    ledger.finalise()
    assert counted == []


# ------------------------------------------------------- named pairs, cancel-all first


BUYS_OF_A = Scope(symbols=frozenset({"A"}), sides=frozenset({Side.BUY}))
ONE_OF_A = Scope(symbols=frozenset({"A"}), order_ids=frozenset({1}))


@pytest.mark.parametrize(
    ("strategy", "scope", "first_pass", "refused", "expected"),
    [
        ("auto", PAIR, True, (), True),  # "kill A on this account": cancel-all at once
        ("auto", PAIR, False, (), False),  # later passes: list, then decide per page
        ("auto", WHOLE, True, (), False),  # whole account: list the exchange's pairs
        ("auto", BUYS_OF_A, True, (), False),  # a cancel-all would take the sells too
        ("auto", ONE_OF_A, True, (), False),
        ("auto", PAIR, True, ("cancel_all",), False),  # refused before: list first
        ("auto", PAIR, True, ("cancel_batch",), True),
        ("per_order", PAIR, True, (), False),
        ("batch", PAIR, True, (), False),
        ("symbol", PAIR, True, (), False),  # symbol has its own cancel-all pass
    ],
)
def test_cancel_pair_first(
    strategy: StrategyName,
    scope: Scope,
    first_pass: bool,
    refused: tuple[str, ...],
    expected: bool,
) -> None:
    got = cancel_pair_first(
        strategy,
        scope,
        first_pass=first_pass,
        refused=refused,
    )
    assert got is expected
    off = cancel_pair_first(
        strategy,
        scope,
        first_pass=first_pass,
        enabled=False,
        refused=refused,
    )
    assert off is False  # the setting off: always list first


def test_cancel_named_pairs_first_is_on_by_default_and_reaches_the_engine() -> None:
    assert EngineSettings().cancel_named_pairs_first is True
    off = EngineSettings(cancel_named_pairs_first=False).engine_config()
    assert off.cancel_named_pairs_first is False


def test_a_named_pairs_cancel_all_goes_before_orders_a_listing_queued() -> None:
    queue = CancelQueue()
    queue.push((-1e12, 0), 7, "B")  # the largest order a listing could show
    queue.push(NAMED_PAIR_KEY, WHOLE_PAIR, "A")
    queue.push(NAMED_PAIR_KEY, WHOLE_PAIR, "C")
    assert queue.pop(50) == ("A", [WHOLE_PAIR])
    assert queue.pop(50) == ("C", [WHOLE_PAIR])  # named pairs: first in, first out
    assert queue.pop(50) == ("B", [7])
