"""The results board (pure): folding result records and dead letters, and the exit code."""

from __future__ import annotations

from typing import Any

import pytest

from killswitch.board import AccountProgress, Board
from killswitch.exitcodes import EXIT_NOT_DONE, EXIT_NOT_FOUND, EXIT_REFUSED
from tests.support.results import result_record as result


def test_account_progress_reads_a_result_record() -> None:
    p = AccountProgress.from_result(
        result(status="flat", final=True, sent=117, closed=3, pending=0, reason="x")
    )
    assert p == AccountProgress(
        "mm-1",
        "flat",
        final=True,
        sent=117,
        already_closed=3,
        pending=0,
        sweeps=1,
        reason="x",
        seconds=2.5,
    )
    assert p.resolved == 120


@pytest.mark.parametrize(
    "record",
    [
        {"alert_id": "op-1", "status": "flat"},  # no account
        {"alert_id": "op-1", "account": "mm-1"},  # no status
        {"alert_id": "op-1", "account": 5, "status": "flat"},
    ],
)
def test_unusable_result_records_are_ignored(record: dict[str, Any]) -> None:
    board = Board("op-1", ["mm-1"])
    assert AccountProgress.from_result(record) is None
    assert board.apply_result(record) is False


def test_lenient_about_odd_counts() -> None:
    p = AccountProgress.from_result(
        {"account": "a", "status": "running", "counts": {"sent": -3, "failed": True}, "x": 1}
    )
    assert p == AccountProgress("a", "running")


def test_board_follows_one_alert_until_every_account_is_final() -> None:
    board = Board("op-1", ["mm-1", "mm-2"])
    assert not board.done
    assert board.waiting_for() == ["mm-1", "mm-2"]
    assert board.apply_result(result(alert_id="other", status="flat", final=True)) is False
    assert board.apply_result(result(sent=10, residual=50)) is True
    assert board.apply_result(result(sent=10, residual=50)) is False  # same again
    assert board.apply_result(result("mm-1", "flat", final=True, sent=60)) is True
    # A late or replayed record never overwrites a final one.
    assert board.apply_result(result("mm-1", "duplicate", final=True)) is False
    assert board.apply_result(result(sent=1)) is False
    assert board.rows["mm-1"].status == "flat"
    assert board.waiting_for() == ["mm-2"]
    board.apply_result(result("mm-2", "flat", final=True))
    assert board.done
    assert board.exit_code() == 0


def test_a_later_kill_under_the_same_alert_id_replaces_the_final_a_duplicate_does_not() -> None:
    # ``results`` reads every record of the alert id: a break-glass kill that reused the
    # id after the daemon answered (and the daemon's ``duplicate`` answers to re-sends
    # in between) must show the kill that did the work, not the first answer.
    board = Board("op-1", ["mm-1"])
    board.apply_result(result("mm-1", "flat", final=True, sent=0))
    assert board.apply_result(result("mm-1", "duplicate", final=True)) is False
    assert board.apply_result(result("mm-1", "flat", final=True, sent=40)) is True
    assert board.apply_result(result("mm-1", "duplicate", final=True)) is False
    assert board.apply_result(result(sent=1)) is False
    assert board.rows["mm-1"].status == "flat"
    assert board.rows["mm-1"].sent == 40
    assert board.finals["mm-1"]["counts"]["sent"] == 40


@pytest.mark.parametrize(
    ("action", "dry_run", "statuses", "code"),
    [
        ("kill", False, ["flat", "flat"], 0),
        ("kill", False, ["flat", "residual"], 1),
        ("kill", False, ["flat", "failed"], 1),
        ("kill", False, ["flat", "duplicate"], 1),
        ("kill", False, ["dry_run", "dry_run"], 1),
        ("kill", True, ["dry_run", "dry_run"], 0),
        ("kill", True, ["flat", "dry_run"], 1),
        ("release", False, ["released", "released"], 0),
        ("release", False, ["released", "flat"], 1),
    ],
)
def test_exit_code(action: Any, dry_run: bool, statuses: list[str], code: int) -> None:
    board = Board("op-1", ["a", "b"], action=action, dry_run=dry_run)
    for account, status in zip(["a", "b"], statuses, strict=True):
        board.apply_result(result(account, status, final=True))
    assert board.done
    assert board.exit_code() == code


def test_unfinished_board_fails() -> None:
    board = Board("op-1", ["a", "b"])
    board.apply_result(result("a", "flat", final=True))
    assert board.exit_code() == 1
    board.time_out()
    assert board.done
    assert board.rows["b"].status == "timed_out"
    assert board.rows["a"].status == "flat"
    assert board.exit_code() == 1


def test_unexpected_account_is_shown_but_not_waited_for() -> None:
    board = Board("op-1", ["mm-1"])
    board.apply_result(result("zz-9", "running"))
    board.apply_result(result("mm-1", "flat", final=True))
    assert board.done
    assert board.exit_code() == 0
    assert [p.account for p in board.ordered()] == ["mm-1", "zz-9"]


def test_dead_letter_refuses_every_unfinished_account() -> None:
    board = Board("op-1", ["a", "b"])
    board.apply_result(result("a", "flat", final=True))
    assert board.apply_dead_letter({"alert_id": "other", "kind": "invalid"}) is False
    dead = {"alert_id": "op-1", "kind": "unauthorized", "reason": "signature missing"}
    assert board.apply_dead_letter(dead) is True
    assert board.done
    assert board.rows["a"].status == "flat"
    assert board.rows["b"].status == "refused"
    assert board.rows["b"].reason == "unauthorized: signature missing"
    assert board.exit_code() == EXIT_REFUSED


# (statuses per account, not_found per account, dead letter?) -> exit code
@pytest.mark.parametrize(
    ("statuses", "missing", "dead", "code"),
    [
        (["flat", "flat"], [[], []], False, 0),
        (["flat", "flat"], [[], [7, 8]], False, EXIT_NOT_FOUND),
        (["flat", "residual"], [[7], []], False, EXIT_NOT_DONE),  # not done outranks not found
        (["flat", None], [[7], []], True, EXIT_REFUSED),  # refused outranks everything
        (["residual", None], [[], []], True, EXIT_REFUSED),
    ],
)
def test_exit_codes_refused_not_done_not_found(
    statuses: list[str | None], missing: list[list[int]], dead: bool, code: int
) -> None:
    board = Board("op-1", ["a", "b"])
    for account, status, ids in zip(["a", "b"], statuses, missing, strict=True):
        if status is not None:
            board.apply_result(result(account, status, final=True, not_found=ids))
    if dead:
        board.apply_dead_letter({"alert_id": "op-1", "kind": "invalid", "reason": "unknown pair"})
    assert board.done
    assert board.exit_code() == code
    assert len({0, EXIT_NOT_DONE, EXIT_REFUSED, EXIT_NOT_FOUND}) == 4
