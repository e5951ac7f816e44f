"""Rate limiter: deterministic tests with an injected clock and a fake sleep (no real waiting)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import pytest

from killswitch.core.ports import RequestPriority
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


async def settle(condition: Callable[[], object] | None = None, rounds: int = 1000) -> None:
    """Let the event loop run until ``condition()`` holds (bounded; no wall-clock wait)."""
    for _ in range(rounds):
        if condition is not None and condition():
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

    async def worker(name: str, priority: RequestPriority) -> None:
        await limiter.acquire(priority)
        order.append(name)
        limiter.release()

    assert limiter.try_acquire()
    limiter.release()
    tasks = [asyncio.create_task(worker(f"list{i}", RequestPriority.LIST)) for i in range(3)]
    await asyncio.sleep(0)
    tasks += [asyncio.create_task(worker(f"cancel{i}", RequestPriority.CANCEL)) for i in range(3)]
    await asyncio.gather(*tasks)
    assert order == ["cancel0", "cancel1", "cancel2", "list0", "list1", "list2"]


async def test_a_cancel_takes_a_free_slot_past_a_waiting_listing() -> None:
    """A waiting listing holds back listings, not cancels: the pump would serve a cancel
    first anyway, so it takes a free slot and token at once (no queue, no task switch)."""
    fake = FakeTime()
    limiter = make(fake, rate=1000.0, burst=10, concurrency=1)
    assert limiter.try_acquire(RequestPriority.CANCEL)
    listing = asyncio.create_task(limiter.acquire(RequestPriority.LIST))
    await settle(lambda: limiter.waiting == 1)
    limiter.release()  # the slot is free; the pump has not run yet
    assert not limiter.try_acquire(RequestPriority.LIST)  # a listing queues behind the listing
    assert limiter.try_acquire(RequestPriority.CANCEL)
    assert limiter.waiting == 1
    assert not listing.done()
    limiter.release()
    await settle(listing.done)
    assert limiter.inflight == 1
    assert limiter.waiting == 0
    limiter.release()


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
        async with limiter.slot(RequestPriority.CANCEL):
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


def test_throttling_is_the_latest_answer_or_an_announced_pause() -> None:
    fake = FakeTime()
    limiter = make(fake, rate=100.0)
    assert not limiter.throttling
    first = fake.now
    limiter.accepted(first)
    assert not limiter.throttling
    fake.now += 0.1
    limiter.throttled(sent_at=fake.now - 0.01)
    assert limiter.throttling  # the latest request answered got a 429
    limiter.accepted(first)  # a late answer to an earlier request says nothing new
    assert limiter.throttling
    limiter.accepted(fake.now)
    assert not limiter.throttling  # a later request got through
    fake.now += 0.1
    limiter.throttled(sent_at=fake.now - 0.01, retry_after=2.0)
    limiter.accepted(fake.now)
    assert limiter.throttling  # the exchange's pause lasts
    fake.now += 2.0
    assert not limiter.throttling


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
    limiter.accepted(fake.now)  # some got through at 500 ...
    limiter.throttled()  # ... and still 429s: the true limit is lower: 500 -> 250, probing at 450
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


# -- throttle windows: one cut per window, Retry-After pauses, back to the last good rate


def test_retry_after_cuts_once_and_pauses_every_request_until_the_window_ends() -> None:
    fake = FakeTime()
    limiter = make(fake, rate=150.0, burst=10, decrease_factor=0.7)
    sent = fake.now
    fake.now += 0.01
    assert limiter.throttled(sent_at=sent, retry_after=3.0)
    assert limiter.rate == pytest.approx(105.0)
    # Every other 429 of the window, even for requests sent after the cut: no cut.
    for _ in range(50):
        fake.now += 0.01
        assert not limiter.throttled(sent_at=fake.now - 0.001, retry_after=3.0)
    assert not limiter.try_acquire()  # nothing is sent into the closed window
    fake.now = sent + 2.9
    assert not limiter.try_acquire()
    fake.now = sent + 3.02
    assert limiter.try_acquire()  # the window is over
    limiter.release()
    # The window was announced: the rate in force before it held and is back.
    assert limiter.good_rate == pytest.approx(150.0)
    assert limiter.rate == pytest.approx(150.0)


def test_a_later_retry_after_in_the_same_window_tightens_its_end() -> None:
    fake = FakeTime()
    limiter = make(fake, rate=100.0)
    assert limiter.throttled(sent_at=fake.now, retry_after=3.0)  # ends at +3.0
    fake.now += 0.6
    limiter.throttled(sent_at=fake.now, retry_after=3.0)  # rounded up: bounds the end at +3.6
    assert limiter.paused_until == pytest.approx(1003.0)
    fake.now += 0.6
    limiter.throttled(sent_at=fake.now, retry_after=1.0)  # the tighter bound wins
    assert limiter.paused_until == pytest.approx(1002.2)


async def test_queued_waiters_wait_out_the_pause() -> None:
    fake = FakeTime()
    limiter = make(fake, rate=100.0, burst=1)
    limiter.throttled(sent_at=fake.now, retry_after=2.0)
    times = await grant_times(limiter, fake, 3)
    assert times[0] >= 1002.0
    assert times[2] - times[0] < 0.1  # at the restored rate, not at the cut one


def test_closed_window_without_retry_after_keeps_the_good_rate() -> None:
    """429 after 429 with nothing getting through: the pace drops, the memory does not."""
    fake = FakeTime()
    limiter = make(fake, rate=150.0, decrease_factor=0.7, increase_per_s=0.0)
    for _ in range(150):  # a second at 150/s, all accepted
        limiter.accepted(fake.now)
        fake.now += 1 / 150
    assert limiter.throttled(sent_at=fake.now - 0.001)
    first_good = limiter.good_rate
    assert first_good == pytest.approx(150.0, rel=0.02)
    cuts = 0
    for _ in range(30):  # the rest of a 3 s window, every answer a 429
        fake.now += 0.1
        cuts += limiter.throttled(sent_at=fake.now - 0.001)
    assert cuts > 1  # requests sent after a cut and still refused cut again
    assert limiter.good_rate == first_good
    low = limiter.rate
    # The window ends: the exchange accepts again, and within about a second the
    # limiter is back at the rate that held before the window.
    fake.now += 0.2
    limiter.accepted(fake.now)
    assert low < limiter.rate
    fake.now += 1.0
    assert limiter.rate == pytest.approx(first_good, rel=0.01)


def test_a_429_after_some_got_through_lowers_the_good_rate() -> None:
    """Refused while others are accepted: the exchange's limit is what it accepts."""
    fake = FakeTime()
    limiter = make(fake, rate=200.0, decrease_factor=0.7, increase_per_s=0.0)
    for _ in range(100):
        limiter.accepted(fake.now)
        fake.now += 0.01
    assert limiter.throttled(sent_at=fake.now)
    assert limiter.good_rate == pytest.approx(140.0)  # never below the cut rate
    for _ in range(60):
        limiter.accepted(fake.now)
        fake.now += 1 / 60
    fake.now += 0.5
    assert limiter.throttled(sent_at=fake.now)
    assert limiter.good_rate < 140.0


