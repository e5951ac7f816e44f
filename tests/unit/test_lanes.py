"""FairLanes: the order in which the intake takes up the records it has read."""

from __future__ import annotations

from typing import TypeVar

from killswitch.core.lanes import FairLanes

T = TypeVar("T")


def drain(lanes: FairLanes[str, T], held: frozenset[str] = frozenset()) -> list[T]:
    out: list[T] = []
    while (item := lanes.pop(lambda lane: lane in held)) is not None:
        out.append(item)
    return out


def test_the_shortest_lane_goes_first_and_lanes_keep_their_order() -> None:
    lanes: FairLanes[str, str] = FairLanes()
    for i in range(4):
        lanes.push("storm", f"s{i}")
    lanes.push("quiet", "q0")
    assert len(lanes) == 5
    # The quiet lane's record comes before the storm's backlog.
    assert drain(lanes) == ["q0", "s0", "s1", "s2", "s3"]
    assert len(lanes) == 0


def test_storm_lanes_are_taken_up_one_after_another() -> None:
    lanes: FairLanes[str, str] = FairLanes()
    for i in range(3):
        lanes.push("a", f"a{i}")
        lanes.push("b", f"b{i}")
    # A tie goes to the earlier lane, which is then the shortest until it is empty.
    assert drain(lanes) == ["a0", "a1", "a2", "b0", "b1", "b2"]


def test_urgent_lanes_come_first() -> None:
    lanes: FairLanes[str, str] = FairLanes()
    lanes.push("storm", "s0")
    lanes.push("storm", "s1")
    lanes.push("manual", "m0", urgent=True)
    assert drain(lanes) == ["m0", "s0", "s1"]


def test_a_held_lane_waits_and_the_others_go_on() -> None:
    lanes: FairLanes[str, str] = FairLanes()
    lanes.push("storm", "s0")
    lanes.push("storm", "s1")
    lanes.push("quiet", "q0")
    assert lanes.ready(lambda lane: lane == "storm")
    assert drain(lanes, frozenset({"storm"})) == ["q0"]
    assert not lanes.ready(lambda lane: lane == "storm")
    assert len(lanes) == 2
    assert drain(lanes) == ["s0", "s1"]


def test_drop_removes_matching_records_only() -> None:
    lanes: FairLanes[str, tuple[int, str]] = FairLanes()
    lanes.push("a", (0, "a0"))
    lanes.push("a", (1, "a1"))
    lanes.push("b", (1, "b0"), urgent=True)
    dropped = lanes.drop(lambda item: item[0] == 1)
    assert sorted(dropped) == [(1, "a1"), (1, "b0")]
    assert len(lanes) == 1
    assert lanes.pop() == (0, "a0")
    assert lanes.pop() is None


def test_records_are_counted_by_source_while_they_wait() -> None:
    lanes: FairLanes[str, tuple[str, int]] = FairLanes(source=lambda item: item[0])
    assert lanes.sources() == set()
    lanes.push("a", ("p0", 1))
    lanes.push("a", ("p1", 2))
    lanes.push("b", ("p1", 3), urgent=True)
    assert lanes.sources() == {"p0", "p1"}
    assert lanes.pop() == ("p1", 3)  # urgent first; p1 still has one waiting
    assert lanes.sources() == {"p0", "p1"}
    assert lanes.drop(lambda item: item[0] == "p1") == [("p1", 2)]
    assert lanes.sources() == {"p0"}
    assert lanes.pop() == ("p0", 1)
    assert lanes.sources() == set()


def test_a_run_comes_from_one_lane_in_order_and_the_shortest_lane_still_goes_first() -> None:
    lanes: FairLanes[str, str] = FairLanes()
    for i in range(5):
        lanes.push("storm", f"s{i}")
    lanes.push("quiet", "q0")
    assert lanes.pop_run(limit=3) == ("quiet", ["q0"])
    assert lanes.pop_run(limit=3) == ("storm", ["s0", "s1", "s2"])
    assert len(lanes) == 2
    assert lanes.pop_run(lambda lane: lane == "storm", limit=3) is None
    assert lanes.pop_run(limit=3) == ("storm", ["s3", "s4"])
    assert lanes.pop_run(limit=3) is None
    assert len(lanes) == 0


def test_records_pushed_back_go_first_in_their_lane_again() -> None:
    lanes: FairLanes[str, str] = FairLanes(source=lambda item: item[0])
    for i in range(4):
        lanes.push("storm", f"s{i}")
    lane, items = lanes.pop_run(limit=4) or ("", [])
    lanes.push("storm", "s4")
    lanes.push_back(lane, items[2:])
    assert len(lanes) == 3
    assert lanes.sources() == {"s"}
    assert drain(lanes) == ["s2", "s3", "s4"]


def test_extend_is_push_of_each_record_in_order() -> None:
    pushed: FairLanes[str, tuple[str, int]] = FairLanes(source=lambda item: item[0])
    extended: FairLanes[str, tuple[str, int]] = FairLanes(source=lambda item: item[0])
    batches = [
        ("a", [("p0", 1), ("p0", 2), ("p0", 3)], False),
        ("b", [("p1", 4)], False),
        ("m", [("p2", 5), ("p2", 6)], True),
        ("a", [("p1", 7)], False),
        ("c", [], False),
    ]
    for lane, items, urgent in batches:
        for item in items:
            pushed.push(lane, item, urgent=urgent)
        extended.extend(lane, items, urgent=urgent)
    assert len(extended) == len(pushed) == 7
    assert extended.sources() == pushed.sources() == {"p0", "p1", "p2"}
    assert (
        drain(extended)
        == drain(pushed)
        == [
            ("p2", 5),
            ("p2", 6),
            ("p1", 4),
            ("p0", 1),
            ("p0", 2),
            ("p0", 3),
            ("p1", 7),
        ]
    )
    assert extended.sources() == set()
