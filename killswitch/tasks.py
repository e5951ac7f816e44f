"""Small asyncio helpers shared by the I/O shell."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


class Interrupted(Exception):
    """The work given to :func:`unless_set` was cancelled because its event was set first."""


class _BodyEnded(Exception):
    """Raised in a :func:`task_scope`'s group as its body ends: cancels the tasks left."""


@contextlib.asynccontextmanager
async def task_scope() -> AsyncIterator[asyncio.TaskGroup]:
    """An :class:`asyncio.TaskGroup` whose tasks still running when the body ends are
    cancelled and waited for (a plain task group waits for them to finish).

    As in a task group, a task that fails cancels the body and the other tasks, and its
    error (or the body's own) is raised in an :class:`ExceptionGroup`; a task cancelled
    by itself or another is no error.
    """
    try:
        async with asyncio.TaskGroup() as group:
            yield group
            _end_body()
    except* _BodyEnded:
        pass


def _end_body() -> None:
    raise _BodyEnded


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
