"""The event loop lag probe reports how late the loop runs timers."""

from __future__ import annotations

import asyncio
import time

from killswitch.looplag import watch_loop_lag
from tests.support.waiting import wait_for


class Lags:
    def __init__(self) -> None:
        self.values: list[float] = []

    def alert_read(self, source: str, result: str, count: int = 1) -> None:
        pass

    def dlq(self, reason: str) -> None:
        pass

    def output_refused(self, output: str) -> None:
        pass

    def deadman_fired(self, source: str) -> None:
        pass

    def consumer_lag(self, topic: str, partition: int, lag: int) -> None:
        pass

    def loop_lag(self, seconds: float) -> None:
        self.values.append(seconds)


async def test_a_blocked_loop_shows_up_as_lag_and_the_probe_stops() -> None:
    lags = Lags()
    stop = asyncio.Event()
    probe = asyncio.create_task(watch_loop_lag(lags, stop, interval_s=0.01))
    await wait_for(lambda: len(lags.values) >= 2)
    assert all(v >= 0 for v in lags.values)
    before = len(lags.values)
    time.sleep(0.2)  # noqa: ASYNC251 - deliberately stalls the loop under test
    await wait_for(lambda: len(lags.values) > before)
    assert max(lags.values[before:]) >= 0.15
    stop.set()
    await asyncio.wait_for(probe, timeout=1)
