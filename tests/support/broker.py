"""A broker of a test's own, and a daemon's view of it: for tests that kill the broker.

``own_broker`` is the fixture body (tests/support/fixtures.py exposes it as
``broker``); the waits read the daemon's /readyz and /metrics with a deadline.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import httpx

from killswitch.embedded import EmbeddedBroker
from tests.support.daemon import wait_http


def own_broker() -> Iterator[EmbeddedBroker]:
    """A broker of this test's own (killed and restarted; ``stop`` ends whichever runs)."""
    own = EmbeddedBroker()
    try:
        yield own
    finally:
        own.stop()


def kill_broker(broker: EmbeddedBroker) -> None:
    """SIGKILL, and reap it (the port is free again for a restart)."""
    os.kill(broker.pid, signal.SIGKILL)
    broker.stop()  # reaps the killed process


def gauge(text: str, name: str) -> float | None:
    """The value of an unlabelled series in a Prometheus text page, None when absent."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


async def metric(url: str, name: str) -> float | None:
    response = await wait_http(f"{url}/metrics")
    return gauge(response.text, name)


async def wait_ready(url: str, ready: bool, timeout: float) -> httpx.Response:
    return await wait_http(
        f"{url}/readyz",
        timeout=timeout,
        until=lambda r: (r.status_code == 200) is ready,
    )


async def wait_kafka_up(url: str, up: float, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while await metric(url, "killswitch_kafka_up") != up:
        if loop.time() > deadline:
            raise AssertionError(f"killswitch_kafka_up never {up} within {timeout}s")
        await asyncio.sleep(0.1)  # polling a metric with a deadline
