"""killswitch.tasks: work cut short by an event, the caller left uncancelled."""

from __future__ import annotations

import asyncio

import pytest

from killswitch.tasks import Interrupted, unless_set


async def test_unless_set_returns_the_result_when_the_event_stays_clear() -> None:
    async def work() -> int:
        return 7

    assert await unless_set(asyncio.Event(), work()) == 7


async def test_unless_set_cancels_the_work_not_the_caller() -> None:
    event = asyncio.Event()
    started = asyncio.Event()
    cleaned: list[bool] = []

    async def work() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append(True)

    async def setter() -> None:
        await started.wait()
        event.set()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(setter())
        with pytest.raises(Interrupted):
            await unless_set(event, work())
    assert cleaned == [True]
    me = asyncio.current_task()
    assert me is not None
    assert me.cancelling() == 0  # what the caller does next is not cut short


async def test_unless_set_raises_the_work_error() -> None:
    async def work() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await unless_set(asyncio.Event(), work())
