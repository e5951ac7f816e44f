"""Exclusivity across daemons: one daemon sweeps an account at a time.

Two daemons in this process share one consumer group; each reaches the simulator
through a door of its own (:class:`DoorServer`), so the simulator's log says which
daemon sent each request. Checked: a manual trigger is swept only by the daemon that
owns the account (the one assigned the account's alerts partition), and when a
rebalance moves an account while it is being swept, the old owner stops before the
new owner starts, and the alert gets one final result whose counts include both
daemons' work.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection
from typing import Any

import pytest
from aiokafka import TopicPartition

from killswitch.config import Settings
from killswitch.daemon import Daemon
from killswitch.kafka.ownership import account_partition
from killswitch.simulator.testing import DoorServer
from tests.support.exchange import Exchange, exchange, probe_shaped
from tests.support.inprocess import (
    ACCOUNTS,
    SYMBOLS,
    daemon_in_process,
    daemon_settings,
    prepare_topics,
)
from tests.support.intake import alert_message
from tests.support.topics import TopicCollector, produce, read_to_end
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

Unique = Callable[[str], str]
CANCEL_ENDPOINTS = frozenset({"cancel", "cancel_batch", "cancel_all"})
# Short group timeouts: the embedded broker completes a join sooner with a shorter
# session, and a fresh group's second member waits out the rebalance timeout.
FAST_GROUP = {
    "session_timeout_ms": 1500,
    "heartbeat_interval_ms": 200,
    "rebalance_timeout_ms": 1500,
}


def through(settings: Settings, door: DoorServer) -> Settings:
    """The same settings with every account reached through ``door``."""
    accounts = [a.model_copy(update={"base_url": door.base_url}) for a in settings.accounts]
    return settings.model_copy(update={"accounts": accounts})


def owner(daemons: list[Daemon], account: str) -> int:
    """Index of the daemon assigned ``account``'s alerts partition."""
    topic = daemons[0].settings.kafka.topics.alerts
    partitions = len(
        {tp.partition for d in daemons for tp in d.intake.assignment if tp.topic == topic}
    )
    tp = TopicPartition(topic, account_partition(account, partitions))
    (index,) = [i for i, d in enumerate(daemons) if tp in d.intake.assignment]
    return index


def sweep_seqs(ex: Exchange, door: DoorServer, account: str) -> list[int]:
    """Log entries of cancels and sweep listings for ``account`` that came through
    ``door``: listings other than the exchange probe's (the first page of the first
    pair, of the engine's page size too; a sweep's such page is not counted, its
    cancels and other pages are)."""
    return [
        e.seq
        for e in ex.sim.request_log
        if e.seq in door.seqs
        and e.client == account
        and (
            e.endpoint in CANCEL_ENDPOINTS
            or (e.endpoint == "open_orders" and not probe_shaped(ex.sim, e))
        )
    ]


def finals(records: Collection[dict[str, Any]], alert_id: str) -> list[str]:
    return [r["status"] for r in records if r.get("final") and r.get("alert_id") == alert_id]


async def two_daemons(
    ex: Exchange,
    stack: contextlib.AsyncExitStack,
    bootstrap: str,
    unique_name: Unique,
    partitions: int,
) -> tuple[Settings, list[DoorServer], list[Daemon]]:
    """Two in-process daemons in one group, each reaching the exchange through a door of
    its own (so the requests say which daemon sent them), 20 orders seeded per account."""
    doors = [DoorServer(ex.sim), DoorServer(ex.sim)]
    for door in doors:
        await stack.enter_async_context(door)
    settings = daemon_settings(bootstrap, unique_name, ex, kafka=FAST_GROUP)
    await prepare_topics(settings, partitions=partitions)
    for account in ACCOUNTS:
        ex.seed(account, SYMBOLS, 20)
    runs = [
        await stack.enter_async_context(daemon_in_process(through(settings, door)))
        for door in doors
    ]
    return settings, doors, [r.daemon for r in runs]


