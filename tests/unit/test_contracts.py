"""One model per message (pure): every message written through its model reads back equal,
and the examples of docs/CONTRACTS.md read as the models say."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from killswitch.board import AccountProgress
from killswitch.contracts import (
    Alert,
    DeadLetter,
    Heartbeat,
    Rejection,
    RejectKind,
    ResultOrder,
    ResultRecord,
    carried_from_json,
    decode_result_summary,
    decode_state_record,
    encode_dlq,
    encode_heartbeat,
    encode_result,
    encode_results,
    encode_state,
    parse_alert,
    parse_heartbeat,
    position_from_json,
    position_to_json,
    read_dead_letter,
    read_result,
    result_to_json,
    state_to_json,
)
from killswitch.core.carry import RESULT_MAX_ORDERS
from killswitch.core.model import (
    Counts,
    HaltState,
    InFlight,
    OrderReport,
    Position,
    Scope,
    SweepResult,
    SweepStatus,
)
from killswitch.core.orders import Side
from killswitch.core.outcomes import Outcome, RejectReason
from killswitch.core.times import format_time, parse_time
from killswitch.render import status_records

# Times in messages have milliseconds: the round trips use times that have no more.
NOW = datetime(2026, 11, 24, 1, 2, 3, 456000, tzinfo=UTC)
CONTRACTS = Path(__file__).resolve().parents[2] / "docs" / "CONTRACTS.md"


def doc_examples() -> dict[str, dict[str, Any]]:
    """The JSON examples of docs/CONTRACTS.md, by their ``schema``."""
    blocks = re.findall(r"```json\n(.*?)```", CONTRACTS.read_text(), flags=re.DOTALL)
    examples = [json.loads(block) for block in blocks]
    return {example["schema"]: example for example in examples}


def test_every_message_has_an_example_in_the_docs() -> None:
    assert set(doc_examples()) == {
        "killswitch.alert/v1",
        "killswitch.result/v1",
        "killswitch.state/v1",
        "killswitch.dlq/v1",
        "killswitch.heartbeat/v1",
    }


# ------------------------------------------------------------------------- alert


def alert(**fields: Any) -> Alert:
    body: dict[str, Any] = {
        "schema": "killswitch.alert/v1",
        "alert_id": "op-1",
        "action": "kill",
        "source": "operator-cli",
        "reason": "VaR",
        "scope": {"accounts": ["mm-1", "mm-2"]},
        "created_at": format_time(NOW),
    }
    return Alert.model_validate(body | fields)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"scope": {"accounts": "*", "symbols": ["BTC_USDT"], "sides": ["SELL"]}},
        {"scope": {"accounts": ["mm-1"], "order_ids": [5, 7]}, "latch": True, "dry_run": True},
        {
            "action": "release",
            "operator": {"name": "alice"},
            "deadline_s": 2.5,
            "signature": "c2ln",
            "expires_at": format_time(NOW + timedelta(minutes=1)),
        },
    ],
)
def test_an_alert_reads_back_equal(fields: dict[str, Any]) -> None:
    written = alert(**fields)
    assert Alert.model_validate(written.to_json()) == written


def test_an_alert_leaves_out_what_is_not_set() -> None:
    out = alert().to_json()
    assert out["scope"] == {"accounts": ["mm-1", "mm-2"]}
    assert out["expires_at"] is None
    assert not {"operator", "deadline_s", "signature"} & set(out)


def test_the_docs_alert_example_reads() -> None:
    example = doc_examples()["killswitch.alert/v1"]
    parsed = parse_alert(
        json.dumps(example).encode(),
        channel="alerts",
        accounts=["mm-1"],
        max_message_bytes=10_000,
        max_order_ids=10,
        now=NOW,
    )
    assert isinstance(parsed, Alert)
    assert parsed.core_scope() == Scope(frozenset({"BTC_USDT"}), frozenset({Side.BUY}), None)
    # Written back, an empty order_ids is left out (it means all, as its absence does).
    assert Alert.model_validate(parsed.to_json()) == parsed


# ------------------------------------------------------------------------ result


def sweep(**fields: Any) -> SweepResult:
    base: dict[str, Any] = {
        "alert_id": "risk-7f3a",
        "account": "mm-1",
        "status": SweepStatus.RUNNING,
        "final": False,
        "dry_run": False,
        "counts": Counts(sent=2, rejected=1),
        "residual_open": 4,
        "sweeps": 1,
        "received_at": NOW,
        "first_cancel_at": NOW + timedelta(milliseconds=40),
        "finished_at": None,
        "orders": [
            OrderReport(11, "BTC_USDT", Outcome.SENT, 1),
            OrderReport(12, "BTC_USDT", Outcome.SENT, 2),
            OrderReport(13, "ETH_USDT", Outcome.REJECTED, 1, RejectReason.NOT_FOUND),
        ],
        "operator": "alice",
        "source": "operator-cli",
        "pending": 1,
        "trigger_reason": "VaR",
        "pairs_listed": 1,
        "pairs_in_scope": 2,
        "in_flight": [InFlight(14, "ETH_USDT")],
    }
    return SweepResult(**(base | fields))


def final(status: SweepStatus, **fields: Any) -> SweepResult:
    return sweep(
        status=status,
        final=True,
        finished_at=NOW + timedelta(seconds=2),
        pending=0,
        in_flight=[],
        pairs_listed=None,
        pairs_in_scope=None,
        **fields,
    )


def many_orders(n: int) -> list[OrderReport]:
    """``n`` orders, every tenth rejected and every hundredth failed."""
    return [
        OrderReport(
            1000 + i,
            "BTC_USDT",
            Outcome.FAILED if i % 100 == 0 else Outcome.REJECTED if i % 10 == 0 else Outcome.SENT,
            1 + i % 3,
            RejectReason.NOT_FOUND if i % 100 and i % 10 == 0 else None,
        )
        for i in range(n)
    ]


# Results of every status, progress and final; order lists empty, short and cut at
# RESULT_MAX_ORDERS; the additive fields absent and present.
RESULTS = {
    "progress": sweep(),
    "progress, pairs not set out yet": sweep(pairs_listed=None, pairs_in_scope=None, orders=[]),
    "progress, no pairs listed yet": sweep(pairs_listed=None, pairs_in_scope=3),
    "flat": final(SweepStatus.FLAT, not_found=[99], unlisted_pairs=[], trigger_reason='é "q"\n'),
    "residual": final(
        SweepStatus.RESIDUAL,
        reason="deadline passed",
        unlisted_pairs=["ETH_USDT"],
        residual_open=7,
        counts=Counts(sent=2_000, rejected=4, failed=1),
        orders=many_orders(2_005),
    ),
    "failed": final(SweepStatus.FAILED, reason="internal error: KeyError", orders=[]),
    "released, was halted": final(SweepStatus.RELEASED, orders=[], was_halted=True),
    "released, was not halted": final(SweepStatus.RELEASED, orders=[], was_halted=False),
    "dry run": final(SweepStatus.DRY_RUN, dry_run=True, operator=None, reason=""),
    "duplicate": final(SweepStatus.DUPLICATE, orders=[], reason="duplicate alert_id"),
}


@pytest.mark.parametrize("result", RESULTS.values(), ids=RESULTS.keys())
@pytest.mark.parametrize("origin", [None, Position("killswitch.alerts", 2, 1841)])
def test_a_result_reads_back_equal(result: SweepResult, origin: Position | None) -> None:
    record = ResultRecord.of(result, origin)
    raw = encode_result(record)
    data = json.loads(raw)
    # Every field but ``carried``, which is never written (the reader's decoding of a
    # progress record's counts and orders for a replay): None in both.
    assert record.carried is None
    assert read_result(data) == record
    # One writer: the dict and the bytes are the same record, byte for byte.
    assert (
        raw
        == json.dumps(result_to_json(record), separators=(",", ":"), ensure_ascii=False).encode()
    )
    # The dedup rebuild's reading: no lists, and what a replay carries.
    carried = None if result.final else carried_from_json(data)
    head = dataclasses.replace(
        record, orders=(), not_found=(), unlisted_pairs=(), in_flight=(), carried=carried
    )
    assert decode_result_summary(raw) == head


texts = st.text(max_size=12)
order_reports = st.builds(
    OrderReport,
    st.integers(1, 2**63 - 1),
    texts,
    st.sampled_from(Outcome),
    st.integers(0, 50),
    st.none() | st.sampled_from(RejectReason),
)
times = st.none() | st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000))
positions = st.none() | st.builds(Position, texts, st.integers(0, 99), st.integers(0, 2**40))


@st.composite
def sweep_results(draw: st.DrawFn) -> SweepResult:
    return sweep(
        alert_id=draw(texts),
        status=draw(st.sampled_from(SweepStatus)),
        final=draw(st.booleans()),
        received_at=draw(times),
        first_cancel_at=draw(times),
        finished_at=draw(times),
        orders=draw(st.lists(order_reports, max_size=6)),
        reason=draw(st.none() | texts),
        operator=draw(st.none() | texts),
        trigger_reason=draw(texts),
        not_found=draw(st.lists(st.integers(1, 99), max_size=3)),
        unlisted_pairs=draw(st.lists(texts, max_size=2)),
        pairs_listed=draw(st.none() | st.integers(0, 9)),
        pairs_in_scope=draw(st.none() | st.integers(0, 9)),
        was_halted=draw(st.none() | st.booleans()),
    )


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(sweep_results(), positions), min_size=1, max_size=4))
def test_any_result_reads_back_equal_and_writes_alike(
    items: list[tuple[SweepResult, Position | None]],
) -> None:
    records = [ResultRecord.of(result, origin) for result, origin in items]
    for record in records:
        raw = encode_result(record)
        assert read_result(json.loads(raw)) == record
        assert (
            raw
            == json.dumps(
                result_to_json(record), separators=(",", ":"), ensure_ascii=False
            ).encode()
        )
    assert encode_results(records) == [encode_result(r) for r in records]


def test_a_record_takes_each_field_of_its_result_by_name() -> None:
    # The values differ from field to field (but the three booleans, of two values), so
    # a field given another's place shows.
    result = sweep(
        status=SweepStatus.RESIDUAL,
        final=True,
        alert_id="the-alert",
        dry_run=True,
        counts=Counts(sent=3),
        residual_open=5,
        pending=6,
        sweeps=7,
        received_at=NOW + timedelta(seconds=1),
        first_cancel_at=NOW + timedelta(seconds=2),
        finished_at=NOW + timedelta(seconds=3),
        reason="the reason",
        operator="the operator",
        source="the source",
        trigger_reason="the trigger's reason",
        not_found=[8],
        unlisted_pairs=["ETH_USDT"],
        in_flight=[InFlight(9, "BTC_USDT")],
        pairs_listed=10,
        pairs_in_scope=11,
        was_halted=False,
    )
    origin = Position("killswitch.alerts", 12, 13)
    assert ResultRecord.of(result, origin, max_orders=2) == ResultRecord(
        account=result.account,
        status=SweepStatus.RESIDUAL,
        alert_id="the-alert",
        final=True,
        dry_run=True,
        counts=result.counts,
        residual_open=5,
        pending=6,
        sweeps=7,
        received_at=NOW + timedelta(seconds=1),
        first_cancel_at=NOW + timedelta(seconds=2),
        finished_at=NOW + timedelta(seconds=3),
        orders=(
            ResultOrder(13, "ETH_USDT", "rejected", 1, "not_found"),
            ResultOrder(11, "BTC_USDT", "sent", 1),
        ),
        orders_omitted=1,
        reason="the reason",
        operator="the operator",
        source="the source",
        trigger_reason="the trigger's reason",
        not_found=(8,),
        unlisted_pairs=("ETH_USDT",),
        in_flight=(InFlight(9, "BTC_USDT"),),
        pairs_listed=10,
        pairs_in_scope=11,
        was_halted=False,
        origin=origin,
    )


def test_a_long_order_list_is_cut_failed_and_rejected_first() -> None:
    record = ResultRecord.of(RESULTS["residual"])
    assert len(record.orders) == RESULT_MAX_ORDERS
    assert record.orders_omitted == 5
    assert record.orders[0] == ResultOrder(1000, "BTC_USDT", "failed", 1)
    assert record.orders[-1].outcome == "sent"
    assert ResultOrder(1010, "BTC_USDT", "rejected", 2, "not_found") in record.orders
    everything = ResultRecord.of(RESULTS["residual"], max_orders=10**9)
    assert (len(everything.orders), everything.orders_omitted) == (2_005, 0)


def test_a_record_has_only_what_is_written() -> None:
    progress = ResultRecord.of(sweep(unlisted_pairs=["ETH_USDT"], pairs_in_scope=None))
    assert progress.unlisted_pairs == ()  # written in final results only
    assert progress.pairs_listed is None  # written with pairs_in_scope only


# Written by the previous writer (from SweepResult): the bytes of the contract.
GOLDEN_FINAL = (
    b'{"schema":"killswitch.result/v1","alert_id":"risk-7f3a","account":"mm-1",'
    b'"status":"residual","final":true,"dry_run":false,"counts":{"resolved":2,"sent":1,'
    b'"already_closed":0,"rejected":1,"failed":0,"skipped":0},"residual_open":2,'
    b'"pending":0,"sweeps":2,"received_at":"2026-11-24T01:02:03.456Z",'
    b'"first_cancel_at":"2026-11-24T01:02:03.496Z","finished_at":"2026-11-24T01:02:05.456Z",'
    b'"orders":[{"order_id":11,"symbol":"BTC_USDT","outcome":"sent","attempts":1},'
    b'{"order_id":13,"symbol":"ETH_USDT","outcome":"rejected","attempts":2,'
    b'"reason":"not_found"}],"orders_omitted":0,"reason":"deadline passed",'
    b'"operator":"alice","source":"operator-cli","not_found":[99],'
    b'"trigger_reason":"VaR \xc3\xa9 \\"q\\"","in_flight":[],"unlisted_pairs":["ETH_USDT"],'
    b'"origin":{"topic":"killswitch.alerts","partition":2,"offset":1841}}'
)
GOLDEN_PROGRESS = (
    b'{"schema":"killswitch.result/v1","alert_id":"risk-7f3a","account":"mm-1",'
    b'"status":"running","final":false,"dry_run":true,"counts":{"resolved":1,"sent":1,'
    b'"already_closed":0,"rejected":0,"failed":0,"skipped":0},"residual_open":3,'
    b'"pending":2,"sweeps":1,"received_at":"2026-11-24T01:02:03.456Z",'
    b'"first_cancel_at":null,"finished_at":null,"orders":[],"orders_omitted":0,'
    b'"reason":null,"operator":null,"source":"var-monitor","not_found":[],'
    b'"trigger_reason":"","in_flight":[{"order_id":14,"symbol":"ETH_USDT"}],'
    b'"pairs_listed":1,"pairs_in_scope":2}'
)


def test_the_bytes_written_are_the_contract() -> None:
    residual = final(
        SweepStatus.RESIDUAL,
        counts=Counts(sent=1, rejected=1),
        residual_open=2,
        sweeps=2,
        orders=[
            OrderReport(11, "BTC_USDT", Outcome.SENT, 1),
            OrderReport(13, "ETH_USDT", Outcome.REJECTED, 2, RejectReason.NOT_FOUND),
        ],
        reason="deadline passed",
        not_found=[99],
        trigger_reason='VaR é "q"',
        unlisted_pairs=["ETH_USDT"],
    )
    progress = sweep(
        dry_run=True,
        counts=Counts(sent=1),
        residual_open=3,
        first_cancel_at=None,
        orders=[],
        pending=2,
        operator=None,
        source="var-monitor",
        trigger_reason="",
    )
    at = Position("killswitch.alerts", 2, 1841)
    assert encode_result(ResultRecord.of(residual, at)) == GOLDEN_FINAL
    assert encode_result(ResultRecord.of(progress)) == GOLDEN_PROGRESS
    assert encode_results([ResultRecord.of(residual, at)]) == [GOLDEN_FINAL]


def test_results_written_together_are_byte_for_byte_those_written_one_by_one() -> None:
    flat = final(SweepStatus.FLAT)
    at = Position("killswitch.alerts", 2, 1841)
    later = flat.received_at + timedelta(milliseconds=1500)
    items: list[tuple[SweepResult, Position | None]] = [
        (flat, at),
        (dataclasses.replace(flat, alert_id="b", received_at=later), Position("t", 0, 7)),
        (dataclasses.replace(flat, alert_id='c "q" \u00e9', first_cancel_at=None), at),
        (dataclasses.replace(flat, alert_id="d"), None),
        (dataclasses.replace(flat, alert_id="e", status=SweepStatus.RESIDUAL), at),
        (dataclasses.replace(flat, alert_id="f", reason="x\x00killswitch-template\x00y"), at),
        (dataclasses.replace(flat, alert_id="g"), at),
        (sweep(), at),
    ]
    records = [ResultRecord.of(r, o) for r, o in items]
    assert encode_results(records) == [encode_result(r) for r in records]


@settings(max_examples=200, deadline=None)
@given(
    st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=7))]))
    | st.datetimes()  # naive: read as UTC
    | st.sampled_from(
        [
            datetime(1, 1, 1, tzinfo=UTC),
            datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            datetime(2026, 11, 24, 1, 2, 3, 999, tzinfo=UTC),
            datetime(2026, 11, 24, 1, 2, 3, 1000, tzinfo=UTC),
        ]
    )
)
def test_each_alert_s_receipt_time_is_written_as_format_time_writes_it(when: datetime) -> None:
    flat = final(SweepStatus.FLAT)
    records = [
        ResultRecord.of(dataclasses.replace(flat, alert_id=n, received_at=when), None)
        for n in ("a", "b")
    ]
    written = encode_results(records)
    assert written == [encode_result(r) for r in records]
    assert json.loads(written[1])["received_at"] == format_time(when)


def test_coalesced_results_share_their_converted_orders() -> None:
    shared = many_orders(50)
    a = ResultRecord.of(final(SweepStatus.FLAT, orders=shared))
    b = ResultRecord.of(final(SweepStatus.FLAT, alert_id="b", orders=shared))
    assert a.orders is b.orders  # converted once, written once
    shared.append(OrderReport(9, "BTC_USDT", Outcome.SENT, 1))  # a list changed since
    assert len(ResultRecord.of(final(SweepStatus.FLAT, orders=shared)).orders) == 51
    assert (
        ResultRecord.of(final(SweepStatus.FLAT, orders=shared), max_orders=3).orders_omitted == 48
    )


def test_a_progress_result_carries_its_outcomes_for_a_replay() -> None:
    record = decode_result_summary(encode_result(ResultRecord.of(sweep())))
    assert record is not None
    assert record.carried is not None
    assert record.carried.counts == Counts(sent=2, rejected=1)
    assert [o.order_id for o in record.carried.orders] == [11, 12, 13]
    assert record.carried.in_flight == (InFlight(14, "ETH_USDT"),)


def test_the_docs_result_example_reads() -> None:
    example = doc_examples()["killswitch.result/v1"]
    assert decode_result_summary(json.dumps(example).encode()) is not None
    record = read_result(example)
    assert record is not None
    assert (record.alert_id, record.account, record.status, record.final) == (
        "risk-7f3a",
        "mm-1",
        "flat",
        True,
    )
    assert record.counts == Counts(sent=117, already_closed=3)
    assert record.orders == (ResultOrder(5000000123, "BTC_USDT", "sent", 1),)
    assert record.origin == Position("killswitch.alerts", 2, 1841)
    assert record.finished_at == datetime(2026, 11, 24, 1, 2, 4, 901000, tzinfo=UTC)
    assert result_to_json(record) == example
    progress = AccountProgress.from_result(example)
    assert progress is not None
    assert progress.resolved == 120


def test_a_result_reader_keeps_words_it_does_not_know() -> None:
    data = {
        "account": "mm-1",
        "status": "paused",
        "orders": [
            {"order_id": 1, "symbol": "BTC_USDT", "outcome": "parked", "reason": "later"},
            {"order_id": 2, "symbol": "BTC_USDT", "outcome": "sent", "attempts": True},
            {"order_id": "3", "symbol": "BTC_USDT", "outcome": "sent"},
        ],
    }
    record = read_result(data)
    assert record is not None
    assert record.status == "paused"
    assert record.orders == (
        ResultOrder(1, "BTC_USDT", "parked", 0, "later"),
        ResultOrder(2, "BTC_USDT", "sent", 0),  # attempts not a count: none known
    )


def test_a_result_without_an_alert_id_is_no_summary_but_still_shown() -> None:
    data = {"schema": "killswitch.result/v1", "account": "mm-1", "status": "running"}
    assert decode_result_summary(json.dumps(data).encode()) is None
    assert read_result(data) == ResultRecord("mm-1", "running")


# -------------------------------------------------------------------- halt state


@pytest.mark.parametrize(
    "state",
    [
        HaltState("mm-1", True, "risk-7f3a", NOW, Scope(), by="alice", reason="VaR"),
        HaltState(
            "mm-2",
            False,
            "rel-1",
            NOW,
            Scope(frozenset({"BTC_USDT"}), frozenset({Side.SELL}), frozenset({5, 7})),
        ),
    ],
)
@pytest.mark.parametrize("daemon", [None, "killswitch-1f2e3d4c"])
def test_a_halt_state_reads_back_equal(state: HaltState, daemon: str | None) -> None:
    assert decode_state_record(encode_state(state, daemon)) == (state, daemon)


def test_status_json_is_the_state_record_without_schema_and_daemon() -> None:
    state = HaltState("mm-1", True, "a-1", NOW, Scope(frozenset({"BTC_USDT"})))
    (record,) = status_records([state])
    written = state_to_json(state, "killswitch-1")
    assert record == {k: v for k, v in written.items() if k not in ("schema", "daemon")} | {
        "by": None,
        "reason": None,
    }


def test_the_docs_halt_state_example_reads() -> None:
    example = doc_examples()["killswitch.state/v1"]
    read = decode_state_record(json.dumps(example).encode())
    assert read is not None
    state, daemon = read
    assert daemon == "killswitch-1f2e3d4c"
    assert state == HaltState(
        "mm-1",
        True,
        "risk-7f3a",
        NOW,
        Scope(frozenset({"BTC_USDT"}), frozenset({Side.BUY}), None),
        by="var-monitor",
        reason="VaR limit breached",
    )
    assert state_to_json(state, daemon) == example


# ------------------------------------------------------------------- dead letter


@pytest.mark.parametrize(
    ("raw", "key"),
    [(b'{"alert_id":"op-42"}', b"mm-1"), (b"\xff\xfe", None), (None, b"\xff")],
)
def test_a_dead_letter_reads_back_equal(raw: bytes | None, key: bytes | None) -> None:
    letter = DeadLetter.of(
        raw,
        position=Position("killswitch.manual", 0, 17),
        key=key,
        rejection=Rejection(RejectKind.UNAUTHORIZED, "signature missing", "op-42"),
        received_at=NOW,
    )
    assert read_dead_letter(letter.to_json()) == letter
    encoded = encode_dlq(
        raw,
        topic="killswitch.manual",
        partition=0,
        offset=17,
        key=key,
        rejection=Rejection(RejectKind.UNAUTHORIZED, "signature missing", "op-42"),
        received_at=NOW,
    )
    assert json.loads(encoded) == letter.to_json()


def test_the_docs_dead_letter_example_reads() -> None:
    example = doc_examples()["killswitch.dlq/v1"]
    letter = read_dead_letter(example)
    assert (letter.kind, letter.alert_id, letter.key) == ("unauthorized", "op-42", "mm-1")
    assert letter.value is not None
    assert letter.value_bytes == len(letter.value.encode())
    assert letter.to_json() == example


# --------------------------------------------------------------------- heartbeat


def test_a_heartbeat_reads_back_equal() -> None:
    beat = parse_heartbeat(encode_heartbeat("mm-bot-1", NOW))
    assert beat == Heartbeat.model_validate(
        {"schema": "killswitch.heartbeat/v1", "source": "mm-bot-1", "sent_at": format_time(NOW)}
    )
    assert isinstance(beat, Heartbeat)
    assert parse_heartbeat(json.dumps(beat.to_json()).encode()) == beat


def test_the_docs_heartbeat_example_reads() -> None:
    example = doc_examples()["killswitch.heartbeat/v1"]
    beat = parse_heartbeat(json.dumps(example).encode())
    assert isinstance(beat, Heartbeat)
    assert (beat.source, beat.sent_at) == ("mm-bot-1", NOW)
    assert beat.to_json() == example


# ----------------------------------------------------------- position and times


def test_a_position_reads_back_equal() -> None:
    position = Position("killswitch.alerts", 2, 1841)
    assert position_from_json(position_to_json(position)) == position
    assert position_from_json({"topic": "t", "partition": True, "offset": 1}) is None
    assert position_from_json(None) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-24T01:02:03.456Z", NOW),
        ("2026-11-24T08:02:03.456+07:00", NOW),
        ("2026-11-24T01:02:03.456", NOW),  # no offset: UTC, as every writer means
        ("yesterday", None),
        (17, None),
        (None, None),
    ],
)
def test_one_time_parser(text: Any, expected: datetime | None) -> None:
    assert parse_time(text) == expected


def test_times_read_back_equal_to_the_millisecond() -> None:
    jakarta = timezone(timedelta(hours=7))
    written = format_time(NOW.astimezone(jakarta))
    assert written == "2026-11-24T01:02:03.456Z"
    assert parse_time(written) == NOW


# --------------------------------------------------------------------- the scope


def test_one_scope_test() -> None:
    buy = Scope(sides=frozenset({Side.BUY}))
    assert buy.covers("BTC_USDT", Side.BUY, 1)
    assert not buy.covers("BTC_USDT", None, 1)  # unknown side: only a scope of both sides
    assert Scope().covers("BTC_USDT", None, 1)
    pair = Scope(symbols=frozenset({"BTC_USDT"}), order_ids=frozenset({5}))
    assert pair.covers_pair("BTC_USDT")
    assert not pair.covers_pair("ETH_USDT")
    assert Scope(order_ids=frozenset()) == Scope()  # empty ids: all, decided where it is made
