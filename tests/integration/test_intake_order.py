"""Records of one account keep their order into the engine whichever way each is taken
up (daemon in process, embedded broker, exchange simulator over loopback)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from killswitch.simulator import EndpointFaults
from tests.support.exchange import exchange
from tests.support.inprocess import (
    ACCOUNTS,
    SYMBOLS,
    daemon_in_process,
    daemon_settings,
    prepare_topics,
)
from tests.support.intake import (
    FakeEngine,
    alert_message,
    create_all_topics,
    make_settings,
    running_intake,
)
from tests.support.topics import TopicCollector, committed, produce, read_to_end
from tests.support.waiting import wait_for, wait_until

pytestmark = pytest.mark.integration

Unique = Callable[[str], str]


async def test_a_release_is_not_overtaken_by_the_large_latched_kill_before_it(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    # A record over 64 KiB is parsed in a worker thread; the release behind it in the
    # same lane must still reach the engine after it, or the account stays halted.
    async with exchange(ACCOUNTS, seed=7) as ex:
        settings = daemon_settings(kafka_bootstrap, unique_name, ex)
        await prepare_topics(settings)
        ex.seed("mm-1", SYMBOLS, 2)
        latch = alert_message(
            "latch-1", latch=True, scope={"symbols": ["BTC_USDT"]}, note="x" * 70_000
        )
        release = alert_message("release-1", action="release")
        async with (
            TopicCollector(kafka_bootstrap, settings.kafka.topics.results) as results,
            daemon_in_process(settings) as running,
        ):
            await produce(settings, [latch, release])
            await wait_for(
                lambda: bool(results.finals("latch-1") and results.finals("release-1")), timeout=30
            )
            assert results.finals("release-1")[0]["was_halted"] is True
            assert "mm-1" not in running.daemon.engine.halted()


async def _committed_to(bootstrap: str, group: str, topic: str, offset: int) -> None:
    """Wait (20 s at most) until the group has committed ``offset`` on partition 0."""
    await wait_until(
        lambda: committed(bootstrap, group, topic),
        lambda at: at == offset,
        20,
        what=lambda at: f"{topic}: committed {at}, not {offset}",
    )


def _ms(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)


async def test_a_mixed_storm_on_a_harsh_exchange_keeps_every_invariant(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    # One account, one partition: plain kills of different scopes, repeats, dry runs, a
    # latched kill and a release, a malformed record and a manual trigger, all waiting
    # before the daemon starts (its first poll takes them up as runs), against an
    # exchange that answers slowly, 5xx, 429 with Retry-After and loses cancels.
    async with exchange(ACCOUNTS, seed=7) as ex:
        settings = daemon_settings(kafka_bootstrap, unique_name, ex)
        await prepare_topics(settings)
        topics = settings.kafka.topics
        ex.seed("mm-1", SYMBOLS, 4)
        eth = sorted(ex.open_ids("mm-1", ["ETH_USDT"]))
        ex.sim.set_faults(
            EndpointFaults(latency_ms=2, jitter_ms=15, error_rate=0.15, error_statuses=(500, 503))
        )
        ex.sim.set_races(lose_cancel=0.2)
        ex.sim.set_throttle_window(after_requests=15, duration_s=0.5, retry_after="seconds")
        storm: list[bytes | dict[str, Any]] = [
            alert_message("k-pair", scope={"symbols": ["BTC_USDT"]}),
            alert_message("k-side", scope={"sides": ["SELL"]}),
            alert_message("dry-1", dry_run=True),
            alert_message("k-pair", scope={"symbols": ["BTC_USDT"]}),  # a repeat
            alert_message("k-ids", scope={"order_ids": eth[:2]}),
            alert_message("latch-1", latch=True, scope={"symbols": ["ETH_USDT"]}),
            b"{not json",
            alert_message("release-1", action="release"),
            alert_message("dry-2", dry_run=True, scope={"symbols": ["ETH_USDT"]}),
            alert_message("k-all"),
            alert_message("k-side", scope={"sides": ["SELL"]}),  # a repeat
        ]
        await produce(settings, storm)
        trigger = alert_message("trig-1", operator={"name": "ops"})
        await produce(settings, [trigger], topic=topics.manual)
        ids = ["k-pair", "k-side", "dry-1", "k-ids", "latch-1", "release-1", "dry-2", "k-all"]
        async with daemon_in_process(settings) as running:
            results = TopicCollector(kafka_bootstrap, topics.results)
            async with results:
                await wait_for(lambda: len(results.finals()) == len(ids) + 3, timeout=60)
            group = settings.kafka.group_id
            await _committed_to(kafka_bootstrap, group, topics.alerts, len(storm))
            halted = "mm-1" in running.daemon.engine.halted()
        finals = (await read_to_end(kafka_bootstrap, topics.results)).finals()
        dead = await read_to_end(kafka_bootstrap, topics.dlq)
        log = ex.sim.log_since(0)
    # Every record answered exactly once: a final result each, repeats `duplicate`.
    assert Counter(f["alert_id"] for f in finals) == Counter(
        {**dict.fromkeys(ids, 1), "trig-1": 1, "k-pair": 2, "k-side": 2}
    )
    assert sorted(f["alert_id"] for f in finals if f["status"] == "duplicate") == [
        "k-pair",
        "k-side",
    ]
    assert len(dead) == 1
    assert await committed(kafka_bootstrap, group, topics.manual) == 1
    # In order: the release lifted the latch of the kill before it.
    (release,) = (f for f in finals if f["alert_id"] == "release-1")
    assert release["was_halted"] is True
    assert not halted
    # No order cancelled after it was gone (lost cancels are cancelled again, and that
    # is answered CANCEL_SENT, not already closed).
    cancels = [e for e in log if e.client == "mm-1" and e.endpoint == "cancel"]
    assert [e.order_id for e in cancels if e.tag == "order_already_closed"] == []
    # Flat only after a listing of every pair in scope sent after the alert was read.
    for final in finals:
        if final["status"] != "flat":
            continue
        pairs = SYMBOLS
        if final["alert_id"] == "k-pair":
            pairs = ["BTC_USDT"]
        elif final["alert_id"] == "latch-1":
            pairs = ["ETH_USDT"]
        received, finished = _ms(final["received_at"]), _ms(final["finished_at"])
        for pair in pairs:
            assert any(
                e.client == "mm-1"
                and e.endpoint == "open_orders"
                and f"symbol={pair}" in e.query
                and e.status == 200
                and received <= e.timestamp_ms <= finished
                for e in log
            ), (final["alert_id"], pair)
    # Nothing left open: the last kill covered the whole account.
    assert ex.open_ids("mm-1") == set()


async def test_a_repeat_in_the_group_of_its_original_says_what_the_original_became(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    # As a repeat taken up on its own does: "duplicate alert_id (already flat)".
    settings = make_settings(kafka_bootstrap, unique_name)
    await create_all_topics(settings)
    topics = settings.kafka.topics
    await produce(settings, [alert_message(i) for i in ("a-1", "a-2", "a-1")])
    engine = FakeEngine()
    async with (
        TopicCollector(kafka_bootstrap, topics.results) as results,
        running_intake(settings, engine, slice_s=1.0) as run,
    ):
        await wait_for(lambda: len(results.finals()) == 3)
        await wait_for(lambda: run.intake.in_flight == 0)
        finals = (await results.to_end()).finals()
    assert engine.groups == [["a-1", "a-2"]]  # one group: the repeat was in it
    (repeat,) = (f for f in finals if f["status"] == "duplicate")
    assert repeat["reason"] == "duplicate alert_id (already flat)"


async def test_a_group_cut_off_by_a_shutdown_is_answered_once_by_the_next_daemon(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    # A storm's kills for one account, cancels slow enough that the grace period ends
    # while they run: no final result then, and the next daemon answers each once.
    async with exchange(ACCOUNTS, seed=7) as ex:
        settings = daemon_settings(
            kafka_bootstrap, unique_name, ex, engine={"shutdown_grace_s": 0.2}
        )
        await prepare_topics(settings)
        topics = settings.kafka.topics
        ex.seed("mm-1", SYMBOLS, 6)
        ex.sim.set_faults(EndpointFaults(latency_ms=400), "cancel")
        ids = [f"cut-{i}" for i in range(6)]
        await produce(settings, [alert_message(i) for i in ids])
        async with daemon_in_process(settings):
            await wait_for(lambda: bool(ex.log("cancel")), timeout=20)
        first = (await read_to_end(kafka_bootstrap, topics.results)).finals()
        ex.sim.set_faults(EndpointFaults())
        async with (
            TopicCollector(kafka_bootstrap, topics.results) as results,
            daemon_in_process(settings),
        ):
            await wait_for(lambda: {f["alert_id"] for f in results.finals()} >= set(ids), 30)
            await _committed_to(kafka_bootstrap, settings.kafka.group_id, topics.alerts, 6)
        finals = (await read_to_end(kafka_bootstrap, topics.results)).finals()
    assert first == []  # cut off: nothing final from the first daemon
    assert Counter(f["alert_id"] for f in finals) == Counter(ids)
    assert {f["status"] for f in finals} == {"flat"}
    assert ex.open_ids("mm-1") == set()
