"""bench.rpc: calls into a spawned child process over a real pipe, and the loop-lag probe."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator

import pytest

from bench import rpc


@contextlib.asynccontextmanager
async def _served(prefix: str) -> AsyncIterator[rpc.Handlers]:
    """A child with a gate: ``wait`` answers only once ``open`` has been called."""
    gate = asyncio.Event()

    async def echo(value: object) -> str:
        return f"{prefix}{value}"

    async def wait() -> float:
        await gate.wait()
        return time.perf_counter()

    async def open_gate() -> float:
        gate.set()
        return time.perf_counter()

    async def fail() -> None:
        raise ValueError("refused")

    async def die() -> None:
        os._exit(3)

    yield {"echo": echo, "wait": wait, "open": open_gate, "fail": fail, "die": die}


@contextlib.asynccontextmanager
async def _reserved() -> AsyncIterator[rpc.Handlers]:
    async def nothing() -> None:
        return None

    yield {rpc.EXIT: nothing}


async def test_calls_are_answered_as_their_handlers_return_in_any_order() -> None:
    async with rpc.Child(_served, "got ") as child:
        waiting = asyncio.create_task(child.call("wait", timeout=30))
        assert await child.call("echo", 1, timeout=30) == "got 1"
        assert not waiting.done()
        opened = await child.call("open", timeout=30)
        # Stamped in the child on its own clock: the answer comes after the gate opened.
        assert await waiting >= opened
        assert child.pid != os.getpid()


async def test_a_failing_or_unknown_call_raises_and_the_child_keeps_serving() -> None:
    async with rpc.Child(_served, "") as child:
        with pytest.raises(rpc.ChildError, match="ValueError: refused"):
            await child.call("fail", timeout=30)
        with pytest.raises(rpc.ChildError, match="unknown call"):
            await child.call("nope", timeout=30)
        assert await child.call("echo", "still", timeout=30) == "still"


async def test_calls_waiting_when_the_child_dies_fail_and_later_calls_refuse() -> None:
    async with rpc.Child(_served, "") as child:
        waiting = asyncio.create_task(child.call("wait", timeout=30))
        await child.call("echo", "up", timeout=30)
        with pytest.raises(rpc.ChildError):
            await child.call("die", timeout=30)
        with pytest.raises(rpc.ChildError, match="has exited"):
            await waiting
        with pytest.raises(rpc.ChildError, match="has exited"):
            await child.call("echo", "again", timeout=30)


async def test_a_handler_named_like_the_exit_call_is_refused() -> None:
    async with rpc.Child(_reserved) as child:
        with pytest.raises(rpc.ChildError):
            await child.call("loop_lag", 0.0, 1.0, timeout=30)


def test_loop_lag_summarises_only_the_samples_inside_the_window() -> None:
    lag = rpc.LoopLag(samples=[(1.0, 0.5), (2.0, 0.001), (3.0, 0.003), (4.0, 0.9)])
    assert lag.between(1.5, 3.5) == {"mean_ms": 2.0, "p99_ms": 3.0, "max_ms": 3.0, "n": 2}
    assert lag.between(5.0, 6.0)["n"] == 0
