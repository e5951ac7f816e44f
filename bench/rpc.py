"""Calls into a child process over a pipe, and a probe of an event loop's own lag.

A benchmark that measures a daemon from one event loop adds that loop's lag to every
figure it times. Work whose timing matters (serving the exchange, producing the timed
kills, scraping) runs instead in a spawned child process with its own loop: the child
stamps the moments that matter itself (``time.perf_counter``, CLOCK_MONOTONIC on Linux,
one clock for every process) and the parent only collects the stamps, so the parent's
own lag delays when it learns a figure, never the figure.

Child side: ``factory(*args)`` is an async context manager (entered in the child)
yielding ``{name: async handler}``; every call runs as its own task and is answered when
its handler returns, in any order. Each child also answers ``loop_lag(start, end)``:
its own loop's lag between two stamps. Parent side: :class:`Child`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bench import harness
from killswitch.procs import die_with_parent

Handlers = dict[str, Callable[..., Awaitable[Any]]]
EXIT = "_exit"  # the call that ends a child (not a handler's name)
Factory = Callable[..., contextlib.AbstractAsyncContextManager[Handlers]]


# -- an event loop's own lag -----------------------------------------------------------


@dataclass
class LoopLag:
    """How late a short timer fires on the running loop, sampled until cancelled."""

    interval_s: float = 0.02
    samples: list[tuple[float, float]] = field(default_factory=list)  # (perf_counter, lag s)

    async def run(self) -> None:
        while True:
            started = time.perf_counter()
            # The sleep is the probe: how much later than asked the loop wakes us.
            await asyncio.sleep(self.interval_s)
            now = time.perf_counter()
            self.samples.append((now, max(0.0, now - started - self.interval_s)))

    def between(self, start: float, end: float) -> dict[str, float]:
        """Mean, p99 and max lag (ms) of the samples taken between two stamps."""
        lags = [lag for at, lag in self.samples if start <= at <= end]
        return summarise_lag(lags)


def summarise_lag(lags: list[float]) -> dict[str, float]:
    """Mean, p99 and max of lags in seconds, as ms; ``n`` samples."""
    if not lags:
        return {"mean_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan"), "n": 0}
    return {
        "mean_ms": round(sum(lags) / len(lags) * 1000, 2),
        "p99_ms": round(harness.percentile(lags, 0.99) * 1000, 2),
        "max_ms": round(max(lags) * 1000, 2),
        "n": len(lags),
    }


@contextlib.asynccontextmanager
async def probing(lag: LoopLag) -> AsyncIterator[LoopLag]:
    """``lag`` sampling the running loop for the duration of the block."""
    task = asyncio.create_task(lag.run())
    try:
        yield lag
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# -- the child -------------------------------------------------------------------------


def child_main(conn: Any, factory: Factory, args: tuple[Any, ...]) -> None:
    """Entry point of a spawned child: serve calls until ``EXIT`` or the pipe closes."""
    die_with_parent()
    try:
        asyncio.run(_serve(conn, factory, args))
    finally:
        conn.close()


async def _serve(conn: Any, factory: Factory, args: tuple[Any, ...]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()
    lag = LoopLag()

    async def loop_lag(start: float, end: float) -> dict[str, float]:
        return lag.between(start, end)

    async with probing(lag), factory(*args) as served:
        if EXIT in served:
            raise ValueError(f"{EXIT!r} is the call that ends a child, not a handler")
        handlers: Handlers = {**served, "loop_lag": loop_lag}

        def readable() -> None:
            while not stop.is_set():
                try:
                    if not conn.poll():
                        return
                    number, name, call_args = conn.recv()
                except (EOFError, OSError):  # the parent is gone
                    stop.set()
                    return
                if name == EXIT:
                    stop.set()
                    _reply(conn, number, True, None)
                    return
                task = asyncio.create_task(_answer(conn, number, handlers.get(name), call_args))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        loop.add_reader(conn.fileno(), readable)
        try:
            await stop.wait()
        finally:
            loop.remove_reader(conn.fileno())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _answer(
    conn: Any, number: int, handler: Callable[..., Awaitable[Any]] | None, args: tuple[Any, ...]
) -> None:
    if handler is None:
        _reply(conn, number, False, "unknown call")
        return
    try:
        value = await handler(*args)
    except Exception as exc:  # reported to the parent, which raises it
        _reply(conn, number, False, f"{type(exc).__name__}: {exc}")
        return
    _reply(conn, number, True, value)


def _reply(conn: Any, number: int, ok: bool, value: Any) -> None:
    with contextlib.suppress(OSError):  # the parent is gone: nobody to answer
        conn.send((number, ok, value))


# -- the parent ------------------------------------------------------------------------


class ChildError(RuntimeError):
    """A call failed in the child, or the child exited."""


class Child:
    """A spawned child process serving calls (see the module docstring).

    ``async with Child(factory, *args) as child: await child.call("name", ...)``; the
    child dies with this process, and on leaving the block it is asked to stop, then
    killed if it has not within a few seconds.
    """

    def __init__(self, factory: Factory, *args: Any) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe(duplex=True)
        self._child_end = child
        self._process = ctx.Process(
            target=child_main, args=(child, factory, args), daemon=True, name=factory.__name__
        )
        self._numbers = itertools.count()
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._closed = False

    @property
    def pid(self) -> int:
        assert self._process.pid is not None
        return self._process.pid

    async def __aenter__(self) -> Child:
        self._process.start()
        self._child_end.close()
        asyncio.get_running_loop().add_reader(self._conn.fileno(), self._readable)
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(ChildError, TimeoutError):
            await self.call(EXIT, timeout=10)
        self._close()
        await asyncio.to_thread(self._process.join, 10)
        if self._process.is_alive():
            self._process.kill()
            await asyncio.to_thread(self._process.join, 5)
        self._conn.close()

    async def call(self, name: str, *args: Any, timeout: float = 60.0) -> Any:
        """Call ``name(*args)`` in the child; its answer (ChildError if it failed)."""
        if self._closed:
            raise ChildError(f"{self._process.name} has exited")
        number = next(self._numbers)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[number] = future
        try:
            self._conn.send((number, name, args))
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._waiting.pop(number, None)

    def _readable(self) -> None:
        while True:
            try:
                if not self._conn.poll():
                    return
                number, ok, value = self._conn.recv()
            except (EOFError, OSError):
                self._close()
                return
            future = self._waiting.pop(number, None)
            if future is None or future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(ChildError(f"{self._process.name}: {value}"))

    def _close(self) -> None:
        """The pipe is done: stop reading it and fail every call still waiting."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError, ValueError):
            asyncio.get_running_loop().remove_reader(self._conn.fileno())
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ChildError(f"{self._process.name} has exited"))
        self._waiting.clear()
