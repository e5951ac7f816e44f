"""The daemon end to end: Kafka (embedded broker) -> intake -> engine -> client -> simulator.

Flatness is checked on the simulator's own books, not on what the daemon reports.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import TopicPartition
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from prometheus_client.parser import text_string_to_metric_families

from killswitch.config import ConfigError, EngineSettings
from killswitch.contracts import ResultRecord, encode_heartbeat
from killswitch.daemon import Daemon, async_run
from killswitch.embedded import free_port
from killswitch.kafka.ownership import account_partition
from killswitch.simulator.faults import EndpointFaults
from killswitch.triggers import sign_trigger
from tests.support.daemon import wait_http
from tests.support.exchange import Exchange, exchange, probe_shaped
from tests.support.inprocess import (
    ACCOUNTS,
    SYMBOLS,
    EnvDaemonProcess,
    daemon_in_process,
    daemon_settings,
    prepare_topics,
)
from tests.support.intake import alert_message
from tests.support.topics import TopicCollector, committed, produce
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

Unique = Callable[[str], str]


def halted_records(states: TopicCollector, account: str) -> list[bool]:
    return [r["halted"] for r in states.json() if r.get("account") == account]


async def test_kill_with_latch_then_release(kafka_bootstrap: str, unique_name: Unique) -> None:
    async with exchange(ACCOUNTS, seed=7) as ex:
        settings = daemon_settings(kafka_bootstrap, unique_name, ex)
        await prepare_topics(settings)
        topics = settings.kafka.topics
        ex.seed("mm-1", SYMBOLS, 40)
        untouched = ex.seed("mm-2", SYMBOLS, 5)
        async with (
            TopicCollector(kafka_bootstrap, topics.results) as results,
            TopicCollector(kafka_bootstrap, topics.state) as states,
            daemon_in_process(settings) as run,
        ):
            await produce(settings, [alert_message("kill-1", ["mm-1"], latch=True)])
            await wait_for(lambda: len(results.finals("kill-1")) == 1, timeout=20)
            final = results.finals("kill-1")[0]
            assert final["status"] == "flat"
            assert final["counts"]["resolved"] == 80
            assert final["counts"]["sent"] + final["counts"]["already_closed"] == 80
            assert ex.open_ids("mm-1") == set()
            assert ex.open_ids("mm-2") == untouched
            assert halted_records(states, "mm-1")[:1] == [True]
            # Latched: orders that appear later are cancelled by the guard.
            ex.seed("mm-1", SYMBOLS, 3)
            await wait_for(lambda: ex.open_ids("mm-1") == set(), timeout=10)
            await produce(settings, [alert_message("rel-1", ["mm-1"], action="release")])
            await wait_for(lambda: len(results.finals("rel-1")) == 1)
            assert results.finals("rel-1")[0]["status"] == "released"
            await wait_for(lambda: halted_records(states, "mm-1")[-1:] == [False])
            assert "mm-1" not in run.daemon.engine.halted()
            await wait_for(lambda: run.daemon.intake.committed_total >= 2)
        assert (
            await committed(
                settings.kafka.bootstrap_servers, settings.kafka.group_id, topics.alerts
            )
            == 2
        )


async def test_default_strategy_kills_a_whole_account_with_one_cancel_all_per_pair(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    default = EngineSettings().strategy
    assert default == "auto"
    async with exchange(ACCOUNTS, seed=7) as ex:
        settings = daemon_settings(kafka_bootstrap, unique_name, ex, engine={"strategy": default})
        await prepare_topics(settings)
        seeded = ex.seed("mm-1", SYMBOLS, 150)  # more than a page (100) per pair
        untouched = ex.seed("mm-2", SYMBOLS, 5)
        async with (
            TopicCollector(kafka_bootstrap, settings.kafka.topics.results) as results,
            daemon_in_process(settings),
        ):
            await produce(settings, [alert_message("auto-1", ["mm-1"])])
            await wait_for(lambda: len(results.finals("auto-1")) == 1, timeout=20)
        final = results.finals("auto-1")[0]
        assert final["status"] == "flat"
        assert final["counts"]["resolved"] == final["counts"]["sent"] == len(seeded)
        assert final["residual_open"] == 0
        assert ex.open_ids("mm-1") == set()
        assert ex.open_ids("mm-2") == untouched
        log = [e for e in ex.sim.request_log if e.client == "mm-1"]
        sweep = Counter(e.endpoint for e in log)
        listed = Counter(
            e.query for e in log if e.endpoint == "open_orders" and "limit=100" in e.query
        )
        # every pair the exchange trades: its first page, then one verifying listing...
        assert len(listed) > len(SYMBOLS)
        # (the readiness probe lists the first pair's first page too, each round)
        probed = {e.query for e in log if probe_shaped(ex.sim, e)}
        assert len(probed) == 1
        assert {n for q, n in listed.items() if q not in probed} == {2}
        assert listed[probed.pop()] >= 2
        # ...and one cancel-all for each pair with orders; nothing else
        assert sweep["cancel_all"] == len(SYMBOLS)
        assert sweep["cancel"] == sweep["cancel_batch"] == 0


async def test_duplicate_delivery_sweeps_once(kafka_bootstrap: str, unique_name: Unique) -> None:
    async with exchange(ACCOUNTS, seed=7) as ex:
        settings = daemon_settings(kafka_bootstrap, unique_name, ex)
        await prepare_topics(settings)
        ex.seed("mm-2", SYMBOLS, 10)
        message = alert_message("dup-1", ["mm-2"])
        async with (
            TopicCollector(kafka_bootstrap, settings.kafka.topics.results) as results,
            daemon_in_process(settings),
        ):
            await produce(settings, [message, message], key="mm-2")
            await wait_for(lambda: len(results.finals("dup-1")) == 2, timeout=20)
            finals = (await results.to_end()).finals("dup-1")
            assert sorted(r["status"] for r in finals) == ["duplicate", "flat"]
            cancels = Counter(ex.cancels("mm-2"))
            assert len(cancels) == 20
            assert max(cancels.values()) == 1  # no order was cancelled twice


async def test_bad_input_goes_to_the_dlq(kafka_bootstrap: str, unique_name: Unique) -> None:
    key = Ed25519PrivateKey.generate()
    public = base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    async with exchange(ACCOUNTS, seed=7) as ex:
        settings = daemon_settings(
            kafka_bootstrap,
            unique_name,
            ex,
            trigger_signing={
                "required": True,
                "operators": [{"name": "alice", "public_key": public.decode()}],
            },
        )
        await prepare_topics(settings)
        topics = settings.kafka.topics
        ex.seed("mm-1", SYMBOLS, 5)
        forged = sign_trigger(alert_message("forged-1"), "alice", Ed25519PrivateKey.generate())
        good = sign_trigger(alert_message("ops-1"), "alice", key)
        async with (
            TopicCollector(kafka_bootstrap, topics.dlq) as dlq,
            TopicCollector(kafka_bootstrap, topics.results) as results,
            daemon_in_process(settings),
        ):
            await produce(settings, [b"{not json", alert_message("x", ["ghost"])])
            await produce(settings, [forged, good], topic=topics.manual)
            await wait_for(lambda: len(dlq.json()) == 3 and len(results.finals()) == 1, timeout=20)
            letters = (await dlq.to_end()).json()
            assert sorted(r["kind"] for r in letters) == ["invalid", "invalid", "unauthorized"]
            (good_result,) = (await results.to_end()).finals()
            assert good_result["alert_id"] == "ops-1"
            assert good_result["operator"] == "alice"
            assert ex.open_ids("mm-1") == set()


async def test_deadman_fires_once_when_heartbeats_stop(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    async with exchange(ACCOUNTS, seed=7) as ex:
        settings = daemon_settings(
            kafka_bootstrap,
            unique_name,
            ex,
            deadman=[
                {
                    "source": "bot-2",
                    "timeout_s": 1.0,
                    "scope": {"accounts": ["mm-2"], "symbols": ["ETH_USDT"]},
                }
            ],
        )
        await prepare_topics(settings)
        topics = settings.kafka.topics
        keep = ex.seed("mm-2", ["BTC_USDT"], 4)
        ex.seed("mm-2", ["ETH_USDT"], 6)
        async with (
            TopicCollector(kafka_bootstrap, topics.results) as results,
            daemon_in_process(settings) as run,
        ):
            assert run.daemon.deadman is not None
            beat = encode_heartbeat("bot-2", datetime.now(UTC))
            await produce(settings, [beat], topic=topics.heartbeats, key="bot-2")
            await wait_for(lambda: len(results.finals()) == 1, timeout=20)
            (final,) = (await results.to_end()).finals()  # fired once
            assert final["source"] == "deadman"
            assert final["alert_id"].startswith("deadman-bot-2-")
            assert final["status"] == "flat"
            assert ex.open_ids("mm-2") == keep  # only the scope's symbol was swept
            assert len(run.daemon.deadman.fired) == 1
            # Heartbeats resume: re-armed, and silence fires a second, distinct kill.
            beat = encode_heartbeat("bot-2", datetime.now(UTC))
            await produce(settings, [beat], topic=topics.heartbeats, key="bot-2")
            await wait_for(lambda: len(results.finals()) == 2, timeout=20)
            ids = [r["alert_id"] for r in (await results.to_end()).finals()]
            assert len(ids) == 2
            assert ids[0] != ids[1]
            assert len(run.daemon.deadman.fired) == 2


async def test_restart_restores_the_halt_and_guards_again(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    async with exchange(ACCOUNTS, seed=7) as ex:
        settings = daemon_settings(kafka_bootstrap, unique_name, ex)
        await prepare_topics(settings)
        ex.seed("mm-1", SYMBOLS, 5)
        async with (
            TopicCollector(kafka_bootstrap, settings.kafka.topics.results) as results,
        ):
            async with daemon_in_process(settings):
                await produce(settings, [alert_message("halt-1", ["mm-1"], latch=True)])
                await wait_for(lambda: len(results.finals("halt-1")) == 1, timeout=20)
            ex.seed("mm-1", SYMBOLS, 5)  # placed while no daemon runs
            async with daemon_in_process(settings) as run:
                assert [s.account for s in run.daemon.restored] == ["mm-1"]
                await wait_for(lambda: ex.open_ids("mm-1") == set(), timeout=20)
                # the old alert is not replayed (committed), only guarded
                assert len((await results.to_end()).finals("halt-1")) == 1


async def test_bad_configuration_is_refused_before_anything_starts(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    async with exchange(ACCOUNTS, seed=7) as ex:
        settings = daemon_settings(
            kafka_bootstrap,
            unique_name,
            ex,
            deadman=[{"source": "b", "timeout_s": 1, "scope": {"accounts": ["nobody"]}}],
        )
        with pytest.raises(ConfigError, match="unknown"):
            await async_run(settings)
        bad_key = daemon_settings(
            kafka_bootstrap, unique_name, ex, account_mm_2={"private_key": "not a key"}
        )
        with pytest.raises(ConfigError, match=r"accounts\[mm-2\]\.private_key") as info:
            await async_run(bad_key)
        assert "not a key" not in str(info.value)


# ------------------------------------------------------------------- subprocesses


async def test_crash_mid_sweep_then_restart_completes_the_alert(
    kafka_bootstrap: str, unique_name: Unique, tmp_path: Path
) -> None:
    async with exchange(ACCOUNTS, seed=7) as ex:
        settings = daemon_settings(
            kafka_bootstrap,
            unique_name,
            ex,
            account_mm_1={"max_concurrency": 1, "rate_limit_per_second": 100.0, "burst": 1},
        )
        await prepare_topics(settings)
        topics = settings.kafka.topics
        ex.seed("mm-1", SYMBOLS, 60)
        # slow cancels: the sweep takes seconds, long enough to be killed in the middle
        ex.sim.set_faults(EndpointFaults(latency_ms=20), "cancel")
        async with TopicCollector(kafka_bootstrap, topics.results) as results:
            first = EnvDaemonProcess(settings, tmp_path / "daemon1.log")
            try:
                await produce(settings, [alert_message("crash-1", ["mm-1"])])
                await wait_for(lambda: len(ex.cancels("mm-1")) >= 10, timeout=30)
                first.kill()
            finally:
                first.close()
            assert (await results.to_end()).finals("crash-1") == []
            assert ex.open_ids("mm-1")  # the crash left orders open
            ex.sim.clear_faults()
            second = EnvDaemonProcess(settings, tmp_path / "daemon2.log")
            try:
                await wait_for(lambda: len(results.finals("crash-1")) == 1, timeout=40)
                assert results.finals("crash-1")[0]["status"] == "flat"
                assert ex.open_ids("mm-1") == set()
                second.terminate()
                assert await second.wait(timeout=20) == 0
            finally:
                second.close()
        assert (
            await committed(
                settings.kafka.bootstrap_servers, settings.kafka.group_id, topics.alerts
            )
            == 1
        )


@pytest.mark.parametrize(("choice", "expected"), [("auto", "uvloop"), ("asyncio", "asyncio")])
async def test_the_daemon_runs_on_the_configured_event_loop(
    kafka_bootstrap: str, unique_name: Unique, tmp_path: Path, choice: str, expected: str
) -> None:
    """``[runtime] event_loop``: by default (uvloop installed, as it is with the package on
    Linux) the daemon process runs on uvloop, with ``asyncio`` on the standard library's
    loop; ``/metrics`` says which, and a kill runs to ``flat`` on either."""
    async with exchange(ACCOUNTS, seed=7) as ex:
        port = free_port()
        settings = daemon_settings(
            kafka_bootstrap,
            unique_name,
            ex,
            metrics={"enabled": True, "host": "127.0.0.1", "port": port},
            runtime={"event_loop": choice},
        )
        await prepare_topics(settings)
        ex.seed("mm-1", SYMBOLS, 5)
        async with (
            TopicCollector(kafka_bootstrap, settings.kafka.topics.results) as results,
            httpx.AsyncClient() as http,
        ):
            proc = EnvDaemonProcess(settings, tmp_path / "daemon.log")
            try:
                await produce(settings, [alert_message("loop-1", ["mm-1"])])
                await wait_for(lambda: len(results.finals("loop-1")) == 1, timeout=30)
                text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
                proc.terminate()
                assert await proc.wait(timeout=20) == 0
            finally:
                proc.close()
        assert results.finals("loop-1")[0]["status"] == "flat"
        assert ex.open_ids("mm-1") == set()
        info = [
            sample.labels["event_loop"]
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "killswitch_build_info"
        ]
        assert info == [expected]


async def test_sigterm_finishes_the_running_sweep_and_exits_zero(
    kafka_bootstrap: str, unique_name: Unique, tmp_path: Path
) -> None:
    async with exchange(ACCOUNTS, seed=7) as ex:
        settings = daemon_settings(
            kafka_bootstrap,
            unique_name,
            ex,
            account_mm_1={"max_concurrency": 1, "rate_limit_per_second": 100.0, "burst": 1},
            engine={"shutdown_grace_s": 15.0},
        )
        await prepare_topics(settings)
        topics = settings.kafka.topics
        ex.seed("mm-1", SYMBOLS, 30)
        ex.sim.set_faults(EndpointFaults(latency_ms=20), "cancel")
        async with TopicCollector(kafka_bootstrap, topics.results) as results:
            proc = EnvDaemonProcess(settings, tmp_path / "daemon.log")
            try:
                await produce(settings, [alert_message("term-1", ["mm-1"])])
                await wait_for(lambda: len(ex.cancels("mm-1")) >= 5, timeout=30)
                proc.terminate()
                assert await proc.wait(timeout=30) == 0
            finally:
                proc.close()
            # the sweep ran to its end inside the grace period, and its result is out
            assert [r["status"] for r in (await results.to_end()).finals("term-1")] == ["flat"]
            assert ex.open_ids("mm-1") == set()
        assert (
            await committed(
                settings.kafka.bootstrap_servers, settings.kafka.group_id, topics.alerts
            )
            == 1
        )


# --------------------------------------------------------------------- scale-out


async def test_two_daemons_share_the_partitions(kafka_bootstrap: str, unique_name: Unique) -> None:
    async with exchange(ACCOUNTS, seed=7) as ex:
        settings = daemon_settings(kafka_bootstrap, unique_name, ex)
        await prepare_topics(settings, partitions=4)
        topics = settings.kafka.topics
        ex.seed("mm-1", SYMBOLS, 10)
        ex.seed("mm-2", SYMBOLS, 10)
        async with (
            TopicCollector(kafka_bootstrap, topics.results) as results,
            TopicCollector(kafka_bootstrap, topics.state) as states,
            daemon_in_process(settings) as one,
            daemon_in_process(settings) as two,
        ):
            await wait_for(
                lambda: bool(one.daemon.intake.assignment) and bool(two.daemon.intake.assignment),
                timeout=30,
            )
            shared = one.daemon.intake.assignment | two.daemon.intake.assignment
            assert not one.daemon.intake.assignment & two.daemon.intake.assignment
            assert len(shared) == 8  # 4 alerts + 4 manual partitions
            alerts = [alert_message(f"s-{i}", [a]) for i, a in enumerate(["mm-1", "mm-2"] * 5)]
            for message in alerts:
                account = message["scope"]["accounts"][0]
                await produce(settings, [message], key=account)
            await wait_for(lambda: len(results.finals()) == 10, timeout=30)
            assert sorted(r["alert_id"] for r in (await results.to_end()).finals()) == sorted(
                m["alert_id"] for m in alerts
            )
            assert ex.open_ids("mm-1") == set()
            assert ex.open_ids("mm-2") == set()
            # A halt set through one daemon is known to both; a release lifts both.
            await produce(settings, [alert_message("h-1", ["mm-1"], latch=True)], key="mm-1")
            await wait_for(
                lambda: (
                    "mm-1" in one.daemon.engine.halted() and "mm-1" in two.daemon.engine.halted()
                ),
                timeout=20,
            )
            await produce(settings, [alert_message("r-1", ["mm-1"], action="release")], key="mm-1")
            await wait_for(
                lambda: (
                    "mm-1" not in one.daemon.engine.halted()
                    and "mm-1" not in two.daemon.engine.halted()
                ),
                timeout=20,
            )
            # The released record is published before the latch lifts, but the reader
            # may not have fetched it yet: wait for it rather than read once.
            await wait_for(lambda: halted_records(states, "mm-1")[-1:] == [False], timeout=20)


def _owned(daemon: Daemon, accounts: list[str], partitions: int) -> set[str]:
    """The accounts whose alerts partition is assigned to ``daemon``."""
    topic = daemon.settings.kafka.topics.alerts
    assignment = daemon.intake.assignment
    return {
        a for a in accounts if TopicPartition(topic, account_partition(a, partitions)) in assignment
    }


async def _listings(http: httpx.AsyncClient, daemon: Daemon) -> Counter[str]:
    """Open-order listings this daemon sent, per account (its own /metrics)."""
    url_of = daemon.observability.url
    assert url_of is not None
    text = (await http.get(f"{url_of()}/metrics")).text
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "killswitch_exchange_requests_total"
                and sample.labels.get("endpoint") == "open_orders"
            ):
                counts[sample.labels["account"]] += int(sample.value)
    return counts


def _sim_listings(ex: Exchange, account: str) -> int:
    return sum(1 for e in ex.sim.request_log if e.endpoint == "open_orders" and e.client == account)


async def test_a_halted_account_is_guarded_only_by_the_owner_of_its_partition(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    partitions = 4
    accounts = ["mm-1", "mm-2"]  # murmur2 % 4: partitions 1 and 2
    async with exchange(ACCOUNTS, seed=7) as ex:
        settings = daemon_settings(
            kafka_bootstrap, unique_name, ex, metrics={"enabled": True, "port": 0}
        )
        await prepare_topics(settings, partitions=partitions)
        async with (
            TopicCollector(kafka_bootstrap, settings.kafka.topics.results) as results,
            daemon_in_process(settings) as one,
            httpx.AsyncClient() as http,
            contextlib.AsyncExitStack() as later,
        ):
            # Alone, a daemon owns every partition and guards every halt.
            for account in accounts:
                message = alert_message(f"h-{account}", [account], latch=True)
                await produce(settings, [message], key=account)
            await wait_for(lambda: len(results.finals()) == 2, timeout=30)
            for account in accounts:
                # the producer's partitioner and ours agree
                origin = results.finals(f"h-{account}")[0]["origin"]
                assert origin["partition"] == account_partition(account, partitions)
            await wait_for(lambda: one.daemon.engine.guarded() == set(accounts), timeout=10)

            # A second daemon joins: the partitions split, and so do the guards.
            two = await later.enter_async_context(daemon_in_process(settings))
            daemons = [one.daemon, two.daemon]
            await wait_for(lambda: all(d.intake.assignment for d in daemons), timeout=30)
            assert not one.daemon.intake.assignment & two.daemon.intake.assignment
            await wait_for(
                lambda: all(
                    set(d.engine.halted()) == set(accounts)
                    and d.engine.guarded() == _owned(d, accounts, partitions)
                    for d in daemons
                ),
                timeout=20,
            )
            guards = [d.engine.guarded() for d in daemons]
            # Partitions 1 and 2 go to different members (range or round robin alike).
            assert len(guards[0]) == len(guards[1]) == 1
            assert guards[0] | guards[1] == set(accounts)
            [released], [kept] = guards

            # Over several guard intervals only the owner lists each account.
            before = [await _listings(http, d) for d in daemons]
            sim_before = {a: _sim_listings(ex, a) for a in accounts}
            ex.seed("mm-1", SYMBOLS, 2)
            ex.seed("mm-2", SYMBOLS, 2)
            await wait_for(
                lambda: all(
                    not ex.open_ids(a) and _sim_listings(ex, a) >= sim_before[a] + 8
                    for a in accounts
                ),
                timeout=20,
            )
            after = [await _listings(http, d) for d in daemons]
            for account in accounts:
                deltas = [after[i][account] - before[i][account] for i in range(2)]
                owner = 0 if account in guards[0] else 1
                assert deltas[owner] >= 8, (account, deltas)
                assert deltas[1 - owner] == 0, (account, deltas)

            # A release lifts the halt on both daemons.
            release = alert_message("r-1", [released], action="release")
            await produce(settings, [release], key=released)
            await wait_for(
                lambda: all(
                    released not in d.engine.halted() and released not in d.engine.guarded()
                    for d in daemons
                ),
                timeout=20,
            )
            assert all(set(d.engine.halted()) == {kept} for d in daemons)
            assert one.daemon.engine.guarded() == frozenset()

            # The second daemon leaves: the first takes its partitions and its guard.
            await later.aclose()
            await wait_for(lambda: len(one.daemon.intake.assignment) == 2 * partitions, timeout=30)
            await wait_for(lambda: one.daemon.engine.guarded() == {kept}, timeout=10)
            ex.seed(kept, SYMBOLS, 2)
            await wait_for(lambda: not ex.open_ids(kept), timeout=10)


async def _poll_status(http: httpx.AsyncClient, url: str, want: int, timeout: float = 10) -> int:
    """GET ``url`` until it answers ``want`` or the deadline passes; the last status."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status = (await http.get(url)).status_code
        if status == want or loop.time() > deadline:
            return status
        await asyncio.sleep(0.05)  # polling a condition with a deadline


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one series in a Prometheus text exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def test_metrics_and_readiness(kafka_bootstrap: str, unique_name: Unique) -> None:
    async with exchange(ACCOUNTS, seed=7) as ex:
        settings = daemon_settings(
            kafka_bootstrap, unique_name, ex, metrics={"enabled": True, "port": 0}
        )
        await prepare_topics(settings)
        ex.seed("mm-1", SYMBOLS, 6)
        async with (
            TopicCollector(kafka_bootstrap, settings.kafka.topics.results) as results,
            daemon_in_process(settings) as run,
            httpx.AsyncClient() as http,
        ):
            url_of = run.daemon.observability.url
            assert url_of is not None
            url = url_of()
            # consuming, and both accounts' exchange answered the start-up probe
            assert await _poll_status(http, f"{url}/readyz", 200) == 200
            await produce(settings, [b"garbage", alert_message("m-1", ["mm-1"])])
            await wait_for(lambda: len(results.finals("m-1")) == 1, timeout=20)
            text = (await http.get(f"{url}/metrics")).text
            assert (
                _sample(text, "killswitch_alerts_total", source="alerts", result="processed") == 1
            )
            assert _sample(text, "killswitch_alerts_total", source="alerts", result="invalid") == 1
            assert _sample(text, "killswitch_dlq_total", reason="undecodable") == 1
            assert _sample(text, "killswitch_cancels_total", account="mm-1", outcome="sent") == 12
            assert _sample(text, "killswitch_ready") == 1


