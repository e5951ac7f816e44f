"""Per-API-key rate limiter: token bucket, in-flight cap, priorities, AIMD on 429.

One :class:`RateLimiter` per account, shared by every call made with that API key
(listing and cancelling alike), because the exchange counts them against one budget.

- **Token bucket.** Tokens refill at the current rate up to a capacity of ``burst``
  (scaled down with the rate while throttled); a request takes one token.
- **In-flight cap.** At most ``max_concurrency`` requests hold a slot at once; a slot is
  taken with the token and given back by :meth:`RateLimiter.release`.
- **Fair, with priorities.** Waiters are served strictly in arrival order within a
  priority, and every waiting cancel (``RequestPriority.CANCEL``) before any waiting listing.
  A newcomer never overtakes a queued waiter of its own or a higher priority (the fast
  path is only taken when none waits). Strict priority could starve listing only while
  cancels keep arriving; a sweep's cancels are finite and it lists after them, so that
  is what we want.
- **AIMD, one cut per throttle window.** :meth:`RateLimiter.throttled` (a 429)
  multiplies the rate by ``decrease_factor`` and empties the bucket. The 429s of one
  throttle window are one congestion event: a 429 does not cut again when the
  throttled request was sent before the previous cut (it was sent at the old rate),
  within ``cut_cooldown_s`` of the previous cut, or during a known ``Retry-After``
  pause. With ``Retry-After`` the limiter **pauses every request** of the key until the
  window ends (nothing is sent into a closed window).
- **Back to the last good rate.** Each congestion event remembers the last rate that
  held without 429s: the rate in force before the window when the exchange announced
  a new window (``Retry-After``), otherwise the rate the exchange was seen to accept
  (requests accepted in the trailing second, :meth:`RateLimiter.accepted`), at least
  the rate after the cut. Further cuts while nothing gets through (a closed window)
  lower the rate but not that memory; a cut after the exchange accepted some requests
  at the lowered rate says the rate itself is too high, and lowers it. After a cut the
  rate climbs back to the last good rate within ``restore_s`` (a second), then as
  before: ``increase_per_s`` up to ``probe_fraction`` of the rate that drew the 429,
  then ``probe_increase_per_s`` (gentle probing of the limit it has learnt), never
  above the ceiling. This is what brings a sliding-window limit back to its rate
  instead of leaving the limiter at the floor after the window's burst of 429s.

Time is injected (``clock``, ``sleep``) so tests are deterministic and never sleep.
The fast path (token and slot free, nobody of the same or a higher priority waiting) is
a few float operations and no allocation; waiting is done by one short-lived pump task
per limiter, not by polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable

from killswitch.core.ports import RequestPriority
from killswitch.tasks import cancel_and_wait

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
RateCallback = Callable[[float], None]

# Report rate changes to the observer in steps of at least this share of the
# ceiling (and always on a cut and on reaching the ceiling): the gauge stays
# accurate without a call on every request during recovery.
_NOTIFY_STEP = 0.01
# Float slack when comparing tokens with 1: refilling after sleeping exactly the
# computed wait can land a hair below 1.0.
_ONE = 1.0 - 1e-9
# 429s closer together than this belong to one congestion event.
_EVENT_GAP_S = 1.0
# The trailing span over which accepted requests measure what the exchange takes.
_MEASURE_S = 1.0


class RateLimiter:
    """Token bucket plus in-flight cap with AIMD, for one API key.

    ``rate`` is the ceiling in requests per second (and the starting rate), ``burst``
    the bucket size, ``max_concurrency`` the in-flight cap. ``min_rate`` is the floor
    for cuts (default: ceiling / 100, at least 0.1/s), ``restore_s`` how long the climb
    back to the last good rate takes at most, ``increase_per_s`` the additive recovery
    per second above it (default: ceiling / 10), ``probe_increase_per_s`` the slower
    recovery above ``probe_fraction`` of the last throttled rate (default: a tenth of
    ``increase_per_s``).
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        max_concurrency: int,
        *,
        min_rate: float | None = None,
        decrease_factor: float = 0.7,
        increase_per_s: float | None = None,
        probe_fraction: float = 0.9,
        probe_increase_per_s: float | None = None,
        cut_cooldown_s: float = 0.05,
        restore_s: float = 1.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        on_rate_change: RateCallback | None = None,
    ) -> None:
        if rate <= 0 or burst < 1 or max_concurrency < 1:
            raise ValueError("rate must be > 0, burst and max_concurrency >= 1")
        if not 0 < decrease_factor < 1:
            raise ValueError("decrease_factor must be between 0 and 1")
        if restore_s <= 0:
            raise ValueError("restore_s must be > 0")
        self._ceiling = float(rate)
        self._min_rate = min(self._ceiling, min_rate or max(self._ceiling / 100, 0.1))
        self._decrease = decrease_factor
        self._increase = increase_per_s if increase_per_s is not None else self._ceiling / 10
        self._probe_fraction = probe_fraction
        self._probe_increase = (
            probe_increase_per_s if probe_increase_per_s is not None else self._increase / 10
        )
        # Probing starts here; +inf until the first 429 (no known limit yet).
        self._probe_from = math.inf
        self._cooldown = cut_cooldown_s
        self._restore_s = restore_s
        # The last rate that held without 429s, and how fast to climb back to it.
        self._good = self._ceiling
        self._restore_speed = 0.0
        self._burst = float(burst)
        self._max_inflight = max_concurrency
        self._clock = clock
        self._sleep = sleep
        self._on_rate_change = on_rate_change

        self._rate = self._ceiling
        self._notified_rate = self._ceiling
        self._tokens = self._burst
        self._stamp = clock()
        self._last_cut = -math.inf
        self._last_429 = -math.inf
        # Send times of the latest request accepted and the latest refused 429: which
        # came later says whether the key is throttled now (see throttling).
        self._last_accepted_sent = -math.inf
        self._last_429_sent = -math.inf
        # End of the throttle window the exchange announced (Retry-After): no token
        # is handed out before it.
        self._pause_until = -math.inf
        self._accepted_since_cut = False
        # Send times of recently accepted requests (the trailing second): what the
        # exchange was seen to accept when the next 429 comes.
        self._accepts: deque[float] = deque()
        self._inflight = 0
        # One FIFO per priority, indexed by the RequestPriority value (lower is served first).
        self._queues: tuple[deque[asyncio.Future[None]], ...] = tuple(
            deque() for _ in RequestPriority
        )
        self._waiting = 0  # futures in the queues, including cancelled ones not yet popped
        self._pump_task: asyncio.Task[None] | None = None
        self._slot_freed: asyncio.Future[None] | None = None

    # -- observable state -------------------------------------------------------------

    @property
    def rate(self) -> float:
        """The current rate in requests per second (after cuts and recovery)."""
        self._refill(self._clock())
        return self._rate

    @property
    def good_rate(self) -> float:
        """The last rate that held without 429s (where recovery returns to first)."""
        return self._good

    @property
    def paused_until(self) -> float:
        """Limiter-clock end of the announced throttle window (``-inf`` when none)."""
        return self._pause_until

    @property
    def throttling(self) -> bool:
        """Whether the exchange throttles this key now: within a pause it announced
        (``Retry-After``), or the latest request sent that was answered got a 429."""
        return self._clock() < self._pause_until or self._last_429_sent > self._last_accepted_sent

    @property
    def ceiling(self) -> float:
        """The configured rate, which recovery never exceeds."""
        return self._ceiling

    @property
    def inflight(self) -> int:
        """Requests holding a slot now."""
        return self._inflight

    @property
    def waiting(self) -> int:
        """Callers queued for a slot (may briefly include cancelled ones)."""
        return self._waiting

    # -- acquiring and releasing ------------------------------------------------------

    def try_acquire(self, priority: RequestPriority = RequestPriority.LIST) -> bool:
        """Take a token and a slot now if both are free and nobody of the same or a higher
        priority waits; else False.

        A waiter of a lower priority does not hold back a higher one: the pump would
        serve the newcomer first anyway (a cancel before a waiting listing), and taking
        the fast path spares it the queue and a task switch.
        """
        if self._inflight >= self._max_inflight or (self._waiting and self._ahead(priority)):
            return False
        self._refill(self._clock())
        if self._tokens < _ONE:
            return False
        self._tokens -= 1.0
        self._inflight += 1
        return True

    async def acquire(self, priority: RequestPriority = RequestPriority.LIST) -> None:
        """Wait for a token and an in-flight slot; call :meth:`release` when done."""
        if self.try_acquire(priority):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queues[priority].append(future)
        self._waiting += 1
        if self._pump_task is None:
            # The limiter's own helper, not a task group's: it lives only while waiters
            # queue (it ends when none is left), serves every caller, and close() stops it.
            self._pump_task = asyncio.create_task(self._pump(), name="ratelimit-pump")
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted just as we were cancelled: give the slot back
            raise

    def release(self) -> None:
        """Give back the in-flight slot taken by :meth:`acquire` or :meth:`try_acquire`."""
        if self._inflight <= 0:
            raise RuntimeError("release() without a matching acquire()")
        self._inflight -= 1
        freed = self._slot_freed
        if freed is not None and not freed.done():
            freed.set_result(None)

    @contextlib.asynccontextmanager
    async def slot(self, priority: RequestPriority = RequestPriority.LIST) -> AsyncIterator[None]:
        """``async with limiter.slot(priority):`` acquire, then release on exit."""
        await self.acquire(priority)
        try:
            yield
        finally:
            self.release()

    async def close(self) -> None:
        """Stop the pump task (waiters still queued are cancelled)."""
        task = self._pump_task
        if task is not None:
            await cancel_and_wait(task)
        for queue in self._queues:
            while queue:
                queue.popleft().cancel()
        self._waiting = 0

    # -- AIMD -------------------------------------------------------------------------

    def accepted(self, sent_at: float) -> None:
        """Record an answer that was not a 429 for a request sent at ``sent_at``
        (limiter clock): what the exchange accepts is measured from these."""
        self._accepted_since_cut = True
        self._last_accepted_sent = max(self._last_accepted_sent, sent_at)
        accepts = self._accepts
        accepts.append(sent_at)
        horizon = sent_at - _MEASURE_S
        while accepts and accepts[0] < horizon:
            accepts.popleft()

    def throttled(self, sent_at: float | None = None, retry_after: float | None = None) -> bool:
        """Record a 429. Returns True when it cut the rate (once per throttle window).

        ``sent_at`` is the limiter-clock time the throttled request was sent; a 429
        for a request sent before the last cut was caused by the old rate and is
        ignored. ``retry_after`` (seconds, from the answer's ``Retry-After``) pauses
        every request of this key until the window ends; 429s during that pause do not
        cut again.
        """
        now = self._clock()
        self._refill(now)
        paused = now < self._pause_until
        if retry_after is not None and retry_after > 0:
            end = now + retry_after
            # Within a known pause a later answer bounds the same window's end more
            # tightly (Retry-After in whole seconds is rounded up).
            self._pause_until = min(self._pause_until, end) if paused else end
            self._tokens = min(self._tokens, 0.0)
        previous_429, self._last_429 = self._last_429, now
        sent = now if sent_at is None else sent_at
        self._last_429_sent = max(self._last_429_sent, sent)
        if paused or now - self._last_cut < self._cooldown:
            return False
        if sent_at is not None and sent_at < self._last_cut:
            return False
        # A 429 soon after the last one, or soon after an announced pause ended, is the
        # same congestion going on (e.g. the rate restored after a pause is too high).
        quiet_since = max(previous_429, self._pause_until)
        self._cut(now, new_event=now - quiet_since > _EVENT_GAP_S, announced=retry_after)
        return True

    def _cut(self, now: float, *, new_event: bool, announced: float | None) -> None:
        before = self._rate
        self._rate = max(self._min_rate, before * self._decrease)
        if new_event and announced is not None:
            # An announced window: the rate before it held (the exchange closed, it
            # did not refuse our pace).
            self._good = before
            self._probe_from = before * self._probe_fraction
        elif new_event or self._accepted_since_cut:
            # Refused while some got through: the exchange's limit is about what it
            # accepted in the last second (never below the cut rate).
            held = min(before, self._accepted_in(now))
            if announced is not None:
                # Our own pace drew a pause: overshooting again costs a whole pause, so
                # come back a little below what got through and probe up from there.
                held *= self._probe_fraction
            self._good = max(self._rate, held)
            self._probe_from = before * self._probe_fraction
        # else: nothing got through since the last cut (a closed window): keep the
        # memory of the good rate, only the current pace drops.
        self._good = max(self._good, self._rate)
        self._restore_speed = (self._good - self._rate) / self._restore_s
        self._last_cut = now
        self._accepted_since_cut = False
        self._tokens = min(self._tokens, 0.0)
        self._notify(force=True)

    def _accepted_in(self, now: float) -> float:
        """Requests accepted in the trailing second (by send time), per second."""
        accepts = self._accepts
        horizon = now - _MEASURE_S
        while accepts and accepts[0] < horizon:
            accepts.popleft()
        return len(accepts) / _MEASURE_S

    # -- internals --------------------------------------------------------------------

    def _capacity(self) -> float:
        # Throttled, the burst shrinks with the rate: a full bucket at the ceiling's
        # burst would re-trigger the 429 we just backed off from.
        return max(1.0, self._burst * self._rate / self._ceiling)

    def _refill(self, now: float) -> None:
        elapsed = now - self._stamp
        if elapsed <= 0.0:
            return
        previous = self._stamp
        self._stamp = now
        if self._rate < self._ceiling:
            self._recover(previous, now)
        if now <= self._pause_until:
            return  # a closed window: no tokens
        if previous < self._pause_until:
            elapsed = now - self._pause_until
        self._tokens = min(self._capacity(), self._tokens + elapsed * self._rate)

    def _recover(self, previous: float, now: float) -> None:
        start = max(previous, self._last_cut + self._cooldown)
        if now <= start:
            return
        elapsed = now - start
        rate = self._rate
        if rate < self._good and self._restore_speed > 0:  # back to the last good rate
            needed = (self._good - rate) / self._restore_speed
            if elapsed >= needed:
                rate = self._good
                elapsed -= needed
            else:
                rate += self._restore_speed * elapsed
                elapsed = 0.0
        if rate < self._probe_from and self._increase > 0:  # far below the known limit
            fast = min(elapsed, (self._probe_from - rate) / self._increase)
            rate += self._increase * fast
            elapsed -= fast
        rate += self._probe_increase * elapsed
        self._rate = min(self._ceiling, rate)
        self._notify(force=self._rate >= self._ceiling)

    def _wait_s(self, now: float) -> float:
        """How long until a token can be handed out (the pause, then the refill)."""
        wait = (1.0 - self._tokens) / self._rate
        if now < self._pause_until:
            wait += self._pause_until - now
        return wait

    def _notify(self, *, force: bool) -> None:
        callback = self._on_rate_change
        if callback is None:
            return
        if force or abs(self._rate - self._notified_rate) >= _NOTIFY_STEP * self._ceiling:
            self._notified_rate = self._rate
            callback(self._rate)

    def _ahead(self, priority: RequestPriority) -> bool:
        """Someone waits at ``priority`` or a higher one (cancelled ones may count)."""
        return any(self._queues[level] for level in range(priority + 1))

    def _pop_waiter(self) -> asyncio.Future[None] | None:
        for queue in self._queues:
            while queue:
                future = queue.popleft()
                self._waiting -= 1
                if not future.done():  # cancelled waiters are skipped here, lazily
                    return future
        return None

    def _head_alive(self) -> bool:
        for queue in self._queues:
            while queue and queue[0].done():
                queue.popleft()
                self._waiting -= 1
            if queue:
                return True
        return False

    async def _pump(self) -> None:
        """Serve queued waiters in order until none is left, then end."""
        loop = asyncio.get_running_loop()
        try:
            while self._head_alive():
                if self._inflight >= self._max_inflight:
                    self._slot_freed = loop.create_future()
                    await self._slot_freed
                    self._slot_freed = None
                    continue
                now = self._clock()
                self._refill(now)
                if self._tokens < _ONE or now < self._pause_until:
                    await self._sleep(self._wait_s(now))
                    continue
                future = self._pop_waiter()
                if future is None:
                    break
                self._tokens -= 1.0
                self._inflight += 1
                future.set_result(None)
        finally:
            self._slot_freed = None
            self._pump_task = None