async def test_a_manual_trigger_is_swept_only_by_the_owner_of_the_account(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    # 3 partitions: murmur2 puts mm-2 and mm-1 on 0 and 1. The range assignor gives
    # each member the same partitions of both topics; round-robin would give partition
    # 0 (and 1) of alerts and of manual to different members.
    async with exchange(ACCOUNTS, SYMBOLS, seed=7) as ex, contextlib.AsyncExitStack() as stack:
        settings, doors, daemons = await two_daemons(
            ex, stack, kafka_bootstrap, unique_name, partitions=3
        )
        await wait_for(lambda: all(d.intake.assignment for d in daemons), timeout=30)
        await wait_for(lambda: sum(len(d.intake.assignment) for d in daemons) == 6, timeout=30)
        for account in ACCOUNTS:
            trigger = alert_message(f"m-{account}", [account], operator={"name": "alice"})
            await produce(settings, [trigger], topic=settings.kafka.topics.manual, key=account)
        async with TopicCollector(kafka_bootstrap, settings.kafka.topics.results) as reader:
            await wait_for(lambda: len(reader.finals()) == len(ACCOUNTS), timeout=30)
        await wait_for(lambda: all(d.intake.in_flight == 0 for d in daemons), timeout=30)
        results = (await read_to_end(kafka_bootstrap, settings.kafka.topics.results)).json()
        for account in ACCOUNTS:
            assert finals(results, f"m-{account}") == ["flat"]
            mine = owner(daemons, account)
            assert sweep_seqs(ex, doors[mine], account), account
            assert sweep_seqs(ex, doors[1 - mine], account) == [], account


async def test_a_trigger_naming_two_accounts_is_swept_by_each_account_owner(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    # 4 partitions: mm-1 and mm-2 hash to 1 and 2, which the range assignor gives to
    # different members. The trigger is keyed by mm-1 (as `killswitch trigger -a mm-1
    # -a mm-2` keys it): its reader sweeps mm-1 and forwards mm-2 to mm-2's owner.
    async with exchange(ACCOUNTS, SYMBOLS, seed=7) as ex, contextlib.AsyncExitStack() as stack:
        settings, doors, daemons = await two_daemons(
            ex, stack, kafka_bootstrap, unique_name, partitions=4
        )
        await wait_for(lambda: sum(len(d.intake.assignment) for d in daemons) == 8, timeout=30)
        assert owner(daemons, "mm-1") != owner(daemons, "mm-2")
        trigger = alert_message("m-both", ACCOUNTS, operator={"name": "alice"})
        await produce(settings, [trigger], topic=settings.kafka.topics.manual, key="mm-1")
        async with TopicCollector(kafka_bootstrap, settings.kafka.topics.results) as reader:
            await wait_for(lambda: len(reader.finals()) == len(ACCOUNTS), timeout=30)
        await wait_for(lambda: all(d.intake.in_flight == 0 for d in daemons), timeout=30)
        results = (await read_to_end(kafka_bootstrap, settings.kafka.topics.results)).json()
        for account in ACCOUNTS:
            statuses = [
                r["status"]
                for r in results
                if r.get("final") and r["alert_id"] == "m-both" and r["account"] == account
            ]
            assert statuses == ["flat"], account
            assert not ex.open_ids(account)
            mine = owner(daemons, account)
            assert sweep_seqs(ex, doors[mine], account), account
            assert sweep_seqs(ex, doors[1 - mine], account) == [], account


async def test_a_rebalance_hands_a_running_sweep_over_without_overlap(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    # mm-2 and mm-1 hash to partitions 0 and 1 of 2: when a second daemon joins, one of
    # them moves to it while the first daemon is sweeping both.
    accounts = ["mm-1", "mm-2"]
    slow = {"rate_limit_per_second": 60.0, "burst": 5, "max_concurrency": 2}
    async with exchange(ACCOUNTS, SYMBOLS, seed=7) as ex, contextlib.AsyncExitStack() as stack:
        doors = [DoorServer(ex.sim), DoorServer(ex.sim)]
        for door in doors:
            await stack.enter_async_context(door)
        settings = daemon_settings(
            kafka_bootstrap,
            unique_name,
            ex,
            kafka=FAST_GROUP,
            engine={"default_deadline_s": 60.0},
            intake={"rebalance_drain_s": 0.2},
            **{f"account_{a.replace('-', '_')}": slow for a in accounts},
        )
        await prepare_topics(settings, partitions=2)
        seeded = {a: ex.seed(a, SYMBOLS, 120) for a in accounts}
        first = await stack.enter_async_context(daemon_in_process(through(settings, doors[0])))
        for account in accounts:
            await produce(settings, [alert_message(f"k-{account}", [account])], key=account)
        await wait_for(
            lambda: all(len(sweep_seqs(ex, doors[0], a)) >= 20 for a in accounts), timeout=30
        )
        second = await stack.enter_async_context(daemon_in_process(through(settings, doors[1])))
        daemons = [first.daemon, second.daemon]
        await wait_for(lambda: all(d.intake.assignment for d in daemons), timeout=30)
        async with TopicCollector(kafka_bootstrap, settings.kafka.topics.results) as reader:
            await wait_for(lambda: len(reader.finals()) >= len(accounts), timeout=60)
        await wait_for(lambda: all(d.intake.in_flight == 0 for d in daemons), timeout=30)
        results = (await read_to_end(kafka_bootstrap, settings.kafka.topics.results)).json()
        assert all(not ex.open_ids(a) for a in accounts)
        moved = [a for a in accounts if owner(daemons, a) == 1]
        assert len(moved) == 1
        for account in accounts:
            assert finals(results, f"k-{account}") == ["flat"], account
        account = moved[0]
        old, new = sweep_seqs(ex, doors[0], account), sweep_seqs(ex, doors[1], account)
        assert old
        assert new
        assert max(old) < min(new)  # the old owner stopped before the new one started
        (final,) = [r for r in results if r.get("final") and r["alert_id"] == f"k-{account}"]
        # What the first daemon did is carried over: every order counted once.
        assert final["counts"]["resolved"] == len(seeded[account])
        assert {o["order_id"] for o in final["orders"]} == seeded[account]
