"""Rate limiter: deterministic tests with an injected clock and a fake sleep (no real waiting)."""

from __future__ import annotations

import asyncio

import pytest

from killswitch.core.ports import Priority
from killswitch.ratelimit import RateLimiter


class FakeTime:
    """A clock that only moves when the limiter sleeps (or the test advances it)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def make(
    fake: FakeTime, rate: float = 10.0, burst: int = 1, concurrency: int = 100, **kw: object
) -> RateLimiter:
    return RateLimiter(rate, burst, concurrency, clock=fake, sleep=fake.sleep, **kw)  # type: ignore[arg-type]


async def settle(condition: object = None, rounds: int = 1000) -> None:
    """Let the event loop run until ``condition()`` holds (bounded; no wall-clock wait)."""
    for _ in range(rounds):
        if condition is not None and condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0)
    if condition is not None:
        raise AssertionError("condition not reached")


async def grant_times(limiter: RateLimiter, fake: FakeTime, n: int) -> list[float]:
    """Acquire-and-release ``n`` times in sequence; the fake time of each grant."""
    times = []
    for _ in range(n):
        await limiter.acquire()
        times.append(fake.now)
        limiter.release()
    return times


async def test_burst_is_immediate_then_one_token_per_interval() -> None:
    fake = FakeTime()
    limiter = make(fake, rate=10.0, burst=3)
    times = await grant_times(limiter, fake, 6)
    start = 1000.0
    assert times == pytest.approx([start, start, start, start + 0.1, start + 0.2, start + 0.3])


async def test_long_run_rate_matches_configuration() -> None:
    fake = FakeTime()
    limiter = make(fake, rate=50.0, burst=5)
    times = await grant_times(limiter, fake, 505)
    assert times[-1] - times[0] == pytest.approx(500 / 50.0)


async def test_idle_time_refills_only_up_to_burst() -> None:
    fake = FakeTime()
    limiter = make(fake, rate=10.0, burst=2)
    await grant_times(limiter, fake, 2)
    fake.now += 60.0  # long idle
    assert limiter.try_acquire()
    assert limiter.try_acquire()
    assert not limiter.try_acquire()


async def test_inflight_cap_blocks_until_release() -> None:
    fake = FakeTime()
    limiter = make(fake, rate=1000.0, burst=100, concurrency=2)
    await limiter.acquire()
    await limiter.acquire()
    third = asyncio.create_task(limiter.acquire())
    await settle()
    assert not third.done()
    assert limiter.inflight == 2
    limiter.release()
    await settle(third.done)
    assert limiter.inflight == 2


async def test_waiters_are_served_in_arrival_order() -> None:
    fake = FakeTime()
    limiter = make(fake, rate=10.0, burst=1)
    order: list[int] = []

    async def worker(i: int) -> None:
        await limiter.acquire()
        order.append(i)
        limiter.release()

    await limiter.acquire()  # empty the bucket so everyone queues
    limiter.release()
    tasks = []
    for i in range(20):
        tasks.append(asyncio.create_task(worker(i)))
        await asyncio.sleep(0)  # each one reaches the queue before the next starts
    await asyncio.gather(*tasks)
    assert order == list(range(20))


async def test_newcomer_does_not_overtake_queued_waiter() -> None:
    fake = FakeTime()
    limiter = make(fake, rate=10.0, burst=1)
    assert limiter.try_acquire()
    limiter.release()
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    fake.now += 0.1  # a token is now available, but the queued waiter owns it
    assert not limiter.try_acquire()
    await settle(waiter.done)


async def test_cancels_are_served_before_listing() -> None:
    fake = FakeTime()
    limiter = make(fake, rate=10.0, burst=1)
    order: list[str] = []

    async def worker(name: str, priority: Priority) -> None:
        await limiter.acquire(priority)
        order.append(name)
        limiter.release()

    assert limiter.try_acquire()
    limiter.release()
    tasks = [asyncio.create_task(worker(f"list{i}", Priority.LIST)) for i in range(3)]
    await asyncio.sleep(0)
    tasks += [asyncio.create_task(worker(f"cancel{i}", Priority.CANCEL)) for i in range(3)]
    await asyncio.gather(*tasks)
    assert order == ["cancel0", "cancel1", "cancel2", "list0", "list1", "list2"]


async def test_cancelled_waiter_is_skipped_and_leaks_nothing() -> None:
    fake = FakeTime()
    limiter = make(fake, rate=10.0, burst=1, concurrency=1)
    await limiter.acquire()
    first = asyncio.create_task(limiter.acquire())
    second = asyncio.create_task(limiter.acquire())
    await settle()
    first.cancel()
    await settle(first.done)
    limiter.release()
    await settle(second.done)
    assert limiter.inflight == 1
    limiter.release()
    assert limiter.inflight == 0
    assert limiter.waiting == 0


async def test_granted_then_cancelled_gives_slot_back() -> None:
    fake = FakeTime()
    limiter = make(fake, rate=1000.0, burst=10, concurrency=1)
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await settle()
    limiter.release()  # the pump grants the slot to `waiter` ...
    await settle(lambda: limiter.inflight == 1)
    waiter.cancel()  # ... which is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limiter.inflight == 0


async def test_release_without_acquire_is_an_error() -> None:
    limiter = make(FakeTime())
    with pytest.raises(RuntimeError):
        limiter.release()


async def test_slot_context_manager_releases_on_error() -> None:
    limiter = make(FakeTime(), burst=5)
    inside: list[int] = []

    async def use() -> None:
        async with limiter.slot(Priority.CANCEL):
            inside.append(limiter.inflight)
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await use()
    assert inside == [1]
    assert limiter.inflight == 0


def test_throttle_halves_rate_once_per_cooldown() -> None:
    fake = FakeTime()
    seen: list[float] = []
    limiter = make(
        fake, rate=100.0, on_rate_change=seen.append, cut_cooldown_s=1.0, decrease_factor=0.5
    )
    assert limiter.throttled()
    assert limiter.rate == 50.0
    fake.now += 0.5
    assert not limiter.throttled()  # same window of 429s: counted once
    assert limiter.rate == 50.0
    fake.now += 0.5
    assert limiter.throttled()
    assert limiter.rate == pytest.approx(25.0)
    assert seen[:2] == [50.0, 25.0]


def test_throttle_for_request_sent_before_last_cut_is_ignored() -> None:
    fake = FakeTime()
    limiter = make(fake, rate=100.0, cut_cooldown_s=0.1, increase_per_s=0.0, decrease_factor=0.5)
    sent = fake.now
    fake.now += 0.01
    assert limiter.throttled(sent_at=sent)
    fake.now += 1.0
    assert not limiter.throttled(sent_at=sent)  # old request, old rate
    assert limiter.throttled(sent_at=fake.now - 0.01)
    assert limiter.rate == 25.0


def test_rate_recovers_additively_to_the_ceiling_and_not_beyond() -> None:
    fake = FakeTime()
    seen: list[float] = []
    limiter = make(
        fake,
        rate=100.0,
        increase_per_s=10.0,
        probe_increase_per_s=10.0,
        cut_cooldown_s=1.0,
        decrease_factor=0.5,
        on_rate_change=seen.append,
    )
    limiter.throttled()
    assert limiter.rate == 50.0
    fake.now += 1.0  # cool-down: no recovery yet
    assert limiter.rate == 50.0
    fake.now += 2.0
    assert limiter.rate == pytest.approx(70.0)
    fake.now += 2.0
    assert limiter.rate == pytest.approx(90.0)
    fake.now += 100.0
    assert limiter.rate == 100.0
    assert seen[-1] == 100.0
    assert max(seen) == 100.0


def test_recovery_slows_near_the_rate_that_was_throttled() -> None:
    """Fast back to 90% of where the 429 came, then gentle probing toward the ceiling."""
    fake = FakeTime()
    limiter = make(
        fake,
        rate=1000.0,
        increase_per_s=100.0,
        probe_increase_per_s=10.0,
        cut_cooldown_s=0.0,
        decrease_factor=0.5,
    )
    fake.now += 1.0
    limiter.throttled()  # 1000 -> 500; probing starts at 900
    limiter.throttled()  # the true limit is lower: 500 -> 250; probing starts at 450
    assert limiter.rate == pytest.approx(250.0)
    fake.now += 2.0  # fast: +100/s
    assert limiter.rate == pytest.approx(450.0)
    fake.now += 2.0  # slow: +10/s
    assert limiter.rate == pytest.approx(470.0)
    fake.now += 1.0
    assert limiter.rate == pytest.approx(480.0)
    fake.now += 1000.0
    assert limiter.rate == 1000.0  # never above the ceiling, but it gets there


def test_rate_never_drops_below_floor() -> None:
    fake = FakeTime()
    limiter = make(fake, rate=10.0, min_rate=2.0, cut_cooldown_s=0.0, increase_per_s=0.0)
    for _ in range(10):
        fake.now += 0.001
        limiter.throttled()
    assert limiter.rate == 2.0


def test_throttle_empties_bucket_and_shrinks_burst() -> None:
    fake = FakeTime()
    limiter = make(fake, rate=100.0, burst=10, increase_per_s=0.0, decrease_factor=0.5)
    limiter.throttled()
    assert not limiter.try_acquire()  # bucket emptied
    fake.now += 10.0
    granted = 0
    while limiter.try_acquire():
        granted += 1
        limiter.release()
    assert granted == 5  # burst scaled with the halved rate


async def test_queued_waiters_slow_down_after_cut() -> None:
    fake = FakeTime()
    limiter = make(fake, rate=10.0, burst=1, increase_per_s=0.0, decrease_factor=0.5)
    times = await grant_times(limiter, fake, 3)
    assert times[2] - times[1] == pytest.approx(0.1)
    limiter.throttled()
    times = await grant_times(limiter, fake, 3)
    assert times[2] - times[1] == pytest.approx(0.2)


async def test_close_cancels_queued_waiters() -> None:
    fake = FakeTime()
    limiter = make(fake, concurrency=1)
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await settle()
    await limiter.close()
    with pytest.raises(asyncio.CancelledError):
        await waiter


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0, 1, 1)
    with pytest.raises(ValueError):
        RateLimiter(1, 1, 1, decrease_factor=1.0)
