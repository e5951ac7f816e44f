"""KafkaWatch: probe outcomes drive readiness and the log; the client's log is aggregated.

The probe is a plain async callable here (the daemon passes the consumer's ``topics()``),
so these tests run without a broker; the reliability suite runs the real thing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaError

from killswitch.embedded import free_port
from killswitch.kafka import watch as watch_module
from killswitch.kafka.watch import KafkaWatch, any_listening
from tests.support.waiting import wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Changes:
    def __init__(self) -> None:
        self.seen: list[tuple[bool, str]] = []

    def __call__(self, up: bool, reason: str) -> None:
        self.seen.append((up, reason))


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def names(self, prefix: str) -> list[logging.LogRecord]:
        return [r for r in self.records if r.name.startswith(prefix)]


@pytest.fixture
def handler() -> Iterator[Collect]:
    """A handler on the root logger (where the watch installs its filter)."""
    root = logging.getLogger()
    collect = Collect()
    level = root.level
    root.addHandler(collect)
    root.setLevel(logging.DEBUG)
    try:
        yield collect
    finally:
        root.removeHandler(collect)
        root.setLevel(level)


async def ok() -> object:
    return {"topic"}


async def refused() -> object:
    raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 1)]")


async def hangs() -> object:
    await asyncio.Event().wait()
    return None


def client_error(n: int = 1, logger: str = "aiokafka.consumer.fetcher") -> None:
    for _ in range(n):
        logging.getLogger(logger).error("Failed fetch messages from %s: %s", 1, "closed")


async def test_changes_reach_readiness_once_each() -> None:
    changes, clock = Changes(), Clock()
    watch = KafkaWatch("k:9092", changes, clock=clock)
    assert await watch.check(ok)
    assert await watch.check(ok)
    assert not await watch.check(refused)
    assert not await watch.check(refused)
    assert await watch.check(ok)
    assert [up for up, _ in changes.seen] == [True, False, True]
    assert changes.seen[1][1].startswith("kafka unreachable at k:9092 (KafkaConnectionError")


async def test_a_frozen_broker_fails_on_the_deadline() -> None:
    changes = Changes()
    watch = KafkaWatch("k:9092", changes)
    assert not await watch.check(hangs, timeout_s=0.05)
    assert changes.seen == [(False, "kafka unreachable at k:9092 (no answer within 0.05s)")]


async def test_recovery_runs_before_ready() -> None:
    order: list[str] = []

    async def recreate() -> None:
        order.append("topics")

    watch = KafkaWatch("k", lambda up, reason: order.append(f"up={up}"), on_up=recreate)
    await watch.check(ok)
    await watch.check(refused)
    await watch.check(ok)
    assert order == ["topics", "up=True", "up=False", "topics", "up=True"]


async def test_a_failing_recovery_does_not_stop_the_watch() -> None:
    async def broken() -> None:
        raise KafkaConnectionError("gone again")

    changes = Changes()
    watch = KafkaWatch("k", changes, on_up=broken)
    assert await watch.check(ok)
    assert changes.seen == [(True, "broker answers")]


async def test_client_records_are_dropped_while_down(handler: Collect) -> None:
    clock = Clock()
    watch = KafkaWatch("k", Changes(), clock=clock)
    watch.attach_log_filter()
    try:
        await watch.check(refused)
        client_error(300)
        logging.getLogger("aiokafka").error("Unable connect to node with id %s", 1)
    finally:
        watch.detach_log_filter()
    assert handler.names("aiokafka") == []
    assert watch.link.errors == 301


async def test_client_records_pass_once_per_kind_and_period_while_up(handler: Collect) -> None:
    clock = Clock()
    watch = KafkaWatch("k", Changes(), clock=clock, summary_every_s=30.0)
    watch.attach_log_filter()
    try:
        await watch.check(ok)
        client_error(50)
        client_error(50, logger="aiokafka.consumer.group_coordinator")
        logging.getLogger("aiokafka").info("not an error: untouched")
        clock.now = 30.0
        client_error(5)
    finally:
        watch.detach_log_filter()
    passed = handler.names("aiokafka")
    assert [r.name for r in passed] == [
        "aiokafka.consumer.fetcher",
        "aiokafka.consumer.group_coordinator",
        "aiokafka",
        "aiokafka.consumer.fetcher",
    ]


async def test_summary_while_down(handler: Collect) -> None:
    clock = Clock()
    watch = KafkaWatch("k", Changes(), clock=clock, summary_every_s=30.0)
    watch.attach_log_filter()
    stop = asyncio.Event()
    try:
        await watch.check(ok)
        await watch.check(refused)
        client_error(1000)
        clock.now = 31.0
        # One round of the loop: probe (still refused), then the summary falls due.
        task = asyncio.create_task(watch.run(refused, stop, interval_s=60.0))
        await wait_for(lambda: any("still down" in r.getMessage() for r in handler.records))
        stop.set()
        await task
    finally:
        watch.detach_log_filter()
    mine = handler.names("killswitch.kafka.watch")
    summaries = [r for r in mine if "still down" in r.getMessage()]
    assert len(summaries) == 1
    assert "1000 client errors since" in summaries[0].getMessage()
    assert [r.levelno for r in mine] == [logging.INFO, logging.ERROR, logging.WARNING]


async def test_a_client_error_probes_at_once() -> None:
    calls: list[int] = []

    async def probe() -> object:
        calls.append(1)
        return None

    watch = KafkaWatch("k", Changes())
    stop = asyncio.Event()
    task = asyncio.create_task(watch.run(probe, stop, interval_s=60.0))
    await wait_for(lambda: len(calls) == 1)
    watch.client_error(is_error=True)
    # The next probe comes from the client error, not the 60 s interval.
    await wait_for(lambda: len(calls) == 2)
    stop.set()
    await task
    assert len(calls) == 2  # and stopping probes no more


async def test_wait_until_up_retries_with_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch_module, "BACKOFF_FIRST_S", 0.001)
    attempts: list[int] = []

    async def third_time_lucky() -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise KafkaConnectionError("Unable to bootstrap")

    changes = Changes()
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens: a broker not there yet
    watch = KafkaWatch(nobody, changes)
    assert await watch.wait_until_up(third_time_lucky, asyncio.Event())
    assert len(attempts) == 3
    assert changes.seen == [
        (False, f"waiting for Kafka at {nobody}"),
        (False, f"waiting for Kafka at {nobody}"),
        (True, "broker answers"),
    ]


async def test_wait_until_up_ends_on_stop() -> None:
    stop = asyncio.Event()

    async def refuse_then_stop() -> None:
        stop.set()
        raise KafkaConnectionError("Unable to bootstrap")

    watch = KafkaWatch(f"127.0.0.1:{free_port()}", Changes())
    assert not await watch.wait_until_up(refuse_then_stop, stop)


async def test_a_listener_that_refuses_the_client_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Something answers TCP at the address but the client cannot bootstrap (a wrong CA,
    say): not a broker to wait for, a configuration to fix."""
    monkeypatch.setattr(watch_module, "BACKOFF_FIRST_S", 0.001)

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    attempts: list[int] = []

    async def refused_here() -> None:
        attempts.append(1)
        raise KafkaConnectionError("Unable to bootstrap")

    watch = KafkaWatch(f"127.0.0.1:{port}", Changes())
    try:
        with pytest.raises(KafkaError, match="accepts connections but refuses"):
            await watch.wait_until_up(refused_here, asyncio.Event())
    finally:
        server.close()
        await server.wait_closed()
    assert len(attempts) == watch_module.REFUSALS_FATAL


async def test_any_listening_reads_every_address() -> None:
    assert not await any_listening(f"127.0.0.1:{free_port()}")
    assert not await any_listening("no-port, :9092")
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await any_listening(f"127.0.0.1:{free_port()},127.0.0.1:{port}")
    finally:
        server.close()
        await server.wait_closed()
