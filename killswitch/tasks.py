"""Small asyncio helpers shared by the I/O shell."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait for it to end, without swallowing our own cancellation.

    ``with suppress(CancelledError): await task`` would also swallow a cancellation
    aimed at the *calling* task if it arrives during that wait (a second stop signal
    cancels the daemon's main task): re-raised here when the caller is being cancelled.
    """
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
