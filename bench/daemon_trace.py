"""The daemon with ``time.perf_counter`` stamps along the alert path (``alert_latency --trace``).

Run as ``python -m bench.daemon_trace PATH run ...``: wraps a few functions of the
Kafka client, the intake, the engine, the sweep, the exchange client and its
transport with stamps, runs ``killswitch`` with the remaining arguments, and writes
the stamps (name, seconds) to PATH as JSON when the daemon exits. ``perf_counter``
is CLOCK_MONOTONIC on Linux, one clock for every process, so the benchmark lays the
stamps out against its own (the produce, the DELETE's arrival at the simulator).

Garbage collections are stamped too (``gc<generation>_start`` / ``_stop``). With
``BENCH_TRACE_PROFILE=FILE`` set, no stamps: cProfile runs from each record taken up to
its first DELETE written, and its stats go to FILE.

The wrappers cost a little themselves (a call and a list append per stamp, a
coroutine frame per wrapped coroutine): the steps they measure come out slightly
longer than untraced. Not for production: a benchmark tool only.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

EVENTS: list[tuple[str, float]] = []
_now = time.perf_counter


def _stamp(name: str) -> None:
    EVENTS.append((name, _now()))


def _around(owner: Any, attr: str, before: str | None, after: str | None) -> None:
    """Stamp ``before`` on entry and ``after`` on return of a plain function."""
    inner: Callable[..., Any] = getattr(owner, attr)

    @functools.wraps(inner)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if before is not None:
            _stamp(before)
        result = inner(*args, **kwargs)
        if after is not None:
            _stamp(after)
        return result

    setattr(owner, attr, wrapper)


def _around_async(
    owner: Any, attr: str, before: str | None, after: Callable[[Any, tuple[Any, ...]], str | None]
) -> None:
    """Stamp ``before`` when the coroutine starts, ``after(result, args)`` when it returns."""
    inner: Callable[..., Any] = getattr(owner, attr)

    @functools.wraps(inner)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if before is not None:
            _stamp(before)
        result = await inner(*args, **kwargs)
        name = after(result, args)
        if name is not None:
            _stamp(name)
        return result

    setattr(owner, attr, wrapper)


def _gc_stamp(phase: str, info: dict[str, int]) -> None:
    _stamp(f"gc{info['generation']}_{phase}")


def _install() -> None:
    import gc

    gc.callbacks.append(_gc_stamp)
    from aiokafka.consumer.consumer import AIOKafkaConsumer
    from aiokafka.consumer.fetcher import Fetcher

    from killswitch.engine.engine import Engine
    from killswitch.engine.sweep import Sweep
    from killswitch.exchange import http1
    from killswitch.exchange.client import ExchangeClient
    from killswitch.exchange.signing import Signer
    from killswitch.kafka.consumer import Intake

    _around_async(
        Fetcher, "_proc_fetch_request", "fetch_sent", lambda r, a: "fetched" if r else None
    )
    _around_async(AIOKafkaConsumer, "getmany", None, lambda r, a: "polled" if r else None)
    _around(Intake, "_accept", "take_up", "accepted")
    _around(Intake, "_parse", None, "parsed")
    _around(Intake, "_plan", None, "planned")
    _around(Engine, "start", "engine_start", "engine_started")
    _around_async(Sweep, "run", "sweep_task", lambda r, a: None)
    _around(Signer, "sign", "sign", "signed")
    _around(http1, "request_bytes", None, "request_bytes")

    inner_roundtrip = http1.Http1Transport._roundtrip

    async def roundtrip(self: Any, conn: Any, data: bytes, *args: Any, **kwargs: Any) -> Any:
        _stamp("write " + data[: data.index(b" ")].decode())
        result = await inner_roundtrip(self, conn, data, *args, **kwargs)
        _stamp("answered")
        return result

    http1.Http1Transport._roundtrip = roundtrip  # type: ignore[method-assign]
    _around(http1._Connection, "data_received", "data_received", None)
    _around(ExchangeClient, "_orders", None, "page_parsed")
    _around(Sweep, "_take_page", None, "queued")
    _around_async(Sweep, "_worker", "worker", lambda r, a: None)
    _around_async(ExchangeClient, "cancel_order", "cancel_call", lambda r, a: None)
    _around_async(ExchangeClient, "cancel_all", "cancel_all_call", lambda r, a: None)
    # What a cold path would add (expected never inside an alert's window): a new
    # connection, a clock sync, a pair-list fetch.
    _around_async(http1.Http1Transport, "_connect", "connect", lambda r, a: None)
    _around_async(ExchangeClient, "sync_clock", "clock_sync", lambda r, a: None)
    _around_async(ExchangeClient, "_fetch_info", "pairs_fetch", lambda r, a: None)


def _profile_path(path: str) -> None:
    """cProfile from each record taken up to its first DELETE written (stats to ``path``).

    The profiler's own cost distorts the times; the call counts are exact."""
    import cProfile

    from killswitch.exchange import http1
    from killswitch.kafka.consumer import Intake

    profiler = cProfile.Profile()
    accept = Intake._accept
    roundtrip = http1.Http1Transport._roundtrip

    def profiled_accept(*args: Any, **kwargs: Any) -> Any:
        profiler.enable()
        return accept(*args, **kwargs)

    async def profiled_roundtrip(self: Any, conn: Any, data: bytes, *args: Any, **kw: Any) -> Any:
        if data.startswith(b"DELETE"):
            profiler.disable()
        return await roundtrip(self, conn, data, *args, **kw)

    Intake._accept = profiled_accept  # type: ignore[method-assign]
    http1.Http1Transport._roundtrip = profiled_roundtrip  # type: ignore[method-assign]
    atexit.register(lambda: profiler.dump_stats(path))


def main() -> None:
    path = sys.argv[1]

    def dump() -> None:
        with open(path, "w") as out:
            json.dump(EVENTS, out)

    atexit.register(dump)
    profile = os.environ.get("BENCH_TRACE_PROFILE")
    if profile:
        _profile_path(profile)
    else:
        _install()
    from killswitch.cli import main as killswitch

    raise SystemExit(killswitch(sys.argv[2:]))


if __name__ == "__main__":
    main()
