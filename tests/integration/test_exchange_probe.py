"""The daemon's one exchange probe runs on the accounts' own clients and limiters: what
it meets (here 429s) moves the account's limiter, and ``killswitch_rate_limit_per_second``
shows that limiter's rate, never a rate of its own."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from killswitch.simulator.faults import EndpointFaults
from tests.support.exchange import exchange
from tests.support.inprocess import ACCOUNTS, daemon_in_process, daemon_settings, prepare_topics
from tests.support.waiting import wait_for, wait_until

pytestmark = pytest.mark.integration


def rate_gauges(text: str) -> dict[str, float]:
    return {
        sample.labels["account"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "killswitch_rate_limit_per_second"
    }


async def test_only_the_accounts_limiter_moves_its_rate_gauge(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    """Every listing answers 429 from the start, so the probe's first listings are
    throttled while nothing else of the daemon lists; then the exchange answers again.
    The gauge must be the rate of the limiter the engine's kills would use."""
    async with exchange(ACCOUNTS, seed=7) as ex:
        settings = daemon_settings(
            kafka_bootstrap,
            unique_name,
            ex,
            metrics={"enabled": True, "port": 0, "exchange_stale_after_s": 2.0},
        )
        await prepare_topics(settings)
        ceilings = {a.id: a.rate_limit_per_second for a in settings.accounts}
        ex.sim.set_faults(EndpointFaults(throttle_rate=1.0), "open_orders")
        keys = {account: ex.keys[account][0] for account in ACCOUNTS}

        def listings(status: int) -> dict[str, int]:
            return {a: ex.sim.count(k, "open_orders", status) for a, k in keys.items()}

        async with daemon_in_process(settings) as run, httpx.AsyncClient() as http:
            await wait_for(lambda: min(listings(429).values()) >= 2, timeout=20)
            ex.sim.set_faults(EndpointFaults(), "open_orders")
            await wait_for(lambda: min(listings(200).values()) >= 1, timeout=20)
            url = run.daemon.observability.url
            assert url is not None
            gauges = rate_gauges((await http.get(f"{url()}/metrics")).text)
            clients = run.daemon.clients
            assert clients is not None
            limiters = {a: clients[a].limiter for a in ACCOUNTS}
            rates = {a: limiter.rate for a, limiter in limiters.items()}
    # The probe's 429s reached the accounts' limiters ...
    assert all(rate < 0.9 * ceilings[a] for a, rate in rates.items()), rates
    # ... and the gauge is their rate, within the limiter's reporting step (1 %).
    assert gauges.keys() == rates.keys()
    for account, rate in rates.items():
        assert gauges[account] == pytest.approx(rate, abs=0.02 * ceilings[account]), account


async def readyz_until(
    http: httpx.AsyncClient, url: str, until: Callable[[httpx.Response], bool], timeout: float
) -> httpx.Response:
    """Poll ``/readyz`` until ``until(answer)`` holds; fail after ``timeout`` seconds."""
    return await wait_until(
        lambda: http.get(f"{url}/readyz"), until, timeout, what=lambda a: f"/readyz {a.json()}"
    )


async def test_a_page_size_the_exchange_refuses_makes_the_account_not_ready(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    """``engine.page_size`` 100 against an exchange that takes at most 50 per page: every
    kill's listing would be refused, so the probe (listing as a kill does) makes every
    account not ready, with the exchange's own words; once the exchange takes the page
    size, ready again."""
    async with exchange(ACCOUNTS, seed=8) as ex:
        settings = daemon_settings(
            kafka_bootstrap,
            unique_name,
            ex,
            metrics={"enabled": True, "port": 0, "exchange_stale_after_s": 2.0},
            engine={"page_size": 100},
        )
        await prepare_topics(settings)
        ex.sim.max_page_limit = 50
        async with daemon_in_process(settings) as run, httpx.AsyncClient() as http:
            url = run.daemon.observability.url
            assert url is not None

            def refused(answer: httpx.Response) -> bool:
                reasons = answer.json()["reasons"]
                return len(reasons) == len(ACCOUNTS) and all("page_size" in r for r in reasons)

            answer = await readyz_until(http, url(), refused, timeout=20)
            assert answer.status_code == 503
            for account, reason in zip(ACCOUNTS, sorted(answer.json()["reasons"]), strict=True):
                assert reason.startswith(f"{account}: open orders refused at engine.page_size 100")
                assert "limit must be within [1, 50]" in reason
            for account in ACCOUNTS:
                key = ex.keys[account][0]
                assert ex.sim.count(key, "open_orders", 400) >= 1
                assert ex.sim.count(key, "open_orders", 200) == 0

            ex.sim.max_page_limit = 100
            await readyz_until(http, url(), lambda a: a.status_code == 200, timeout=20)
