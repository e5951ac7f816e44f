"""The halt latch's guard: how fast it lists, which pair next, and how fast it reacts.

While an account is halted its guard lists the pairs in the halt's scope one at a
time, continuously, spending a *share* of the account's request budget (requests per
second). Listing one pair is one request, so one round over ``pairs`` pairs takes
``pairs / (share * budget)`` seconds; an order placed right after its pair was listed
is seen at that pair's next listing and its cancel follows one round trip later:

    reaction bound = pairs / (share * budget) + round trip

while a listing answers within ``1 / (share * budget)``; the guard lists one pair at a
time, so with slower listings each step takes a round trip instead (see
:func:`reaction_bound_s`).

(e.g. 5 pairs, budget 10/s, share 0.5: 5 / 5 = 1 s per round, plus the round trip).

Pure decisions only; the engine (:mod:`killswitch.engine.engine`) does the I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

# A pair where orders were found or cancelled within this many seconds is "recent":
# a strategy that placed orders there is the one most likely to place them again.
RECENT_S = 60.0
# Weight of a faster round-trip sample in the running estimate.
ROUND_TRIP_WEIGHT = 0.2


def guard_rate(budget: float, share: float) -> float:
    """Guard listings per second: ``share`` of the account's ``budget`` (requests/s)."""
    if budget <= 0 or not 0 < share <= 1:
        raise ValueError("budget must be > 0 and share in (0, 1]")
    return budget * share


def listing_interval_s(budget: float, share: float) -> float:
    """Seconds between the starts of two guard listings at the guard's rate."""
    return 1.0 / guard_rate(budget, share)


def next_listing_at(previous_start: float | None, interval: float) -> float:
    """When the next guard step may start (loop clock; compare with now).

    Paced from the previous step's *start*, so the step's own round trip is not added
    to the interval: one listing per ``interval``, the whole share and no more. A
    step that found orders also cancels them and lists the pair once more to verify;
    those requests are not charged to the share (they are what the guard is for, and
    charging them would stretch the round past the bound).
    """
    if previous_start is None:
        return -math.inf
    return previous_start + interval


def reaction_bound_s(pairs: int, budget: float, share: float, round_trip_s: float) -> float:
    """Longest time from an order placed on a halted account to its cancel being sent.

    One round of listings plus one round trip (the listing that finds the order
    answers, then the cancel goes out). The guard lists one pair at a time, so a
    listing slower than the interval stretches each step of the round to its round
    trip: a round is ``pairs * max(interval, round trip)``.
    """
    if pairs < 0 or round_trip_s < 0:
        raise ValueError("pairs and round_trip_s must be >= 0")
    step = max(listing_interval_s(budget, share), round_trip_s)
    return pairs * step + round_trip_s


def round_trip_estimate(previous: float | None, sample: float) -> float:
    """The round trip the bound assumes: up at once to a slower sample, down slowly.

    A bound is worth more when it errs long: one slow listing (a busy exchange, a late
    event loop) counts in full, and fast ones bring the figure down a fraction at a time.
    """
    sample = max(0.0, sample)
    if previous is None:
        return sample
    return max(sample, previous + ROUND_TRIP_WEIGHT * (sample - previous))


def is_recent(activity: Mapping[str, float], pair: str, now: float) -> bool:
    """Whether orders were found or cancelled on ``pair`` within :data:`RECENT_S`."""
    seen = activity.get(pair)
    return seen is not None and now - seen <= RECENT_S


def next_pair(
    pairs: Sequence[str],
    last_listed: Mapping[str, float],
    activity: Mapping[str, float],
    *,
    now: float,
    interval: float,
    started: float,
) -> str | None:
    """The pair the guard lists next; None when there is none.

    Every pair is due one round (``len(pairs) * interval``) after its last listing
    (a pair never listed: one round after ``started``), and pairs are listed in that
    order, so no pair waits longer than a round: the reaction bound holds. Within
    that, pairs with recent orders (``activity``: when orders were last found or
    cancelled there) go first: the most recent one whose listing now leaves every
    other pair on time (a pair listed since its orders were seen waits its turn). At
    the guard's start every pair has a whole round of slack,
    so the recent pairs are listed first, most recent first.
    """
    if not pairs:
        return None
    span = len(pairs) * interval

    def due(pair: str) -> float:
        return last_listed.get(pair, started) + span

    def newest(pair: str) -> float:
        return -activity[pair] if is_recent(activity, pair, now) else math.inf

    # Ties: a pair never listed before one just listed, then the most recent orders.
    ordered = sorted(pairs, key=lambda p: (due(p), last_listed.get(p, -math.inf), newest(p), p))
    recent = sorted((p for p in ordered if _worth_early(p, last_listed, activity, now)), key=newest)
    for pair in recent:
        index = ordered.index(pair)
        # Listing it first delays each pair ahead of it by one interval.
        if all(now + (k + 1) * interval <= due(ordered[k]) for k in range(index)):
            return pair
    return ordered[0]


def _worth_early(
    pair: str, last_listed: Mapping[str, float], activity: Mapping[str, float], now: float
) -> bool:
    """Recent orders there, and not listed since they were seen."""
    if not is_recent(activity, pair, now):
        return False
    listed = last_listed.get(pair)
    return listed is None or listed <= activity[pair]
