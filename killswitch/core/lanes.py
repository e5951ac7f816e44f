"""The order in which the intake takes up records it has read (pure): lanes.

Records wait in *lanes* (the intake uses one per topic and record key, which is the
account). The lane with the fewest records waiting goes first (the earliest of them
on a tie), so a record in a quiet lane is taken up before the backlog of a storm on
another account, and a storm's records are taken up one lane after another (so they
join their account's sweep together rather than trickling in). *Urgent* lanes
(manual triggers) are served before any other. A lane can be *held* (its account has
as much work in the engine as it may have): its records wait and the other lanes go
on. Within a lane records keep their order.

The lanes can also count their records by *source* (the intake's source is the
partition a record was read from): a source with nothing waiting adds nothing to
the memory the lanes hold, so backpressure need only stop reading the sources
that have records waiting.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class FairLanes(Generic[K, T]):
    """Records waiting per lane; the shortest lane first (urgent lanes before all).

    ``source`` names where a record came from; :meth:`sources` lists those with
    records waiting."""

    def __init__(self, source: Callable[[T], Hashable] | None = None) -> None:
        # Lanes with records waiting, in turn order (the next turn is the first).
        self._urgent: OrderedDict[K, deque[T]] = OrderedDict()
        self._normal: OrderedDict[K, deque[T]] = OrderedDict()
        self._count = 0
        self._source = source
        self._per_source: Counter[Hashable] = Counter()

    def __len__(self) -> int:
        return self._count

    def sources(self) -> set[Hashable]:
        """The sources with at least one record waiting (empty without ``source``)."""
        return set(self._per_source)

    def _counted(self, items: list[T], change: int) -> None:
        """Count ``items`` in (``change`` 1) or out (-1) of their sources: a storm's run
        of records shares one source, so the counter moves once per source."""
        if self._source is None:
            return
        per = self._per_source
        for source, n in Counter(map(self._source, items)).items():
            left = per[source] + change * n
            if left > 0:
                per[source] = left
            else:
                del per[source]

    def _queue(self, lane: K, urgent: bool) -> deque[T]:
        """``lane``'s records (a new lane takes its turn last)."""
        lanes = self._urgent if urgent else self._normal
        queue = lanes.get(lane)
        if queue is None:
            queue = lanes[lane] = deque()
        return queue

    def push(self, lane: K, item: T, *, urgent: bool = False) -> None:
        """Add ``item`` at the end of ``lane`` (a new lane takes its turn last)."""
        self._queue(lane, urgent).append(item)
        self._count += 1
        self._counted([item], 1)

    def extend(self, lane: K, items: list[T], *, urgent: bool = False) -> None:
        """:meth:`push` each of ``items``, in their order."""
        if not items:
            return
        self._queue(lane, urgent).extend(items)
        self._count += len(items)
        self._counted(items, 1)

    def pop(self, held: Callable[[K], bool] = lambda lane: False) -> T | None:
        """The first record of the shortest lane that is not ``held`` (urgent lanes
        first); None when every lane with records is held (or none has any)."""
        taken = self.pop_run(held, 1)
        return taken[1][0] if taken is not None else None

    def pop_run(
        self, held: Callable[[K], bool] = lambda lane: False, limit: int | Callable[[K], int] = 1
    ) -> tuple[K, list[T]] | None:
        """Up to ``limit`` records (a number, or one per lane) from the front of the
        lane :meth:`pop` would take from, with that lane; None when every lane with
        records is held (or none has any). A storm's backlog is taken up a run at a
        time, so its records can share the work done for them (one join to the
        account's sweep, one task)."""
        for lanes in (self._urgent, self._normal):
            best: tuple[K, deque[T]] | None = None
            for lane, queue in lanes.items():
                if (best is None or len(queue) < len(best[1])) and not held(lane):
                    best = (lane, queue)
                    if len(queue) == 1:
                        break  # none is shorter
            if best is None:
                continue
            lane, queue = best
            most = limit if isinstance(limit, int) else limit(lane)
            items = [queue.popleft() for _ in range(min(max(1, most), len(queue)))]
            self._count -= len(items)
            self._counted(items, -1)
            if not queue:
                del lanes[lane]
            return lane, items
        return None

    def push_back(self, lane: K, items: list[T], *, urgent: bool = False) -> None:
        """Return records taken by :meth:`pop_run` and not used to the front of their
        lane, in their order."""
        if not items:
            return
        self._queue(lane, urgent).extendleft(reversed(items))
        self._count += len(items)
        self._counted(items, 1)

    def ready(self, held: Callable[[K], bool] = lambda lane: False) -> bool:
        """Whether :meth:`pop` would return a record."""
        return any(not held(lane) for lanes in (self._urgent, self._normal) for lane in lanes)

    def drop(self, unwanted: Callable[[T], bool]) -> list[T]:
        """Remove (and return) every waiting record for which ``unwanted`` holds."""
        dropped: list[T] = []
        for lanes in (self._urgent, self._normal):
            for lane in list(lanes):
                queue = lanes[lane]
                kept = deque(item for item in queue if not unwanted(item))
                dropped.extend(item for item in queue if unwanted(item))
                if kept:
                    lanes[lane] = kept
                else:
                    del lanes[lane]
        self._count -= len(dropped)
        self._counted(dropped, -1)
        return dropped
