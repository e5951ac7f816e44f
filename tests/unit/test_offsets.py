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
    assert tracker.done("p0", 1, 0)
    assert tracker.to_commit() == {}  # offset 0 still running: nothing new
    assert tracker.done("p0", 0, 0)
    assert tracker.to_commit() == {"p0": 2}
    assert tracker.to_commit(["p1"]) == {}
    tracker.committed({"p0": 2})
    assert tracker.to_commit() == {}
    assert tracker.pending() == 1
    assert tracker.pending("p1") == 1


def test_dropped_partitions_are_forgotten_and_late_done_ignored() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.read("p0", 10)
    epoch = tracker.epoch("p0")
    tracker.drop(["p0"])
    assert not tracker.done("p0", 10, epoch)  # the task finished after revocation: ignored
    assert tracker.to_commit() == {}
    assert tracker.partitions() == []
    # reassigned later: the replay starts a fresh partition state
    assert tracker.read("p0", 10) is True


def test_a_record_read_before_its_log_was_made_again_does_not_count_for_the_new_one() -> None:
    """Offsets forgotten while a record of the old log still runs (its topic made again):
    the new log's record at the same offset stays unfinished when the old one finishes."""
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.read("p0", 0)
    tracker.read("p0", 1)
    old = tracker.epoch("p0")
    assert tracker.done("p0", 0, old)
    tracker.drop(["p0"])  # made again: the new log is read from offset 0
    new = tracker.epoch("p0")
    assert new != old
    tracker.read("p0", 0)
    tracker.read("p0", 1)
    assert not tracker.done("p0", 1, old)  # the old log's offset 1 finishing
    assert not tracker.done("p0", 0, old)
    assert tracker.position("p0") == 0
    assert tracker.pending("p0") == 2
    assert tracker.done("p0", 0, new)
    assert tracker.to_commit() == {"p0": 1}  # not past the new log's offset 1


def test_a_revoked_partitions_record_does_not_count_for_its_replay_after_reassignment() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.read("p0", 10)
    tracker.read("p1", 3)
    before = tracker.epoch("p0")
    tracker.drop(["p0"])  # revoked, and given back: the replay reads 10 again
    assert tracker.read("p0", 10)
    assert not tracker.done("p0", 10, before)
    assert tracker.to_commit(["p0"]) == {"p0": 10}
    # Each partition has its own epoch: p1 was not forgotten.
    assert tracker.epoch("p1") == 0
    assert tracker.done("p1", 3, 0)
    assert tracker.to_commit(["p1"]) == {"p1": 4}


def test_every_forgetting_starts_a_new_epoch() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    epochs = [tracker.epoch("p0")]
    for _ in range(3):
        tracker.drop(["p0"])  # tracked or not, the offsets read before no longer count
        epochs.append(tracker.epoch("p0"))
    assert len(set(epochs)) == 4
    tracker.read("p0", 0)
    assert not any(tracker.done("p0", 0, e) for e in epochs[:-1])
    assert tracker.done("p0", 0, epochs[-1])


def test_committed_never_moves_backwards() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.read("p", 0)
    tracker.done("p", 0, 0)
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


@given(
    st.sets(st.integers(min_value=0, max_value=19)),
    st.permutations(list(range(20))),
    st.integers(min_value=0, max_value=20),
)
def test_a_forgotten_epochs_done_never_moves_the_position(
    old_done: set[int], order: list[int], finished: int
) -> None:
    """Whatever the old log's records finish, in any order among the new log's, the
    position is the new log's first unfinished offset."""
    tracker: OffsetTracker[str] = OffsetTracker()
    for offset in range(20):
        tracker.read("p", offset)
    old = tracker.epoch("p")
    tracker.drop(["p"])
    new = tracker.epoch("p")
    for offset in range(20):
        tracker.read("p", offset)
    done = order[:finished]
    for offset in done:
        if offset in old_done:
            tracker.done("p", offset, old)
        tracker.done("p", offset, new)
    for offset in old_done:
        tracker.done("p", offset, old)
    unfinished = set(range(20)) - set(done)
    assert tracker.position("p") == (min(unfinished) if unfinished else 20)
