"""Table tests for the sweep ledger: one outcome per order, counts add up, no double cancel."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from killswitch.core.ledger import (
    DoubleCancel,
    Ledger,
    OrderRecord,
    merge_outcome,
    should_cancel_again,
)
from killswitch.core.model import Counts, Scope
from killswitch.core.orders import Side
from killswitch.core.outcomes import Outcome, RejectReason

SENT, CLOSED, REJECTED, FAILED, SKIPPED = (
    Outcome.SENT,
    Outcome.ALREADY_CLOSED,
    Outcome.REJECTED,
    Outcome.FAILED,
    Outcome.SKIPPED,
)


@pytest.mark.parametrize(
    ("prior", "new", "expected"),
    [
        (None, SENT, SENT),
        (None, CLOSED, CLOSED),
        (None, FAILED, FAILED),
        (SENT, SENT, SENT),
        (SENT, CLOSED, SENT),  # closed most likely because of our first cancel
        (SENT, FAILED, FAILED),  # still open and we could not cancel it again
        (SENT, REJECTED, REJECTED),
        (CLOSED, SENT, SENT),
        (FAILED, SENT, SENT),
        (FAILED, CLOSED, CLOSED),
        (FAILED, FAILED, FAILED),
    ],
)
def test_merge_outcome(prior: Outcome | None, new: Outcome, expected: Outcome) -> None:
    assert merge_outcome(prior, new) is expected


@pytest.mark.parametrize(
    ("prior", "expected"),
    [
        (None, True),
        (SENT, True),
        (CLOSED, True),
        (FAILED, True),
        (REJECTED, False),
        (SKIPPED, False),
    ],
)
def test_should_cancel_again(prior: Outcome | None, expected: bool) -> None:
    assert should_cancel_again(prior) is expected


@pytest.mark.parametrize(
    ("scope", "record", "order_id", "expected"),
    [
        (Scope(), OrderRecord("A", None), 1, True),
        (Scope(sides=frozenset({Side.BUY})), OrderRecord("A", None), 1, False),
        (Scope(sides=frozenset({Side.BUY})), OrderRecord("A", Side.BUY), 1, True),
        (Scope(symbols=frozenset({"B"})), OrderRecord("A", None), 1, False),
        (Scope(order_ids=frozenset({2})), OrderRecord("A", None), 1, False),
        (Scope(order_ids=frozenset({1})), OrderRecord("A", Side.SELL), 1, True),
    ],
)
def test_covers_record(scope: Scope, record: OrderRecord, order_id: int, expected: bool) -> None:
    assert scope.covers(record.symbol, record.side, order_id) is expected


def test_listing_twice_in_one_pass_queues_once() -> None:
    ledger = Ledger()
    assert ledger.observe(1, "A", Side.BUY) is True
    assert ledger.observe(1, "A", Side.BUY) is False
    assert ledger.seen_count() == 1


def test_never_two_cancels_in_flight() -> None:
    ledger = Ledger()
    ledger.observe(1, "A", Side.BUY)
    ledger.begin(1)
    with pytest.raises(DoubleCancel):
        ledger.begin(1)
    ledger.new_pass()
    # seen again in the next pass while still in flight: not queued
    assert ledger.observe(1, "A", Side.BUY) is False
    ledger.conclude(1, SENT, 1)
    ledger.begin(1)  # after the answer a new cancel is allowed


def test_order_seen_again_after_sent_is_recancelled_and_counts_once() -> None:
    ledger = Ledger()
    ledger.listing_started("A")
    ledger.observe(1, "A", Side.BUY)
    ledger.listing_finished("A")
    ledger.begin(1)
    ledger.conclude(1, SENT, 1)
    ledger.new_pass()
    ledger.listing_started("A")
    assert ledger.observe(1, "A", Side.BUY) is True  # still open: cancel again
    ledger.listing_finished("A")
    ledger.begin(1)
    ledger.conclude(1, CLOSED, 1)
    assert ledger.record(1).outcome is SENT
    assert ledger.record(1).attempts == 2
    assert ledger.counts() == Counts(sent=1)
    assert ledger.residual() == 0  # already_closed is proof it is gone


def test_rejected_order_is_not_cancelled_again_and_stays_residual() -> None:
    ledger = Ledger()
    ledger.listing_started("A")
    ledger.observe(1, "A", Side.BUY)
    ledger.listing_finished("A")
    ledger.begin(1)
    ledger.conclude(1, REJECTED, 1, RejectReason.NOT_FOUND)
    ledger.new_pass()
    ledger.listing_started("A")
    assert ledger.observe(1, "A", Side.BUY) is False
    ledger.listing_finished("A")
    assert ledger.residual() == 1
    assert ledger.reports()[0].reason is RejectReason.NOT_FOUND


def test_residual_counts_only_what_the_last_complete_listing_shows_unanswered() -> None:
    ledger = Ledger()
    ledger.listing_started("A")
    ledger.observe(1, "A", Side.BUY)
    ledger.observe(2, "A", Side.SELL)
    ledger.observe(3, "A", Side.SELL)
    ledger.listing_finished("A")
    assert ledger.residual() == 3
    ledger.begin(1)
    ledger.conclude(1, SENT, 1)  # cancelled after the listing: no longer known open
    ledger.begin(2)
    ledger.conclude(2, CLOSED, 1)
    assert ledger.residual() == 1
    assert ledger.residual(Scope(sides=frozenset({Side.BUY}))) == 0
    ledger.new_pass()
    ledger.listing_started("A")
    ledger.observe(1, "A", Side.BUY)  # the cancel was lost: the order is open again
    assert ledger.residual() == 1  # a listing in progress neither adds nor erases
    ledger.listing_finished("A")
    assert ledger.residual() == 1  # order 1 only (3 is gone)
    assert ledger.residual(Scope(sides=frozenset({Side.BUY}))) == 1


def test_a_partial_listing_counts_nothing() -> None:
    ledger = Ledger()
    ledger.listing_started("A")
    ledger.observe(1, "A", Side.BUY)  # a page, then the listing was cut short
    assert ledger.residual() == 0
    assert ledger.listed_pairs() == frozenset()


def test_finalise_fails_unanswered_orders_but_keeps_earlier_outcomes() -> None:
    ledger = Ledger()
    for i in (1, 2, 3):
        ledger.observe(i, "A", Side.BUY)
    ledger.begin(1)
    ledger.conclude(1, SENT, 1)
    ledger.new_pass()
    ledger.observe(1, "A", Side.BUY)  # queued again, never answered
    ledger.begin(2)  # in flight when the sweep stopped
    assert ledger.pending() == 2
    assert ledger.finalise() == 2
    assert [r.outcome for _, r in ledger.items()] == [SENT, FAILED, FAILED]
    assert ledger.counts() == Counts(sent=1, failed=2)
    assert ledger.pending() == 0


def test_bulk_cancel_adoption_and_hand_back() -> None:
    ledger = Ledger()
    assert ledger.adopt(5, "A") is True
    assert ledger.adopt(5, "A") is False
    ledger.hand_back(5, attempts=1)
    ledger.begin(5)
    ledger.conclude(5, CLOSED, 1)
    assert ledger.record(5).attempts == 2
    assert ledger.record(5).side is None
    ledger.new_pass()
    ledger.observe(5, "A", Side.SELL)  # a listing learns the side
    assert ledger.record(5).side is Side.SELL


def test_counts_filtered_by_scope() -> None:
    ledger = Ledger()
    ledger.observe(1, "A", Side.BUY)
    ledger.observe(2, "B", Side.SELL)
    ledger.conclude(1, SENT, 1)
    ledger.conclude(2, FAILED, 6)
    assert ledger.counts() == Counts(sent=1, failed=1)
    assert ledger.counts(Scope(symbols=frozenset({"B"}))) == Counts(failed=1)
    assert [r.order_id for r in ledger.reports(Scope(sides=frozenset({Side.BUY})))] == [1]


# Any sequence of listings and answers: every resolved order ends with exactly one
# outcome after finalise, and the counts add up to the number resolved.
_EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["observe", "begin", "answer", "new_pass", "abandon"]),
        st.integers(1, 6),
        st.sampled_from([SENT, CLOSED, REJECTED, FAILED]),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(_EVENTS)
def test_counts_always_add_up(events: list[tuple[str, int, Outcome]]) -> None:
    ledger = Ledger()
    in_flight: set[int] = set()
    for kind, oid, outcome in events:
        if kind == "observe":
            ledger.observe(oid, "A", Side.BUY)
        elif kind == "begin" and oid in ledger and oid not in in_flight:
            ledger.begin(oid)
            in_flight.add(oid)
        elif kind == "answer" and oid in in_flight:
            ledger.conclude(oid, outcome, 1)
            in_flight.discard(oid)
        elif kind == "abandon" and oid in in_flight:
            ledger.abandon(oid)
            in_flight.discard(oid)
        elif kind == "new_pass":
            ledger.new_pass()
        assert ledger.in_flight() == len(in_flight)
    ledger.finalise()
    assert ledger.counts().resolved == len(ledger)
    assert len(ledger.reports()) == len(ledger)
    assert all(r.outcome is not None for _, r in ledger.items())


# What a snapshot of the records depends on: every order's report under each scope
# (side-scoped too: an adopted order learns its side from a listing).
_SCOPES = (None, Scope(sides=frozenset({Side.SELL})), Scope(symbols=frozenset({"B"})))


def _snapshot(ledger: Ledger) -> list[object]:
    return [ledger.reports(scope) for scope in _SCOPES]


def test_each_change_a_report_shows_moves_the_version() -> None:
    ledger = Ledger()
    ledger.adopt(1, "A")  # named by a cancel-all: no side yet
    ledger.begin(1)
    ledger.conclude(1, FAILED, 1)
    ledger.new_pass()

    def handed_back() -> None:  # attempts
        ledger.begin(1)
        ledger.hand_back(1, attempts=1)

    def abandoned() -> None:  # attempts
        ledger.begin(1)
        ledger.abandon(1, sent=True)

    def concluded() -> None:  # outcome
        ledger.begin(1)
        ledger.conclude(1, SENT)

    changes: list[Callable[[], object]] = [
        lambda: ledger.observe(1, "A", Side.SELL),  # a listing tells the side
        handed_back,
        abandoned,
        concluded,
    ]
    for change in changes:
        version, before = ledger.version, _snapshot(ledger)
        change()
        assert _snapshot(ledger) != before
        assert ledger.version != version


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                ["observe", "adopt", "begin", "answer", "hand_back", "abandon", "list", "pass"]
            ),
            st.integers(1, 3),  # few orders: each goes through many changes
            st.sampled_from([SENT, CLOSED, REJECTED, FAILED]),
            st.booleans(),
        ),
        max_size=40,
    )
)
def test_the_records_change_only_with_the_version(
    events: list[tuple[str, int, Outcome, bool]],
) -> None:
    # The sweep keeps the reports it read while the version stays (Sweep._reports).
    ledger = Ledger()
    in_flight: set[int] = set()
    for kind, oid, outcome, flag in events:
        version, before = ledger.version, _snapshot(ledger)
        symbol = "B" if oid % 2 else "A"
        if kind == "observe":
            ledger.observe(oid, symbol, Side.SELL if flag else Side.BUY)
        elif kind == "adopt":
            ledger.adopt(oid, symbol)
        elif kind == "begin" and oid in ledger and oid not in in_flight:
            ledger.begin(oid)
            in_flight.add(oid)
        elif kind == "answer" and oid in in_flight:
            ledger.conclude(oid, outcome, 1, RejectReason.NOT_FOUND if flag else None)
            in_flight.discard(oid)
        elif kind == "hand_back" and oid in in_flight:
            ledger.hand_back(oid, attempts=1)
            in_flight.discard(oid)
        elif kind == "abandon" and oid in in_flight:
            ledger.abandon(oid, sent=flag)
            in_flight.discard(oid)
        elif kind == "list":
            ledger.listing_started(symbol)
            ledger.listing_finished(symbol, final=flag and not in_flight)
        elif kind == "pass":
            ledger.new_pass()
        if ledger.version == version:
            assert _snapshot(ledger) == before
    version, before = ledger.version, _snapshot(ledger)
    ledger.finalise()
    assert ledger.version != version or _snapshot(ledger) == before


def test_recancels_count_orders_found_again_after_sent() -> None:
    ledger = Ledger()
    ledger.observe(1, "A", Side.BUY)
    ledger.observe(2, "A", Side.BUY)
    ledger.conclude(1, SENT, 1)
    ledger.conclude(2, FAILED, 1)
    assert ledger.recancels() == 0
    ledger.new_pass()
    ledger.observe(1, "A", Side.BUY)
    ledger.observe(2, "A", Side.BUY)
    assert ledger.recancels() == 1
    ledger.new_pass()
    assert ledger.recancels() == 0
