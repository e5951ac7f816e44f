"""The latch guard's pure decisions: pace, next pair, reaction bound."""

from __future__ import annotations

import math

import pytest

from killswitch.core.latch import (
    RECENT_S,
    guard_rate,
    listing_interval_s,
    next_listing_at,
    next_pair,
    reaction_bound_s,
    round_trip_estimate,
)

PAIRS = ["A_USDT", "B_USDT", "C_USDT", "D_USDT", "E_USDT"]


# ------------------------------------------------------------------------- pacing


def test_the_guard_spends_its_share_of_the_budget() -> None:
    assert guard_rate(10.0, 0.5) == 5.0
    assert listing_interval_s(10.0, 0.5) == pytest.approx(0.2)
    assert listing_interval_s(100.0, 1.0) == pytest.approx(0.01)


@pytest.mark.parametrize(("budget", "share"), [(0.0, 0.5), (10.0, 0.0), (10.0, 1.5)])
def test_a_budget_or_share_out_of_range_is_refused(budget: float, share: float) -> None:
    with pytest.raises(ValueError, match="share"):
        guard_rate(budget, share)


def test_the_first_listing_goes_at_once() -> None:
    assert next_listing_at(None, 0.2) == -math.inf


def test_listings_are_paced_from_the_previous_start_not_slept_after_it() -> None:
    # Started at 10.0 and took 0.15 s: the next may start at 10.2, not at 10.35.
    assert next_listing_at(10.0, 0.2) == pytest.approx(10.2)


# ------------------------------------------------------------------- the bound


def test_reaction_bound_is_one_round_of_listings_plus_a_round_trip() -> None:
    # The figure: 5 pairs, 10/s, half of it: 1 s per round.
    assert reaction_bound_s(5, 10.0, 0.5, 0.0) == pytest.approx(1.0)
    assert reaction_bound_s(5, 10.0, 0.5, 0.004) == pytest.approx(1.004)
    assert reaction_bound_s(40, 100.0, 0.25, 0.02) == pytest.approx(1.62)
    assert reaction_bound_s(0, 10.0, 0.5, 0.01) == pytest.approx(0.01)


def test_reaction_bound_with_listings_slower_than_the_interval() -> None:
    # 22 pairs at 200/s with share 0.5 would be 0.22 s a round, but one listing at a
    # time taking 60 ms makes the round 22 x 60 ms: 1.32 s, plus the cancel's 60 ms.
    assert reaction_bound_s(22, 200.0, 0.5, 0.06) == pytest.approx(1.38)


def test_reaction_bound_refuses_negative_input() -> None:
    with pytest.raises(ValueError, match="pairs"):
        reaction_bound_s(-1, 10.0, 0.5, 0.0)


def test_round_trip_rises_at_once_and_falls_slowly() -> None:
    first = round_trip_estimate(None, 0.01)
    assert first == pytest.approx(0.01)
    slow = round_trip_estimate(first, 0.11)
    assert slow == pytest.approx(0.11)
    assert round_trip_estimate(slow, 0.01) == pytest.approx(0.09)
    assert round_trip_estimate(None, -1.0) == 0.0


# --------------------------------------------------------------- pair ordering


def pick(
    last: dict[str, float],
    activity: dict[str, float],
    now: float,
    pairs: list[str] | None = None,
    started: float = 0.0,
) -> str | None:
    return next_pair(
        pairs if pairs is not None else PAIRS,
        last,
        activity,
        now=now,
        interval=0.2,
        started=started,
    )


def test_no_pairs_no_listing() -> None:
    assert pick({}, {}, 0.0, pairs=[]) is None


def test_at_the_start_recent_pairs_go_first_most_recent_first() -> None:
    activity = {"D_USDT": 5.0, "B_USDT": 8.0, "E_USDT": 9.0 - RECENT_S - 1}  # E is stale
    order: list[str] = []
    last: dict[str, float] = {}
    now = 10.0
    for _ in PAIRS:
        pair = pick(last, activity, now, started=10.0)
        assert pair is not None
        order.append(pair)
        last[pair] = now
        now += 0.2
    assert order == ["B_USDT", "D_USDT", "A_USDT", "C_USDT", "E_USDT"]


def test_without_activity_pairs_go_round_robin() -> None:
    last: dict[str, float] = {}
    now, order = 0.0, []
    for _ in range(2 * len(PAIRS)):
        pair = pick(last, {}, now)
        assert pair is not None
        order.append(pair)
        last[pair] = now
        now += 0.2
    assert order == PAIRS + PAIRS


def test_no_pair_waits_longer_than_a_round_whatever_the_activity() -> None:
    # Orders keep appearing on B: it may go early only while every other pair stays
    # within one round (5 x 0.2 s) of its last listing.
    last: dict[str, float] = {}
    gaps: dict[str, float] = {}
    now = 0.0
    for step in range(200):
        activity = {"B_USDT": now, "D_USDT": now - 1.0 if step % 3 else now}
        pair = pick(last, activity, now)
        assert pair is not None
        previous = last.get(pair, 0.0)
        gaps[pair] = max(gaps.get(pair, 0.0), now - previous)
        last[pair] = now
        now += 0.2
    assert set(gaps) == set(PAIRS)
    assert max(gaps.values()) <= len(PAIRS) * 0.2 + 1e-9


def test_a_recent_pair_with_slack_jumps_the_queue() -> None:
    # Every pair was listed recently (due well after now): the recent one goes first.
    last = dict.fromkeys(PAIRS, 10.0)
    assert pick(last, {"E_USDT": 10.1}, 10.2) == "E_USDT"


def test_a_recent_pair_waits_when_going_first_would_make_another_late() -> None:
    # A is due now: listing E first would make A late.
    last = {"A_USDT": 9.2, "B_USDT": 9.4, "C_USDT": 9.6, "D_USDT": 9.8, "E_USDT": 10.0}
    assert pick(last, {"E_USDT": 10.1}, 10.2) == "A_USDT"
