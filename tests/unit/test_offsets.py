"""The at-least-once offset tracker (pure, table-driven)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from killswitch.core.offsets import OffsetTracker, PartitionOffsets

# (events, expected commit position): "rN" reads offset N, "dN" marks it done.
CASES = [
    ([], None),
    (["r0"], 0),
    (["r0", "d0"], 1),
    (["r0", "r1", "r2", "d1"], 0),
    (["r0", "r1", "r2", "d1", "d0"], 2),
    (["r0", "r1", "r2", "d2", "d1", "d0"], 3),
    (["r5", "r9", "d5"], 9),  # gaps (compaction, transaction markers) are fine
    (["r5", "r9", "d9"], 5),
    (["r5", "r9", "d9", "d5"], 10),
    (["r0", "d0", "r1"], 1),
]


def play(events: list[str]) -> PartitionOffsets:
    part = PartitionOffsets()
    for event in events:
        kind, offset = event[0], int(event[1:])
        if kind == "r":
            part.read(offset)
        else:
            part.done(offset)
    return part


@pytest.mark.parametrize(("events", "position"), CASES)
def test_commit_position_is_the_first_unfinished_offset(
    events: list[str], position: int | None
) -> None:
    assert play(events).position() == position


def test_rereading_an_offset_is_refused() -> None:
    part = play(["r3", "r4"])
    assert part.read(4) is False
    assert part.read(2) is False
    assert part.read(5) is True
    assert part.pending == 3


def test_done_twice_or_unread_is_an_error() -> None:
    part = play(["r1", "d1"])
    with pytest.raises(KeyError):
        part.done(1)
    with pytest.raises(KeyError):
        part.done(7)


def test_to_commit_only_when_the_position_moved() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.read("p0", 0)
    tracker.read("p0", 1)
    tracker.read("p1", 0)
    assert tracker.to_commit() == {"p0": 0, "p1": 0}
    tracker.committed({"p0": 0, "p1": 0})
    assert tracker.to_commit() == {}
    tracker.done("p0", 1)
    assert tracker.to_commit() == {}  # offset 0 still running: nothing new
    tracker.done("p0", 0)
    assert tracker.to_commit() == {"p0": 2}
    assert tracker.to_commit(["p1"]) == {}
    tracker.committed({"p0": 2})
    assert tracker.to_commit() == {}
    assert tracker.pending() == 1
    assert tracker.pending("p1") == 1


def test_dropped_partitions_are_forgotten_and_late_done_ignored() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.read("p0", 10)
    tracker.drop(["p0"])
    tracker.done("p0", 10)  # the task finished after revocation: ignored
    assert tracker.to_commit() == {}
    assert tracker.partitions() == []
    # reassigned later: the replay starts a fresh partition state
    assert tracker.read("p0", 10) is True


def test_committed_never_moves_backwards() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.read("p", 0)
    tracker.done("p", 0)
    tracker.committed({"p": 1})
    tracker.committed({"p": 0})
    tracker.read("p", 1)
    assert tracker.to_commit() == {}


@given(st.permutations(list(range(30))), st.integers(min_value=0, max_value=30))
def test_position_never_passes_an_unfinished_offset(order: list[int], finished: int) -> None:
    part = PartitionOffsets()
    for offset in range(30):
        part.read(offset)
    done = order[:finished]
    for offset in done:
        part.done(offset)
    position = part.position()
    assert position is not None
    unfinished = set(range(30)) - set(done)
    # everything below the position is done; the position itself is unfinished (or the end)
    assert all(o >= position for o in unfinished)
    assert position == (min(unfinished) if unfinished else 30)


def test_a_partitions_offsets_are_the_trackers_own() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    part = tracker.partition("p0")
    assert part.read(5)
    assert not tracker.read("p0", 5)  # the tracker saw the read made through its partition
    assert tracker.partition("p0") is part
    assert tracker.to_commit() == {"p0": 5}
