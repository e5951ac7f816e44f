"""Event loop lag: how late a timer fires. A stalled loop delays Kafka group
heartbeats (rebalances, duplicates) and every sweep, so it is a metric."""

from __future__ import annotations

import asyncio

from killswitch.core.ports import AlertObserver


async def watch_loop_lag(
    observer: AlertObserver, stop: asyncio.Event, interval_s: float = 0.1
) -> None:
    """Report the loop's lag every ``interval_s`` until ``stop`` is set."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        started = loop.time()
        # The sleep is the probe: how much later than asked the loop wakes us.
        await asyncio.sleep(interval_s)
        observer.loop_lag(max(0.0, loop.time() - started - interval_s))
