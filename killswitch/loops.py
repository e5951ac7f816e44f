"""The event loop the daemon runs on: uvloop where it is installed, else asyncio's own.

uvloop (libuv, the event loop of Node.js) runs the same asyncio programs with its
scheduling, timers and socket I/O in compiled code. The daemon's latency during an
alert storm is a matter of how quickly each step of the Kafka client and of a sweep
gets its turn (docs/BENCHMARKS.md, ``storm``), which is what it makes cheaper. The
choice is ``[runtime] event_loop``; the CLI's one-shot commands keep asyncio's loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal

EventLoopChoice = Literal["auto", "uvloop", "asyncio"]
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


class EventLoopUnavailable(RuntimeError):
    """``uvloop`` was asked for and is not installed."""


def loop_factory(choice: EventLoopChoice) -> LoopFactory | None:
    """How to make the daemon's loop: uvloop's for ``uvloop`` (and for ``auto`` when it
    is installed and loads); None for asyncio's default loop."""
    if choice == "asyncio":
        return None
    try:
        import uvloop  # noqa: PLC0415 - optional at run time (no wheel on Windows)
    except ImportError as exc:
        if choice == "auto":
            # Missing, or there but not loadable (built for another platform or
            # Python): asyncio's loop, which build_info's event_loop label then names.
            return None
        raise EventLoopUnavailable(
            "runtime.event_loop is 'uvloop' but uvloop is not installed: "
            "pip install uvloop, or set runtime.event_loop = 'asyncio'"
        ) from exc
    factory: LoopFactory = uvloop.new_event_loop
    return factory


def loop_name(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """``uvloop`` or ``asyncio``: the kind of ``loop`` (default: the running one;
    ``none`` outside a running loop)."""
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return "none"
    return "uvloop" if type(loop).__module__.split(".")[0] == "uvloop" else "asyncio"