async def test_a_stop_cut_short_publishes_nothing_for_the_unfinished_alert(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    """The graceful stop is waiting for a long sweep when the daemon's task is cancelled
    (what a second SIGTERM does): the records' work and the sweeps are cancelled before
    the producer closes, so no final result, not even ``failed``, is ever handed to the
    publisher for the alert, and its offset stays uncommitted (replayed)."""
    async with exchange(ACCOUNTS, seed=7) as ex:
        port = free_port()
        settings = daemon_settings(
            kafka_bootstrap,
            unique_name,
            ex,
            account_mm_1={"max_concurrency": 1, "rate_limit_per_second": 20.0, "burst": 1},
            engine={"shutdown_grace_s": 60.0, "default_deadline_s": 60.0},
            metrics={"enabled": True, "host": "127.0.0.1", "port": port},
        )
        await prepare_topics(settings)
        topics = settings.kafka.topics
        ex.seed("mm-1", SYMBOLS, 200)  # 20 s at 20/s: far beyond this test
        stop = asyncio.Event()
        started: list[Daemon] = []
        task = asyncio.create_task(async_run(settings, stop_event=stop, on_started=started.append))
        finals: list[str] = []
        try:
            await wait_for(lambda: bool(started), timeout=30)
            publisher = started[0].publisher
            publish = publisher.result

            async def spy(record: ResultRecord, *, wait: bool = True) -> None:
                if record.final:
                    finals.append(record.alert_id)
                await publish(record, wait=wait)

            publisher.result = spy  # type: ignore[method-assign]
            await produce(settings, [alert_message("cut-1", ["mm-1"])])
            await wait_for(lambda: len(ex.cancels("mm-1")) >= 3, timeout=30)
            stop.set()  # the graceful stop: it waits up to 60 s for the sweep
            await wait_http(
                f"http://127.0.0.1:{port}/readyz",
                until=lambda answer: "shutting down" in answer.text,
            )
            task.cancel()  # cut short
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=30)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        # Nothing of the daemon runs on: records' work and sweeps were cancelled with it.
        me = asyncio.current_task()
        left = [t.get_name() for t in asyncio.all_tasks() if t is not me and not t.done()]
        assert left == []
        assert finals == []
        assert ex.open_ids("mm-1")  # the sweep was cut short, not finished
        assert await committed(
            settings.kafka.bootstrap_servers, settings.kafka.group_id, topics.alerts
        ) in (None, 0)


