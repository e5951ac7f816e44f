"""When the interpreter's cycle collector may walk its middle and oldest generations.

A pass over the middle generation walks every object that survived the young
generation's recent passes; while an alert storm is taken up those are the records
waiting in lanes, and the pass, one pause of the event loop that grows with them,
delays a calm account's kill arriving meanwhile. The daemon's per-alert objects are
freed by reference counting as each group ends (they form no reference cycles: see the
``-k cycle`` tests), so such a pass finds little, and it can wait until the intake is
idle. The young generation is collected as usual throughout.

While the intake is busy the middle and oldest generations' thresholds are out of
reach. When it is idle again they are restored, and a middle pass that came due
meanwhile runs at once rather than at the next young pass, which would be the next
storm's first poll. Full passes are left to the collector's own rule at its young
passes (it skips them until what reached the oldest generation since the last one is
a quarter of what that one left there): forcing them at idle would add long pauses an
idle daemon does not have now. So a full pass can still come at the first poll of a
storm (that poll's records are made before the intake reports itself busy), as rarely
as the collector's rule allows. A busy spell longer than ``max_defer_s`` has a middle
pass every ``max_defer_s``: garbage in cycles among the young and middle generations
waits that long at most.

The thresholds are the process's: the state is kept once per process, and deferred
while any daemon in it (tests run several) is busy.
"""

from __future__ import annotations

import asyncio
import gc

# How long a busy intake may hold off a due middle-generation pass.
MAX_DEFER_S = 5.0

# A threshold never reached: the generation's count grows by one per pass of the
# generation below it.
_NEVER = 2**31 - 1


class _Deferral:
    """The process's deferral: how many pacings are busy, and what to restore."""

    def __init__(self) -> None:
        self.busy = 0
        self.saved: tuple[int, int] | None = None  # middle and oldest thresholds
        self.timer: asyncio.TimerHandle | None = None

    def hold(self, max_defer_s: float) -> None:
        loop = asyncio.get_running_loop()  # first: nothing changed if there is none
        self.busy += 1
        if self.busy > 1:
            return
        young, middle, oldest = gc.get_threshold()
        self.saved = (middle, oldest)
        gc.set_threshold(young, _NEVER, _NEVER)
        self._arm(loop, max_defer_s)

    def release(self) -> None:
        self.busy -= 1
        if self.busy > 0 or self.saved is None:
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        middle, oldest = self.saved
        self.saved = None
        gc.set_threshold(gc.get_threshold()[0], middle, oldest)
        _collect_middle(over=middle)

    def _arm(self, loop: asyncio.AbstractEventLoop, max_defer_s: float) -> None:
        self.timer = loop.call_later(max_defer_s, self._overdue, loop, max_defer_s)

    def _overdue(self, loop: asyncio.AbstractEventLoop, max_defer_s: float) -> None:
        _collect_middle(over=0)
        self._arm(loop, max_defer_s)


def _collect_middle(over: int) -> None:
    """A middle-generation pass if the young passes since the last one are over ``over``."""
    if gc.get_count()[1] > over:
        gc.collect(1)


_PROCESS = _Deferral()


class CollectorPacing:
    """One daemon's part in deferring the collector's older generations (see module)."""

    def __init__(self, max_defer_s: float = MAX_DEFER_S) -> None:
        self._max_defer_s = max_defer_s
        self._busy = False

    def set_busy(self, busy: bool) -> None:
        """The intake became busy (records waiting or being handled) or idle."""
        if busy == self._busy:
            return
        self._busy = busy
        if busy:
            _PROCESS.hold(self._max_defer_s)
        else:
            _PROCESS.release()

    def close(self) -> None:
        """The daemon's end: its part in the deferral is over."""
        self.set_busy(False)


def deferring() -> bool:
    """Whether the older generations' passes are held off now (any daemon busy)."""
    return _PROCESS.saved is not None
