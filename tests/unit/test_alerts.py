"""Alert parsing and the output records (pure)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from killswitch.contracts import (
    DLQ_MAX_VALUE_BYTES,
    MAX_JSON_DEPTH,
    Alert,
    Channel,
    Rejection,
    RejectKind,
    ResultRecord,
    _alike_key,
    decode_result_summary,
    decode_state,
    duplicate_result,
    encode_dlq,
    encode_result,
    encode_state,
    final_result_fields,
    final_results_lines,
    kill_requests,
    parse_alert,
    result_to_json,
)
from killswitch.core.model import (
    Counts,
    HaltState,
    OrderReport,
    Position,
    Scope,
    SweepResult,
    SweepStatus,
)
from killswitch.core.orders import Side
from killswitch.core.outcomes import Outcome, RejectReason
from killswitch.core.times import format_time

NOW = datetime(2026, 11, 24, 1, 2, 3, 456000, tzinfo=UTC)
ACCOUNTS = ("mm-1", "mm-2", "arb-1")


def alert(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "schema": "killswitch.alert/v1",
        "alert_id": "risk-7f3a",
        "action": "kill",
        "source": "var-monitor",
        "reason": "VaR limit breached",
        "scope": {"accounts": ["mm-1"], "symbols": ["BTC_USDT"], "sides": ["BUY"], "order_ids": []},
        "latch": True,
        "dry_run": False,
        "created_at": "2026-11-24T01:02:00.000Z",
        "expires_at": None,
    }
    for key, value in changes.items():
        if value is _DELETE:
            base.pop(key, None)
        else:
            base[key] = value
    return base


_DELETE = object()


def parse(
    message: dict[str, Any] | bytes | None, channel: Channel = "alerts", **kw: Any
) -> Alert | Rejection:
    raw = message if isinstance(message, bytes | None) else json.dumps(message).encode()
    return parse_alert(
        raw,
        channel=channel,
        accounts=kw.pop("accounts", ACCOUNTS),
        max_message_bytes=kw.pop("max_message_bytes", 1_000_000),
        max_order_ids=kw.pop("max_order_ids", 10),
        now=kw.pop("now", NOW),
        **kw,
    )


def test_the_design_example_parses() -> None:
    result = parse(alert())
    assert isinstance(result, Alert)
    assert result.alert_id == "risk-7f3a"
    assert result.scope.accounts == ["mm-1"]
    assert result.latch is True
    assert result.created_at == datetime(2026, 11, 24, 1, 2, tzinfo=UTC)


def scope(**kw: Any) -> dict[str, Any]:
    return {"accounts": ["mm-1"], **kw}


INVALID: list[tuple[str, Any, str]] = [
    ("no schema", alert(schema=_DELETE), "schema: expected"),
    ("wrong schema", alert(schema="killswitch.alert/v2"), "schema: expected"),
    ("no alert_id", alert(alert_id=_DELETE), "alert_id: required"),
    ("alert_id with space", alert(alert_id="a b"), "alert_id"),
    ("alert_id too long", alert(alert_id="a" * 200), "alert_id"),
    ("bad action", alert(action="nuke"), "action"),
    ("no source", alert(source=_DELETE), "source: required"),
    ("no scope", alert(scope=_DELETE), "scope: required"),
    ("empty scope object", alert(scope={}), "scope.accounts: required"),
    ("empty accounts", alert(scope={"accounts": []}), "empty list"),
    ("all as a word", alert(scope={"accounts": "all"}), "scope.accounts"),
    ("unknown account", alert(scope={"accounts": ["mm-9"]}), "unknown account id(s): 'mm-9'"),
    (
        "all in a list",
        alert(scope={"accounts": ["*"]}),
        """unknown account id(s): '*' (every account is the string "*", not a list)""",
    ),
    ("empty symbols", alert(scope=scope(symbols=[])), "omit the field"),
    ("empty sides", alert(scope=scope(sides=[])), "omit the field"),
    ("bad side", alert(scope=scope(sides=["LONG"])), "scope.sides.0"),
    ("misspelt scope key", alert(scope=scope(symbol=["BTC_USDT"])), "scope.symbol"),
    ("too many order ids", alert(scope=scope(order_ids=list(range(1, 12)))), "at most 10"),
    ("bool order id", alert(scope=scope(order_ids=[True])), "integers"),
    ("float order id", alert(scope=scope(order_ids=[1.5])), "integers"),
    ("negative order id", alert(scope=scope(order_ids=[-1])), "greater than 0"),
    ("huge order id", alert(scope=scope(order_ids=[2**64])), "less than or equal"),
    ("latch as string", alert(latch="yes"), "latch"),
    ("created_at naive", alert(created_at="2026-11-24T01:02:00"), "created_at"),
    ("created_at number", alert(created_at=1764000000), "ISO-8601"),
    ("expires before created", alert(expires_at="2026-11-24T01:01:00Z"), "expires_at must be"),
    ("negative deadline", alert(deadline_s=-1), "deadline_s"),
]


@pytest.mark.parametrize(("case", "message", "expected"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_alerts_are_refused_with_a_reason(case: str, message: Any, expected: str) -> None:
    result = parse(message)
    assert isinstance(result, Rejection), case
    assert result.kind is RejectKind.INVALID
    assert expected in result.reason


RAW_INVALID: list[tuple[str, bytes | None, str]] = [
    ("none", None, "empty message"),
    ("empty", b"", "empty message"),
    ("not utf-8", b"\xff\xfe{}", "not UTF-8"),
    ("not json", b"{nope", "not JSON"),
    ("array", b"[1,2]", "expected a JSON object, got list"),
    ("string", b'"kill"', "expected a JSON object, got str"),
    ("nan", b'{"schema": NaN}', "NaN is not valid JSON"),
    ("duplicate key", b'{"scope": {}, "scope": {}}', "duplicate key 'scope'"),
    ("deep nesting", b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
    ("deep objects", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested too deeply"),
    ("huge integer", b'{"n": ' + b"9" * 5000 + b"}", "not JSON"),
]


@pytest.mark.parametrize(("case", "raw", "expected"), RAW_INVALID, ids=[c[0] for c in RAW_INVALID])
def test_unreadable_bytes_are_refused(case: str, raw: bytes | None, expected: str) -> None:
    result = parse(raw)
    assert isinstance(result, Rejection), case
    assert result.kind is RejectKind.INVALID
    assert expected in result.reason


def test_unknown_accounts_are_named_sorted_once_each_five_at_most() -> None:
    result = parse(alert(scope={"accounts": ["x3", "mm-1", "bb", "aa", "bb", "x2", "x1", "zz"]}))
    assert isinstance(result, Rejection)
    assert result.reason == "scope.accounts: unknown account id(s): 'aa', 'bb', 'x1', 'x2', 'x3'"


def test_each_parse_checks_against_the_accounts_and_limit_it_is_given() -> None:
    # parse_alert keeps one validation context for the next alert: a parse for another
    # deployment (other accounts, another limit) must not be answered from it.
    message = alert(scope={"accounts": ["mm-1"], "order_ids": [1, 2, 3]})
    accounts = ("mm-1",)
    assert isinstance(parse(message, accounts=accounts, max_order_ids=3), Alert)
    assert isinstance(parse(message, accounts=accounts, max_order_ids=2), Rejection)
    assert isinstance(parse(message, accounts=accounts, max_order_ids=3), Alert)
    assert isinstance(parse(message, accounts=("mm-2",), max_order_ids=3), Rejection)
    assert isinstance(parse(message, accounts=accounts, max_order_ids=3), Alert)


def test_size_is_checked_before_parsing() -> None:
    raw = b"{" + b" " * 5000 + b"}"
    result = parse(raw, max_message_bytes=1024)
    assert isinstance(result, Rejection)
    assert "5002 bytes, the limit is 1024" in result.reason


def test_rejection_carries_a_readable_alert_id() -> None:
    result = parse(alert(action="nuke"))
    assert isinstance(result, Rejection)
    assert result.alert_id == "risk-7f3a"


def test_validation_reason_does_not_echo_input() -> None:
    secret = "not-a-side-but-a-secret-value"
    result = parse(alert(scope=scope(sides=[secret])))
    assert isinstance(result, Rejection)
    assert secret not in result.reason


def test_unknown_top_level_fields_are_ignored() -> None:
    assert isinstance(parse(alert(priority="high")), Alert)


def test_star_expands_to_every_configured_account() -> None:
    parsed = parse(alert(scope={"accounts": "*"}))
    assert isinstance(parsed, Alert)
    requests = kill_requests(parsed, accounts=ACCOUNTS, received_at=NOW, default_deadline_s=30)
    assert [r.account for r in requests] == list(ACCOUNTS)


def test_kill_requests_carry_scope_and_defaults() -> None:
    parsed = parse(alert(scope=scope(symbols=["BTC_USDT"], order_ids=["12", 13])))
    assert isinstance(parsed, Alert)
    (req,) = kill_requests(parsed, accounts=ACCOUNTS, received_at=NOW, default_deadline_s=30)
    assert req.scope == Scope(
        symbols=frozenset({"BTC_USDT"}), sides=None, order_ids=frozenset({12, 13})
    )
    assert (req.deadline_s, req.latch, req.received_at) == (30, True, NOW)
    assert (req.source, req.reason) == ("var-monitor", "VaR limit breached")


def test_empty_order_ids_mean_no_narrowing_and_deadline_from_alert() -> None:
    parsed = parse(alert(deadline_s=5))
    assert isinstance(parsed, Alert)
    (req,) = kill_requests(parsed, accounts=ACCOUNTS, received_at=NOW, default_deadline_s=30)
    assert req.scope.order_ids is None
    assert req.scope.sides == frozenset({Side.BUY})
    assert req.deadline_s == 5


def test_repeated_accounts_are_swept_once() -> None:
    parsed = parse(alert(scope={"accounts": ["mm-1", "mm-1"]}))
    assert isinstance(parsed, Alert)
    assert parsed.scope.accounts == ["mm-1"]


@pytest.mark.parametrize(
    ("expires_at", "kind"),
    [
        ("2026-11-24T01:02:03.455Z", RejectKind.EXPIRED),
        ("2026-11-24T01:02:03.456Z", RejectKind.EXPIRED),
        ("2026-11-24T01:02:03.457Z", None),
        (None, None),
    ],
)
def test_expiry(expires_at: str | None, kind: RejectKind | None) -> None:
    result = parse(alert(expires_at=expires_at))
    if kind is None:
        assert isinstance(result, Alert)
    else:
        assert isinstance(result, Rejection)
        assert result.kind is kind
        assert "expired at" in result.reason


def test_manual_trigger_needs_an_operator() -> None:
    result = parse(alert(), channel="manual")
    assert isinstance(result, Rejection)
    assert result.kind is RejectKind.INVALID
    assert "operator" in result.reason
    ok = parse(alert(operator={"name": "alice"}), channel="manual")
    assert isinstance(ok, Alert)
    (req,) = kill_requests(ok, accounts=ACCOUNTS, received_at=NOW, default_deadline_s=1)
    assert req.operator == "alice"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_parse_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    assert isinstance(parse(raw), Alert | Rejection)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(list(alert())), json_values, max_size=12))
def test_parse_never_raises_on_arbitrary_json_objects(fields: dict[str, Any]) -> None:
    message = {**alert(), **fields}
    assert isinstance(parse(message), Alert | Rejection)


# ------------------------------------------------------------------------ outputs


def sweep_result(**kw: Any) -> SweepResult:
    base: dict[str, Any] = {
        "alert_id": "risk-7f3a",
        "account": "mm-1",
        "status": SweepStatus.FLAT,
        "final": True,
        "dry_run": False,
        "counts": Counts(sent=117, already_closed=3),
        "residual_open": 0,
        "sweeps": 2,
        "received_at": NOW,
        "first_cancel_at": NOW + timedelta(milliseconds=4),
        "finished_at": NOW + timedelta(seconds=1, microseconds=1500),
        "orders": [
            OrderReport(123, "BTC_USDT", Outcome.SENT, 1),
            OrderReport(124, "BTC_USDT", Outcome.REJECTED, 2, RejectReason.NOT_FOUND),
        ],
        "source": "var-monitor",
        "operator": None,
        "reason": None,
    }
    base.update(kw)
    return SweepResult(**base)


def test_result_has_the_contract_fields() -> None:
    out = result_to_json(ResultRecord.of(sweep_result(), Position("killswitch.alerts", 2, 41)))
    assert out["schema"] == "killswitch.result/v1"
    assert out["counts"] == {
        "resolved": 120,
        "sent": 117,
        "already_closed": 3,
        "rejected": 0,
        "failed": 0,
        "skipped": 0,
    }
    assert out["received_at"] == "2026-11-24T01:02:03.456Z"
    assert out["first_cancel_at"] == "2026-11-24T01:02:03.460Z"
    assert out["finished_at"] == "2026-11-24T01:02:04.457Z"
    assert out["orders"] == [
        {"order_id": 123, "symbol": "BTC_USDT", "outcome": "sent", "attempts": 1},
        {
            "order_id": 124,
            "symbol": "BTC_USDT",
            "outcome": "rejected",
            "attempts": 2,
            "reason": "not_found",
        },
    ]
    for key in ("alert_id", "account", "status", "final", "dry_run", "residual_open", "sweeps"):
        assert key in out
    assert out["origin"] == {"topic": "killswitch.alerts", "partition": 2, "offset": 41}


def test_result_lists_at_most_max_orders_problems_first_and_says_how_many_were_cut() -> None:
    orders = [OrderReport(i, "BTC_USDT", Outcome.SENT, 1) for i in range(10)]
    orders.insert(7, OrderReport(99, "BTC_USDT", Outcome.FAILED, 6))
    out = result_to_json(ResultRecord.of(sweep_result(orders=orders, pending=3), max_orders=4))
    assert [o["order_id"] for o in out["orders"]] == [99, 0, 1, 2]
    assert out["orders_omitted"] == 7
    assert out["pending"] == 3
    full = result_to_json(ResultRecord.of(sweep_result(orders=orders)))
    assert (len(full["orders"]), full["orders_omitted"]) == (11, 0)


def test_a_result_of_100k_orders_fits_one_kafka_record() -> None:
    orders = [OrderReport(5_000_000_000 + i, "BTC_USDT", Outcome.SENT, 1) for i in range(100_000)]
    assert len(encode_result(ResultRecord.of(sweep_result(orders=orders)))) < 1_000_000


def test_result_round_trips_to_a_summary() -> None:
    raw = encode_result(ResultRecord.of(sweep_result(first_cancel_at=None), Position("t", 0, 7)))
    assert json.loads(raw)["first_cancel_at"] is None
    summary = decode_result_summary(raw)
    assert summary is not None
    assert (summary.alert_id, summary.account, summary.status, summary.final) == (
        "risk-7f3a",
        "mm-1",
        "flat",
        True,
    )
    assert summary.origin == Position("t", 0, 7)
    assert decode_result_summary(b"junk") is None
    assert decode_result_summary(b'{"schema": "other"}') is None


def test_format_time_is_utc_with_milliseconds() -> None:
    jakarta = timezone_hours(7)
    assert format_time(datetime(2026, 1, 1, 7, 0, 0, 999999, tzinfo=jakarta)) == (
        "2026-01-01T00:00:00.999Z"
    )
    assert format_time(None) is None


def timezone_hours(hours: int) -> Any:
    from datetime import timezone

    return timezone(timedelta(hours=hours))


def test_duplicate_result_is_final_and_empty() -> None:
    parsed = parse(alert())
    assert isinstance(parsed, Alert)
    (req,) = kill_requests(parsed, accounts=ACCOUNTS, received_at=NOW, default_deadline_s=1)
    dup = duplicate_result(req, "flat", NOW)
    assert (dup.status, dup.final, dup.counts.resolved) == (SweepStatus.DUPLICATE, True, 0)
    assert dup.reason is not None
    assert "flat" in dup.reason


def test_state_round_trip() -> None:
    state = HaltState(
        "mm-1",
        True,
        "risk-7f3a",
        NOW,
        Scope(symbols=frozenset({"BTC_USDT"}), sides=frozenset({Side.SELL})),
    )
    raw = encode_state(state)
    body = json.loads(raw)
    assert {"account", "halted", "alert_id", "since", "scope"} <= set(body)
    assert body["scope"] == {"symbols": ["BTC_USDT"], "sides": ["SELL"], "order_ids": None}
    assert decode_state(raw) == state
    assert decode_state(None) is None
    assert decode_state(b'{"account": 1}') is None


def test_dead_letter_keeps_the_original_and_the_reason() -> None:
    rejection = Rejection(RejectKind.UNAUTHORIZED, "bad signature", "risk-1")
    raw = encode_dlq(
        b'{"x": 1}',
        topic="killswitch.manual",
        partition=1,
        offset=9,
        key=b"mm-1",
        rejection=rejection,
        received_at=NOW,
    )
    body = json.loads(raw)
    assert body["value"] == '{"x": 1}'
    assert (body["topic"], body["partition"], body["offset"]) == ("killswitch.manual", 1, 9)
    assert (body["kind"], body["reason"], body["alert_id"]) == (
        "unauthorized",
        "bad signature",
        "risk-1",
    )
    assert body["key"] == "mm-1"


def test_dead_letter_of_binary_and_oversized_input() -> None:
    rejection = Rejection(RejectKind.INVALID, "x")
    body = json.loads(
        encode_dlq(
            b"\xff\x00",
            topic="t",
            partition=0,
            offset=0,
            key=None,
            rejection=rejection,
            received_at=NOW,
        )
    )
    assert base64.b64decode(body["value_base64"]) == b"\xff\x00"
    big = b"a" * (DLQ_MAX_VALUE_BYTES + 10)
    body = json.loads(
        encode_dlq(
            big, topic="t", partition=0, offset=0, key=None, rejection=rejection, received_at=NOW
        )
    )
    assert body["value_truncated"] is True
    assert body["value_bytes"] == len(big)
    assert len(body["value"]) == DLQ_MAX_VALUE_BYTES


def test_state_records_name_their_daemon_and_followers_skip_their_own() -> None:
    from killswitch.contracts import decode_state_record
    from killswitch.kafka.readers import _fold_state

    halt = HaltState("mm-1", True, "a-1", NOW, Scope())
    mine = encode_state(halt, "daemon-a")
    theirs = encode_state(HaltState("mm-1", False, "r-1", NOW, Scope()), "daemon-b")
    record = decode_state_record(mine)
    assert record is not None
    assert record[1] == "daemon-a"
    changes: dict[str, HaltState] = {}
    _fold_state(changes, b"mm-1", theirs, "daemon-a", keep_cleared=True)
    assert changes["mm-1"].halted is False
    _fold_state(changes, b"mm-1", mine, "daemon-a", keep_cleared=True)
    assert "mm-1" not in changes  # our own, later change supersedes: nothing to apply
    _fold_state(changes, b"mm-2", None, "daemon-a", keep_cleared=True)
    assert changes["mm-2"].halted is False  # a tombstone clears the halt


# ------------------------------------------------------------ bounded refusals


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 990, 5_000])
def test_nesting_beyond_the_fixed_depth_is_refused(depth: int) -> None:
    # The bound is fixed, not the interpreter's recursion limit: a message the decoder
    # could still read near that limit would break anything recursive done with it next
    # (the signature check re-encodes a manual trigger).
    raw = json.dumps(alert(junk="__DEEP__")).encode()
    raw = raw.replace(b'"__DEEP__"', b"[" * depth + b"]" * depth)
    result = parse(raw)
    assert isinstance(result, Rejection)
    assert "nested" in result.reason


def test_nesting_within_the_depth_is_read() -> None:
    depth = MAX_JSON_DEPTH - 2  # the top-level object and "junk" are two levels
    raw = json.dumps(alert(junk="__DEEP__")).encode()
    raw = raw.replace(b'"__DEEP__"', b"[" * depth + b"]" * depth)
    assert isinstance(parse(raw), Alert)


def test_a_long_unknown_key_is_cut_short_in_the_reason() -> None:
    key = "k" * 5_000
    result = parse(alert(scope={"accounts": ["mm-1"], key: 1}))
    assert isinstance(result, Rejection)
    assert len(result.reason) < 200
    assert "(5000 chars)" in result.reason


def test_state_records_say_who_latched_and_why_and_old_records_still_read() -> None:
    state = HaltState("mm-1", True, "op-1", NOW, Scope(), by="alice", reason="fat finger")
    raw = encode_state(state)
    body = json.loads(raw)
    assert (body["by"], body["reason"]) == ("alice", "fat finger")
    assert decode_state(raw) == state
    # A record written before these fields existed reads with them empty.
    del body["by"], body["reason"]
    old = decode_state(json.dumps(body).encode())
    assert old is not None
    assert (old.by, old.reason, old.alert_id) == ("", "", "op-1")
    # Not text: treated as absent, the record is still used.
    body["by"] = 7
    odd = decode_state(json.dumps(body).encode())
    assert odd is not None
    assert odd.by == ""


def test_kill_requests_results_carry_the_trigger_reason_and_operator() -> None:
    parsed = parse(alert(reason="desk over its loss limit"))
    assert isinstance(parsed, Alert)
    (req,) = kill_requests(parsed, accounts=ACCOUNTS, received_at=NOW, default_deadline_s=1)
    out = result_to_json(ResultRecord.of(duplicate_result(req, "flat", NOW)))
    assert out["trigger_reason"] == "desk over its loss limit"
    # "reason" keeps its meaning: the explanation of the status.
    assert out["reason"] is not None
    assert "duplicate" in out["reason"]
    assert out["source"] == parsed.source


def test_progress_and_release_fields_are_written_only_when_known() -> None:
    plain = result_to_json(ResultRecord.of(sweep_result()))
    assert "pairs_listed" not in plain
    assert "was_halted" not in plain
    progress = result_to_json(
        ResultRecord.of(
            sweep_result(final=False, status=SweepStatus.RUNNING, pairs_listed=2, pairs_in_scope=5)
        )
    )
    assert (progress["pairs_listed"], progress["pairs_in_scope"]) == (2, 5)
    released = result_to_json(
        ResultRecord.of(sweep_result(status=SweepStatus.RELEASED, was_halted=False))
    )
    assert released["was_halted"] is False


def test_final_result_log_fields() -> None:
    fields = final_result_fields(
        ResultRecord.of(sweep_result(operator="alice", trigger_reason="limit"))
    )
    assert fields["alert_id"] == "risk-7f3a"
    assert (fields["account"], fields["status"], fields["operator"]) == ("mm-1", "flat", "alice")
    assert (fields["sent"], fields["already_closed"], fields["residual_open"]) == (117, 3, 0)
    assert fields["source"] == "var-monitor"
    assert fields["trigger_reason"] == "limit"
    assert fields["seconds"] == 1.002


def test_final_results_name_the_pairs_never_listed_to_the_end() -> None:
    residual = sweep_result(
        status=SweepStatus.RESIDUAL, residual_open=0, unlisted_pairs=["BTC_IDR", "ETH_USDT"]
    )
    out = result_to_json(ResultRecord.of(residual))
    assert out["unlisted_pairs"] == ["BTC_IDR", "ETH_USDT"]
    assert out["residual_open"] == 0  # still an int: what the complete listings showed
    assert (
        result_to_json(ResultRecord.of(sweep_result()))["unlisted_pairs"] == []
    )  # every pair listed
    # Progress results leave it out: a pair not listed yet is not "never listed".
    progress = result_to_json(
        ResultRecord.of(sweep_result(final=False, status=SweepStatus.RUNNING))
    )
    assert "unlisted_pairs" not in progress
    assert final_result_fields(ResultRecord.of(residual))["unlisted_pairs"] == [
        "BTC_IDR",
        "ETH_USDT",
    ]


def test_alike_final_results_published_together_share_one_log_line() -> None:
    def record(alert_id: str, **kw: Any) -> ResultRecord:
        return ResultRecord.of(sweep_result(alert_id=alert_id, **kw))

    records = [
        record("a-1"),
        record("a-2", operator="alice"),  # unlike the others: a line of its own
        record("a-3", finished_at=NOW + timedelta(seconds=3)),  # alike: only its time differs
        record("a-4"),
    ]
    lines = final_results_lines(records)
    assert [event for event, _ in lines] == ["final results", "final result"]
    shared, alone = lines[0][1], lines[1][1]
    assert shared["alert_ids"] == ["a-1", "a-3", "a-4"]
    assert shared["alerts"] == 3
    assert shared["seconds_each"] == [1.002, 3.0, 1.002]
    assert shared["seconds"] == 3.0  # the longest: a query for slow kills finds the line
    assert "alert_id" not in shared
    # Every other field is the results' own, as in a line of one result.
    single = final_result_fields(records[0])
    own = ("alert_ids", "alerts", "seconds", "seconds_each")
    assert {k: v for k, v in shared.items() if k not in own} == {
        k: v for k, v in single.items() if k not in ("alert_id", "seconds")
    }
    assert alone == final_result_fields(records[1])
    # A result alone is logged as before.
    assert final_results_lines(records[:1]) == [("final result", single)]
    assert final_results_lines([]) == []


@pytest.mark.parametrize(
    "other",
    [
        {"status": SweepStatus.RESIDUAL, "residual_open": 2},
        {"counts": Counts(sent=116, already_closed=3)},
        {"dry_run": True},
        {"unlisted_pairs": ["ETH_USDT"]},
        {"account": "mm-2"},
        {"trigger_reason": "limit"},
    ],
)
def test_final_results_that_differ_in_any_shared_field_get_lines_of_their_own(
    other: dict[str, Any],
) -> None:
    pairs = {"unlisted_pairs": ["BTC_IDR"], "status": SweepStatus.RESIDUAL, "residual_open": 0}
    alike = [ResultRecord.of(sweep_result(alert_id=f"a-{i}", **pairs)) for i in range(2)]
    unlike = ResultRecord.of(sweep_result(alert_id="b", **{**pairs, **other}))
    lines = final_results_lines([alike[0], unlike, alike[1]])
    assert [(event, f.get("alert_ids", f.get("alert_id"))) for event, f in lines] == [
        ("final results", ["a-0", "a-1"]),
        ("final result", "b"),
    ]


def test_a_shared_line_without_times_has_no_seconds() -> None:
    records = [ResultRecord.of(sweep_result(alert_id=f"a-{i}", received_at=None)) for i in range(2)]
    ((event, line),) = final_results_lines(records)
    assert event == "final results"
    assert (line["seconds"], line["seconds_each"]) == (None, [None, None])


def test_a_log_value_that_cannot_be_compared_keeps_its_result_alone() -> None:
    shared = ("mm-1", "flat", 3)
    odd = (*shared, ["not", "hashable"])
    assert _alike_key(odd) != _alike_key(tuple(odd))
    assert _alike_key(shared) == _alike_key(tuple(shared))