async def test_a_failing_part_stops_the_daemon_gracefully(
    kafka_bootstrap: str, unique_name: Unique, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long-lived part that fails stops the daemon as a signal does: the other parts
    are stopped in order (not cancelled by the task group) and the run ends without
    an error."""
    fail = asyncio.Event()

    async def failing_lag(*_: Any) -> None:
        await fail.wait()
        raise RuntimeError("loop lag probe broke")

    monkeypatch.setattr("killswitch.daemon.watch_loop_lag", failing_lag)
    async with exchange(ACCOUNTS, seed=7) as ex:
        settings = daemon_settings(kafka_bootstrap, unique_name, ex)
        await prepare_topics(settings)
        ex.seed("mm-2", SYMBOLS, 10)
        async with (
            TopicCollector(kafka_bootstrap, settings.kafka.topics.results) as results,
            daemon_in_process(settings) as run,
        ):
            await produce(settings, [alert_message("part-1", ["mm-2"])], key="mm-2")
            await wait_for(lambda: len(results.finals("part-1")) == 1, timeout=20)
            fail.set()
            await asyncio.wait_for(asyncio.shield(run.task), timeout=30)
            assert run.task.result() is None  # a graceful stop, not an error
            assert run.stop.is_set()
        # The graceful stop committed the finished alert.
        assert (
            await committed(
                settings.kafka.bootstrap_servers,
                settings.kafka.group_id,
                settings.kafka.topics.alerts,
            )
            == 1
        )