def exchange_sliding_window(limit: int, window_s: float) -> Callable[[float], bool]:
    """A sliding-window rate limit: at most ``limit`` accepted in any trailing window."""
    accepted: deque[float] = deque()

    def answer(now: float) -> bool:
        while accepted and accepted[0] <= now - window_s:
            accepted.popleft()
        if len(accepted) >= limit:
            return False  # refused requests do not count
        accepted.append(now)
        return True

    return answer


def exchange_token_bucket(rate: float, burst: float) -> Callable[[float], bool]:
    state = {"tokens": burst, "at": 0.0}

    def answer(now: float) -> bool:
        state["tokens"] = min(burst, state["tokens"] + (now - state["at"]) * rate)
        state["at"] = now
        if state["tokens"] < 1:
            return False
        state["tokens"] -= 1
        return True

    return answer


async def drive(
    limiter: RateLimiter,
    fake: FakeTime,
    exchange: Callable[[float], bool],
    seconds: float,
    retry_after: float | None = None,
) -> list[float]:
    """Send back to back through the limiter for ``seconds``; the accepted send times.
    ``retry_after``: every 429 carries it."""
    accepted: list[float] = []
    end = fake.now + seconds
    while fake.now < end:
        await limiter.acquire(RequestPriority.CANCEL)
        sent = fake.now
        fake.now += 0.002  # the round trip
        if exchange(sent):
            limiter.accepted(sent)
            accepted.append(sent)
        else:
            limiter.throttled(sent_at=sent, retry_after=retry_after)
        limiter.release()
    return accepted


@pytest.mark.parametrize("ceiling", [60.0, 100.0, 200.0])
async def test_a_sliding_window_limit_runs_near_its_rate(ceiling: float) -> None:
    fake = FakeTime()
    limiter = make(fake, rate=ceiling, burst=10, concurrency=1)
    accepted = await drive(limiter, fake, exchange_sliding_window(60, 1.0), 30.0)
    late = [t for t in accepted if t >= fake.now - 20.0]
    assert len(late) / 20.0 >= 0.8 * 60  # not stuck low after the first window's 429s
    assert limiter.rate >= 0.6 * 60


@pytest.mark.parametrize("ceiling", [100.0, 300.0])
async def test_a_token_bucket_limit_runs_near_its_rate(ceiling: float) -> None:
    fake = FakeTime()
    limiter = make(fake, rate=ceiling, burst=10, concurrency=1)
    accepted = await drive(limiter, fake, exchange_token_bucket(60.0, 10.0), 30.0)
    late = [t for t in accepted if t >= fake.now - 20.0]
    assert len(late) / 20.0 >= 0.8 * 60


@pytest.mark.parametrize("kind", ["token_bucket", "sliding_window"])
async def test_a_per_key_limit_announcing_retry_after_is_not_overshot_forever(kind: str) -> None:
    """Every overshoot of a per-key limit costs a 1 s pause: a 429 soon after a pause is
    the same congestion, so the rate comes back below what got through, not above."""
    fake = FakeTime()
    limiter = make(fake, rate=100.0, burst=10, concurrency=1)
    exchange = (
        exchange_token_bucket(60.0, 10.0)
        if kind == "token_bucket"
        else exchange_sliding_window(60, 1.0)
    )
    accepted = await drive(limiter, fake, exchange, 30.0, retry_after=1.0)
    late = [t for t in accepted if t >= fake.now - 20.0]
    assert len(late) / 20.0 >= 0.75 * 60
