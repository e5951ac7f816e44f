"""killswitch.tasks: work cut short by an event, the caller left uncancelled."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from killswitch.tasks import Interrupted, TurnBudget, task_scope, unless_set, wait_any
from tests.support.collector import cycle_collector_off


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


async def test_task_scope_cancels_the_tasks_left_when_its_body_ends() -> None:
    started = asyncio.Event()
    ended: list[str] = []

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            ended.append("cancelled")

    async def quick() -> None:
        ended.append("finished")

    async with task_scope() as group:
        waiting = group.create_task(forever())
        group.create_task(quick())
        await started.wait()
    assert waiting.cancelled()
    assert sorted(ended) == ["cancelled", "finished"]


async def test_a_task_scope_ended_leaves_no_cycle_for_the_collector() -> None:
    # A sweep's passes run in task scopes; what the caller's frame held (the sweep, its
    # alerts) must go when the caller is done, not wait for a pass of the cycle collector.
    class Held:
        pass

    async def caller(refs: list[weakref.ref[Held]]) -> None:
        held = Held()
        refs.append(weakref.ref(held))
        async with task_scope() as tasks:
            tasks.create_task(asyncio.sleep(10))  # still running when the body ends

    with cycle_collector_off():
        refs: list[weakref.ref[Held]] = []
        await caller(refs)
        assert refs[0]() is None
        assert gc.collect() == 0  # no cycle left behind either


async def test_task_scope_raises_a_failing_task_and_cancels_the_rest() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    tasks: list[asyncio.Task[Any]] = []

    async def body() -> None:
        async with task_scope() as group:
            tasks.append(group.create_task(asyncio.Event().wait()))
            group.create_task(fails())
            await asyncio.Event().wait()  # cancelled by the failure

    with pytest.raises(ExceptionGroup) as raised:
        await body()
    assert raised.group_contains(ValueError, match="boom")
    assert tasks[0].cancelled()


async def _scope_failing_after_its_body(task: Callable[[], Coroutine[Any, Any, None]]) -> int:
    """Run a scope whose one task fails after the body has ended; return how many
    cancellations of the calling task are still requested once the error is caught."""

    async def scope() -> None:
        async with task_scope() as group:
            group.create_task(task())
            await asyncio.sleep(0)

    with pytest.raises(ExceptionGroup) as raised:
        await scope()
    assert raised.group_contains(ValueError)
    current = asyncio.current_task()
    assert current is not None
    return current.cancelling()


async def test_a_task_failing_as_it_is_cancelled_leaves_the_caller_uncancelled() -> None:
    # Nobody cancelled the caller: a cancellation left requested on it would make its
    # next cancel_and_wait (or TaskGroup) raise CancelledError from nowhere.
    async def fails_on_cancel() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise ValueError("cleanup failed") from None

    assert await asyncio.create_task(_scope_failing_after_its_body(fails_on_cancel)) == 0


async def test_a_task_failing_as_the_body_ends_leaves_the_caller_uncancelled() -> None:
    async def fails() -> None:
        raise ValueError("boom")  # in the turn the body ends: before its cancellation

    assert await asyncio.create_task(_scope_failing_after_its_body(fails)) == 0


async def test_a_task_made_by_a_task_being_cancelled_is_cancelled_and_waited_for() -> None:
    made: list[asyncio.Task[bool]] = []

    async def makes_one_on_cancel(group: asyncio.TaskGroup) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            made.append(group.create_task(asyncio.Event().wait()))

    async with task_scope() as group:
        group.create_task(makes_one_on_cancel(group))
        await asyncio.sleep(0)
    assert made[0].cancelled()


async def test_wait_any_returns_when_one_event_is_set_and_leaves_no_task() -> None:
    first, second = asyncio.Event(), asyncio.Event()
    before = asyncio.all_tasks()
    loop = asyncio.get_running_loop()
    loop.call_soon(second.set)
    await wait_any([first, second], seconds=60.0)
    assert second.is_set()
    assert not first.is_set()
    assert asyncio.all_tasks() == before


async def test_wait_any_returns_after_the_timeout() -> None:
    before = asyncio.all_tasks()
    await wait_any([asyncio.Event()], seconds=0.01)
    assert asyncio.all_tasks() == before


class _Clock:
    """A clock the test moves by hand: the budget sees as much time pass as a piece's
    ``cost`` says."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _turns_of(budget: TurnBudget, clock: _Clock, pieces: int, cost: float) -> list[int]:
    """Run ``pieces`` pieces of work, each ``cost`` long, in tasks of their own; the
    turn of the event loop each ran in (turns counted by a ticker task)."""
    turn = 0
    ran: list[int] = []

    async def ticker() -> None:
        nonlocal turn
        while len(ran) < pieces:
            turn += 1
            await asyncio.sleep(0)

    async def piece() -> None:
        await budget.take()
        ran.append(turn)
        clock.now += cost

    async with asyncio.TaskGroup() as group:
        group.create_task(ticker())
        for _ in range(pieces):
            group.create_task(piece())
    return ran


async def test_a_turn_takes_pieces_until_its_budget_is_spent_the_rest_wait() -> None:
    clock = _Clock()
    budget = TurnBudget(0.010, clock=clock)
    # 3 ms each: 4 pieces fit a 10 ms budget (the 4th starts at 9 ms), then 4 per turn.
    ran = await _turns_of(budget, clock, pieces=10, cost=0.003)
    per_turn = [ran.count(t) for t in sorted(set(ran))]
    assert per_turn == [4, 4, 2]
    assert budget.put_off == 6


async def test_pieces_that_fit_run_in_one_turn() -> None:
    clock = _Clock()
    budget = TurnBudget(0.010, clock=clock)
    ran = await _turns_of(budget, clock, pieces=5, cost=0.001)
    assert len(set(ran)) == 1
    assert budget.put_off == 0


async def test_a_piece_is_put_off_at_most_max_turns() -> None:
    clock = _Clock()
    budget = TurnBudget(0.010, max_turns=2, clock=clock)
    # Each piece alone overruns the budget: one a turn, but none waits more than 2 turns.
    ran = await _turns_of(budget, clock, pieces=6, cost=1.0)
    first = min(ran)
    assert all(t - first <= 2 for t in ran)
    assert budget.put_off == 5


async def test_remaining_is_what_this_turn_has_left_and_each_turn_starts_afresh() -> None:
    clock = _Clock()
    budget = TurnBudget(0.010, clock=clock)
    assert budget.remaining() == pytest.approx(0.010)
    clock.now += 0.004
    assert budget.remaining() == pytest.approx(0.006)
    clock.now += 0.020
    assert budget.remaining() == pytest.approx(-0.014)
    await asyncio.sleep(0)  # the next turn
    assert budget.remaining() == pytest.approx(0.010)
