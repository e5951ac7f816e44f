"""The daemon's observability hook: metrics and health served from the settings."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from killswitch.config import AccountSettings, DeadmanSource, MetricsSettings, Settings
from killswitch.core.outcomes import Outcome
from killswitch.core.ports import NullObserver
from killswitch.embedded import free_port
from killswitch.exchange.client import ExchangeClients
from killswitch.health import Readiness, ReadinessObserver
from killswitch.observability import ExchangeProbe, probe_interval_s, prometheus_observability
from killswitch.prometheus_text import metric_samples
from killswitch.simulator import EndpointFaults, Simulator, SimulatorServer
from killswitch.simulator.testing import account_settings, register_test_client
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

ACCOUNTS = ["mm-1", "mm-2"]


def settings(**metrics: object) -> Settings:
    accounts = [{"id": a, "api_key": f"key-{a}", "private_key": "unused"} for a in ACCOUNTS]
    return Settings(accounts=accounts, metrics={"port": 0} | metrics)


def sections(
    conf: Settings,
) -> tuple[MetricsSettings, list[AccountSettings], list[DeadmanSource]]:
    """The sections the daemon hands to ``prometheus_observability``."""
    return conf.metrics, conf.accounts, conf.deadman


def key_log(caplog: pytest.LogCaptureFixture, account: str, words: str) -> list[logging.LogRecord]:
    """The probe's log records about ``account`` whose message has ``words``."""
    return [
        r
        for r in caplog.records
        if getattr(r, "account", None) == account and words in r.getMessage()
    ]


def value(text: str, name: str, **labels: str) -> float:
    return sum(
        v
        for n, got, v in metric_samples(text)
        if n == name and all(got.get(k) == x for k, x in labels.items())
    )


def test_disabled_metrics_serve_nothing() -> None:
    obs = prometheus_observability(*sections(settings(enabled=False)))
    assert obs.start is None
    assert obs.stop is None


async def test_served_metrics_follow_the_daemon_and_readiness() -> None:
    port = free_port()
    obs = prometheus_observability(*sections(settings(port=port)))
    assert obs.start is not None
    assert obs.stop is not None
    await obs.start()
    try:
        obs.observer.request_done("mm-1", "open_orders", "200", 0.01)
        obs.observer.cancel_outcome("mm-1", Outcome.SENT)
        obs.set_consuming(True)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            text = (await http.get("/metrics")).text
            ready = await http.get("/readyz")
        assert value(text, "killswitch_cancels_total", account="mm-1", outcome="sent") == 1
        assert value(text, "killswitch_exchange_requests_total", account="mm-1") == 1
        # Consuming, mm-1 answered (no probe read its pair list), mm-2 never did: not
        # ready, and it says why.
        assert ready.status_code == 503
        assert ready.json()["reasons"] == [
            "exchange: mm-1 pair list not read yet",
            "exchange: mm-2 no answer yet",
        ]
        assert value(text, "killswitch_ready") == 0
    finally:
        await obs.stop()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(timeout=5) as http:
            await http.get(f"http://127.0.0.1:{port}/healthz")


async def test_the_probe_stops_at_once_while_the_exchange_hangs() -> None:
    # A daemon's stop waits for its probe: a round hanging on the exchange must be cut
    # short, not wait out the read timeout (30 s here, beyond the wait below).
    sim = Simulator(seed=3)
    key, pem = register_test_client(sim, name="mm-1")
    async with SimulatorServer(sim) as server:
        account = {"id": "mm-1", "api_key": key, "private_key": pem.decode()}
        conf = Settings(accounts=[{**account, "base_url": server.base_url, "read_timeout_s": 30}])
        clients = ExchangeClients(conf.accounts)
        readiness = Readiness.for_accounts(["mm-1"], 10.0)
        sim.set_faults(EndpointFaults(timeout_rate=1.0, timeout_hold_s=60.0))
        stop = asyncio.Event()
        probing = asyncio.create_task(ExchangeProbe(clients, 60.0, readiness).run(stop))
        await wait_for(lambda: sim.count() >= 1)  # a request of the round is hanging
        stop.set()
        try:
            async with asyncio.timeout(10):
                await probing
        finally:
            probing.cancel()
            await clients.close()


