"""What the operator commands show (pure): bars, progress lines, summaries, tables."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from killswitch.board import AccountProgress, Board
from killswitch.contracts import ResultRecord, encode_result
from killswitch.core.model import Counts, HaltState, Scope, SweepResult, SweepStatus
from killswitch.core.orders import Side
from killswitch.exitcodes import EXIT_NOT_DONE, EXIT_NOT_FOUND
from killswitch.prometheus_text import metric_samples
from killswitch.render import (
    Check,
    GroupView,
    bar,
    check_lines,
    dry_run_lines,
    duration_text,
    fraction_done,
    group_checks,
    metrics_lines,
    plain_updates,
    progress_line,
    progress_lines,
    redraw,
    scope_text,
    status_lines,
    status_records,
    summary_lines,
    table,
    terminal_frame,
)
from tests.support.results import result_record as result

NOW = datetime(2026, 11, 24, 1, 2, 3, tzinfo=UTC)


# ----------------------------------------------------------------------- bars


@pytest.mark.parametrize(
    ("fraction", "width", "expected"),
    [
        (0.0, 10, "[----------]"),
        (0.5, 10, "[#####-----]"),
        (1.0, 10, "[##########]"),
        (0.04, 10, "[----------]"),
        (0.96, 10, "[##########]"),
        (1.7, 4, "[####]"),
        (-1.0, 4, "[----]"),
        (None, 5, "[.....]"),
        (0.6, 0, "[#]"),  # width at least one
    ],
)
def test_bar(fraction: float | None, width: int, expected: str) -> None:
    assert bar(fraction, width) == expected


@pytest.mark.parametrize(
    ("progress", "expected"),
    [
        (AccountProgress("a"), None),  # nothing read yet
        (AccountProgress("a", "running", sent=30, residual_open=90), 0.25),
        (AccountProgress("a", "running", sent=30, pending=10, residual_open=90), 0.75),
        (AccountProgress("a", "running", sent=5, already_closed=5, pending=0), 1.0),
        (AccountProgress("a", "flat", final=True, sent=3, residual_open=7), 1.0),
        (AccountProgress("a", "released", final=True), 1.0),
        (AccountProgress("a", "dry_run", final=True, skipped=4), 1.0),
        (AccountProgress("a", "residual", final=True, sent=6, residual_open=2), 0.75),
        (AccountProgress("a", "failed", final=True), None),  # nothing was done
        (AccountProgress("a", "failed", final=True, sent=3, residual_open=1), 0.75),
        (AccountProgress("a", "refused", final=True), None),  # nothing was done
        (AccountProgress("a", "timed_out", final=True), None),  # nothing is known
        (AccountProgress("a", "running"), None),
    ],
)
def test_fraction_done(progress: AccountProgress, expected: float | None) -> None:
    assert fraction_done(progress) == expected


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (None, ""),
        (-1.0, ""),
        (0.0, "0.00s"),
        (0.4242, "0.42s"),
        (12.34, "12.3s"),
        (59.9, "59.9s"),
        (245.0, "4m05s"),
    ],
)
def test_duration_text(seconds: float | None, expected: str) -> None:
    assert duration_text(seconds) == expected


# ---------------------------------------------------------------------- board


def test_not_found_ids_are_read_leniently_and_shown_in_the_summary() -> None:
    board = Board("op-1", ["a"])
    board.apply_result(result("a", "flat", final=True, not_found=[11, "x", True, 12]))
    assert board.rows["a"].not_found == (11, 12)
    lines = summary_lines(board, 1.0)
    assert lines[0].startswith("kill INCOMPLETE op-1: flat on 1/1")
    assert lines[1] == "  a: 2 order id(s) never found open, not cancelled by this kill: 11, 12"


def test_a_duplicate_says_nothing_was_done_and_how_to_kill_again() -> None:
    board = Board("op-1", ["a"])
    board.apply_result(
        result("a", "duplicate", final=True, reason="duplicate alert_id (already flat)")
    )
    line = progress_lines(board)[0]
    # Nothing was listed for a duplicate: no percentage, and what is open is not known.
    assert "   ?   sent 0" in line
    assert "open ?" in line
    assert line.endswith(
        "NOT OK: duplicate alert id (already flat): handled before, nothing done now "
        "(to kill again, leave out --alert-id)"
    )


def test_a_residual_with_nothing_open_says_it_is_not_proven_flat() -> None:
    board = Board("op-1", ["a"])
    why = "deadline passed before a listing came back empty"
    board.apply_result(result("a", "residual", final=True, sent=3, residual=0, reason=why))
    assert f"NOT OK: residual: not proven flat ({why}) in " in progress_lines(board)[0]


def test_a_summary_without_a_known_time_shows_none() -> None:
    board = Board("op-1", ["a"])
    board.time_out()
    assert summary_lines(board, None)[0] == "kill FAILED op-1: flat on 0/1 account(s)"


def test_a_flat_result_with_a_reason_shows_it_as_a_note() -> None:
    board = Board("op-1", ["a"])
    note = (
        "cancel-all refused (exchange answered 308 redirect to http://x/y on cancel_all: "
        "check base_url): batch cancels"
    )
    board.apply_result(result("a", "flat", final=True, sent=3, reason=note))
    lines = summary_lines(board, 1.0)
    assert lines[0].startswith("kill op-1: flat on 1/1")
    assert lines[1:] == [f"  a: note: {note}"]


def test_a_refusal_says_why_in_the_summary() -> None:
    board = Board("op-1", ["a"])
    reason = "unknown pair(s): btc_usdt (did you mean BTC_USDT?)"
    board.apply_dead_letter({"alert_id": "op-1", "kind": "invalid", "reason": reason})
    lines = summary_lines(board, 1.0)
    assert lines[0].startswith("kill FAILED op-1")
    assert f"refused (invalid: {reason})" in lines[1]


# ---------------------------------------------------------------------- lines


def test_progress_line_running() -> None:
    p = AccountProgress("mm-1", "running", sent=30, already_closed=0, residual_open=90)
    assert progress_line(p, name_width=5, bar_width=8) == (
        "mm-1   [##------]  25%  sent 30  closed 0  rejected 0  failed 0  open 90  running"
    )


def test_progress_line_waiting_and_final() -> None:
    waiting = progress_line(AccountProgress("a"), bar_width=4, name_width=1)
    assert waiting == (
        "a  [....]   ?   sent 0  closed 0  rejected 0  failed 0  open 0  waiting for the daemon"
    )
    flat = AccountProgress("a", "flat", final=True, sent=9, already_closed=1, seconds=2.5)
    assert progress_line(flat, bar_width=4, name_width=1).endswith(
        "[####] 100%  sent 9  closed 1  rejected 0  failed 0  open 0  ok: flat in 2.50s"
    )
    residual = AccountProgress(
        "a", "residual", final=True, sent=6, residual_open=2, reason="deadline passed"
    )
    assert progress_line(residual, bar_width=4, name_width=1).endswith(
        "[###-]  75%  sent 6  closed 0  rejected 0  failed 0  open 2  "
        "NOT OK: residual: 2 still open (deadline passed)"
    )
    dry = AccountProgress("a", "dry_run", final=True, skipped=4)
    assert progress_line(dry, bar_width=4, name_width=1, success="dry_run").endswith(
        "skipped 4  open 0  ok: dry run (nothing cancelled)"
    )


def test_progress_lines_align_names_in_board_order() -> None:
    board = Board("op-1", ["mm-1", "arb-long"])
    lines = progress_lines(board, bar_width=3)
    assert [line[:10] for line in lines] == ["mm-1      ", "arb-long  "]
    assert all("[...]" in line for line in lines)


def test_summary_success_and_failure() -> None:
    board = Board("op-1", ["a", "b"])
    board.apply_result(result("a", "flat", final=True, sent=5, closed=1))
    board.apply_result(result("b", "flat", final=True, sent=4))
    assert summary_lines(board, 3.21) == [
        "kill op-1: flat on 2/2 account(s) in 3.21s (10 order(s) resolved, 9 cancel(s) sent)"
    ]
    board = Board("rel-1", ["a", "b"], action="release")
    board.apply_result(result("a", "released", final=True, alert_id="rel-1"))
    board.time_out()
    assert summary_lines(board, 40) == [
        "release FAILED rel-1: released on 1/2 account(s) in 40.0s",
        "  b: NOT OK: no final result before the timeout",
    ]


@pytest.mark.parametrize(
    ("lines", "previous", "expected"),
    [
        (["a", "b"], 0, "\x1b[2Ka\n\x1b[2Kb\n"),
        (["a", "b"], 2, "\x1b[2F\x1b[2Ka\n\x1b[2Kb\n"),
        (["a"], 2, "\x1b[2F\x1b[2Ka\n\x1b[2K\n\x1b[1F"),
        (["a", "b", "c"], 1, "\x1b[1F\x1b[2Ka\n\x1b[2Kb\n\x1b[2Kc\n"),
    ],
)
def test_redraw(lines: list[str], previous: int, expected: str) -> None:
    assert redraw(lines, previous) == expected


@pytest.mark.parametrize(
    ("printed", "current", "periodic", "expected"),
    [
        ({}, [("a", "x", False)], True, [("a", "x")]),
        ({}, [("a", "x", False)], False, []),  # not yet: wait for the interval
        ({}, [("a", "x", True)], False, [("a", "x")]),  # finals at once
        ({"a": "x"}, [("a", "x", True)], True, []),  # already printed
        (
            {"a": "x", "b": "y"},
            [("a", "x2", False), ("b", "y", False)],
            True,
            [("a", "x2")],
        ),
    ],
)
def test_plain_updates(
    printed: dict[str, str],
    current: list[tuple[str, str, bool]],
    periodic: bool,
    expected: list[tuple[str, str]],
) -> None:
    assert plain_updates(printed, current, periodic=periodic) == expected


# ---------------------------------------------------------------------- tables


def test_table() -> None:
    assert table(["A", "LONGER"], [["xyz", "1"], ["", "22"]]) == [
        "A    LONGER",
        "xyz  1",
        "     22",
    ]
    assert table(["ONLY"], []) == ["ONLY"]


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ({}, "all symbols; both sides"),
        ({"symbols": None, "sides": None, "order_ids": None}, "all symbols; both sides"),
        ({"symbols": ["BTC_USDT", "ETH_USDT"], "sides": ["BUY"]}, "BTC_USDT,ETH_USDT; BUY"),
        ({"order_ids": [1, 2, 3]}, "all symbols; both sides; 3 order id(s)"),
    ],
)
def test_scope_text(scope: dict[str, Any], expected: str) -> None:
    assert scope_text(scope) == expected


def test_status_lines_and_records() -> None:
    states = [
        HaltState("mm-2", True, "op-9", NOW - timedelta(minutes=5), Scope()),
        HaltState(
            "mm-1",
            True,
            "risk-7f3a",
            NOW - timedelta(seconds=30),
            Scope(symbols=frozenset({"BTC_USDT"}), sides=frozenset({Side.SELL})),
            by="risk-engine",
            reason="loss limit   breached\non BTC",
        ),
    ]
    assert status_lines(states, NOW) == [
        "2 halted account(s):",
        "ACCOUNT  SINCE                     FOR    ALERT      BY           SCOPE"
        "                    REASON",
        "mm-1     2026-11-24T01:01:33.000Z  30.0s  risk-7f3a  risk-engine  BTC_USDT; SELL"
        "           loss limit breached on BTC",
        # A record written before "by" and "reason" existed: shown as unknown.
        "mm-2     2026-11-24T00:57:03.000Z  5m00s  op-9       ?            all symbols; both sides"
        "  ?",
    ]
    assert status_lines([], NOW) == ["no account is halted"]
    records = status_records(states)
    assert [r["account"] for r in records] == ["mm-1", "mm-2"]
    assert records[0] == {
        "account": "mm-1",
        "halted": True,
        "alert_id": "risk-7f3a",
        "since": "2026-11-24T01:01:33.000Z",
        "scope": {"symbols": ["BTC_USDT"], "sides": ["SELL"], "order_ids": None},
        "by": "risk-engine",
        "reason": "loss limit   breached\non BTC",
    }
    assert records[1]["by"] is None
    assert records[1]["reason"] is None


def test_status_reason_is_cut_to_one_short_line() -> None:
    state = HaltState("mm-1", True, "a", NOW, Scope(), by="bob", reason="x" * 100)
    line = status_lines([state], NOW)[2]
    assert line.endswith("x" * 57 + "...")


def test_check_lines() -> None:
    checks = [
        Check("kafka reachable", "127.0.0.1:9092", True, "6 topic(s)"),
        Check("key accepted", "mm-1", False, "refused"),
    ]
    assert check_lines(checks) == [
        "CHECK            TARGET          RESULT  DETAIL",
        "kafka reachable  127.0.0.1:9092  ok      6 topic(s)",
        "key accepted     mm-1            FAIL    refused",
        "1 of 2 checks FAILED",
    ]
    assert check_lines(checks[:1])[-1] == "all 1 checks passed"


# --------------------------------------------------------------------- metrics

EXPOSITION = """\
# HELP killswitch_cancels_total Orders that reached a final outcome.
# TYPE killswitch_cancels_total counter
killswitch_cancels_total{account="mm-1",outcome="sent"} 990.0
killswitch_cancels_total{account="mm-2",outcome="sent"} 988.0
killswitch_cancels_total{account="mm-1",outcome="already_closed"} 19.0
killswitch_cancels_total{account="arb-1",outcome="failed"} 0.0
# HELP killswitch_exchange_requests_total Every HTTP call.
# TYPE killswitch_exchange_requests_total counter
killswitch_exchange_requests_total{account="mm-1",endpoint="cancel",status="200"} 1000.0
killswitch_exchange_requests_total{account="mm-1",endpoint="cancel",status="400"} 19.0
killswitch_exchange_requests_total{account="mm-1",endpoint="cancel",status="429"} 7.0
killswitch_exchange_requests_total{account="mm-2",endpoint="open_orders",status="503"} 3.0
killswitch_exchange_requests_total{account="mm-2",endpoint="cancel",status="timeout"} 2.0
# HELP killswitch_time_to_flat_seconds From alert to flat.
# TYPE killswitch_time_to_flat_seconds histogram
killswitch_time_to_flat_seconds_bucket{le="+Inf"} 2.0
killswitch_time_to_flat_seconds_count 2.0
killswitch_time_to_flat_seconds_sum 15.0
# HELP killswitch_rate_limit_per_second Current rate.
# TYPE killswitch_rate_limit_per_second gauge
killswitch_rate_limit_per_second{account="mm-1"} 100.0
killswitch_rate_limit_per_second{account="arb-1"} 200.0
# HELP killswitch_account_halted Halted.
# TYPE killswitch_account_halted gauge
killswitch_account_halted{account="mm-1"} 1.0
# HELP killswitch_alerts_total Alerts read.
# TYPE killswitch_alerts_total counter
killswitch_alerts_total{result="processed",source="manual"} 1.0
killswitch_alerts_total{result="invalid",source="manual"} 0.0
# HELP killswitch_ready Ready.
# TYPE killswitch_ready gauge
killswitch_ready 1.0
"""


def test_metric_samples() -> None:
    samples = metric_samples(EXPOSITION)
    assert ("killswitch_cancels_total", {"account": "mm-1", "outcome": "sent"}, 990.0) in samples
    assert ("killswitch_time_to_flat_seconds_sum", {}, 15.0) in samples


def test_metrics_lines() -> None:
    lines = metrics_lines(metric_samples(EXPOSITION), ["mm-1", "mm-2", "arb-1"])
    assert lines == [
        "METRIC                                    NOW",
        "killswitch_cancels_total                  "
        "sent 1,978  already_closed 19  rejected 0  failed 0",
        "killswitch_exchange_requests_total        "
        "1,031 calls: 2xx 1,000  4xx 19  429 7  5xx 3  no answer 2",
        "killswitch_alert_to_first_cancel_seconds  no kill(s) yet",
        "killswitch_time_to_flat_seconds           2 flat result(s), mean 7.50s",
        "killswitch_rate_limit_per_second          mm-1 100  arb-1 200",
        "killswitch_account_halted                 mm-1 1",
        "killswitch_alerts_total                   processed 1",
        "killswitch_ready                          1",
    ]


def test_metrics_lines_before_anything_happened() -> None:
    lines = metrics_lines([], ["mm-1"])
    assert lines[2].endswith("0 calls")
    assert lines[7].endswith("none")


@pytest.mark.parametrize("columns", [200, 100, 80, 60, 20, 1])
def test_terminal_frame_never_wraps(columns: int) -> None:
    board = Board("op-1", ["mm-1", "mm-2"])
    board.apply_result(result("mm-1", "flat", final=True, sent=990, closed=19))
    board.apply_result(result("mm-2", sent=400, residual=600))
    lines = terminal_frame(board, columns)
    assert len(lines) == 2
    assert all(len(line) <= max(columns - 1, 1) for line in lines)
    if columns >= 200:
        assert lines == progress_lines(board)  # room enough: the full lines
    if columns in (80, 100):
        assert lines[0].startswith("mm-1  [")
        assert "100%" in lines[0]
        assert "[" + "#" * 24 + "]" not in lines[0]  # the bar narrowed first
        assert lines[0].endswith("ok: flat in 2.50s")  # the status survives
    if columns == 80:
        assert "rejected" not in lines[0]  # zero counts left out


def test_compact_progress_line_leaves_out_zero_counts() -> None:
    p = AccountProgress("a", "running", sent=5, failed=2, residual_open=3)
    assert progress_line(p, name_width=1, bar_width=4, compact=True) == (
        "a  [###-]  70%  sent 5  failed 2  open 3  running"
    )


def test_not_found_survives_the_result_json_round_trip() -> None:
    sweep = SweepResult(
        alert_id="op-1",
        account="mm-1",
        status=SweepStatus.FLAT,
        final=True,
        dry_run=False,
        counts=Counts(sent=1),
        residual_open=0,
        sweeps=2,
        received_at=NOW,
        first_cancel_at=NOW,
        finished_at=NOW + timedelta(seconds=1),
        not_found=[5, 9],
    )
    record = json.loads(encode_result(ResultRecord.of(sweep)))
    assert record["not_found"] == [5, 9]
    progress = AccountProgress.from_result(record)
    assert progress is not None
    assert progress.not_found == (5, 9)
    assert progress.status == "flat"
    empty = json.loads(encode_result(ResultRecord.of(dataclasses.replace(sweep, not_found=[]))))
    assert empty["not_found"] == []


# ----------------------------------------------------------- audit trail (issue 15)


def test_while_pairs_are_unlisted_the_line_shows_listing_progress_not_a_percentage() -> None:
    # 105 orders found and cancelled, 1 pending, 2 of 5 pairs still unlisted: the order
    # fraction alone would say 99 %.
    row = AccountProgress.from_result(
        result(sent=105, residual=0, pending=1, pairs_listed=3, pairs_in_scope=5)
    )
    assert row is not None
    assert row.listing
    line = progress_line(row)
    assert "listed 3/5 pairs" in line
    assert "%" not in line
    done = AccountProgress.from_result(
        result(sent=105, pending=1, pairs_listed=5, pairs_in_scope=5)
    )
    assert done is not None
    assert not done.listing
    assert " 99%" in progress_line(done)
    # Records without the fields (an older daemon): the percentage as before.
    old = AccountProgress.from_result(result(sent=105, pending=1))
    assert old is not None
    assert not old.listing
    assert " 99%" in progress_line(old)


def test_a_release_of_an_account_that_was_not_halted_says_so_and_exits_non_zero() -> None:
    board = Board("rel-1", ["mm-1", "mm-2"], action="release")
    board.apply_result(result("mm-1", "released", final=True, was_halted=True, alert_id="rel-1"))
    board.apply_result(
        result(
            "mm-2",
            "released",
            final=True,
            was_halted=False,
            alert_id="rel-1",
            reason="the account was not halted",
        )
    )
    assert board.exit_code() == EXIT_NOT_FOUND
    lines = progress_lines(board)
    assert "ok: released" in lines[0]
    assert "NOT OK: not halted (nothing to release)" in lines[1]
    summary = summary_lines(board, 1.0)
    assert summary[0].startswith("release INCOMPLETE rel-1: released on 1/2 account(s)")
    assert summary[1:] == ["  mm-2: was not halted (nothing released)"]  # said once
    # Both halted: success.
    ok = Board("rel-2", ["mm-1"], action="release")
    ok.apply_result(result("mm-1", "released", final=True, was_halted=True, alert_id="rel-2"))
    assert ok.exit_code() == 0


def test_dry_run_lists_the_orders_it_would_cancel() -> None:
    orders = [
        {"order_id": 7, "symbol": "BTC_USDT", "outcome": "skipped", "attempts": 0},
        {"order_id": 8, "symbol": "ETH_USDT", "outcome": "skipped", "attempts": 0},
        {"order_id": "bad"},
    ]
    board = Board("op-1", ["mm-1"], dry_run=True)
    board.apply_result(result(status="dry_run", final=True, orders=orders, orders_omitted=3))
    lines = dry_run_lines(board, limit=1)
    assert lines == [
        "dry run: 5 order(s) would be cancelled:",
        "ACCOUNT  ORDER ID  PAIR",
        "mm-1     7         BTC_USDT",
        "... and 4 more (write them all with --out FILE)",
    ]
    empty = Board("op-2", ["mm-1"], dry_run=True)
    empty.apply_result(result(status="dry_run", final=True, alert_id="op-2", orders=[]))
    assert dry_run_lines(empty) == ["dry run: no open order in scope"]
    assert dry_run_lines(Board("op-3", ["mm-1"])) == []  # not a dry run


def test_group_checks_fail_without_a_member_and_report_the_lag() -> None:
    view = GroupView("Stable", ["killswitch@10.0.0.7", "killswitch@10.0.0.8"], {"alerts": 3})
    group, lag = group_checks("killswitch", view)
    assert group == Check(
        "consumer group",
        "killswitch",
        True,
        "2 member(s), Stable: killswitch@10.0.0.7, killswitch@10.0.0.8",
    )
    assert lag == Check("consumer lag", "killswitch", True, "records behind: alerts 3")
    (empty,) = group_checks("killswitch", GroupView("Empty", [], {}))
    assert not empty.ok
    assert empty.detail == "no member: no daemon is consuming alerts (Empty)"
    (unreadable,) = group_checks("killswitch", "not readable (ValueError)")
    assert not unreadable.ok


def test_consumer_lag_says_what_it_knows_without_a_member_or_a_commit() -> None:
    # No member: nobody reads the records behind, however few (0 is no comfort).
    gone = GroupView("Empty", [], {"alerts": 0, "manual": 2}, frozenset({"alerts"}))
    _, lag = group_checks("killswitch", gone)
    assert lag == Check(
        "consumer lag",
        "killswitch",
        False,
        "records behind: alerts 0 (nothing committed), manual 2; counted from the earliest "
        "offset where nothing is committed; no member is reading them",
    )
    # A member that has committed nothing yet (no alert read so far): fine, and said.
    fresh = GroupView("Stable", ["killswitch@10.0.0.7"], {"alerts": 0}, frozenset({"alerts"}))
    _, lag = group_checks("killswitch", fresh)
    assert lag.ok
    assert lag.detail == (
        "records behind: alerts 0 (nothing committed); counted from the earliest offset "
        "where nothing is committed"
    )


# ----------------------------------------------------- pairs never listed to the end


def test_a_result_with_unlisted_pairs_says_still_open_is_unknown() -> None:
    board = Board("op-1", ["arb-1"])
    record = result(
        "arb-1",
        "residual",
        final=True,
        sent=0,
        residual=0,
        reason=(
            "deadline reached; never listed to the end: BTC_IDR, ETH_USDT "
            "(open orders there are not in residual_open)"
        ),
        unlisted_pairs=["BTC_IDR", "ETH_USDT", 7],
    )
    assert board.apply_result(record)
    row = board.rows["arb-1"]
    assert row.unlisted_pairs == ("BTC_IDR", "ETH_USDT")  # anything else left out
    assert fraction_done(row) is None  # not 100 %: what is left is not known
    line = progress_line(row, bar_width=4, name_width=1)
    assert line.startswith("arb-1  [....]   ?   sent 0")
    assert "open ?" in line
    assert "0 still open" not in line
    assert line.endswith(
        "NOT OK: residual: still open: unknown (2 pair(s) never listed to the end: "
        "BTC_IDR, ETH_USDT) (deadline reached) in 2.50s"
    )
    summary = summary_lines(board, 3.0)
    assert summary[0].startswith("kill FAILED op-1: flat on 0/1")
    assert "still open: unknown (2 pair(s) never listed to the end" in summary[1]
    assert board.exit_code() == EXIT_NOT_DONE


def test_unlisted_pairs_with_orders_counted_elsewhere_show_both() -> None:
    row = AccountProgress(
        "a",
        "residual",
        final=True,
        sent=4,
        residual_open=3,
        unlisted_pairs=tuple(f"P{i:02d}_USDT" for i in range(12)),
    )
    line = progress_line(row, bar_width=4, name_width=1)
    assert "[....]" in line
    assert (
        "still open: unknown (12 pair(s) never listed to the end: P00_USDT, P01_USDT, "
        "P02_USDT, P03_USDT, P04_USDT, P05_USDT, P06_USDT, P07_USDT, P08_USDT, P09_USDT "
        "...; 3 in the pairs listed)"
    ) in line


def test_a_failed_sweep_that_listed_nothing_does_not_claim_a_count() -> None:
    row = AccountProgress(
        "a", "failed", final=True, reason="authentication refused", unlisted_pairs=("BTC_USDT",)
    )
    line = progress_line(row, bar_width=4, name_width=1)
    assert "open ?" in line
    assert line.endswith(
        "NOT OK: failed; still open: unknown (1 pair(s) never listed to the end: BTC_USDT) "
        "(authentication refused)"
    )


def test_older_records_without_unlisted_pairs_read_as_before() -> None:
    board = Board("op-1", ["mm-1"])
    board.apply_result(result(status="residual", final=True, sent=6, residual=2))
    row = board.rows["mm-1"]
    assert row.unlisted_pairs == ()
    assert fraction_done(row) == 0.75
    assert "residual: 2 still open" in progress_line(row)
