"""Scope pairs checked before any request, the pair list's sources, ``not_found`` ids.

Over real sockets: the exchange simulator on loopback, the embedded Kafka broker, the
daemon in process. Flatness and "no request was made" are read from the simulator's
own books and request log, not from what the daemon reports.
"""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from killswitch.commands.check import run_checks
from killswitch.commands.prepare import TriggerRequest, prepare_trigger
from killswitch.commands.trigger import run_trigger, trigger_rules
from killswitch.daemon import Daemon
from killswitch.exchange.client import ExchangeClient
from killswitch.exchange.errors import ExchangeUnavailable, Redirected
from killswitch.exitcodes import EXIT_NOT_FOUND, EXIT_REFUSED
from killswitch.kafka.consumer import PAIR_FETCH_WAIT_S
from killswitch.simulator import EndpointFaults, Simulator, SimulatorServer
from killswitch.simulator.core import LogEntry
from killswitch.simulator.testing import account_settings, register_test_client
from tests.support.exchange import Exchange, exchange, probe_shaped
from tests.support.inprocess import (
    ACCOUNTS,
    SYMBOLS,
    daemon_in_process,
    daemon_settings,
    prepare_topics,
    settings_env,
)
from tests.support.intake import (
    FakeEngine,
    alert_message,
    create_all_topics,
    make_settings,
    running_intake,
)
from tests.support.topics import TopicCollector, produce
from tests.support.waiting import wait_for, wait_until

pytestmark = pytest.mark.integration

Unique = Callable[[str], str]

# Every exchange-info call fails (the client's retries included) while this is set.
INFO_DOWN = EndpointFaults(error_rate=1.0, error_statuses=(503,))
_PUBLIC = frozenset({"time", "exchange_info"})


def _alert_requests(ex: Exchange, since: int) -> list[LogEntry]:
    """Requests on orders after ``since`` that a kill would make: not the public ones
    (the daemon's probes read time and pairs; that the check itself costs no request is
    test_a_warm_pair_list_costs_no_request...), nor the readiness probe's page (the
    first page of the first pair, which a kill's would look like)."""
    return [
        e
        for e in ex.sim.log_since(since)
        if e.endpoint not in _PUBLIC and not probe_shaped(ex.sim, e)
    ]


def _last_seq(ex: Exchange) -> int:
    entries = ex.sim.log_since(0)
    return entries[-1].seq if entries else 0


async def _metric(daemon: Daemon, name: str, **labels: str) -> float:
    url_of = daemon.observability.url
    assert url_of is not None
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{url_of()}/metrics")).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


# ------------------------------------------------------------------ daemon end to end


