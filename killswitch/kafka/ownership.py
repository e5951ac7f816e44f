"""Which daemon guards a halted account: the one assigned the account's alerts partition.

Alerts are keyed by account, so the producers' partitioner puts every alert for an
account on one partition of the alerts topic, and the consumer group gives that
partition to one daemon: that daemon *owns* the account. Every daemon knows every
halt (the state topic), but only the owner runs the account's latch guard, so a
halted account is re-swept once per interval across the deployment, not once per
daemon.

The decision is pure: :func:`owns` (account, partition count, assigned partitions).
The partition is computed by aiokafka's own ``DefaultPartitioner`` (murmur2 of the
UTF-8 key, modulo the partition count), the one every producer here uses, so both
sides agree by construction. :class:`Ownership` holds the current inputs for the
engine's guard filter; the intake updates it on every rebalance.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from aiokafka import TopicPartition
from aiokafka.partitioner import DefaultPartitioner

_PARTITIONER = DefaultPartitioner()


@functools.lru_cache(maxsize=4096)
def account_partition(account: str, partition_count: int) -> int:
    """The partition the default producer partitioner picks for key ``account``."""
    if partition_count < 1:
        raise ValueError(f"partition_count must be at least 1, not {partition_count}")
    # all_partitions is the sorted list of ids, as the producer passes it; the
    # available list only matters for keyless records.
    partition: int = _PARTITIONER(account.encode(), list(range(partition_count)), [])
    return partition


def owns(account: str, partition_count: int | None, assigned: Collection[int]) -> bool:
    """Whether the daemon assigned ``assigned`` (alerts partitions) guards ``account``.

    - Nothing assigned (before the first assignment, during a rebalance, after
      leaving the group): not owned. Someone else owns it, or nobody consumes
      alerts at all and the next assignment decides.
    - Partitions assigned but the partition count unknown (no metadata for the
      topic): owned. Guarding twice is better than leaving a halt unguarded.
    - Otherwise: owned when the account's partition is among ``assigned``.
    """
    if not assigned:
        return False
    if partition_count is None or partition_count < 1:
        return True
    return account_partition(account, partition_count) in assigned


@dataclass(slots=True)
class Ownership:
    """The current inputs of :func:`owns` for one topic; :meth:`owns` is the engine's filter."""

    topic: str
    partition_count: int | None = None
    assigned: frozenset[int] = field(default_factory=frozenset)

    def update(self, assignment: Iterable[TopicPartition], partition_count: int | None) -> None:
        """Take a new assignment (any topics; only this topic's partitions count).

        An unknown ``partition_count`` keeps the last one known: partition counts
        rarely change, and when they do the group rebalances and reports them again.
        """
        self.assigned = frozenset(tp.partition for tp in assignment if tp.topic == self.topic)
        if partition_count is not None:
            self.partition_count = partition_count

    def owns(self, account: str) -> bool:
        """Whether this daemon guards ``account`` now."""
        return owns(account, self.partition_count, self.assigned)
