"""Which input offsets may be committed (pure): at-least-once bookkeeping per partition.

An offset is *read* when the consumer hands out its record and *done* when the
record's final result (or dead letter) is published. The commit position of a
partition is the first offset not yet done: every earlier record is finished,
so a crash replays only unfinished work (and perhaps finished work after it,
which the dedup window answers with ``duplicate``). Offsets need not be
contiguous (compaction, transaction markers): only records handed out count.

A partition's offsets are forgotten when it is revoked, or when its log was made
again (numbered from 0 anew); records read before may still be running then. Each
forgetting starts a new *epoch* of the partition: a record is marked done with the
epoch it was read in, and a done from an earlier epoch is ignored. Otherwise a record
of the old log finishing late would mark done the record of the new log at the same
offset, and the commit could pass that record before its result is published.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(slots=True)
class PartitionOffsets:
    """Read and done offsets of one partition."""

    highest_read: int | None = None
    committed: int | None = None  # last position handed to commit (next offset to read)
    _pending: set[int] = field(default_factory=set)
    _heap: list[int] = field(default_factory=list)  # min-heap over pending (lazy deletion)

    def read(self, offset: int) -> bool:
        """Record a record handed out; False for an offset at or below one already read."""
        if self.highest_read is not None and offset <= self.highest_read:
            return False
        self.highest_read = offset
        self._pending.add(offset)
        heapq.heappush(self._heap, offset)
        return True

    def done(self, offset: int) -> None:
        """The record at ``offset`` is finished (its final output is published)."""
        if offset not in self._pending:
            raise KeyError(f"offset {offset} was not read or is already done")
        self._pending.remove(offset)
        while self._heap and self._heap[0] not in self._pending:
            heapq.heappop(self._heap)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def position(self) -> int | None:
        """The commit position: first unfinished offset, else one past the highest read."""
        if self._heap:
            return self._heap[0]
        if self.highest_read is None:
            return None
        return self.highest_read + 1

    def to_commit(self) -> int | None:
        """The position to commit if it moved since the last commit, else None."""
        pos = self.position()
        if pos is None or (self.committed is not None and pos <= self.committed):
            return None
        return pos


@dataclass(slots=True)
class OffsetTracker(Generic[K]):
    """:class:`PartitionOffsets` for every assigned partition (key: e.g. a TopicPartition),
    and each partition's epoch (see the module's docstring)."""

    _parts: dict[K, PartitionOffsets] = field(default_factory=dict)
    # Per partition: how many times its offsets were forgotten (kept across forgetting).
    _epochs: dict[K, int] = field(default_factory=dict)

    def read(self, key: K, offset: int) -> bool:
        """Record a read in the current epoch (see :meth:`PartitionOffsets.read`)."""
        return self.partition(key).read(offset)

    def epoch(self, key: K) -> int:
        """The partition's current epoch: what a record read now is marked done with."""
        return self._epochs.get(key, 0)

    def partition(self, key: K) -> PartitionOffsets:
        """The offsets of partition ``key`` (tracked from now on if they were not)."""
        part = self._parts.get(key)
        if part is None:
            part = self._parts[key] = PartitionOffsets()
        return part

    def done(self, key: K, offset: int, epoch: int) -> bool:
        """Mark the record at ``offset``, read in ``epoch``, done. False, and ignored,
        when the partition's offsets were forgotten since it was read (an earlier epoch)
        or it was not read or is done already."""
        part = self._parts.get(key)
        if epoch != self.epoch(key) or part is None or offset not in part._pending:
            return False
        part.done(offset)
        return True

    def to_commit(self, keys: Iterable[K] | None = None) -> dict[K, int]:
        """Positions that moved since their last commit (all partitions, or ``keys``)."""
        chosen = (
            self._parts if keys is None else {k: self._parts[k] for k in keys if k in self._parts}
        )
        out: dict[K, int] = {}
        for key, part in chosen.items():
            pos = part.to_commit()
            if pos is not None:
                out[key] = pos
        return out

    def committed(self, positions: dict[K, int]) -> None:
        """Record that ``positions`` were committed."""
        for key, pos in positions.items():
            part = self._parts.get(key)
            if part is not None and (part.committed is None or pos > part.committed):
                part.committed = pos

    def position(self, key: K) -> int | None:
        """The commit position of one partition (None before its first record)."""
        part = self._parts.get(key)
        return part.position() if part is not None else None

    def pending(self, key: K | None = None) -> int:
        """Unfinished records of one partition, or of all."""
        if key is not None:
            part = self._parts.get(key)
            return part.pending if part else 0
        return sum(p.pending for p in self._parts.values())

    def drop(self, keys: Iterable[K]) -> None:
        """Forget partitions (revoked, or their log made again): their unfinished records
        belong to the next owner, or to a log that is gone. Each starts a new epoch, so
        records read before do not count for the offsets read from now on."""
        for key in keys:
            self._parts.pop(key, None)
            self._epochs[key] = self.epoch(key) + 1

    def partitions(self) -> list[K]:
        return list(self._parts)
