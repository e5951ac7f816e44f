"""When the interpreter's cycle collector may walk its older generations.

A pass over the middle generation walks every object that survived the young
generation's recent passes; while an alert storm is taken up those are the records
waiting in lanes, thousands of them, and one pass holds the event loop for tens of
milliseconds: a calm account's kill arriving then waits for it. The daemon's
per-alert objects are freed by reference counting as each group ends (no reference
cycles: see the ``-k cycle`` tests), so what those passes would find is little, and
they can wait until the intake is idle. The young generation is still collected as
usual, and a busy spell longer than ``max_defer_s`` has a middle-generation pass
every ``max_defer_s``: garbage in reference cycles waits that long at most.
"""

from __future__ import annotations

import asyncio
import gc

# How long the intake's being busy may hold off a middle-generation pass.
MAX_DEFER_S = 5.0

# A middle-generation threshold never reached: only young passes run meanwhile (the
# threshold counts young passes, and the oldest generation's count grows only with
# middle passes, so it waits too).
_NEVER = 2**31 - 1


class CollectorPacing:
    """Defers the collector's older generations while the intake is busy (see module)."""

    def __init__(self, max_defer_s: float = MAX_DEFER_S) -> None:
        self._max_defer_s = max_defer_s
        self._middle: int | None = None  # the threshold to restore while deferring
        self._timer: asyncio.TimerHandle | None = None

    @property
    def deferring(self) -> bool:
        return self._middle is not None

    def busy(self, busy: bool) -> None:
        """The intake became busy (records waiting or being handled) or idle."""
        if not busy:
            self.restore()
        elif self._middle is None:
            young, middle, old = gc.get_threshold()
            self._middle = middle
            gc.set_threshold(young, _NEVER, old)
            self._start_timer()

    def restore(self) -> None:
        """The collector's own thresholds back (idle, or the daemon's end): the next
        young pass is followed by the middle generation's if one is due."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._middle is None:
            return
        young, _, old = gc.get_threshold()
        gc.set_threshold(young, self._middle, old)
        self._middle = None

    def _start_timer(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._max_defer_s, self._overdue)

    def _overdue(self) -> None:
        """Busy for ``max_defer_s``: the middle generation is collected now, and its
        passes are deferred again."""
        gc.collect(1)
        self._start_timer()
