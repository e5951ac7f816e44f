"""Per-API-key rate limiter: token bucket, in-flight cap, priorities, AIMD on 429.

One :class:`RateLimiter` per account, shared by every call made with that API key
(listing and cancelling alike), because the exchange counts them against one budget.

- **Token bucket.** Tokens refill at the current rate up to a capacity of ``burst``
  (scaled down with the rate while throttled); a request takes one token.
- **In-flight cap.** At most ``max_concurrency`` requests hold a slot at once; a slot is
  taken with the token and given back by :meth:`RateLimiter.release`.
- **Fair, with priorities.** Waiters are served strictly in arrival order within a
  priority, and every waiting cancel (``Priority.CANCEL``) before any waiting listing.
  A newcomer never overtakes a queued waiter (the fast path is only taken when nobody
  waits). Strict priority could starve listing only while cancels keep arriving; a
  sweep's cancels are finite and it lists after them, so that is what we want.
- **AIMD.** :meth:`RateLimiter.throttled` (a 429) multiplies the rate by
  ``decrease_factor`` and empties the bucket. A burst of 429s caused by one window of
  requests counts once: a cut is ignored within ``cut_cooldown_s`` of the previous one,
  or when the throttled request was sent before the previous cut. After the cool-down
  the rate grows back linearly, ``increase_per_s`` per second, never above the ceiling.
  Near the rate that drew the last 429 (above ``probe_fraction`` of it) growth slows to
  ``probe_increase_per_s``: the limiter remembers where the exchange's real limit was
  and probes it gently instead of overshooting it again at full speed. This is what
  lets a ceiling configured above the true limit still run close to that limit.

Time is injected (``clock``, ``sleep``) so tests are deterministic and never sleep.
The fast path (token and slot free, nobody waiting) is a few float operations and no
allocation; waiting is done by one short-lived pump task per limiter, not by polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable

from killswitch.core.ports import Priority

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


class RateLimiter:
    """Token bucket plus in-flight cap with AIMD, for one API key.

    ``rate`` is the ceiling in requests per second (and the starting rate), ``burst``
    the bucket size, ``max_concurrency`` the in-flight cap. ``min_rate`` is the floor
    for cuts (default: ceiling / 100, at least 0.1/s), ``increase_per_s`` the additive
    recovery per second (default: ceiling / 10), ``probe_increase_per_s`` the slower
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
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        on_rate_change: RateCallback | None = None,
    ) -> None:
        if rate <= 0 or burst < 1 or max_concurrency < 1:
            raise ValueError("rate must be > 0, burst and max_concurrency >= 1")
        if not 0 < decrease_factor < 1:
            raise ValueError("decrease_factor must be between 0 and 1")
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
        self._inflight = 0
        # One FIFO per priority, indexed by the Priority value (lower is served first).
        self._queues: tuple[deque[asyncio.Future[None]], ...] = tuple(deque() for _ in Priority)
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

    def try_acquire(self) -> bool:
        """Take a token and a slot now if both are free and nobody waits; else False."""
        if self._waiting or self._inflight >= self._max_inflight:
            return False
        self._refill(self._clock())
        if self._tokens < _ONE:
            return False
        self._tokens -= 1.0
        self._inflight += 1
        return True

    async def acquire(self, priority: Priority = Priority.LIST) -> None:
        """Wait for a token and an in-flight slot; call :meth:`release` when done."""
        if self.try_acquire():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queues[priority].append(future)
        self._waiting += 1
        if self._pump_task is None:
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
    async def slot(self, priority: Priority = Priority.LIST) -> AsyncIterator[None]:
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
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for queue in self._queues:
            while queue:
                queue.popleft().cancel()
        self._waiting = 0

    # -- AIMD -------------------------------------------------------------------------

    def throttled(self, sent_at: float | None = None) -> bool:
        """Record a 429. Returns True when it cut the rate (at most once per cool-down).

        ``sent_at`` is the limiter-clock time the throttled request was sent; a 429
        for a request sent before the last cut was caused by the old rate and is ignored.
        """
        now = self._clock()
        self._refill(now)
        if now - self._last_cut < self._cooldown:
            return False
        if sent_at is not None and sent_at < self._last_cut:
            return False
        self._probe_from = self._rate * self._probe_fraction
        self._rate = max(self._min_rate, self._rate * self._decrease)
        self._last_cut = now
        self._tokens = min(self._tokens, 0.0)
        self._notify(force=True)
        return True

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
        self._tokens = min(self._capacity(), self._tokens + elapsed * self._rate)

    def _recover(self, previous: float, now: float) -> None:
        start = max(previous, self._last_cut + self._cooldown)
        if now <= start:
            return
        elapsed = now - start
        rate = self._rate
        if rate < self._probe_from and self._increase > 0:  # far below the known limit
            fast = min(elapsed, (self._probe_from - rate) / self._increase)
            rate += self._increase * fast
            elapsed -= fast
        rate += self._probe_increase * elapsed
        self._rate = min(self._ceiling, rate)
        self._notify(force=self._rate >= self._ceiling)

    def _notify(self, *, force: bool) -> None:
        callback = self._on_rate_change
        if callback is None:
            return
        if force or abs(self._rate - self._notified_rate) >= _NOTIFY_STEP * self._ceiling:
            self._notified_rate = self._rate
            callback(self._rate)

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
                self._refill(self._clock())
                if self._tokens < _ONE:
                    await self._sleep((1.0 - self._tokens) / self._rate)
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
