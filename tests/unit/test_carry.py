"""Outcomes carried over a crash: the merge rule, the bounded store, the decoding, the reader."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import pytest

from killswitch.config import KafkaSettings
from killswitch.contracts import (
    ResultRecord,
    decode_result_summary,
    encode_result,
    failed_result,
)
from killswitch.core.carry import (
    RESULT_MAX_ORDERS,
    CarryStore,
    carry_over,
    merge_outcomes,
    merge_report,
)
from killswitch.core.dedup import DedupWindow
from killswitch.core.model import (
    CarriedOutcomes,
    Counts,
    InFlight,
    KillRequest,
    OrderReport,
    Scope,
    SweepResult,
    SweepStatus,
)
from killswitch.core.outcomes import Outcome, RejectReason
from killswitch.kafka.readers import ResultsIndex

SENT, CLOSED, REJECTED, FAILED = (
    Outcome.SENT,
    Outcome.ALREADY_CLOSED,
    Outcome.REJECTED,
    Outcome.FAILED,
)
T0 = datetime(2026, 11, 24, 1, 2, 3, tzinfo=UTC)


def report(order_id: int, outcome: Outcome, attempts: int = 1) -> OrderReport:
    return OrderReport(order_id, "BTC_USDT", outcome, attempts)


def tally(orders: list[OrderReport]) -> Counts:
    counts = Counts()
    for o in orders:
        counts.add(o.outcome)
    return counts


def carried(*orders: OrderReport, counts: Counts | None = None, **kw: object) -> CarriedOutcomes:
    return CarriedOutcomes(counts or tally(list(orders)), tuple(orders), **kw)  # type: ignore[arg-type]


def result(*orders: OrderReport, counts: Counts | None = None, final: bool = True) -> SweepResult:
    return SweepResult(
        alert_id="a-1",
        account="mm-1",
        status=SweepStatus.FLAT if final else SweepStatus.RUNNING,
        final=final,
        dry_run=False,
        counts=counts or tally(list(orders)),
        residual_open=0,
        sweeps=1,
        received_at=T0 + timedelta(seconds=30),
        first_cancel_at=T0 + timedelta(seconds=31),
        finished_at=T0 + timedelta(seconds=32),
        orders=list(orders),
    )


# earlier outcome, later outcome, merged outcome (the ledger's rule across processes)
MERGE_TABLE = [
    (SENT, SENT, SENT),
    (SENT, CLOSED, SENT),  # closed because of the first cancel
    (SENT, FAILED, FAILED),
    (SENT, REJECTED, REJECTED),
    (FAILED, SENT, SENT),
    (FAILED, CLOSED, CLOSED),
    (REJECTED, SENT, SENT),
    (CLOSED, SENT, SENT),
    (CLOSED, CLOSED, CLOSED),
]


@pytest.mark.parametrize(("earlier", "later", "merged"), MERGE_TABLE)
def test_merge_report_table(earlier: Outcome, later: Outcome, merged: Outcome) -> None:
    out = merge_report(report(7, earlier, 2), report(7, later, 3))
    assert (out.order_id, out.outcome, out.attempts) == (7, merged, 5)


def test_merge_report_keeps_the_reason_of_the_winning_outcome() -> None:
    rejected = OrderReport(7, "BTC_USDT", REJECTED, 1, RejectReason.NOT_FOUND)
    assert merge_report(rejected, report(7, SENT)).reason is None
    assert merge_report(report(7, SENT), rejected).reason is RejectReason.NOT_FOUND
    kept = merge_report(OrderReport(7, "BTC_USDT", SENT, 1, None), report(7, CLOSED))
    assert (kept.outcome, kept.reason) == (SENT, None)


@pytest.mark.parametrize(
    ("earlier", "later", "expected"),
    [
        # disjoint: earlier ones first, every order once
        ([report(1, SENT), report(2, SENT)], [report(3, SENT)], {1: SENT, 2: SENT, 3: SENT}),
        # overlap: counted once, by the rule
        ([report(1, SENT), report(2, FAILED)], [report(2, SENT)], {1: SENT, 2: SENT}),
        ([report(1, SENT)], [report(1, CLOSED), report(4, CLOSED)], {1: SENT, 4: CLOSED}),
        # the later process found nothing left to do
        ([report(1, SENT), report(2, SENT)], [], {1: SENT, 2: SENT}),
        # nothing carried
        ([], [report(5, REJECTED)], {5: REJECTED}),
    ],
)
def test_merge_outcomes_with_complete_lists_counts_the_merged_view(
    earlier: list[OrderReport], later: list[OrderReport], expected: dict[int, Outcome]
) -> None:
    counts, orders = merge_outcomes(carried(*earlier), tally(later), later)
    assert {o.order_id: o.outcome for o in orders} == expected
    assert [o.order_id for o in orders] == list(expected)  # earlier first
    assert counts == tally(orders)
    assert counts.resolved == len(expected)


def test_merge_outcomes_counts_only_adds_up_both_sides() -> None:
    # The earlier process published counts without per-order detail (too many orders).
    earlier = CarriedOutcomes(Counts(sent=2_500, failed=3))
    later = [report(1, SENT), report(2, CLOSED)]
    counts, orders = merge_outcomes(earlier, tally(later), later)
    assert counts == Counts(sent=2_501, already_closed=1, failed=3)
    assert orders == later


def test_merge_outcomes_dedupes_what_both_lists_show_even_when_one_is_partial() -> None:
    earlier = CarriedOutcomes(Counts(sent=10), (report(1, SENT),))  # 9 not listed
    later = [report(1, CLOSED), report(2, SENT)]
    counts, _ = merge_outcomes(earlier, tally(later), later)
    assert counts == Counts(sent=11)


def test_carry_over_final_result() -> None:
    first = carried(
        report(1, SENT),
        report(2, SENT),
        report(3, FAILED),
        sweeps=2,
        received_at=T0,
        first_cancel_at=T0 + timedelta(seconds=1),
    )
    out = carry_over(result(report(3, SENT), report(4, SENT)), first)
    assert out.counts == Counts(sent=4)
    assert [o.order_id for o in out.orders] == [1, 2, 3, 4]
    assert out.sweeps == 3
    assert out.received_at == T0  # the kill began in the earlier process
    assert out.first_cancel_at == T0 + timedelta(seconds=1)
    assert out.status is SweepStatus.FLAT
    assert out.final
    assert out.reason == "includes 3 outcome(s) an earlier process published before it stopped"


def test_an_order_id_the_earlier_process_cancelled_is_not_reported_not_found() -> None:
    # The replay never sees order 1 open (the earlier process cancelled it): it was found.
    replay = dataclasses.replace(result(report(2, SENT)), not_found=[1, 9])
    out = carry_over(replay, carried(report(1, SENT)))
    assert out.not_found == [9]


@pytest.mark.parametrize(
    ("status", "final", "expected"),
    [
        # flat: the replay's complete listing shows nothing open, so 5 is gone
        (SweepStatus.FLAT, True, {1: SENT, 5: SENT, 6: REJECTED, 7: SENT}),
        # not proven gone: the earlier failure stands
        (SweepStatus.RESIDUAL, True, {1: SENT, 5: FAILED, 6: REJECTED, 7: SENT}),
        (SweepStatus.FAILED, True, {1: SENT, 5: FAILED, 6: REJECTED, 7: SENT}),
        (SweepStatus.RUNNING, False, {1: SENT, 5: FAILED, 6: REJECTED, 7: SENT}),
    ],
)
def test_an_earlier_failure_is_sent_only_when_the_replay_proves_flat(
    status: SweepStatus, final: bool, expected: dict[int, Outcome]
) -> None:
    base = result(report(7, SENT), final=final)
    base.status = status
    first = carried(report(1, SENT), report(5, FAILED), report(6, REJECTED))
    out = carry_over(base, first)
    assert {o.order_id: o.outcome for o in out.orders} == expected
    assert out.counts == tally(out.orders)


def test_a_failure_the_replay_concluded_keeps_the_replays_outcome() -> None:
    out = carry_over(result(report(5, FAILED)), carried(report(5, FAILED)))
    assert out.counts == Counts(failed=1)  # the replay's own answer, not a guess


def test_flat_turns_failures_counted_without_detail_into_sent_too() -> None:
    first = CarriedOutcomes(Counts(sent=4_000, failed=7), (report(1, FAILED),))
    out = carry_over(result(report(9, SENT)), first)
    assert out.counts == Counts(sent=4_008)
    assert {o.order_id: o.outcome for o in out.orders} == {1: SENT, 9: SENT}


def test_carry_over_says_when_an_order_may_count_twice() -> None:
    out = carry_over(result(report(9, SENT)), CarriedOutcomes(Counts(sent=5_000)))
    assert out.counts == Counts(sent=5_001)
    assert out.reason is not None
    assert "may count twice" in out.reason


def test_carry_over_of_a_progress_result_without_orders_is_not_exact() -> None:
    # A progress result of a large sweep lists no orders: the overlap cannot be seen.
    progress = result(counts=Counts(sent=3_000), final=False)
    out = carry_over(progress, carried(report(1, SENT)))
    assert out.counts == Counts(sent=3_001)
    assert out.reason is not None
    assert "may count twice" in out.reason


def test_carry_over_keeps_the_sweeps_own_reason_first() -> None:
    base = result(report(1, SENT))
    base.reason = "deadline passed"
    out = carry_over(base, carried(report(2, SENT)))
    assert out.reason is not None
    assert out.reason.startswith("deadline passed; includes 1 ")


def test_carry_over_chains_over_two_crashes() -> None:
    # Process 2's progress (already carrying process 1's) is what process 3 carries.
    p1 = carried(report(1, SENT), report(2, SENT))
    p2_progress = carry_over(result(report(3, SENT), final=False), p1)
    p2 = CarriedOutcomes(p2_progress.counts, tuple(p2_progress.orders), p2_progress.sweeps)
    final = carry_over(result(report(4, SENT)), p2)
    assert final.counts == Counts(sent=4)
    assert [o.order_id for o in final.orders] == [1, 2, 3, 4]


def in_flight(*ids: int) -> tuple[InFlight, ...]:
    return tuple(InFlight(i, "BTC_USDT") for i in ids)


@pytest.mark.parametrize(
    ("status", "final", "outcome"),
    [
        # the replay's complete listing found it gone: the earlier cancel did it
        (SweepStatus.FLAT, True, SENT),
        # a cancel went out, what it did is unknown: counted, as failed
        (SweepStatus.RESIDUAL, True, FAILED),
        (SweepStatus.FAILED, True, FAILED),
    ],
)
def test_a_cancel_in_flight_at_the_crash_counts_in_the_final_result(
    status: SweepStatus, final: bool, outcome: Outcome
) -> None:
    # The exchange applied process 1's last cancel after it died: process 2 never saw
    # order 8 open, and neither published an outcome for it.
    base = result(report(7, SENT), final=final)
    base.status = status
    out = carry_over(base, carried(report(1, SENT), in_flight=in_flight(8)))
    assert {o.order_id: o.outcome for o in out.orders} == {1: SENT, 7: SENT, 8: outcome}
    assert out.counts == tally(out.orders)
    assert out.counts.resolved == 3
    assert out.in_flight == []
    assert out.reason is not None
    assert "and 1 cancel(s) it had in flight" in out.reason


def test_a_cancel_in_flight_the_replay_concluded_counts_once() -> None:
    out = carry_over(result(report(8, CLOSED)), carried(report(1, SENT), in_flight=in_flight(8)))
    assert {o.order_id: o.outcome for o in out.orders} == {1: SENT, 8: CLOSED}
    assert out.counts == Counts(sent=1, already_closed=1)


def test_a_replays_progress_keeps_the_earlier_cancels_in_flight() -> None:
    progress = result(report(7, SENT), final=False)
    progress.in_flight = [InFlight(9, "BTC_USDT")]
    out = carry_over(progress, carried(report(1, SENT), in_flight=in_flight(7, 8, 9)))
    assert out.counts == Counts(sent=2)  # in flight is no outcome yet
    assert [o.order_id for o in out.in_flight] == [9, 8]  # 7 concluded, 9 listed once


def test_a_cancel_in_flight_survives_two_crashes() -> None:
    p1 = carried(report(1, SENT), in_flight=in_flight(2))
    p2_progress = carry_over(result(report(3, SENT), final=False), p1)
    summary = decode_result_summary(encode_result(ResultRecord.of(p2_progress)))
    assert summary is not None
    assert summary.carried is not None
    final = carry_over(result(report(4, SENT)), summary.carried)
    assert final.counts == Counts(sent=4)
    assert sorted(o.order_id for o in final.orders) == [1, 2, 3, 4]


def test_failed_result_of_a_replay_keeps_the_carried_outcomes() -> None:
    request = KillRequest(
        "a-1", "mm-1", Scope(), T0, 30.0, carried=carried(report(1, SENT), report(2, SENT))
    )
    out = failed_result(request, "internal error", T0)
    assert (out.status, out.counts.resolved, len(out.orders)) == (SweepStatus.FAILED, 2, 2)


# --------------------------------------------------------------------- the store


def test_store_keeps_the_latest_progress_until_the_final() -> None:
    store = CarryStore()
    store.progress("a", "mm-1", carried(report(1, SENT)))
    store.progress("a", "mm-1", carried(report(1, SENT), report(2, SENT)))
    got = store.get("a", "mm-1")
    assert got is not None
    assert got.counts.resolved == 2
    assert (len(store), store.orders) == (1, 2)
    assert store.get("a", "mm-2") is None
    store.final("a", "mm-1")
    assert store.get("a", "mm-1") is None
    assert (len(store), store.orders) == (0, 0)
    store.final("never", "seen")  # harmless


def test_store_forgets_the_oldest_pairs_beyond_its_capacity() -> None:
    store = CarryStore(max_entries=2)
    for n in range(3):
        store.progress(f"a{n}", "mm-1", carried(report(n, SENT)))
    assert store.get("a0", "mm-1") is None
    assert store.get("a1", "mm-1") is not None
    assert store.get("a2", "mm-1") is not None
    assert (len(store), store.orders) == (2, 2)


def test_store_sheds_per_order_detail_of_the_oldest_pairs_first() -> None:
    store = CarryStore(max_orders=5)
    store.progress("old", "mm-1", carried(*(report(n, SENT) for n in range(3))))
    store.progress("new", "mm-1", carried(*(report(n, SENT) for n in range(10, 14))))
    old, new = store.get("old", "mm-1"), store.get("new", "mm-1")
    assert old is not None
    assert new is not None
    assert (old.orders, old.counts.resolved) == ((), 3)  # counts kept, detail dropped
    assert len(new.orders) == 4
    assert new.complete
    assert store.orders == 4


def test_store_counts_cancels_in_flight_in_its_budget() -> None:
    store = CarryStore(max_orders=3)
    store.progress("old", "mm-1", carried(report(1, SENT), in_flight=in_flight(2)))
    assert store.orders == 2
    store.progress("new", "mm-1", carried(report(5, SENT), in_flight=in_flight(6)))
    old = store.get("old", "mm-1")
    assert old is not None
    assert (old.orders, old.in_flight, old.counts.resolved) == ((), (), 1)
    assert store.orders == 2
    store.final("new", "mm-1")
    assert store.orders == 0


def test_store_refuses_a_useless_capacity() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        CarryStore(max_entries=0)


# ------------------------------------------------------------------ the record


def test_a_progress_record_lists_orders_and_reads_back() -> None:
    orders = [report(1, SENT), OrderReport(2, "ETH_USDT", REJECTED, 1, RejectReason.NOT_FOUND)]
    progress = result(*orders, final=False)
    summary = decode_result_summary(encode_result(ResultRecord.of(progress)))
    assert summary is not None
    assert not summary.final
    assert summary.carried is not None
    got = summary.carried
    assert got.orders == tuple(orders)
    assert got.complete
    assert got.counts == Counts(sent=1, rejected=1)
    assert got.sweeps == 1
    assert got.received_at == progress.received_at
    assert got.first_cancel_at == progress.first_cancel_at


def test_a_progress_record_lists_cancels_in_flight_and_reads_back() -> None:
    progress = result(report(1, SENT), final=False)
    progress.in_flight = [InFlight(2, "BTC_USDT"), InFlight(3, "ETH_USDT")]
    data = json.loads(encode_result(ResultRecord.of(progress)))
    assert data["in_flight"] == [
        {"order_id": 2, "symbol": "BTC_USDT"},
        {"order_id": 3, "symbol": "ETH_USDT"},
    ]
    summary = decode_result_summary(encode_result(ResultRecord.of(progress)))
    assert summary is not None
    assert summary.carried is not None
    assert summary.carried.in_flight == (InFlight(2, "BTC_USDT"), InFlight(3, "ETH_USDT"))
    assert summary.carried.orders == (report(1, SENT),)


@pytest.mark.parametrize(
    "raw",
    [
        "2",
        [2],
        [{"order_id": -2, "symbol": "BTC_USDT"}],
        [{"order_id": 2}],
        [{"order_id": 2, "symbol": "BTC_USDT"}, {"order_id": 2, "symbol": "BTC_USDT"}],
    ],
)
def test_unreadable_cancels_in_flight_are_dropped_the_outcomes_kept(raw: object) -> None:
    data = json.loads(encode_result(ResultRecord.of(result(report(1, SENT), final=False))))
    data["in_flight"] = raw
    summary = decode_result_summary(json.dumps(data).encode())
    assert summary is not None
    assert summary.carried is not None
    assert summary.carried.in_flight == ()
    assert summary.carried.orders == (report(1, SENT),)


def test_a_cancel_in_flight_with_an_outcome_too_is_not_in_flight() -> None:
    data = json.loads(encode_result(ResultRecord.of(result(report(1, SENT), final=False))))
    data["in_flight"] = [{"order_id": 1, "symbol": "BTC_USDT"}, {"order_id": 2, "symbol": "X"}]
    summary = decode_result_summary(json.dumps(data).encode())
    assert summary is not None
    assert summary.carried is not None
    assert summary.carried.in_flight == (InFlight(2, "X"),)


def test_a_final_record_carries_nothing() -> None:
    summary = decode_result_summary(encode_result(ResultRecord.of(result(report(1, SENT)))))
    assert summary is not None
    assert summary.final
    assert summary.carried is None


def _progress_json(**changes: object) -> bytes:
    data = json.loads(
        encode_result(ResultRecord.of(result(report(1, SENT), report(2, FAILED), final=False)))
    )
    data.update(changes)
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    "counts",
    [None, "3", {"sent": -1}, {"sent": True}, {"sent": 1.5}, {"failed": "1"}],
)
def test_unreadable_counts_carry_nothing(counts: object) -> None:
    summary = decode_result_summary(_progress_json(counts=counts))
    assert summary is not None
    assert summary.carried is None


@pytest.mark.parametrize(
    "orders",
    [
        None,
        "x",
        [{"order_id": 1, "symbol": "BTC_USDT", "outcome": "sent", "attempts": 1}, 5],
        [{"order_id": 1, "symbol": "BTC_USDT", "outcome": "gone", "attempts": 1}],
        [{"order_id": 1, "symbol": "BTC_USDT", "outcome": ["sent"], "attempts": 1}],
        [{"order_id": "1", "symbol": "BTC_USDT", "outcome": "sent", "attempts": 1}],
        [{"order_id": 1, "symbol": 7, "outcome": "sent", "attempts": 1}],
        [{"order_id": 1, "symbol": "BTC_USDT", "outcome": "sent", "attempts": -1}],
        [{"order_id": 1, "symbol": "BTC_USDT", "outcome": "sent", "reason": {}}],
        # duplicates, more orders than counted, a complete list that disagrees
        [{"order_id": 1, "symbol": "B", "outcome": "sent"}] * 2,
        [{"order_id": n, "symbol": "B", "outcome": "sent"} for n in range(3)],
        [{"order_id": n, "symbol": "B", "outcome": "sent"} for n in range(2)],
    ],
)
def test_unreadable_orders_keep_the_counts_only(orders: object) -> None:
    summary = decode_result_summary(_progress_json(orders=orders))
    assert summary is not None
    assert summary.carried is not None
    assert summary.carried.orders == ()
    assert summary.carried.counts == Counts(sent=1, failed=1)


def test_a_partial_order_list_is_kept_for_dedup() -> None:
    partial = [{"order_id": 1, "symbol": "BTC_USDT", "outcome": "sent", "attempts": 1}]
    summary = decode_result_summary(_progress_json(orders=partial))
    assert summary is not None
    assert summary.carried is not None
    assert [o.order_id for o in summary.carried.orders] == [1]
    assert not summary.carried.complete


def test_the_progress_cap_is_the_records_cap() -> None:
    # A progress result lists orders only while they all fit one record.
    many = [report(n, SENT) for n in range(RESULT_MAX_ORDERS + 1)]
    data = json.loads(encode_result(ResultRecord.of(result(*many, final=False))))
    assert len(data["orders"]) == RESULT_MAX_ORDERS
    summary = decode_result_summary(encode_result(ResultRecord.of(result(*many, final=False))))
    assert summary is not None
    assert summary.carried is not None
    assert not summary.carried.complete


# ------------------------------------------------------- the results reader's part


def test_the_results_reader_keeps_progress_until_the_final() -> None:
    dedup = DedupWindow(10)
    index = ResultsIndex(KafkaSettings(), "results", dedup, tail_records=10)
    first = result(report(1, SENT), final=False)
    later = result(report(1, SENT), report(2, SENT), final=False)
    other = dataclasses.replace(first, account="mm-2")
    for value in (
        encode_result(ResultRecord.of(first)),
        encode_result(ResultRecord.of(later)),
        encode_result(ResultRecord.of(other)),
        b"junk",
    ):
        index._learn_body(value)
    got = index.carried("a-1", "mm-1")
    assert got is not None
    assert [o.order_id for o in got.orders] == [1, 2]  # the latest progress result
    assert dedup.status("a-1", "mm-1") is None  # progress is not a final result
    index._learn_body(encode_result(ResultRecord.of(result(report(1, SENT), report(2, SENT)))))
    assert index.carried("a-1", "mm-1") is None  # finished: nothing to carry
    assert index.carried("a-1", "mm-2") is not None
    assert dedup.status("a-1", "mm-1") == "flat"
