"""The dedup window (pure): per account, replay versus re-use, bounded memory."""

from __future__ import annotations

import pytest

from killswitch.core.dedup import DedupWindow, Seen
from killswitch.core.model import Position

P1 = Position("killswitch.alerts", 0, 10)
P2 = Position("killswitch.alerts", 0, 11)


def seen(
    window: DedupWindow, alert_id: str, accounts: list[str], origin: Position = P1
) -> list[Seen]:
    return [v.seen for v in window.decide(alert_id, accounts, origin).accounts]


def test_new_then_in_flight_then_done() -> None:
    w = DedupWindow(10)
    assert seen(w, "a", ["mm-1"]) == [Seen.NEW]
    w.start("a", "mm-1", P1)
    assert seen(w, "a", ["mm-1"]) == [Seen.IN_FLIGHT]
    w.finish("a", "mm-1", "flat", P1)
    decision = w.decide("a", ["mm-1"], P1)
    assert decision.accounts[0].seen is Seen.DONE
    assert decision.accounts[0].previous_status == "flat"
    assert decision.all_repeats


def test_crash_between_accounts_resweeps_only_the_unfinished_one() -> None:
    w = DedupWindow(10)
    w.learn("a", "mm-1", "flat", P1)  # rebuilt from the results topic
    decision = w.decide("a", ["mm-1", "mm-2"], P1)
    assert [v.seen for v in decision.accounts] == [Seen.DONE, Seen.NEW]
    assert not decision.all_repeats
    assert not decision.reused


@pytest.mark.parametrize(
    ("first", "again", "reused"),
    [(P1, P1, False), (P1, P2, True), (None, P2, False), (P1, None, False)],
)
def test_reuse_means_another_position(
    first: Position | None, again: Position | None, reused: bool
) -> None:
    w = DedupWindow(10)
    w.finish("a", "mm-1", "flat", first)
    assert w.decide("a", ["mm-1"], again).reused is reused


def test_forget_in_flight_lets_a_replay_sweep_again() -> None:
    w = DedupWindow(10)
    w.start("a", "mm-1", P1)
    w.forget_in_flight("a", "mm-1")
    assert seen(w, "a", ["mm-1"]) == [Seen.NEW]
    w.finish("a", "mm-1", "flat", P1)
    w.forget_in_flight("a", "mm-1")  # no effect on finished work
    assert seen(w, "a", ["mm-1"]) == [Seen.DONE]


def test_a_duplicate_result_never_hides_the_original_status() -> None:
    w = DedupWindow(10)
    w.learn("a", "mm-1", "residual", P1)
    w.learn("a", "mm-1", "duplicate", P2)
    assert w.status("a", "mm-1") == "residual"
    w.learn("b", "mm-1", "duplicate", P2)  # original evicted or never seen
    assert w.status("b", "mm-1") == "duplicate"


def test_window_is_bounded_oldest_first() -> None:
    w = DedupWindow(3)
    for i in range(5):
        w.finish(f"a{i}", "mm-1", "flat", Position("t", 0, i))
    assert len(w) == 3
    assert "a0" not in w
    assert "a1" not in w
    assert "a4" in w
    assert seen(w, "a0", ["mm-1"]) == [Seen.NEW]


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        DedupWindow(0)
