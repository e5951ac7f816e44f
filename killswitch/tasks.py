"""Small asyncio helpers shared by the I/O shell."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


class Interrupted(Exception):
    """The work given to :func:`unless_set` was cancelled because its event was set first."""


class _ScopeGroup(asyncio.TaskGroup):
    """A task group that knows its tasks still running, to cancel them when the body
    of its :func:`task_scope` ends (and any task made after that, at once)."""

    def __init__(self) -> None:
        super().__init__()
        self.running: set[asyncio.Task[Any]] = set()
        self.ended = False

    def create_task(
        self,
        coro: Generator[Any, None, T] | Coroutine[Any, Any, T],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[T]:
        task = super().create_task(coro, name=name, context=context)
        # Kept even when done already: its done callbacks (the group's among them)
        # have yet to run, and end_body waits for them.
        self.running.add(task)
        task.add_done_callback(self.running.discard)
        if self.ended:
            task.cancel()
        return task

    async def end_body(self) -> None:
        """Cancel the tasks still running, and any made from now on; wait for them.

        The wait is the body's, not the group's exit: a task failing meanwhile cancels
        the body, as a failure while the body runs does, and the group's exit withdraws
        that cancellation. (Python 3.11's group, failing in its own exit wait, would leave
        it requested on the caller, whose next wait would then be cancelled.)
        """
        self.ended = True
        for task in self.running:
            task.cancel()
        while self.running:  # once more for the tasks made meanwhile (cancelled as made)
            await asyncio.wait(list(self.running))


@contextlib.asynccontextmanager
async def task_scope() -> AsyncIterator[asyncio.TaskGroup]:
    """An :class:`asyncio.TaskGroup` whose tasks still running when the body ends are
    cancelled and waited for (a plain task group waits for them to finish).

    As in a task group, a task that fails cancels the body and the other tasks, and its
    error (or the body's own) is raised in an :class:`ExceptionGroup`; a task cancelled
    by itself or another is no error.
    """
    # Cancelled without raising into the group: an exception ending a group leaves a
    # cycle through its traceback's frames, which holds whatever the caller's frame holds
    # (a sweep and its thousands of alerts) until a full collection.
    async with _ScopeGroup() as group:
        yield group
        await group.end_body()


async def wait_any(events: Iterable[asyncio.Event], seconds: float) -> None:
    """Return as soon as one of ``events`` is set, or after ``seconds``; the waits on the
    others end with it."""
    async with task_scope() as tasks:
        waits = [tasks.create_task(event.wait()) for event in events]
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait for it to end, without swallowing our own cancellation.

    ``with suppress(CancelledError): await task`` would also swallow a cancellation
    aimed at the *calling* task if it arrives during that wait: re-raised here when the
    caller is being cancelled.
    """
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise


async def unless_set(event: asyncio.Event, work: Coroutine[Any, Any, T]) -> T:
    """``work``'s result, unless ``event`` is set first: then the work is cancelled, waited
    for, and :class:`Interrupted` is raised.

    The work runs in a task of its own so that it is the work that is cancelled, not the
    caller: what the caller does next (a stop cut short, closing clients) runs without a
    cancellation pending on it.
    """
    job = asyncio.create_task(work)
    halt = asyncio.create_task(event.wait())
    try:
        await asyncio.wait([job, halt], return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        job.cancel()  # the caller itself is cancelled: so is its work
        raise
    finally:
        halt.cancel()
    if job.done():
        return job.result()
    await cancel_and_wait(job)
    raise Interrupted


class TurnBudget:
    """A share of each turn of the event loop for work that can wait.

    Work that can be put off by a turn or two (publishing an alert storm's results,
    reading them back) awaits :meth:`take` before each piece; work that is sliced by
    time (taking up records) asks :meth:`remaining`. The first piece in a
    turn starts the turn's clock; once ``budget_s`` has passed, later pieces wait for a
    later turn, so that what cannot wait (a fetch answered, a quiet account's kill)
    runs in turns of bounded length rather than behind every storm group at once. A
    piece waits at most ``max_turns`` turns: work is put off, never starved.

    Hand-written: asyncio runs each turn's callbacks in order and offers no budget.
    """

    def __init__(
        self,
        budget_s: float,
        *,
        max_turns: int = 8,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._budget_s = budget_s
        self._max_turns = max_turns
        self._clock = clock
        self._started: float | None = None  # when this turn's first piece was taken
        self.put_off = 0  # pieces that waited for a later turn (a diagnostic)

    async def take(self) -> None:
        """Return when this turn has room for one more piece (at once, mostly)."""
        if self._room():
            return
        self.put_off += 1
        for _ in range(self._max_turns):
            await asyncio.sleep(0)
            if self._room():
                return

    def remaining(self) -> float:
        """Seconds left of this turn's budget (all of it for the turn's first piece)."""
        now = self._clock()
        if self._started is None:
            self._started = now
            # Runs in the next turn, before the pieces that wait for it (they are
            # scheduled after it): each turn's budget starts afresh.
            asyncio.get_running_loop().call_soon(self._new_turn)
        return self._budget_s - (now - self._started)

    def _room(self) -> bool:
        first = self._started is None
        return self.remaining() > 0 or first

    def _new_turn(self) -> None:
        self._started = None
