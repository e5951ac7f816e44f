"""Which daemon guards a halted account: the owner of its alerts partition (pure)."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from killswitch.kafka.ownership import Ownership, account_partition, owns

# Kafka's own murmur2 test vectors (org.apache.kafka.common.utils.UtilsTest), signed
# 32-bit as Java returns them; the Java producer's partition is toPositive(h) % n.
JAVA_MURMUR2 = [
    ("21", -973932308),
    ("foobar", -790332482),
    ("a-little-bit-long-string", -985981536),
    ("a-little-bit-longer-string", -1486304829),
    ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    ("abc", 479470107),
]


@pytest.mark.parametrize(("key", "java_hash"), JAVA_MURMUR2)
@pytest.mark.parametrize("partitions", [1, 3, 4, 6, 12, 50])
def test_partition_matches_the_java_producer(key: str, java_hash: int, partitions: int) -> None:
    assert account_partition(key, partitions) == (java_hash & 0x7FFFFFFF) % partitions


@pytest.mark.parametrize(
    ("account", "count", "assigned", "expected"),
    [
        # nothing assigned: before the first assignment, mid-rebalance, after leaving
        ("mm-1", 4, set(), False),
        ("mm-1", None, set(), False),
        # assigned but the partition count unknown: guard rather than leave it unguarded
        ("mm-1", None, {0}, True),
        ("mm-1", 0, {0}, True),
        # a single daemon holds every partition: it guards everything
        ("mm-1", 4, {0, 1, 2, 3}, True),
        ("arb-1", 4, {0, 1, 2, 3}, True),
        ("mm-1", 1, {0}, True),
        # murmur2 % 4: mm-1 -> 1, mm-2 -> 2, arb-1 -> 3
        ("mm-1", 4, {1}, True),
        ("mm-1", 4, {0, 2, 3}, False),
        ("mm-2", 4, {2}, True),
        ("mm-2", 4, {0, 1}, False),
        ("arb-1", 4, {3}, True),
        # murmur2 % 6: mm-1 -> 1, mm-2 -> 0
        ("mm-1", 6, {1, 3, 5}, True),
        ("mm-2", 6, {1, 3, 5}, False),
        # an assignment naming partitions the metadata does not know: still by hash
        ("mm-2", 4, {7}, False),
    ],
)
def test_owns(account: str, count: int | None, assigned: set[int], expected: bool) -> None:
    assert owns(account, count, assigned) is expected


@pytest.mark.parametrize("partitions", [1, 2, 3, 4, 6, 7, 12])
@pytest.mark.parametrize("members", [1, 2, 3, 5])
def test_exactly_one_member_of_a_group_owns_each_account(partitions: int, members: int) -> None:
    # Any split of the partitions among the members (round robin here).
    assignments = [set(range(m, partitions, members)) for m in range(members)]
    for account in ["mm-1", "mm-2", "arb-1", "desk-7", "é-unicode", "*"]:
        owners = [m for m, parts in enumerate(assignments) if owns(account, partitions, parts)]
        assert len(owners) == 1, (account, assignments)


def test_account_partition_refuses_no_partitions() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        account_partition("mm-1", 0)


def test_ownership_counts_only_its_topic() -> None:
    ownership = Ownership("alerts")
    assert not ownership.owns("mm-1")  # nothing assigned yet
    ownership.update([TopicPartition("alerts", 1), TopicPartition("manual", 2)], 4)
    assert ownership.assigned == {1}
    assert ownership.owns("mm-1")
    assert not ownership.owns("mm-2")  # partition 2 of manual is not partition 2 of alerts
    ownership.update([], None)
    assert not ownership.owns("mm-1")
    ownership.update([TopicPartition("alerts", 1)], None)  # count unknown: the last one holds
    assert ownership.partition_count == 4
    assert ownership.owns("mm-1")
    assert not ownership.owns("mm-2")