@pytest.mark.parametrize(
    ("unknown_symbol", "public_auth"), [("invalid", False), ("empty", False), ("empty", True)]
)
async def test_alerts_naming_unknown_pairs_are_dead_lettered_before_any_request(
    kafka_bootstrap: str,
    unique_name: Unique,
    unknown_symbol: Literal["invalid", "empty"],
    public_auth: bool,
) -> None:
    async with exchange(ACCOUNTS, seed=7) as ex:
        # public_auth: the exchange wants exchange-info signed; the pair list still comes.
        ex.sim.public_auth = public_auth
        # "empty": the exchange lists a pair it does not trade as [] (which must not
        # read as flat); "invalid": it answers 400 (the default).
        ex.sim.unknown_symbol = unknown_symbol
        settings = daemon_settings(
            kafka_bootstrap, unique_name, ex, metrics={"enabled": True, "port": 0}
        )
        await prepare_topics(settings)
        topics = settings.kafka.topics
        seeded = ex.seed("mm-1", SYMBOLS, 5)
        bad = {"typo-case": "btc_usdt", "typo-sep": "BTCUSDT", "typo-none": "NOPE_USDT"}
        async with (
            TopicCollector(kafka_bootstrap, topics.results) as results,
            TopicCollector(kafka_bootstrap, topics.dlq) as dlq,
            daemon_in_process(settings) as run,
        ):
            since = _last_seq(ex)
            await produce(
                settings,
                [
                    alert_message(alert_id, scope={"symbols": [symbol]})
                    for alert_id, symbol in bad.items()
                ],
            )
            await wait_for(lambda: len(dlq.json()) == 3, timeout=20)
            letters = (await dlq.to_end()).json()
            by_id = {r["alert_id"]: r for r in letters}
            assert len(letters) == len(by_id) == len(bad)
            assert set(by_id) == set(bad)
            assert {r["kind"] for r in letters} == {"invalid"}
            assert "btc_usdt (did you mean BTC_USDT?)" in by_id["typo-case"]["reason"]
            assert "BTCUSDT (did you mean BTC_USDT?)" in by_id["typo-sep"]["reason"]
            assert "NOPE_USDT (" in by_id["typo-none"]["reason"]
            assert "BTC_USDT?" not in by_id["typo-none"]["reason"]
            assert _alert_requests(ex, since) == []  # no listing, no cancel, for any of them
            assert ex.open_ids("mm-1") == seeded
            assert await _metric(run.daemon, "killswitch_alerts_total", result="invalid") == 3
            assert await _metric(run.daemon, "killswitch_dlq_total", reason="invalid") == 3

            # A run of alike alerts (one plan made for the first, shared by the rest) is
            # refused alert by alert, each with its own dead letter.
            alike = [f"alike-{n}" for n in range(4)]
            await produce(
                settings,
                [alert_message(a, scope={"symbols": ["NOPE_USDT"]}) for a in alike],
            )
            await wait_for(lambda: len(dlq.json()) == 3 + len(alike), timeout=20)
            letters = (await dlq.to_end()).json()
            assert sorted(r["alert_id"] for r in letters[3:]) == alike
            assert {r["kind"] for r in letters[3:]} == {"invalid"}
            assert _alert_requests(ex, since) == []

            # A known pair still goes through (the check does not refuse everything).
            await produce(settings, [alert_message("good-1", scope={"symbols": ["BTC_USDT"]})])
            await wait_for(lambda: len(results.finals("good-1")) == 1, timeout=20)
            assert results.finals("good-1")[0]["status"] == "flat"
            everything = await results.to_end()
            assert everything.finals() == everything.finals("good-1")  # none for the refused
            btc = {e.order_id for e in ex.sim.request_log if e.endpoint == "cancel"}
            assert btc
            assert ex.open_ids("mm-1") == seeded - btc
            assert len(ex.open_ids("mm-1")) == 5  # the ETH_USDT orders stay open