async def test_the_probe_keeps_readiness_current_without_any_kill(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="killswitch.observability")
    sim = Simulator(seed=3)
    keys = {a: register_test_client(sim, name=a) for a in ACCOUNTS}
    sim.revoke(keys["mm-2"][0])
    port = free_port()
    async with SimulatorServer(sim) as server:
        accounts = [
            {"id": a, "api_key": k, "private_key": pem.decode(), "base_url": server.base_url}
            for a, (k, pem) in keys.items()
        ]
        conf = Settings(accounts=accounts, metrics={"port": port, "exchange_stale_after_s": 2})
        obs = prometheus_observability(*sections(conf))
        assert obs.start is not None
        assert obs.stop is not None
        await obs.start()
        # As the daemon wires it: the probe runs on the accounts' own clients.
        clients = ExchangeClients(conf.accounts, observer=obs.observer)
        probe = ExchangeProbe(
            clients, probe_interval_s(conf.metrics.exchange_stale_after_s), obs.readiness
        )
        stop = asyncio.Event()
        probing = asyncio.create_task(probe.run(stop))
        try:
            obs.set_consuming(True)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
                reasons: list[str] = []

                async def poll() -> None:
                    reasons[:] = (await http.get("/readyz")).json()["reasons"]

                loop = asyncio.get_running_loop()
                deadline = loop.time() + 10
                while reasons != ["mm-2: auth rejected"] and loop.time() < deadline:
                    await poll()
                    await asyncio.sleep(0.05)  # polling a condition with a deadline
                assert reasons == ["mm-2: auth rejected"]
                # Several rounds refused: the operator is told once, in the log.
                await wait_for(lambda: sim.count(keys["mm-2"][0], "open_orders", 401) >= 3)
                refused = key_log(caplog, "mm-2", "refuses the key")
                assert [r.levelno for r in refused] == [logging.WARNING]
                assert "check the account's api_key" in refused[0].getMessage()
                # Reinstated: the next probe round (every 0.5 s here) makes it ready.
                sim.reinstate(keys["mm-2"][0])
                deadline = loop.time() + 10
                while reasons and loop.time() < deadline:
                    await poll()
                    await asyncio.sleep(0.05)
                assert reasons == []
                text = (await http.get("/metrics")).text
            assert [r.levelno for r in key_log(caplog, "mm-2", "accepts the key")] == [logging.INFO]
            assert key_log(caplog, "mm-1", "key") == []
            assert value(text, "killswitch_ready") == 1
            assert value(text, "killswitch_exchange_requests_total", endpoint="open_orders") >= 3
        finally:
            stop.set()
            await probing
            await clients.close()
            await obs.stop()
    # Read-only: nothing cancelled.
    for api_key, _ in keys.values():
        assert sim.count(api_key, endpoint="cancel") == 0


async def test_an_exchange_the_probe_cannot_reach_makes_the_account_not_ready_at_once() -> None:
    """The probe's listing goes unanswered through its retries (connections dropped)
    while the public endpoints still answer: not ready at once, not only after
    ``exchange_stale_after_s`` without an answer; ready again once a listing is answered."""
    sim = Simulator(seed=4)
    keys = {a: register_test_client(sim, name=a) for a in ACCOUNTS}
    sim.set_faults(EndpointFaults(drop_rate=1.0), "open_orders")
    async with SimulatorServer(sim) as server:
        accounts = [
            account_settings(server.base_url, k, pem, a, request_deadline_s=1.0)
            for a, (k, pem) in keys.items()
        ]
        # Stale after 60 s: staleness alone would keep every account ready here.
        conf = Settings(accounts=accounts, metrics={"port": 0, "exchange_stale_after_s": 60})
        readiness = Readiness.for_accounts(ACCOUNTS, conf.metrics.exchange_stale_after_s)
        readiness.set_consuming(True)
        # As the daemon wires it: the clients' answers reach readiness.
        observer = ReadinessObserver(NullObserver(), readiness)
        clients = ExchangeClients(conf.accounts, observer=observer)
        probe = ExchangeProbe(clients, 0.5, readiness)
        loop = asyncio.get_running_loop()
        try:
            await probe.round()
            reasons = readiness.evaluate(loop.time()).reasons
            assert len(reasons) == len(ACCOUNTS)
            for account, reason in zip(ACCOUNTS, sorted(reasons), strict=True):
                assert reason.startswith(f"exchange: {account} unreachable ("), reason
            sim.set_faults(EndpointFaults(), "open_orders")
            await probe.round()
            assert readiness.evaluate(loop.time()).ready
            # Throttled through every retry: said so, not called unreachable.
            sim.set_faults(EndpointFaults(throttle_rate=1.0), "open_orders")
            await probe.round()
            reasons = readiness.evaluate(loop.time()).reasons
            for account, reason in zip(ACCOUNTS, sorted(reasons), strict=True):
                assert reason.startswith(
                    f"exchange: {account} throttled (HTTP 429) through every retry ("
                ), reason
        finally:
            await clients.close()
