"""``/metrics`` rendered a metric family per turn of the event loop, byte for byte as
prometheus_client renders it at once, in either exposition format."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from killswitch.health import render_in_turns

ACCEPTS = ("text/plain", "application/openmetrics-text; version=1.0.0")


def _registry(families: int = 3) -> CollectorRegistry:
    registry = CollectorRegistry()
    for n in range(families):
        counter = Counter(f"things_{n}", "things done", ["account", "outcome"], registry=registry)
        counter.labels("mm-1", "sent").inc(3)
        counter.labels('odd "name"\n', "rejected").inc()
    Gauge("level", "a level", registry=registry).set(1.5)
    Histogram("took_seconds", "how long", ["account"], registry=registry).labels("mm-2").observe(
        0.02
    )
    return registry


@pytest.mark.parametrize("accept", ACCEPTS)
async def test_rendered_in_turns_is_what_the_library_renders_at_once(accept: str) -> None:
    registry = _registry()
    encoder, _ = choose_encoder(accept)

    assert await render_in_turns(encoder, registry) == encoder(registry)


@pytest.mark.parametrize("accept", ACCEPTS)
async def test_an_empty_registry_renders_as_the_library_renders_it(accept: str) -> None:
    encoder, _ = choose_encoder(accept)

    assert await render_in_turns(encoder, CollectorRegistry()) == encoder(CollectorRegistry())


async def test_the_event_loop_runs_between_families() -> None:
    registry = _registry(families=6)
    encoder, _ = choose_encoder("text/plain")
    turns = 0
    stop = asyncio.Event()

    async def count_turns() -> None:
        nonlocal turns
        while not stop.is_set():
            turns += 1
            await asyncio.sleep(0)

    counting = asyncio.create_task(count_turns())
    await asyncio.sleep(0)  # the counter has started
    before = turns
    await render_in_turns(encoder, registry)
    during = turns - before
    stop.set()
    await counting

    # 8 families (6 counters, a gauge, a histogram): the loop ran after each.
    assert during >= 7