async def test_no_pair_list_at_all_the_kill_runs_but_is_never_flat(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    async with exchange(ACCOUNTS, seed=7) as ex:
        ex.sim.set_faults(INFO_DOWN, "exchange_info")
        settings = daemon_settings(kafka_bootstrap, unique_name, ex)
        await prepare_topics(settings)
        ex.seed("mm-1", SYMBOLS, 4)
        async with (
            TopicCollector(kafka_bootstrap, settings.kafka.topics.results) as results,
            daemon_in_process(settings),
        ):
            await produce(settings, [alert_message("blind-1", scope={"symbols": ["BTC_USDT"]})])
            await wait_for(lambda: len(results.finals("blind-1")) == 1, timeout=30)
            final = results.finals("blind-1")[0]
            assert final["status"] == "residual"
            assert final["reason"].startswith(
                "pairs could not be checked against the exchange's pair list ("
            )
            assert "no pair list: exchange-info failed" in final["reason"]
            assert final["counts"]["sent"] == 4  # it cancelled what it could
            assert len(ex.open_ids("mm-1")) == 4  # only the ETH_USDT orders are left

            # The worst case: a pair the exchange does not trade, listed as [] there.
            ex.sim.unknown_symbol = "empty"
            await produce(settings, [alert_message("blind-2", scope={"symbols": ["NOPE_USDT"]})])
            await wait_for(lambda: len(results.finals("blind-2")) == 1, timeout=30)
            final = results.finals("blind-2")[0]
            assert final["status"] == "residual"
            assert final["reason"].startswith("pairs could not be checked against the exchange")

            # A whole-account kill needs the list to know what to list: at its deadline
            # (the exchange may answer before then) it fails, saying so.
            await produce(settings, [alert_message("blind-all", deadline_s=1.0)])
            await wait_for(lambda: len(results.finals("blind-all")) == 1, timeout=30)
            final = results.finals("blind-all")[0]
            assert final["status"] == "failed"
            assert "no pair list: exchange-info failed (" in final["reason"]
            assert final["reason"].endswith("and account has no `symbols` setting")


async def test_a_slow_pair_list_does_not_hold_a_kill_back(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    # exchange-info answers, but only after the intake stopped waiting for it: the
    # kill runs unchecked, and is proven flat only once the list, read on, names its
    # pair (the sweep reads it again before its result); the next alert finds the list
    # cached.
    async with exchange(ACCOUNTS, seed=7) as ex:
        slow = EndpointFaults(latency_ms=(PAIR_FETCH_WAIT_S + 1.5) * 1000)
        ex.sim.set_faults(slow, "exchange_info")
        settings = daemon_settings(kafka_bootstrap, unique_name, ex)
        await prepare_topics(settings)
        ex.seed("mm-1", SYMBOLS, 2)
        async with (
            TopicCollector(kafka_bootstrap, settings.kafka.topics.results) as results,
            daemon_in_process(settings),
        ):
            await produce(settings, [alert_message("slow-1", scope={"symbols": ["BTC_USDT"]})])
            await wait_for(lambda: len(results.finals("slow-1")) == 1, timeout=30)
            final = results.finals("slow-1")[0]
            assert final["status"] == "flat", final["reason"]
            assert final["counts"]["sent"] == 2
            # The fetch went on and its answer is kept: the next kill is checked.
            await wait_for(lambda: ex.sim.count(endpoint="exchange_info", status=200) >= 2)
            await produce(settings, [alert_message("slow-2", scope={"symbols": ["ETH_USDT"]})])
            await wait_for(lambda: len(results.finals("slow-2")) == 1, timeout=30)
            assert results.finals("slow-2")[0]["status"] == "flat"
            assert ex.open_ids("mm-1") == set()


async def test_configured_symbols_are_no_proof_a_kill_over_them_is_never_flat(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    # exchange-info down from the start; mm-1 has `symbols` but trades XRP_USDT too,
    # and the exchange lists pairs it does not trade as [] (the worst case).
    async with exchange(ACCOUNTS, seed=7) as ex:
        ex.sim.set_faults(INFO_DOWN, "exchange_info")
        ex.sim.unknown_symbol = "empty"
        settings = daemon_settings(
            kafka_bootstrap, unique_name, ex, account_mm_1={"symbols": ["BTC_USDT", "ETH_USDT"]}
        )
        await prepare_topics(settings)
        topics = settings.kafka.topics
        listed = ex.seed("mm-1", SYMBOLS, 3)
        xrp = ex.seed("mm-1", ["XRP_USDT"], 2)
        blind = "pairs could not be checked against the exchange's pair list (exchange-info: "
        async with (
            TopicCollector(kafka_bootstrap, topics.results) as results,
            TopicCollector(kafka_bootstrap, topics.dlq) as dlq,
            daemon_in_process(settings),
        ):
            # A whole-account kill lists the configured pairs only: never flat, and the
            # CLI prints why.
            out = io.StringIO()
            whole = prepare_trigger(
                _trigger(["mm-1"]), trigger_rules(settings), now=datetime.now(UTC)
            )
            run = await run_trigger(settings.kafka, whole, out=out, tty=False, timeout_s=30)
            row = run.board.rows["mm-1"]
            assert row.status == "residual"
            assert run.exit_code != 0
            assert blind in out.getvalue()
            assert ex.open_ids("mm-1") == xrp  # what it listed is cancelled, XRP unseen

            # A pair missing from the configured list is not refused: it runs, unchecked.
            await produce(settings, [alert_message("cfg-xrp", scope={"symbols": ["XRP_USDT"]})])
            await wait_for(lambda: len(results.finals("cfg-xrp")) == 1, timeout=20)
            final = results.finals("cfg-xrp")[0]
            assert final["status"] == "residual"
            assert final["reason"].startswith(blind)
            assert ex.open_ids("mm-1") == set()

            # A miscased pair is neither refused by the fallback nor reported flat.
            ex.seed("mm-1", ["BTC_USDT"], 2)
            await produce(settings, [alert_message("cfg-typo", scope={"symbols": ["btc_usdt"]})])
            await wait_for(lambda: len(results.finals("cfg-typo")) == 1, timeout=20)
            assert results.finals("cfg-typo")[0]["status"] == "residual"
            assert results.finals("cfg-typo")[0]["reason"].startswith(blind)
            assert len(ex.open_ids("mm-1")) == 2
            assert (await dlq.to_end()).json() == []
            assert listed  # seeded on the configured pairs


async def test_a_stale_exchange_list_still_refuses_and_proves_flat(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    # The exchange answered once, then exchange-info fails: its last answer is kept.
    async with exchange(ACCOUNTS, seed=7) as ex:
        settings = daemon_settings(
            kafka_bootstrap,
            unique_name,
            ex,
            engine={"exchange_info_ttl_s": 0.001},
            account_mm_1={"symbols": ["BTC_USDT"]},
        )
        await prepare_topics(settings)
        topics = settings.kafka.topics
        ex.seed("mm-1", SYMBOLS, 2)
        async with (
            TopicCollector(kafka_bootstrap, topics.results) as results,
            TopicCollector(kafka_bootstrap, topics.dlq) as dlq,
            daemon_in_process(settings),
        ):
            await wait_for(lambda: ex.sim.count(endpoint="exchange_info", status=200) >= 1)
            ex.sim.set_faults(INFO_DOWN, "exchange_info")
            await produce(settings, [alert_message("stale-bad", scope={"symbols": ["NOPE_USDT"]})])
            await wait_for(lambda: len(dlq.json()) == 1, timeout=20)
            assert "NOPE_USDT (" in dlq.json()[0]["reason"]
            await produce(settings, [alert_message("stale-all")])
            await wait_for(lambda: len(results.finals("stale-all")) == 1, timeout=20)
            final = results.finals("stale-all")[0]
            assert final["status"] == "flat"
            assert "pairs from the stale pair list (" in final["reason"]
            assert ex.open_ids("mm-1") == set()


def _trigger(accounts: list[str], **kw: Any) -> TriggerRequest:
    return TriggerRequest("kill", accounts, reason="test", operator="alice", **kw)


async def test_cli_trigger_exit_codes_refused_and_not_found(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    async with exchange(ACCOUNTS, seed=7) as ex:
        settings = daemon_settings(kafka_bootstrap, unique_name, ex)
        await prepare_topics(settings)
        seeded = sorted(ex.seed("mm-2", ["BTC_USDT"], 2))
        async with daemon_in_process(settings):
            out = io.StringIO()
            refused = prepare_trigger(
                _trigger(["mm-2"], symbols=["btc_usdt"]),
                trigger_rules(settings),
                now=datetime.now(UTC),
            )
            run = await run_trigger(settings.kafka, refused, out=out, tty=False, timeout_s=30)
            assert run.exit_code == EXIT_REFUSED == 2
            assert "refused (invalid: unknown pair(s): btc_usdt (did you mean BTC_USDT?)" in (
                out.getvalue()
            )
            assert len(ex.open_ids("mm-2")) == 2

            out = io.StringIO()
            ghost = 9_000_000_001
            asked = prepare_trigger(
                _trigger(["mm-2"], symbols=["BTC_USDT"], order_ids=[seeded[0], ghost]),
                trigger_rules(settings),
                now=datetime.now(UTC),
            )
            run = await run_trigger(settings.kafka, asked, out=out, tty=False, timeout_s=30)
            assert run.exit_code == EXIT_NOT_FOUND == 3
            row = run.board.rows["mm-2"]
            assert (row.status, row.not_found) == ("flat", (ghost,))
            assert ex.open_ids("mm-2") == {seeded[1]}
            assert f"never found open, not cancelled by this kill: {ghost}" in out.getvalue()


# ------------------------------------------------------------------ the intake's check


async def test_a_warm_pair_list_costs_no_request_a_cold_one_is_fetched_once(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    # The intake's pair lists are real clients against the simulator; the engine is
    # the intake harness's recording one.
    sim, server, client, _ = await _client_env()
    settings = make_settings(kafka_bootstrap, unique_name)
    await create_all_topics(settings)
    engine = FakeEngine()
    lists: dict[str, ExchangeClient] = {"mm-1": client}  # mm-2 joins later, cold
    try:
        await client.pair_list()  # warm, as the daemon does at start-up
        calls = sim.count(endpoint="exchange_info")
        async with (
            TopicCollector(kafka_bootstrap, settings.kafka.topics.results) as results,
            running_intake(settings, engine, pairs=lists) as run,
        ):
            await produce(settings, [alert_message("warm-1", scope={"symbols": ["BTC_USDT"]})])
            await wait_for(lambda: len(results.finals("warm-1")) == 1)
            assert engine.started == ["warm-1"]  # begun while the record was read
            assert sim.count(endpoint="exchange_info") == calls  # no request to check

            # mm-2's list was never fetched: one fetch, then the same decision.
            api_key, pem = register_test_client(sim, name="mm-2")
            cold = ExchangeClient(account_settings(server.base_url, api_key, pem, "mm-2"))
            lists["mm-2"] = cold
            try:
                await produce(
                    settings,
                    [alert_message("cold-1", ["mm-2"], scope={"symbols": ["ETH_USDT"]})],
                    key="mm-2",
                )
                await wait_for(lambda: len(results.finals("cold-1")) == 1)
                assert [c.alert_id for c in engine.calls][-1] == "cold-1"
                assert sim.count(endpoint="exchange_info") == calls + 1
                assert cold.cached_pair_list() is not None
            finally:
                await cold.close()
            assert run.observer.alerts == [("alerts", "processed"), ("alerts", "processed")]
    finally:
        await client.close()
        await server.close()


# ------------------------------------------------------------ the client's pair list


class Clock:
    """A monotonic clock the test moves (the cache's age), nothing else faked."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _client_env(**overrides: Any) -> tuple[Simulator, SimulatorServer, ExchangeClient, Clock]:
    sim = Simulator(seed=3)
    api_key, pem = register_test_client(sim, name="acct-1")
    server = SimulatorServer(sim)
    await server.start()
    clock = Clock()
    settings = account_settings(
        server.base_url, api_key, pem, backoff_base_s=0.001, backoff_cap_s=0.002, **overrides
    )
    client = ExchangeClient(settings, exchange_info_ttl_s=60.0, monotonic=clock)
    return sim, server, client, clock


async def test_the_pair_list_is_kept_when_exchange_info_starts_failing() -> None:
    sim, server, client, clock = await _client_env()
    try:
        fresh = await client.pair_list()
        assert fresh.source == "exchange"
        assert fresh.error is None
        assert set(sim.symbols) == fresh.symbols
        assert client.cached_pair_list() == fresh
        clock.now += 61  # past the cache lifetime
        sim.set_faults(INFO_DOWN, "exchange_info")
        before = sim.count(endpoint="exchange_info")
        kept = await client.pair_list()
        assert kept.source == "stale"
        assert kept.symbols == fresh.symbols
        assert "503" in (kept.error or "")
        assert sim.count(endpoint="exchange_info") > before  # it did ask
        assert {s.symbol for s in await client.exchange_info()} == fresh.symbols
        # The exchange answers again: a fresh list, from the exchange.
        sim.clear_faults()
        clock.now += 10  # past the pause after a failure
        assert (await client.pair_list()).source == "exchange"
    finally:
        await client.close()
        await server.close()


async def test_configured_symbols_when_exchange_info_never_answered() -> None:
    sim, server, client, _ = await _client_env(symbols=["BTC_USDT", "ZZZ_IDR"])
    try:
        sim.set_faults(INFO_DOWN, "exchange_info")
        assert client.cached_pair_list() is None  # nothing tried yet
        pairs = await client.pair_list()
        assert pairs.source == "configured"
        assert pairs.symbols == {"BTC_USDT", "ZZZ_IDR"}
        assert "503" in (pairs.error or "")
        info = await client.exchange_info()
        assert [(s.symbol, s.base_asset, s.quote_asset) for s in info] == [
            ("BTC_USDT", "BTC", "USDT"),
            ("ZZZ_IDR", "ZZZ", "IDR"),
        ]
    finally:
        await client.close()
        await server.close()


async def test_no_source_of_pairs_says_so() -> None:
    sim, server, client, clock = await _client_env()
    try:
        sim.set_faults(INFO_DOWN, "exchange_info")
        with pytest.raises(ExchangeUnavailable) as info:
            await client.pair_list()
        text = str(info.value)
        assert "no pair list: exchange-info failed (gave up after" in text
        assert text.endswith("and account has no `symbols` setting")
        calls = sim.count(endpoint="exchange_info")
        # Right after a failure the answer is the same, without asking again.
        with pytest.raises(ExchangeUnavailable):
            await client.exchange_info()
        assert sim.count(endpoint="exchange_info") == calls
        clock.now += 10
        sim.clear_faults()
        assert (await client.pair_list()).source == "exchange"
    finally:
        await client.close()
        await server.close()


async def test_a_redirected_pair_list_stays_a_redirect() -> None:
    # Readiness and `check` tell a wrong base_url by the error class: keep it.
    sim, server, client, _ = await _client_env()
    try:
        sim.set_redirect("https://elsewhere.example/", 301, endpoint="exchange_info")
        with pytest.raises(Redirected) as info:
            await client.pair_list()
        assert info.value.location == "https://elsewhere.example/"
        assert info.value.status == 301
        assert "no pair list: exchange-info failed (" in str(info.value)
    finally:
        await client.close()
        await server.close()


# ------------------------------------------------------------ readiness and `check`


async def _ready_reasons(daemon: Daemon) -> list[str]:
    url_of = daemon.observability.url
    assert url_of is not None
    async with httpx.AsyncClient() as http:
        reasons: list[str] = (await http.get(f"{url_of()}/readyz")).json()["reasons"]
    return reasons


async def _wait_reasons(daemon: Daemon, want: Callable[[list[str]], bool]) -> list[str]:
    """Poll /readyz until its reasons satisfy ``want`` (a condition with a deadline)."""
    return await wait_until(
        lambda: _ready_reasons(daemon),
        want,
        30,
        what=lambda reasons: f"readiness reasons stayed {reasons}",
    )


async def test_readiness_and_check_agree_on_an_account_without_any_pair_list(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    # exchange-info down from the start: mm-1 has `symbols`, mm-2 has nothing to go on.
    async with exchange(ACCOUNTS, seed=7) as ex:
        ex.sim.set_faults(INFO_DOWN, "exchange_info")
        settings = daemon_settings(
            kafka_bootstrap,
            unique_name,
            ex,
            account_mm_1={"symbols": ["BTC_USDT", "ETH_USDT"]},
            metrics={"enabled": True, "port": 0, "exchange_stale_after_s": 2},
        )
        await prepare_topics(settings)
        no_list = "mm-2: no pair list: exchange-info failed ("
        async with daemon_in_process(settings) as run:
            # Until the probe has read both accounts' lists, mm-1 may say "not read yet".
            reasons = await _wait_reasons(
                run.daemon,
                lambda rs: (
                    any(r.startswith(no_list) for r in rs)
                    and not any("not read yet" in r for r in rs)
                ),
            )
            assert reasons == [r for r in reasons if r.startswith(no_list)]  # mm-1 is fine
            assert reasons[0].endswith("and account has no `symbols` setting")

            checks = await run_checks(
                settings.kafka, settings.accounts, settings.engine.page_size, timeout_s=5
            )
            by = {(c.name, c.target.split()[0]): c for c in checks}
            assert not by[("exchange reachable", "mm-2")].ok
            assert "no pair list" in by[("exchange reachable", "mm-2")].detail
            mm1 = by[("exchange reachable", "mm-1")]
            assert mm1.ok
            assert mm1.detail.startswith("2 pairs (configured; exchange-info failed: ")
            assert "503" in mm1.detail
            assert "mm-1" not in mm1.detail  # the row names the account once

            # The CLI: every finding in the table, nothing bare on stderr.
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "killswitch",
                "check",
                "--timeout",
                "5",
                env=settings_env(settings),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            stdout, stderr = await proc.communicate()
            assert proc.returncode != 0  # mm-2 fails
            assert "2 pairs (configured; exchange-info failed: " in stdout.decode()
            assert stderr.decode() == ""

            # exchange-info answers again: the next probe rounds find a list, ready.
            ex.sim.clear_faults()
            await _wait_reasons(run.daemon, lambda rs: rs == [])


async def test_no_order_id_is_called_not_found_when_nothing_was_listed(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    async with exchange(ACCOUNTS, seed=7) as ex:
        settings = daemon_settings(kafka_bootstrap, unique_name, ex)
        await prepare_topics(settings)
        seeded = sorted(ex.seed("mm-2", ["BTC_USDT"], 2))
        ghost = 9_000_000_002
        async with (
            TopicCollector(kafka_bootstrap, settings.kafka.topics.results) as results,
            daemon_in_process(settings),
        ):
            # The key is refused: the sweep lists nothing, so it knows of no id that
            # is not open.
            ex.sim.revoke(ex.keys["mm-2"][0])
            scope = {"symbols": ["BTC_USDT"], "order_ids": [seeded[0], ghost]}
            await produce(settings, [alert_message("nf-auth", ["mm-2"], scope=scope)], key="mm-2")
            await wait_for(lambda: len(results.finals("nf-auth")) == 1, timeout=30)
            final = results.finals("nf-auth")[0]
            assert final["status"] == "failed"
            assert final["not_found"] == []
            assert len(ex.open_ids("mm-2")) == 2

            # Listed to the end, the same scope names the id that is not there.
            ex.sim.reinstate(ex.keys["mm-2"][0])
            await produce(settings, [alert_message("nf-ok", ["mm-2"], scope=scope)], key="mm-2")
            await wait_for(lambda: len(results.finals("nf-ok")) == 1, timeout=30)
            final = results.finals("nf-ok")[0]
            assert (final["status"], final["not_found"]) == ("flat", [ghost])
            assert ex.open_ids("mm-2") == {seeded[1]}
