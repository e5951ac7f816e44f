"""bench.storm's lag-0 stamp: never early, and end offsets asked only once the committed
offsets reach the last ends seen."""

from __future__ import annotations

import time
from collections.abc import Mapping

from bench.storm import at_end, first_lag_zero


def test_at_end_needs_every_partition_at_its_end() -> None:
    assert at_end({0: 10, 1: 7}, {0: 10, 1: 7})
    assert not at_end({0: 10, 1: 6}, {0: 10, 1: 7})
    assert not at_end({0: 10}, {0: 10, 1: 7})  # nothing committed on partition 1 yet
    assert at_end({0: 3}, {})


class Offsets:
    """Scripted committed offsets per poll, and the true end offsets after each poll."""

    def __init__(self, committed: list[dict[int, int]], ends: list[dict[int, int]]) -> None:
        self.script = committed
        self.true_ends = ends
        self.polls = 0
        self.ends_asked_after: list[int] = []  # the poll each ends() request followed
        self.polled_at: list[float] = []

    async def committed(self) -> Mapping[int, int]:
        self.polled_at.append(time.perf_counter())
        self.polls += 1
        return self.script[self.polls - 1]

    async def ends(self) -> Mapping[int, int]:
        self.ends_asked_after.append(self.polls)
        return self.true_ends[self.polls - 1]


async def test_stamps_the_first_poll_at_the_true_end_asking_ends_only_to_confirm() -> None:
    # Partition 0's end moves from 10 to 12 (a calm kill) as its committed offset reaches 10.
    committed = [{0: 5, 1: 5}, {0: 8, 1: 5}, {0: 10, 1: 5}, {0: 11, 1: 5}, {0: 12, 1: 5}]
    ends = [{0: 10, 1: 5}, {0: 10, 1: 5}, {0: 12, 1: 5}, {0: 12, 1: 5}, {0: 12, 1: 5}]
    offsets = Offsets(committed, ends)

    stamp = await first_lag_zero(offsets.committed, offsets.ends, every=0)

    assert offsets.polls == 5
    assert offsets.ends_asked_after == [1, 3, 5]
    assert offsets.polled_at[4] <= stamp


async def test_never_stamps_while_a_partition_is_behind() -> None:
    committed = [{0: 10, 1: 4}, {0: 10, 1: 4}, {0: 10, 1: 5}]
    ends = [{0: 10, 1: 5}] * 3
    offsets = Offsets(committed, ends)

    stamp = await first_lag_zero(offsets.committed, offsets.ends, every=0)

    assert offsets.polls == 3
    assert offsets.ends_asked_after == [1, 3]
    assert offsets.polled_at[2] <= stamp
