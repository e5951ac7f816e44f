"""Waiting on a condition with a deadline (never a bare sleep as synchronisation)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

_T = TypeVar("_T")


async def wait_for(
    condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01
) -> None:
    """Wait until ``condition()`` holds, failing the test after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


async def wait_until(
    probe: Callable[[], Awaitable[_T]],
    until: Callable[[_T], bool],
    timeout: float = 10.0,
    interval: float = 0.05,
    what: Callable[[_T], str] = repr,
) -> _T:
    """Await ``probe()`` until ``until(value)`` holds and return that value; fail the test
    after ``timeout`` seconds, naming the last value (``what``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not until(value := await probe()):
        if loop.time() > deadline:
            raise AssertionError(f"not as wanted within {timeout}s: {what(value)}")
        await asyncio.sleep(interval)
    return value


def wait_for_sync(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """:func:`wait_for` for a test without an event loop (a thread to wait on)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.005)
